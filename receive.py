"""Print every message that arrives in the queue "hello": the consumer of RabbitMQ
tutorial one. Runs until Ctrl+C; reconnects by itself when the broker restarts.

The broker is localhost as guest unless AMQP_URL names another one, e.g.
AMQP_URL=amqp://user:password@host:5672/vhost, or the nodes of a cluster separated by ";"
(when one node goes away, or can no longer serve the queue, receive.py goes on with the next).
"""

import contextlib
import io
import itertools
import os
import re
import signal
import socket
import ssl
import sys
import threading
import time
import types
import urllib.parse

import pika

AMQP_URL = os.environ.get("AMQP_URL", "").strip("; ") or "amqp://guest:guest@localhost:5672/%2F"
# How many unacknowledged messages the broker may hand us at once: a bound, so a backlog
# stays in the queue, yet wide enough that the broker seldom waits for our acks. It is also
# the most that a stop can give back to the queue (see let_go).
PREFETCH = 2000
# After this many seconds without an acknowledgement, ask the queue for a message: a node
# cut off from the rest of its cluster can no longer serve it, and says so (see
# ack_once_printed).
CHECK_EVERY = 10


def main(node):
    connection = pika.BlockingConnection(node)
    channel = connection.channel()

    # The same declaration as send.py: whichever script starts first creates the queue.
    try:
        channel.queue_declare(queue="hello", durable=True, arguments={"x-queue-type": "quorum"})
    except pika.exceptions.ChannelClosedByBroker as refusal:
        channel = use_existing_hello(connection, refusal)

    def callback(ch, method, properties, body):
        print(f" [x] Received {body.decode(errors='surrogateescape')!r}")
        ack(method.delivery_tag)  # the broker keeps the message until it is printed

    channel.basic_qos(prefetch_count=PREFETCH)
    # ack() acknowledges messages in bursts; while none comes, it checks the queue answers.
    ack = ack_once_printed(channel, node)

    # Said before consuming: a stdout that cannot take this line takes no message either.
    print(" [*] Waiting for messages. To exit press CTRL+C", flush=True)
    with warning_if_no_answer(node):
        channel.basic_consume(queue="hello", on_message_callback=callback)
    channel.start_consuming()


# ---------------------------------------------------------------------------------------
# The tutorial ends here. What follows is optional reading: acknowledging what was printed,
# watching that the queue still answers, giving back what was not printed, moving on to the
# next node when one cannot serve the queue, and one plain line for each way a run can end.
# ---------------------------------------------------------------------------------------

# The state of the run, where main() is: the channel it consumes on (None until it has
# one), whether "hello" is the queue declared here, whether a node ever took receive.py,
# whether it is stopping (it then prints nothing), and when it last said why it goes on.
# ack_once_printed adds the last message printed and not yet acknowledged, and when
# pika's loop last ran and receive.py last acknowledged (by time.monotonic()).
run = types.SimpleNamespace(channel=None, own_queue=True, served=False, stopping=False, said=-60.0)


def ack_once_printed(channel, node):
    """A function that acknowledges a message once its line is out: after each burst of
    deliveries, one flush of stdout, then one ack for the whole burst (multiple=True), as
    flushing and acknowledging every message on its own would be several times slower.

    A timer also runs every second. It notes that pika's loop runs (see explain). After
    CHECK_EVERY seconds without an ack, it asks the queue for a message (basic_get): a node
    cut off from the majority of its cluster cannot serve the queue, and answers with an
    error that ends the connection (541 INTERNAL_ERROR), so that keep_receiving goes on
    with the next node. Only on the quorum queue declared here: it hands a get a message
    only when no consumer has room for it in its prefetch, and receive.py, idle, has, so
    the get takes nothing from another consumer. Should a burst larger than the prefetch
    come just then, the message the get takes is printed at once, before the burst, and
    acknowledged alone. An older "hello" may be a stream, which has no get, or have a
    single active consumer, whose turn a get would take (a classic queue) or which refuses
    a get (a quorum queue, 405 RESOURCE_LOCKED)."""
    run.channel, run.served, run.printed, run.acked = channel, True, None, time.monotonic()

    def flush_and_ack():
        if channel.is_open and not run.stopping:
            sys.stdout.flush()  # OSError where stdout is full or a closed pipe: no ack then
            channel.basic_ack(run.printed, multiple=True)
            run.printed, run.acked = None, time.monotonic()

    def ack(delivery_tag):
        if run.printed is None:  # the first of a burst: ack once pika has handed us the rest
            channel.connection.call_later(0, flush_and_ack)
        run.printed = delivery_tag

    def every_second():
        if run.stopping or not channel.is_open:
            return
        run.ran = time.monotonic()
        if run.ran - run.acked >= CHECK_EVERY and run.own_queue:
            run.acked = run.ran
            with warning_if_no_answer(node, 70):  # RabbitMQ answers within net_ticktime + 5 s
                method, properties, body = channel.basic_get("hello")
            if method:  # not ack(): its multiple ack would take what is still to be printed
                print(f" [x] Received {body.decode(errors='surrogateescape')!r}", flush=True)
                channel.basic_ack(method.delivery_tag)
        channel.connection.call_later(1, every_second)

    every_second()  # pika's timers fire only in start_consuming(): the next one after it starts
    return ack


@contextlib.contextmanager
def warning_if_no_answer(node, seconds=20):
    """Say so on stderr if the block still waits after `seconds`: a quorum queue that has
    lost the majority of its nodes may not answer until they are back, or for minutes before
    it gives up with an error; either way receive.py then goes on. A thread, as pika's timers
    (call_later) do not fire while a channel waits. A wait for RabbitMQ is not receive.py
    being held up (run.ran)."""
    line = f"No answer from the queue 'hello' at {node.host}:{node.port} in {seconds} s; waiting."
    timer = threading.Timer(seconds, print, [line], {"file": sys.stderr})
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        run.ran = time.monotonic()


def let_go():
    """Close the connection main() left, first giving back to the queue what receive.py took
    and did not acknowledge: one nack for all, with requeue. RabbitMQ 4.3 does not count it
    toward a quorum queue's delivery limit; it does count a reject, and each message that
    a closing connection takes back. When receive.py stops (run.stopping), it first cancels
    its consumer, so that nothing given back comes straight back to it. Before that, pika
    hands what has arrived to the callback, whose lines now stay in stdout's buffer unwritten:
    what pika still holds when cancelling, it rejects (as it does what comes after the
    cancel). It still holds the rest of a burst when a signal stopped the callback in the
    middle of one: pika hands that over only once more comes for the channel. On any error, the
    closing connection gives back the rest."""
    channel, run.channel, run.own_queue = run.channel, None, True
    with contextlib.suppress(Exception):
        if run.stopping and channel.consumer_tags:  # set by __main__
            channel.connection.sleep(0.25)  # pika hands the callback what has arrived
            channel.basic_cancel(channel.consumer_tags[0])
        if channel.is_open:
            channel.basic_nack(0, multiple=True, requeue=True)  # 0: each one not acknowledged
        channel.connection.close()


def keep_receiving():
    """Run main() on the nodes of AMQP_URL in turn for as long as receive.py runs: when one
    cannot be used or fails it, go on with the next, round the list. The longer no node
    has taken receive.py, the longer it waits before the next: a third of that time, from
    0.3 s (the first retry, so that a restarted broker is soon followed) up to 30 s (a
    refused login does not flood the broker's log). Return the line to stop with: for an
    error that every node would give (see explain), or when no node could be used in the
    first round. Once receive.py has been consuming, say why it goes on."""
    nodes, failing_since = node_parameters(), time.monotonic()
    for attempt, node in enumerate(itertools.cycle(nodes), 1):
        try:
            main(node)  # it returns when RabbitMQ cancelled the consumer: that is what it means
            say("Note: RabbitMQ cancelled the consumer ('hello' deleted?); declaring it again.")
        except Exception as error:
            line, final = explain(error, node)
            if final or not run.served and attempt == len(nodes):
                return line
            if run.served:
                say(f"{line} Trying again.")
        failing_since = time.monotonic() if run.channel else failing_since  # a node took it
        let_go()
        # Not at once: a queue not found (404) may be one that RabbitMQ 4.3 is deleting in two
        # steps, between which a declare finds the old queue, the consume after it none.
        time.sleep(min(30, max(0.3, (time.monotonic() - failing_since) / 3)))


def say(line, every=60):
    """Print a line about going on with another node, unless one was said in the last
    `every` seconds: a cluster that cannot serve the queue for an hour gets a line a
    minute, not a line for every node tried."""
    if time.monotonic() - run.said >= every:
        print(line, file=sys.stderr, flush=True)
        run.said = time.monotonic()


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
    return node


def use_existing_hello(connection, refusal):
    """A queue "hello" made earlier with other settings: receive from it as it is, without
    the watch of ack_once_printed. The line says how it differs, and what to do."""
    if refusal.reply_code != 406:  # PRECONDITION_FAILED: it exists, declared otherwise
        raise refusal
    run.own_queue = False
    note = f"Note: using the existing queue 'hello' ({refusal.reply_text})"
    print(f"{note}; if it is a stream, only what is sent from now on is printed", file=sys.stderr)
    return connection.channel()


errors = pika.exceptions
# What went wrong and what to do, by the type of the error, {cause} (unwrapped from pika's
# connection errors): the first match is said, {where} naming the node it happened on.
FAILURES = {
    UnusableURL: "AMQP_URL cannot be used: {cause}.",
    ssl.SSLCertVerificationError: "TLS: {where}'s certificate is not trusted, or not for "
    "'{node.host}' ({cause.verify_message}): use its name; for a private CA, set SSL_CERT_FILE.",
    ssl.SSLError: "TLS: {where} did not answer in TLS ({cause.reason}). Is that a plain AMQP "
    "port? Use amqp:// there, or the broker's TLS port (usually 5671) with amqps://.",
    errors.IncompatibleProtocolError: "{where} does not speak AMQP 0-9-1: for TLS, use amqps://.",
    socket.gaierror: "Cannot find the host '{node.host}': check the host name in AMQP_URL.",
    ConnectionRefusedError: "Cannot connect to {where}: connection refused (README.md, step 1).",
    errors.ProbableAuthenticationError: "Cannot log in to {where} as '{node.credentials.username}'"
    " ({cause}): check the user and password in AMQP_URL (guest may log in only from localhost).",
    errors.ProbableAccessDeniedError: "Cannot open the virtual host '{node.virtual_host}' "
    "on {where} ({cause}): fix its name in AMQP_URL, or see to it on the broker.",
    errors.AMQPConnectionError: "Lost the connection to {where} ({cause}).",
    BaseException: "Cannot use {where} ({cause!r}); what was not printed stays queued.",
}


def explain(err, node):
    """One line for the learner: what went wrong and what to do, never the password; and
    whether receive.py stops there, whatever node it tries: stdout failed, or RabbitMQ
    refused what receive.py asked of the queue, but for a queue not found (404). Any other
    error tries the next node: a refused virtual host (530) may be down on this node only,
    and pika reports a connection lost while logging in as it does a refused login (403);
    when every node refuses the login, as a wrong password is by each, no node was used in
    the first round, and that stops it too. (The timers touch no closed channel, so that a
    refusal comes as ChannelClosedByBroker.) A connection dropped while receive.py itself
    was held up says so: its stdout not read, or the process paused, it sent no heartbeat."""
    if isinstance(err, OSError) and run.channel:  # from then on pika's errors are its own
        return f"Cannot write to stdout ({err}): stopped; what was not printed stays queued.", True
    # pika wraps a failed TCP connect in AMQPConnectionError; the socket's error says more.
    inner = err.args[0] if type(err) is errors.AMQPConnectionError and err.args else None
    cause = getattr(inner, "exception", err)
    template = next(FAILURES[kind] for kind in FAILURES if isinstance(cause, kind))
    said = template.format(where=f"RabbitMQ at {node.host}:{node.port}", node=node, cause=cause)
    held_up = time.monotonic() - run.ran if run.channel else 0  # see ack_once_printed
    if isinstance(err, (errors.StreamLostError, errors.AMQPHeartbeatTimeout)) and held_up > 5:
        why = f"receive.py sent no heartbeat for {held_up:.0f} s (its output not read, or paused)"
        return f"{said[:-1]} after {why}: what it printed since its last ack comes again.", False
    return said, isinstance(err, errors.ChannelClosedByBroker) and err.reply_code != 404


if __name__ == "__main__":
    # The lines of a burst wait in memory, and go out at its end, flushed before they are
    # acknowledged (ack_once_printed): a stdout that blocks or fails does so between bursts,
    # not while pika hands one over (see let_go), unless a burst's lines pass 64 MiB. Text
    # the terminal cannot show is escaped rather than a crash.
    if sys.stdout is None:
        sys.exit("receive.py has no stdout to print messages to (it is closed): not started.")
    if hasattr(sys.stdout, "buffer"):  # IDLE's stdout has none, and shows lines at once
        out = io.BufferedWriter(getattr(sys.stdout.buffer, "raw", sys.stdout.buffer), 2**26)
        sys.stdout = io.TextIOWrapper(out, sys.stdout.encoding, "backslashreplace")
    # SIGTERM (docker stop, kill) and SIGHUP (the terminal closed) stop it as Ctrl+C does;
    # SIGINT even where the shell that started it in the background told it to be ignored,
    # the other two not where they were to be ignored (as nohup does SIGHUP).
    for name in {"SIGINT", "SIGTERM", "SIGHUP"} & set(dir(signal)):  # Windows has no SIGHUP
        if name == "SIGINT" or signal.getsignal(getattr(signal, name)) != signal.SIG_IGN:
            signal.signal(getattr(signal, name), signal.default_int_handler)
    try:
        line, status = keep_receiving(), 1
    except KeyboardInterrupt:  # Ctrl+C, or a signal above: a clean stop, exit status 0
        line, status = "Stopped; what was not printed stays queued.", 0
    except UnusableURL as error:
        line, status = FAILURES[UnusableURL].format(cause=error), 1
    threading.Timer(5, os._exit, [status]).start()  # a bound on saying and giving back
    with contextlib.suppress(BaseException):  # stderr may fail too, or a second Ctrl+C come
        print(line, file=sys.stderr, flush=True)
    with contextlib.suppress(BaseException):
        run.stopping = True
        let_go()
    os._exit(status)  # nothing more to flush: a stdout that failed would only fail again
