"""Send one message to the queue "hello": the producer of RabbitMQ tutorial one.

    python send.py                 sends 'Hello World!'
    python send.py some text       sends 'some text'

The broker is localhost as guest unless AMQP_URL names another one, e.g.
AMQP_URL=amqp://user:password@host:5672/vhost, or the nodes of a cluster separated by ";"
(send.py uses the first node that answers).
"""

import os
import re
import socket
import ssl
import sys
import threading

import pika

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
# A broker short of memory or disk blocks publishers: give up after this many seconds.
BLOCKED_TIMEOUT = 10
# Whatever send.py waits for, it gives up after this many seconds.
SEND_TIMEOUT = 25


def main():
    message = " ".join(sys.argv[1:]) or "Hello World!"

    connection = pika.BlockingConnection(node_parameters())
    channel = connection.channel()

    # Durable quorum queue: RabbitMQ 4.3 refuses the non-durable queue of the original text.
    try:
        channel.queue_declare(queue="hello", durable=True, arguments={"x-queue-type": "quorum"})
    except pika.exceptions.ChannelClosedByBroker as refusal:
        channel = use_existing_hello(connection, refusal)

    # With confirms, basic_publish returns only once the broker has stored the message,
    # and raises if it could not (mandatory=True: also when no queue took it).
    channel.confirm_delivery()
    channel.basic_publish(
        exchange="",
        routing_key="hello",
        body=message.encode(),
        properties=pika.BasicProperties(
            content_type="text/plain", delivery_mode=pika.DeliveryMode.Persistent
        ),
        mandatory=True,
    )
    print(f" [x] Sent {message!r}")
    connection.close()


# ---------------------------------------------------------------------------------------
# The tutorial ends here. What follows is optional reading: how AMQP_URL becomes the nodes
# to connect to, the note on an older "hello" queue, the bound on every wait, and one
# plain line for each way a run can fail.
# ---------------------------------------------------------------------------------------


def node_parameters():
    """pika's parameters for each node in AMQP_URL; pika connects to the first that answers."""
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
    node.blocked_connection_timeout = BLOCKED_TIMEOUT
    return node


def use_existing_hello(connection, refusal):
    """A queue "hello" made earlier with other settings: send to it as it is."""
    if refusal.reply_code != 406:  # PRECONDITION_FAILED: it exists, declared otherwise
        raise refusal
    print(
        f"Note: using the existing queue 'hello', made with other settings ({refusal.reply_text})"
        "; delete it for a durable quorum queue: rabbitmqctl delete_queue hello",
        file=sys.stderr,
    )
    return connection.channel()


def give_up_after(seconds):
    """End send.py with one line if it still waits after `seconds`: a quorum queue that has
    lost the majority of its nodes never confirms. A thread, as pika's own timers do not
    fire while basic_publish waits; os._exit, as the main thread is stuck in that wait."""

    def give_up():
        print(
            f"No answer from {broker(node_parameters())} in {seconds} s: the message was not "
            "confirmed. If that is a cluster, the queue may have lost its majority of nodes.",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()


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
    pika.exceptions.NackError: "{where} could not store the message (nack): it was not sent. "
    "The queue may be full or, in a cluster, be choosing a new leader. Try again.",
    pika.exceptions.ConnectionBlockedTimeout: "{where} blocks publishers (a memory or disk "
    "alarm); gave up after {timeout} s: the message was not confirmed. Free memory "
    "or disk on the broker (see rabbitmq-diagnostics alarms), then send again.",
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
            return line.format(
                where=where, node=node, user=user, cause=cause, timeout=BLOCKED_TIMEOUT
            )
    return f"The message was not confirmed ({cause!r}) by {where}. Try again."


if __name__ == "__main__":
    give_up_after(SEND_TIMEOUT)
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("Interrupted: the message was not sent.")
    except Exception as error:
        sys.exit(explain(error))
