"""Send one message to the queue "hello": the producer of RabbitMQ tutorial one.

    python send.py                 sends 'Hello World!'
    python send.py some text       sends 'some text'

The broker is localhost as guest unless AMQP_URL names another one, e.g.
AMQP_URL=amqp://user:password@host:5672/vhost, or the nodes of a cluster separated by ";"
(send.py uses the first node that answers).

Exit status: 0 sent (RabbitMQ confirmed it), 1 not sent (sending again is safe), 3 unknown
(published but not confirmed, or nacked: RabbitMQ may have stored it).
"""

import os
import re
import signal
import socket
import ssl
import sys
import threading
import types
import urllib.parse

import pika

AMQP_URL = os.environ.get("AMQP_URL", "").strip("; ") or "amqp://guest:guest@localhost:5672/%2F"
# Whatever send.py waits for, it gives up after this many seconds (not once a debugger has
# been seen: see bound_the_wait).
SEND_TIMEOUT = 25
SENT, NOT_SENT, UNKNOWN = 0, 1, 3


def main(node):
    message = " ".join(sys.argv[1:]) or "Hello World!"

    connection = pika.BlockingConnection(node)
    channel = connection.channel()

    # Durable quorum queue: RabbitMQ deprecates the non-durable queue of the original text.
    try:
        channel.queue_declare(queue="hello", durable=True, arguments={"x-queue-type": "quorum"})
    except pika.exceptions.ChannelClosedByBroker as refusal:
        channel = use_existing_hello(connection, refusal)

    # With confirms, basic_publish returns only once the broker has stored the message,
    # and raises if it refused it (mandatory=True: also when no queue took it).
    channel.confirm_delivery()
    reached(UNKNOWN)  # from here on RabbitMQ may have the message (see below)
    channel.basic_publish(
        exchange="",
        routing_key="hello",
        body=message.encode(errors="surrogateescape"),  # the bytes given, even if not UTF-8
        # Persistent (delivery_mode 2): an older durable classic "hello" keeps it on disk too.
        properties=pika.BasicProperties(content_type="text/plain", delivery_mode=2),
        mandatory=True,
    )
    reached(SENT)  # basic_publish returned: RabbitMQ confirmed it
    print(f" [x] Sent {message!r}")
    connection.close()


# ---------------------------------------------------------------------------------------
# The tutorial ends here. What follows is optional reading: trying the nodes of AMQP_URL
# in turn, the note on an older "hello" queue, the bound on every wait, and one true line
# about the message for each way a run can end.
# ---------------------------------------------------------------------------------------

# How far the message got, where main() is: NOT_SENT until basic_publish starts, UNKNOWN
# while it waits for the confirm, SENT once RabbitMQ has confirmed it. The node in use, and
# whether a debugger has been seen: one tracing send.py from the start (python -m pdb), or
# since (debugger_seen).
run = types.SimpleNamespace(fate=NOT_SENT, node=None, debugged=sys.gettrace() is not None)
# Taken by whichever thread ends the run, and never given back: the other thread stops at
# its next step, so that only one line is said, and nothing is published after a line that
# says it was not. main() takes it once RabbitMQ confirmed the message: it ends the run.
ENDING = threading.RLock()


def reached(fate):
    """Record how far the message got. It waits for ENDING: once the bound has taken it to
    end the run, main() takes no further step, so nothing is published after its line.
    Once the message is sent, main() keeps ENDING: it says " [x] Sent" and ends the run."""
    ENDING.acquire()
    run.fate = fate
    if fate != SENT:
        ENDING.release()


def send():
    """Run main() on each node of AMQP_URL in turn, going on to the next while the message
    has not left (RabbitMQ refused it, or never had it); then end with its fate. Even after
    a refused login: pika reports a connection lost while logging in the same way, and the
    nodes of a cluster share their users, so that a wrong password is refused by each."""
    threading.Timer(SEND_TIMEOUT, bound_the_wait).start()
    try:
        for node in (nodes := node_parameters()):
            run.node, run.fate = node, NOT_SENT  # nothing is in flight between nodes
            try:
                main(node)
                end(None)
            except Exception as error:
                if node is nodes[-1] or fate(error) != NOT_SENT:
                    raise
    except (Exception, KeyboardInterrupt) as error:  # KeyboardInterrupt: Ctrl+C, or a signal
        end(error)


def end(error):
    """Exit with the message's fate as the status, and one true line about it on stderr,
    unless it was sent and said so: then only if stdout failed or a signal came, which may
    have cut the " [x] Sent" line short (an error in closing the connection changes
    nothing)."""
    ENDING.acquire()  # never released: see ENDING
    run.fate = status = fate(error)
    try:  # whatever happens here (stderr may fail too), the run ends with its status
        if status != SENT or isinstance(error, (OSError, KeyboardInterrupt)):
            stdout = status == SENT and isinstance(error, OSError)  # once sent, only print can
            why = f"stdout failed ({error})" if stdout else reason(error)
            print(OUTCOMES[status].format(why), file=sys.stderr, flush=True)
    finally:
        os._exit(status)  # not sys.exit, which would try to flush a failed stdout once more


def fate(error):
    """What became of the message, main() having stopped at `error`: as far as it got, but
    not sent if RabbitMQ refused it (a closed channel: too large, say; a return: no queue),
    or it was no text. A nack says only that RabbitMQ did not take charge of the message: a
    queue whose process failed nacks what it may have written, so the fate stays unknown."""
    refused = (errors.ChannelClosedByBroker, errors.UnroutableError, UnicodeError)
    return NOT_SENT if run.fate == UNKNOWN and isinstance(error, refused) else run.fate


def bound_the_wait():
    """End send.py once it has waited SEND_TIMEOUT seconds, with a line on what became of the
    message, unless a debugger has been seen: it may pause send.py for as long as it likes
    (see debugger_seen; a debugger registered with sys.monitoring, on Python 3.12 and
    later, is asked for here). A thread, as pika's call_later timers do not fire while
    basic_publish waits. If main() holds ENDING (the message is sent, or main() ends the
    run) for another second, main() is ending the run: its status is final."""
    mon = getattr(sys, "monitoring", None)
    if run.debugged or mon and mon.get_tool(mon.DEBUGGER_ID) is not None:
        return
    if ENDING.acquire(timeout=1):
        end(NoAnswer(f"in {SEND_TIMEOUT} s"))
    if run.fate == SENT:  # whether its " [x] Sent" line is out or not, this much is sure
        print(OUTCOMES[SENT].format("send.py did not end in time"), file=sys.stderr, flush=True)
    os._exit(run.fate)


class NoAnswer(Exception):
    """send.py waited SEND_TIMEOUT seconds: not an OSError, which only print raises once the
    message was sent."""


def debugger_seen(event, args):
    """An audit hook: Python announces each breakpoint(), and each debugger that starts to
    trace (sys.settrace, as pdb and an IDE's do, in any thread): no bound from then on."""
    run.debugged = run.debugged or event in ("builtins.breakpoint", "sys.settrace")


def node_parameters():
    """pika's parameters for each node in AMQP_URL; a ";" in a password stays in it."""
    urls = [url.strip("; ") for url in re.split(r";(?=\s*amqps?://)", AMQP_URL)]
    return [checked_node(url, f"URL {n}") for n, url in enumerate(filter(None, urls), 1)]


class UnusableURL(Exception):
    """AMQP_URL, by its own text, cannot be used."""


def checked_node(url, which):
    """pika's parameters for one URL of AMQP_URL. A part that cannot be used is named, never
    shown: it may hold the password, or the password of a TLS key in ssl_options."""
    if not re.match("amqps?://", url, re.I):  # pika would take http:// too
        raise UnusableURL(f"{which} must begin with amqp:// or amqps://")
    # A raw / ? # [ ] in the password ends it early; a second raw @ is refused (RFC 3986
    # allows none in the password, though pika takes the last); bytes not UTF-8 cannot log in.
    if re.search("@.*@|[/?#\\[\\]].*@|[\udc80-\udcff]", url.split("//", 1)[1]):
        raise UnusableURL(f"in {which}, encode / ? # [ ] @ and what is not UTF-8 as %XX")
    try:  # an IPv6 address without its ], or a port that is not a number up to 65535
        parts = urllib.parse.urlsplit(url)
        parts.port
    except ValueError:
        raise UnusableURL(f"{which} needs a host name, and a port from 1 to 65535") from None
    named = {"user name or password": parts.netloc.rpartition("@")[0], "virtual host": parts.path}
    for part, text in {**named, "options": parts.query}.items():
        if re.search("%(?![0-9A-Fa-f]{2})", text):
            raise UnusableURL(f"in {which}, a lone % in the {part}: write % as %25")
    try:  # an option pika cannot use: its message may quote the value, so only its kind
        node = pika.URLParameters(url)
    except Exception as error:
        raise UnusableURL(f"in {which}, an option fails: {type(error).__name__}") from None
    # A client context that checks the host name also requires a valid certificate.
    if node.ssl_options and not node.ssl_options.context.check_hostname:
        raise UnusableURL(f"{which}'s ssl_options turn off the check of the broker's certificate")
    node.blocked_connection_timeout = 10  # a broker short of memory or disk blocks publishers
    return node


def use_existing_hello(connection, refusal):
    """A queue "hello" made earlier with other settings: send to it as it is. The line says
    how it differs; deleting it (rabbitmqctl delete_queue hello) gives the quorum queue."""
    if refusal.reply_code != 406:  # PRECONDITION_FAILED: it exists, declared otherwise
        raise refusal
    print(f"Note: using the existing queue 'hello' ({refusal.reply_text})", file=sys.stderr)
    return connection.channel()


errors = pika.exceptions
OUTCOMES = {
    SENT: "The message was sent (RabbitMQ confirmed it), but {}",
    NOT_SENT: "{}. The message was not sent.",
    UNKNOWN: "{}, while the message was being published: RabbitMQ may have stored it, and "
    "sending it again may deliver it twice.",
}
# What went wrong and what to do, by the type of the error, {cause} (unwrapped from pika's
# connection errors): the first match is said, {where} naming the node it happened on.
FAILURES = {
    UnusableURL: "AMQP_URL cannot be used: {cause}",
    ssl.SSLCertVerificationError: "TLS: {where}'s certificate is not trusted, or not for "
    "'{node.host}' ({cause.verify_message}): use its name; for a private CA, set SSL_CERT_FILE",
    ssl.SSLError: "TLS: {where} did not answer in TLS ({cause.reason}). Is that a plain AMQP "
    "port? Use amqp:// there, or the broker's TLS port (usually 5671) with amqps://",
    errors.IncompatibleProtocolError: "{where} does not speak AMQP 0-9-1: for TLS, use amqps://",
    socket.gaierror: "Cannot find the host '{node.host}': check the host name in AMQP_URL",
    ConnectionRefusedError: "Cannot connect to {where}: connection refused (README.md, step 1)",
    errors.ProbableAuthenticationError: "Cannot log in to {where} as '{node.credentials.username}'"
    " ({cause}): check the user and password in AMQP_URL (guest may log in only from localhost)",
    errors.ProbableAccessDeniedError: "Cannot open the virtual host '{node.virtual_host}' "
    "on {where} ({cause}): fix its name in AMQP_URL, or see to it on the broker",
    errors.NackError: "{where} nacked the message (a full queue, or a cluster without a leader)",
    errors.UnroutableError: "{where} had no queue 'hello' for the message (it was deleted)",
    errors.ConnectionBlockedTimeout: "{where} blocked publishers for 10 s: a memory or disk alarm",
    errors.ChannelClosedByBroker: "{where} refused: {cause.reply_text}",
    (NoAnswer, TimeoutError, socket.timeout): "No answer from {where} ({cause}): the network "
    "may be slow or cut or, in a cluster, the queue may have lost its majority of nodes",
    errors.AMQPConnectionError: "Lost the connection to {where} ({cause!r})",
    KeyboardInterrupt: "Interrupted (Ctrl+C, SIGTERM or SIGHUP)",
    UnicodeError: "The message is not valid text ({cause.reason})",
    BaseException: "Cannot use {where} ({cause!r})",
}


def reason(error):
    """What went wrong and what to do, on the node in use; never the password."""
    where = f"RabbitMQ at {run.node.host}:{run.node.port}" if run.node else "RabbitMQ"
    # pika wraps a failed TCP connect in AMQPConnectionError; the socket's error says more.
    inner = error.args[0] if type(error) is errors.AMQPConnectionError and error.args else None
    cause = getattr(inner, "exception", error)
    template = next(FAILURES[kind] for kind in FAILURES if isinstance(cause, kind))
    return template.format(where=where, node=run.node, cause=cause)


if __name__ == "__main__":
    # Line buffered: a stdout that fails does so in main()'s print. A closed stdout (None)
    # is replaced by stderr. Text the terminal cannot show is escaped, rather than a failure.
    # (IDLE's stdout shows each line at once, and has no reconfigure.)
    sys.stdout = sys.stdout or sys.stderr or open(os.devnull, "w")
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True, errors="backslashreplace")
    # SIGTERM (docker stop, systemd, kill) and SIGHUP (the terminal closed) end send.py as
    # Ctrl+C does, with a line on the message; not where either is to be ignored (nohup: SIGHUP).
    for name in {"SIGINT", "SIGTERM", "SIGHUP"} & set(dir(signal)):  # Windows has no SIGHUP
        if name == "SIGINT" or signal.getsignal(getattr(signal, name)) != signal.SIG_IGN:
            signal.signal(getattr(signal, name), signal.default_int_handler)
    sys.addaudithook(debugger_seen)
    send()
