"""Print every message that arrives in the queue "hello": the consumer of RabbitMQ
tutorial one. Runs until Ctrl+C; reconnects by itself when the broker restarts.

The broker is localhost as guest unless AMQP_URL names another one, e.g.
AMQP_URL=amqp://user:password@host:5672/vhost, or the nodes of a cluster separated by ";"
(when one node goes away, receive.py goes on with the next).
"""

import contextlib
import itertools
import os
import re
import signal
import socket
import ssl
import sys
import threading
import time

import pika

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
# How many unacknowledged messages the broker may hand us at once: a bound, so a backlog
# stays in the queue, yet wide enough that the broker never waits for our acks.
PREFETCH = 5000


def main(node):
    connection = pika.BlockingConnection(node)
    channel = connection.channel()

    # The same declaration as send.py: whichever script starts first creates the queue.
    try:
        channel.queue_declare(queue="hello", durable=True, arguments={"x-queue-type": "quorum"})
    except pika.exceptions.ChannelClosedByBroker as refusal:
        channel = use_existing_hello(connection, refusal)

    ack = ack_once_printed(channel)

    def callback(ch, method, properties, body):
        print(f" [x] Received {readable(body)!r}")
        ack(method.delivery_tag)  # the broker keeps the message until it is printed

    channel.basic_qos(prefetch_count=PREFETCH)
    with warning_if_no_answer(node):
        channel.basic_consume(queue="hello", on_message_callback=callback)

    print(" [*] Waiting for messages. To exit press CTRL+C", flush=True)
    channel.start_consuming()


# ---------------------------------------------------------------------------------------
# The tutorial ends here. What follows is optional reading: acknowledging what was printed,
# moving on to the next node when one goes away, how AMQP_URL becomes those nodes, and
# one plain line for each way a run can fail.
# ---------------------------------------------------------------------------------------


def ack_once_printed(channel):
    """A function that acknowledges a message once its line is out. After each burst of
    deliveries: one flush of stdout, then one ack for the whole burst (multiple=True), as
    flushing and acking every message on its own would be several times slower."""
    printed = []  # delivery tags printed since the last ack

    def flush_and_ack():
        sys.stdout.flush()
        channel.basic_ack(printed[-1], multiple=True)
        printed.clear()

    def ack(delivery_tag):
        if not printed:  # the first of a burst: ack once pika has handed us the rest
            channel.connection.call_later(0, flush_and_ack)
        printed.append(delivery_tag)

    return ack


def keep_receiving():
    """Run main() on the first node of AMQP_URL that answers. When its connection is lost,
    say so once and go on with the next node, round the list."""
    errors = pika.exceptions
    lost = (errors.StreamLostError, errors.AMQPHeartbeatTimeout, errors.ConnectionClosed)
    refused = (errors.ProbableAuthenticationError, errors.ProbableAccessDeniedError)
    nodes, connected_once = node_parameters(), False
    for attempt, node in enumerate(itertools.cycle(nodes)):
        try:
            main(node)
            print("Note: the queue 'hello' was deleted; declaring it again.", file=sys.stderr)
            connected_once = True
        except lost as error:
            print(
                f"Lost the connection to {broker([node])} ({error}); reconnecting. Ctrl+C stops.",
                file=sys.stderr,
            )
            connected_once = True
        except errors.AMQPConnectionError as error:
            if isinstance(error, refused) or not connected_once and attempt + 1 == len(nodes):
                raise
            time.sleep(0.3)  # this node does not answer (yet): try the next


@contextlib.contextmanager
def warning_if_no_answer(node, seconds=20):
    """Say so on stderr if the block still waits after `seconds`: a quorum queue that has
    lost the majority of its nodes answers nothing until they are back. A thread, as pika's
    own timers do not fire while a BlockingChannel waits for the broker."""
    line = (
        f"No answer from the queue 'hello' at {broker([node])} in {seconds} s: if "
        "that is a cluster, the queue may have lost its majority. Waiting; Ctrl+C stops."
    )
    timer = threading.Timer(seconds, print, [line], {"file": sys.stderr})
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def node_parameters():
    """pika's parameters for each node in AMQP_URL."""
    return [checked_node(url) for url in AMQP_URL.split(";")]


def checked_node(url):
    """pika's parameters for one URL, refusing what is not AMQP, and TLS that would not check
    the broker's certificate."""
    if not url.startswith(("amqp://", "amqps://")):  # pika would take http:// too
        raise ValueError("it must look like amqp://user:password@host:5672/vhost")
    try:
        node = pika.URLParameters(url)
    except ValueError:  # pika's message may quote a piece of the password
        raise ValueError("in a password, write / as %2F and @ as %40") from None
    # A client context that checks the host name also requires a valid certificate.
    if node.ssl_options and not node.ssl_options.context.check_hostname:
        raise ValueError("its ssl_options turn off the check of the broker's certificate")
    return node


def use_existing_hello(connection, refusal):
    """A queue "hello" made earlier with other settings: receive from it as it is."""
    if refusal.reply_code != 406:  # PRECONDITION_FAILED: it exists, declared otherwise
        raise refusal
    print(
        f"Note: using the existing queue 'hello', made with other settings ({refusal.reply_text})"
        "; delete it for a durable quorum queue: rabbitmqctl delete_queue hello",
        file=sys.stderr,
    )
    return connection.channel()


def readable(body):
    """The body as text; a body that is not UTF-8 stays bytes, which print escaped."""
    try:
        return body.decode()
    except UnicodeDecodeError:
        return body


def broker(nodes):
    """Where the nodes are, for messages: never the password."""
    return "RabbitMQ at " + ", ".join(f"{node.host}:{node.port}" for node in nodes)


# One line for each failure a learner may meet, found by the type of the error, {cause}
# (unwrapped from pika's connection errors); the first match is said. {node} is the node
# that failed, {user} its user name, {where} names all the nodes tried.
FAILURES = {
    ssl.SSLCertVerificationError: "TLS: the certificate of {where} is not trusted, or is not "
    "valid for the host name '{node.host}' ({cause.verify_message}). Use the name it was "
    "made for in AMQP_URL; for a private CA, set SSL_CERT_FILE to its certificate (PEM).",
    ssl.SSLError: "TLS: {where} did not answer in TLS ({cause.reason}). Is that a plain AMQP "
    "port? Use amqp:// there, or the broker's TLS port (usually 5671) with amqps://.",
    pika.exceptions.IncompatibleProtocolError: "{where} closed the connection at once, "
    "without speaking AMQP 0-9-1. If that port expects TLS, use amqps://; else check it.",
    socket.gaierror: "Cannot find the host '{node.host}': check the host name in AMQP_URL.",
    ConnectionRefusedError: "Cannot connect to {where}: connection refused. Start the broker "
    "(rabbitmq-server, or docker run -p 5672:5672 rabbitmq:4), or set AMQP_URL.",
    pika.exceptions.ProbableAuthenticationError: "{where} refused user '{user}': check the user "
    "name and password in AMQP_URL. RabbitMQ lets guest in only from localhost.",
    pika.exceptions.ProbableAccessDeniedError: "{where} has no virtual host '{node.virtual_host}'"
    ", or user '{user}' may not use it: create it (rabbitmqctl add_vhost) or fix AMQP_URL.",
}


def explain(error):
    """One line for the learner: what went wrong and what to do. Never the password."""
    if type(error) is ValueError:  # AMQP_URL cannot be read (not a TLS error, a subclass)
        masked = re.sub(r"(://[^:/@;]*:)[^;]*@", r"\1***@", AMQP_URL)  # up to the last @
        return f"AMQP_URL is not a valid AMQP URL ({error}): {masked}"
    # pika wraps a failed connect in two layers; with several nodes, it raises the error
    # of the last node it tried.
    inner = error.args[0] if type(error) is pika.exceptions.AMQPConnectionError else error
    cause = getattr(inner, "exception", inner)
    nodes = node_parameters()
    where, node, user = broker(nodes), nodes[-1], nodes[-1].credentials.username
    for kind, line in FAILURES.items():
        if isinstance(cause, kind):
            return line.format(where=where, node=node, user=user, cause=cause)
    return f"receive.py stopped ({cause!r}) at {where}; what it did not print stays queued."


if __name__ == "__main__":
    # Lines go out in batches, each flushed before its messages are acknowledged
    # (ack_once_printed); text the terminal cannot show is escaped rather than a crash.
    sys.stdout.reconfigure(line_buffering=False, write_through=False, errors="backslashreplace")
    # SIGTERM (docker stop) stops us as Ctrl+C does, and so does SIGINT even where the
    # shell that started us in the background told it to be ignored.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C: a clean stop, exit status 0
            keep_receiving()
    except Exception as error:
        sys.exit(explain(error))
