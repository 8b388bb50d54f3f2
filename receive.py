"""Print every message that arrives in the queue "hello": the consumer of RabbitMQ
tutorial one. Runs until Ctrl+C; reconnects by itself when the broker restarts.

The broker is localhost as guest unless AMQP_URL names another one, e.g.
AMQP_URL=amqp://user:password@host:5672/vhost
"""

import os
import re
import signal
import socket
import ssl
import sys
import time
from urllib.parse import urlsplit

import pika

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
# How many unacknowledged messages the broker may hand us at once: a bound, so a backlog
# stays in the queue, yet wide enough that the broker never waits for our acks.
PREFETCH = 5000


def main():
    connection = pika.BlockingConnection(connection_parameters())
    channel = connection.channel()

    # The same declaration as send.py: whichever script starts first creates the queue.
    try:
        channel.queue_declare(queue="hello", durable=True, arguments={"x-queue-type": "quorum"})
    except pika.exceptions.ChannelClosedByBroker as refusal:
        channel = use_existing_hello(connection, refusal)

    acks = PrintedAcks(channel)

    def callback(ch, method, properties, body):
        print(f" [x] Received {readable(body)!r}")
        acks.add(method.delivery_tag)  # the broker keeps the message until it is printed

    channel.basic_qos(prefetch_count=PREFETCH)
    channel.basic_consume(queue="hello", on_message_callback=callback)

    print(" [*] Waiting for messages. To exit press CTRL+C", flush=True)
    channel.start_consuming()


class PrintedAcks:
    """Acknowledges messages once their lines are out: after each burst of deliveries,
    one flush of stdout, then one ack for the whole burst (multiple=True). Flushing and
    acking every message on its own would be several times slower."""

    def __init__(self, channel):
        self.channel = channel
        self.last_tag = None

    def add(self, delivery_tag):
        if self.last_tag is None:
            # Runs as soon as pika has handed us the deliveries it holds now.
            self.channel.connection.call_later(0, self.flush_and_ack)
        self.last_tag = delivery_tag

    def flush_and_ack(self):
        sys.stdout.flush()
        self.channel.basic_ack(self.last_tag, multiple=True)
        self.last_tag = None


def keep_receiving():
    """Run main(), and run it again whenever the connection to the broker is lost."""
    errors = pika.exceptions
    reconnecting, delay = False, 0.5
    while True:
        try:
            main()
            print("Note: the queue 'hello' was deleted; declaring it again.", file=sys.stderr)
            continue
        except (
            errors.StreamLostError,  # the network or the broker went away
            errors.AMQPHeartbeatTimeout,  # ... silently
            errors.ConnectionClosedByBroker,  # the broker is shutting down, say
        ) as lost:
            reason = getattr(lost, "reply_text", None) or lost
            print(
                f"Lost the connection to {broker()} ({reason}); reconnecting. Ctrl+C stops.",
                file=sys.stderr,
            )
            reconnecting, delay = True, 0.5
        except errors.AMQPConnectionError as failed:
            refused = (errors.ProbableAuthenticationError, errors.ProbableAccessDeniedError)
            if not reconnecting or isinstance(failed, refused):
                raise
            delay = min(delay * 2, 4)  # the broker is still down: wait a little longer
        time.sleep(delay)


def connection_parameters():
    """pika's parameters for AMQP_URL, refusing what is not AMQP or would not be safe."""
    url = urlsplit(AMQP_URL)
    if url.scheme not in ("amqp", "amqps"):
        raise ValueError("it must start with amqp:// or amqps://")
    try:
        url.port  # raises on a non-number; pika's message would quote what stands there
    except ValueError:
        raise ValueError("no port number after the host; write / as %2F, @ as %40") from None
    parameters = pika.URLParameters(AMQP_URL)
    context = parameters.ssl_options and parameters.ssl_options.context
    if context and not (context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED):
        raise ValueError("its ssl_options turn off the check of the broker's certificate")
    return parameters


def use_existing_hello(connection, refusal):
    """A queue "hello" made earlier with other settings: receive from it as it is."""
    if refusal.reply_code != 406:  # PRECONDITION_FAILED: it exists, declared otherwise
        raise refusal
    channel = connection.channel()
    channel.queue_declare(queue="hello", passive=True)
    print(
        "Note: using the existing queue 'hello', made with other settings "
        f"({refusal.reply_text}); delete it for a durable quorum queue: "
        "rabbitmqctl delete_queue hello",
        file=sys.stderr,
    )
    return channel


def readable(body):
    """The body as text; a body that is not UTF-8 stays bytes, which print escaped."""
    try:
        return body.decode()
    except UnicodeDecodeError:
        return body


def broker():
    """Where AMQP_URL points, for messages: never its password."""
    url = urlsplit(AMQP_URL)
    return f"RabbitMQ at {url.hostname}:{url.port or (5671 if url.scheme == 'amqps' else 5672)}"


def socket_error(error):
    """The network error that stopped pika, under the wrappers it puts around it."""
    for inner in (error, *error.args):
        inner = getattr(inner, "exception", inner)
        if isinstance(inner, OSError):
            return inner
    return None


def explain(error):
    """One line for the learner: what went wrong and what to do. Never the password."""
    cause = socket_error(error)
    errors = pika.exceptions
    try:
        url = urlsplit(AMQP_URL)
        host, user, where = url.hostname, url.username or "guest", broker()
    except ValueError:
        host = None
    if isinstance(error, BrokenPipeError):
        return "Output closed (broken pipe): stopped; what was not printed stays in the queue."
    if isinstance(cause, ssl.SSLCertVerificationError):
        if "mismatch" in cause.verify_message:
            return (
                f"TLS: the certificate of {where} is not valid for the host name '{host}' "
                f"({cause.verify_message}). Use the name it was made for in AMQP_URL."
            )
        return (
            f"TLS: the certificate of {where} is not trusted ({cause.verify_message}). "
            "For a private CA, set SSL_CERT_FILE to its certificate file (PEM)."
        )
    if isinstance(cause, ssl.SSLError):
        return (
            f"TLS: {where} did not answer in TLS ({cause.reason}). Is that a plain AMQP "
            "port? Use amqp:// there, or the broker's TLS port (usually 5671) with amqps://."
        )
    if isinstance(error, ValueError) or not host:
        masked = re.sub(r"(://[^:/@]*:).*@", r"\1***@", AMQP_URL)  # up to the last @
        return (
            f"AMQP_URL is not a valid AMQP URL ({error}): {masked}. "
            "Expected amqp://user:password@host:5672/vhost"
        )
    if isinstance(error, errors.IncompatibleProtocolError):
        return (
            f"{where} closed the connection at once, without speaking AMQP 0-9-1. If that "
            "port expects TLS, use amqps://; else check the port in AMQP_URL."
        )
    if isinstance(cause, socket.gaierror):
        return f"Cannot find the host '{host}': check the host name in AMQP_URL."
    if isinstance(cause, ConnectionRefusedError):
        return (
            f"Cannot connect to {where}: connection refused. Start the broker "
            "(rabbitmq-server, or docker run -p 5672:5672 rabbitmq:4), or set AMQP_URL."
        )
    if type(error) is errors.AMQPConnectionError:  # raised while connecting
        return f"Cannot connect to {where} ({cause}): check the host and port in AMQP_URL."
    if isinstance(error, (errors.ProbableAuthenticationError, errors.AuthenticationError)):
        if user == "guest" and host not in ("localhost", "127.0.0.1", "::1"):
            return (
                f"{where} refused user 'guest': RabbitMQ lets guest in only from "
                "localhost. Create a user (rabbitmqctl add_user) and put it in AMQP_URL."
            )
        return f"{where} refused user '{user}': check the user name and password in AMQP_URL."
    if isinstance(error, errors.ProbableAccessDeniedError):
        vhost = pika.URLParameters(AMQP_URL).virtual_host
        return (
            f"{where} has no virtual host '{vhost}', or user '{user}' may not use it: "
            f"create it (rabbitmqctl add_vhost) or fix AMQP_URL."
        )
    if isinstance(error, errors.ChannelClosedByBroker):
        return f"{where} refused: {error.reply_text}."
    return f"receive.py failed: {type(error).__name__}: {error}"


if __name__ == "__main__":
    # Lines go out in batches, each flushed before its messages are acknowledged
    # (PrintedAcks); text the terminal cannot show is escaped rather than a crash.
    sys.stdout.reconfigure(line_buffering=False, write_through=False, errors="backslashreplace")
    # SIGTERM (docker stop) stops us as Ctrl+C does, and so does SIGINT even where the
    # shell that started us in the background told it to be ignored.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        keep_receiving()
    except KeyboardInterrupt:
        pass
    except Exception as error:
        sys.exit(explain(error))
