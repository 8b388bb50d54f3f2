"""Send one message to the queue "hello": the producer of RabbitMQ tutorial one.

    python send.py                 sends 'Hello World!'
    python send.py some text       sends 'some text'

The broker is localhost as guest unless AMQP_URL names another one, e.g.
AMQP_URL=amqp://user:password@host:5672/vhost
"""

import os
import re
import socket
import ssl
import sys
from urllib.parse import urlsplit

import pika

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
# A broker short of memory or disk blocks publishers: give up after this many seconds.
BLOCKED_TIMEOUT = 10


def main():
    message = " ".join(sys.argv[1:]) or "Hello World!"

    connection = pika.BlockingConnection(connection_parameters())
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
    parameters.blocked_connection_timeout = BLOCKED_TIMEOUT
    return parameters


def use_existing_hello(connection, refusal):
    """A queue "hello" made earlier with other settings: send to it as it is."""
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
    if isinstance(error, errors.ConnectionBlockedTimeout):
        return (
            f"{where} blocks publishers (a memory or disk alarm); gave up after "
            f"{BLOCKED_TIMEOUT} s: the message was not confirmed. Free memory or disk on "
            "the broker (see rabbitmq-diagnostics alarms), then send again."
        )
    if isinstance(error, errors.NackError):
        return f"{where} could not store the message (nack): it was not sent. Try again."
    if isinstance(error, errors.UnroutableError):
        return f"{where} returned the message: no queue 'hello' took it. Try again."
    if isinstance(error, errors.ChannelClosedByBroker):
        if "larger than" in error.reply_text:
            return f"{where} refused the message as too large ({error.reply_text})."
        return f"{where} refused: {error.reply_text}."
    if isinstance(error, (errors.AMQPConnectionError, OSError)):
        return (
            f"Lost the connection to {where} before it confirmed the message "
            f"({error}): it may not have been stored. Try again."
        )
    return f"send.py failed: {type(error).__name__}: {error}"


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("Interrupted: the message was not sent.")
    except Exception as error:
        sys.exit(explain(error))
