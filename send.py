"""Send one message to the queue "hello": the producer of RabbitMQ tutorial one.

    python send.py                 sends 'Hello World!'
    python send.py some text       sends 'some text'

The broker is localhost as guest unless AMQP_URL names another one, e.g.
AMQP_URL=amqp://user:password@host:5672/vhost, or the nodes of a cluster separated by ";"
(send.py uses the first node that answers).

Exit status: 0 sent (RabbitMQ confirmed it), 1 not sent (sending again is safe), 3 unknown
(published but not confirmed: RabbitMQ may have stored it).
"""

import os
import re
import socket
import ssl
import sys
import threading
import traceback

import pika
from pika.adapters.utils.connection_workflow import AMQPConnectorStackTimeout

AMQP_URL = os.environ.get("AMQP_URL") or "amqp://guest:guest@localhost:5672/%2F"
# A broker short of memory or disk blocks publishers: give up after this many seconds.
BLOCKED_TIMEOUT = 10
# Whatever send.py waits for, it gives up after this many seconds.
SEND_TIMEOUT = 25
SENT, NOT_SENT, UNKNOWN = 0, 1, 3


def main(node):
    message = " ".join(sys.argv[1:]) or "Hello World!"

    connection = pika.BlockingConnection(node)
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
        body=message.encode(errors="surrogateescape"),  # the bytes given, even if not UTF-8
        properties=pika.BasicProperties(
            content_type="text/plain", delivery_mode=pika.DeliveryMode.Persistent
        ),
        mandatory=True,
    )
    print(f" [x] Sent {message!r}")
    connection.close()


# ---------------------------------------------------------------------------------------
# The tutorial ends here. What follows is optional reading: trying the nodes of AMQP_URL
# in turn, the note on an older "hello" queue, the bound on every wait, and one true line
# about the message for each way a run can end.
# ---------------------------------------------------------------------------------------


def send():
    """Run main() on each node of AMQP_URL in turn, going on to the next while the message
    has not left (unless RabbitMQ refused the user); then exit with the message's fate."""
    try:
        nodes = node_parameters()
        for node in nodes:
            try:
                main(node)
                finish(None, [])
            except Exception as error:
                if node is nodes[-1] or fate(called(error), error) != NOT_SENT or refused(error):
                    raise
    except (Exception, KeyboardInterrupt) as error:
        finish(error, called(error))


def called(error):
    """The calls an error came through, outermost first."""
    return [frame for frame, _ in traceback.walk_tb(error.__traceback__)]


def fate(frames, error):
    """What became of the message, from the call main() was in when it stopped (`frames`,
    outermost first): NOT_SENT before basic_publish, UNKNOWN in it unless RabbitMQ refused
    the message, SENT once it returned, as it does once RabbitMQ has confirmed it."""
    calls = [frame.f_code.co_name for frame in frames] + [None]
    # The call main() was in; None: in main() itself (its print, say, or Ctrl+C).
    call = calls[calls.index("main") + 1] if "main" in calls else "not yet in main()"
    if call == "basic_publish" or call is None and isinstance(error, KeyboardInterrupt):
        return NOT_SENT if isinstance(error, errors.AMQPChannelError) else UNKNOWN
    return SENT if call == "close" or call is None and isinstance(error, OSError) else NOT_SENT


def finish(error, frames):
    """Exit with the message's fate as the status, and one true line about it on stderr
    unless it was sent and its " [x] Sent" line was written."""
    status = fate(frames, error) if error else SENT
    if status != SENT or isinstance(error, OSError):  # OSError: print failed after the confirm
        why = reason(error, frames) if status != SENT else error
        print(OUTCOMES[status].format(why), file=sys.stderr, flush=True)
    os._exit(status)  # not sys.exit, which would try to flush a failed stdout once more


def give_up():
    """End send.py with its line once it has waited SEND_TIMEOUT seconds. It runs in a
    thread, as pika's own timers do not fire while basic_publish waits; where the main
    thread waits tells the message's fate."""
    calls = traceback.walk_stack(sys._current_frames()[threading.main_thread().ident])
    finish(TimeoutError(f"in {SEND_TIMEOUT} s"), [frame for frame, _ in calls][::-1])


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
    node.blocked_connection_timeout = BLOCKED_TIMEOUT
    return node


def use_existing_hello(connection, refusal):
    """A queue "hello" made earlier with other settings: send to it as it is. The line says
    how it differs; deleting it (rabbitmqctl delete_queue hello) gives the quorum queue."""
    if refusal.reply_code != 406:  # PRECONDITION_FAILED: it exists, declared otherwise
        raise refusal
    print(f"Note: using the existing queue 'hello' ({refusal.reply_text})", file=sys.stderr)
    return connection.channel()


def cause_of(error):
    """What lies under pika's wrapping of a failed connect. A wrong password or virtual host
    only if RabbitMQ said so: pika takes a connection lost at those steps for one too."""
    inner = (error.args or [error])[0] if type(error) is errors.AMQPConnectionError else error
    cause = getattr(inner, "exception", inner)
    if isinstance(cause, REFUSED) and "ConnectionClosedByBroker" not in str(cause):
        return ConnectionResetError("the connection was lost during the handshake")
    return cause


def refused(error):
    """Whether RabbitMQ refused the user or virtual host: every node would."""
    return isinstance(cause_of(error), REFUSED)


errors = pika.exceptions
REFUSED = (errors.ProbableAuthenticationError, errors.ProbableAccessDeniedError)
OUTCOMES = {
    SENT: "The message was sent (RabbitMQ confirmed it), but stdout failed ({})",
    NOT_SENT: "{}. The message was not sent.",
    UNKNOWN: "{}, after the message was published: RabbitMQ may have stored it, and sending "
    "it again may deliver it twice.",
}
# What went wrong and what to do, by the type of the error, {cause} (unwrapped from pika's
# connection errors): the first match is said, {where} naming the node it happened on.
FAILURES = {
    ssl.SSLCertVerificationError: "TLS: the certificate of {where} is not trusted, or is not "
    "valid for the host name '{node.host}' ({cause.verify_message}). Use the name it was "
    "made for in AMQP_URL; for a private CA, set SSL_CERT_FILE to its certificate (PEM)",
    ssl.SSLError: "TLS: {where} did not answer in TLS ({cause.reason}). Is that a plain AMQP "
    "port? Use amqp:// there, or the broker's TLS port (usually 5671) with amqps://",
    errors.IncompatibleProtocolError: "{where} closed the connection at once, without "
    "speaking AMQP 0-9-1. If that port expects TLS, use amqps://; else check it",
    socket.gaierror: "Cannot find the host '{node.host}': check the host name in AMQP_URL",
    ConnectionRefusedError: "Cannot connect to {where}: connection refused. Start the broker "
    "(rabbitmq-server, or docker run -p 5672:5672 rabbitmq:4), or set AMQP_URL",
    errors.ProbableAuthenticationError: "{where} refused user '{node.credentials.username}': "
    "check the user name and password in AMQP_URL. RabbitMQ lets guest in only from localhost",
    errors.ProbableAccessDeniedError: "{where} has no virtual host '{node.virtual_host}', or "
    "the user may not use it: create it (rabbitmqctl add_vhost) or fix AMQP_URL",
    errors.NackError: "{where} could not store the message (nack): the queue may be full or, "
    "in a cluster, be choosing a new leader or be cut off from the other nodes",
    errors.UnroutableError: "{where} had no queue 'hello' for the message (it was deleted)",
    errors.ConnectionBlockedTimeout: "{where} blocked publishers (a memory or disk alarm) for "
    "{node.blocked_connection_timeout} s: free memory or disk there (rabbitmq-diagnostics alarms)",
    errors.ChannelClosedByBroker: "{where} refused: {cause.reply_text}",
    (TimeoutError, AMQPConnectorStackTimeout): "No answer from {where} ({cause}): the network "
    "may be slow or cut or, in a cluster, the queue may have lost its majority of nodes",
    KeyboardInterrupt: "Interrupted (Ctrl+C)",
    UnicodeError: "The message is not valid text ({cause.reason})",
    ValueError: "AMQP_URL is not a valid AMQP URL: {cause}",
    BaseException: "Lost the connection to {where} ({cause!r})",
}


def reason(error, frames):
    """What went wrong and what to do, on the node main() was using; never the password."""
    node = next((f.f_locals["node"] for f in frames if f.f_code.co_name == "main"), None)
    where = f"RabbitMQ at {node.host}:{node.port}" if node else "RabbitMQ"
    cause = cause_of(error)
    template = next(FAILURES[kind] for kind in FAILURES if isinstance(cause, kind))
    return template.format(where=where, node=node, cause=cause)


if __name__ == "__main__":
    threading.Timer(SEND_TIMEOUT, give_up).start()
    # Line buffered: a stdout that fails does so in main()'s print, which fate() reads as
    # sent. A closed stdout (None) is replaced by stderr. Text the terminal cannot show is
    # escaped, rather than a failure.
    sys.stdout = sys.stdout or sys.stderr or open(os.devnull, "w")
    sys.stdout.reconfigure(line_buffering=True, errors="backslashreplace")
    send()
