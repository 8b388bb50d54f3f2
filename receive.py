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
import traceback

import pika
from pika.adapters.utils.connection_workflow import AMQPConnectorException

AMQP_URL = os.environ.get("AMQP_URL") or "amqp://guest:guest@localhost:5672/%2F"
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
        print(f" [x] Received {body.decode(errors='surrogateescape')!r}")
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
        sys.stdout.flush()  # OSError where stdout is full or a closed pipe: no ack then
        channel.basic_ack(printed[-1], multiple=True)
        printed.clear()

    def ack(delivery_tag):
        if not printed:  # the first of a burst: ack once pika has handed us the rest
            channel.connection.call_later(0, flush_and_ack)
        printed.append(delivery_tag)

    return ack


def keep_receiving():
    """Run main() on the first node of AMQP_URL that answers. When its connection is lost,
    say so once and go on with the next node, round the list. A node that cannot be used is
    skipped; stop if none could be used before one was, or if one refused the user."""
    nodes, connected = node_parameters(), False
    for node in itertools.cycle(nodes):
        try:
            main(node)
            print("Note: the queue 'hello' was deleted; declaring it again.", file=sys.stderr)
            connected = True
        except LOST as error:
            print(
                f"Lost the connection to {broker(node)} ({error}); reconnecting.", file=sys.stderr
            )
            connected = True
        except Exception as error:
            if not unusable(error) or not connected and node is nodes[-1]:
                raise  # stdout failed, the user was refused, or no node could be used
            time.sleep(0.3)  # this node does not answer (yet): try the next


def unusable(error):
    """Whether the error says that this node cannot be used, though another may be: it came
    from connecting to it, and it is not RabbitMQ refusing the user, as every node would."""
    connecting = any(frame.f_code is CONNECT for frame in called(error))
    return connecting and not isinstance(cause_of(error), REFUSED)


def called(error):
    """The calls an error came through, outermost first."""
    return [frame for frame, _ in traceback.walk_tb(error.__traceback__)]


@contextlib.contextmanager
def warning_if_no_answer(node, seconds=20):
    """Say so on stderr if the block still waits after `seconds`: a quorum queue that has
    lost the majority of its nodes answers nothing until they are back. A thread, as pika's
    own timers do not fire while a BlockingChannel waits for the broker."""
    line = (
        f"No answer from the queue 'hello' at {broker(node)} in {seconds} s: if "
        "that is a cluster, the queue may have lost its majority. Waiting; Ctrl+C stops."
    )
    timer = threading.Timer(seconds, print, [line], {"file": sys.stderr})
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def node_parameters():
    """pika's parameters for each node in AMQP_URL; a ";" in a password stays in it."""
    urls = [url.strip("; ") for url in re.split(r";(?=\s*amqps?://)", AMQP_URL)]
    return [checked_node(url, f"URL {n}") for n, url in enumerate(filter(None, urls), 1)]


def checked_node(url, which):
    """pika's parameters for one URL. A wrong part is named, never shown: a password with a
    raw / ? # @ or % in it would spill into the host, port or virtual host."""
    if not re.match("amqps?://", url, re.I):  # pika would take http:// too
        raise ValueError(f"{which} must begin with amqp:// or amqps://")
    if re.search("@.*@|[/?#].*@|%(?![0-9A-Fa-f]{2})", url.split("//", 1)[1]):
        raise ValueError(f"in {which}, write / ? # @ % in the password as %2F %3F %23 %40 %25")
    try:
        node = pika.URLParameters(url)
    except ValueError:  # pika's message may quote a piece of the password
        raise ValueError(f"{which} needs a port from 1 to 65535, valid options after ?") from None
    # A client context that checks the host name also requires a valid certificate.
    if node.ssl_options and not node.ssl_options.context.check_hostname:
        raise ValueError(f"{which}'s ssl_options turn off the check of the broker's certificate")
    return node


def use_existing_hello(connection, refusal):
    """A queue "hello" made earlier with other settings: receive from it as it is. The line says
    how it differs; deleting it (rabbitmqctl delete_queue hello) gives the quorum queue."""
    if refusal.reply_code != 406:  # PRECONDITION_FAILED: it exists, declared otherwise
        raise refusal
    print(f"Note: using the existing queue 'hello' ({refusal.reply_text})", file=sys.stderr)
    return connection.channel()


def broker(node):
    """Where the node is, for messages: never the password."""
    return f"RabbitMQ at {node.host}:{node.port}"


def cause_of(error):
    """What lies under pika's wrapping of a failed connect. A wrong password or virtual host
    only if RabbitMQ said so: pika takes a connection lost at those steps for one too."""
    inner = (error.args or [error])[0] if type(error) is errors.AMQPConnectionError else error
    cause = getattr(inner, "exception", inner)
    if isinstance(cause, REFUSED) and "ConnectionClosedByBroker" not in str(cause):
        return ConnectionResetError("the connection was lost during the handshake")
    return cause


errors = pika.exceptions
LOST = (errors.StreamLostError, errors.AMQPHeartbeatTimeout, errors.ConnectionClosed)
CONNECT = pika.BlockingConnection.__init__.__code__  # where a node is found unusable
REFUSED = (errors.ProbableAuthenticationError, errors.ProbableAccessDeniedError)
# What went wrong and what to do, by the type of the error, {cause} (unwrapped from pika's
# connection errors): the first match is said, {where} naming the node it happened on.
FAILURES = {
    ssl.SSLCertVerificationError: "TLS: the certificate of {where} is not trusted, or is not "
    "valid for the host name '{node.host}' ({cause.verify_message}). Use the name it was "
    "made for in AMQP_URL; for a private CA, set SSL_CERT_FILE to its certificate (PEM).",
    ssl.SSLError: "TLS: {where} did not answer in TLS ({cause.reason}). Is that a plain AMQP "
    "port? Use amqp:// there, or the broker's TLS port (usually 5671) with amqps://.",
    errors.IncompatibleProtocolError: "{where} closed the connection at once, without "
    "speaking AMQP 0-9-1. If that port expects TLS, use amqps://; else check it.",
    socket.gaierror: "Cannot find the host '{node.host}': check the host name in AMQP_URL.",
    ConnectionRefusedError: "Cannot connect to {where}: connection refused. Start the broker "
    "(rabbitmq-server, or docker run -p 5672:5672 rabbitmq:4), or set AMQP_URL.",
    errors.ProbableAuthenticationError: "{where} refused user '{node.credentials.username}': "
    "check the user name and password in AMQP_URL. RabbitMQ lets guest in only from localhost.",
    errors.ProbableAccessDeniedError: "{where} has no virtual host '{node.virtual_host}', or "
    "the user may not use it: create it (rabbitmqctl add_vhost) or fix AMQP_URL.",
    AMQPConnectorException: "No answer from {where} ({cause!r}). Is the address right?",
    ValueError: "AMQP_URL is not a valid AMQP URL: {cause}",
    BaseException: "Cannot use {where} ({cause!r}); what was not printed stays queued.",
}


def explain(error):
    """One line for the learner: what went wrong and what to do. Never the password."""
    if isinstance(error, OSError) and not unusable(error):  # not from connecting: stdout
        return f"Cannot write to stdout ({error}): stopped; what was not printed stays queued."
    cause = cause_of(error)
    node = next((f.f_locals["node"] for f in called(error) if f.f_code.co_name == "main"), None)
    template = next(FAILURES[kind] for kind in FAILURES if isinstance(cause, kind))
    return template.format(where=node and broker(node), node=node, cause=cause)


if __name__ == "__main__":
    # Lines go out in batches, each flushed before its messages are acknowledged
    # (ack_once_printed); text the terminal cannot show is escaped rather than a crash.
    if sys.stdout is None:
        sys.exit("receive.py has no stdout to print messages to (it is closed): not started.")
    sys.stdout.reconfigure(line_buffering=False, write_through=False, errors="backslashreplace")
    # SIGTERM (docker stop) stops us as Ctrl+C does, and so does SIGINT even where the
    # shell that started us in the background told it to be ignored.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # os._exit: nothing more to flush, as a stdout that failed would only fail again.
    try:
        keep_receiving()
    except KeyboardInterrupt:  # Ctrl+C: a clean stop, exit status 0
        os._exit(0)
    except Exception as error:
        print(explain(error), file=sys.stderr, flush=True)
    os._exit(1)
