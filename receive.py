"""Print every message that arrives in the queue "hello": the consumer of RabbitMQ
tutorial one. Runs until Ctrl+C; reconnects by itself when the broker restarts.

The broker is localhost as guest unless AMQP_URL names another one, e.g.
AMQP_URL=amqp://user:password@host:5672/vhost, or the nodes of a cluster separated by ";"
(when one node goes away, or can no longer serve the queue, receive.py goes on with the next).
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
import urllib.parse

import pika

AMQP_URL = os.environ.get("AMQP_URL") or "amqp://guest:guest@localhost:5672/%2F"
# How many unacknowledged messages the broker may hand us at once: a bound, so a backlog
# stays in the queue, yet wide enough that the broker never waits for our acks.
PREFETCH = 5000
# While no message comes for this many seconds, ask the queue for one: a node cut off from
# the rest of its cluster can no longer serve it, and says so (see ack_once_printed).
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

    # ack() acknowledges messages in bursts; while none comes, it checks the queue answers.
    ack = ack_once_printed(channel, callback, node)

    channel.basic_qos(prefetch_count=PREFETCH)
    with warning_if_no_answer(node):
        channel.basic_consume(queue="hello", on_message_callback=callback)

    print(" [*] Waiting for messages. To exit press CTRL+C", flush=True)
    channel.start_consuming()


# ---------------------------------------------------------------------------------------
# The tutorial ends here. What follows is optional reading: acknowledging what was printed,
# watching that the queue still answers, moving on to the next node when one cannot serve
# it, how AMQP_URL becomes those nodes, and one plain line for each way a run can fail.
# ---------------------------------------------------------------------------------------


def ack_once_printed(channel, callback, node):
    """A function that acknowledges a message once its line is out: after each burst of
    deliveries, one flush of stdout, then one ack for the whole burst (multiple=True), as
    flushing and acking every message on its own would be several times slower.

    It also keeps watch. After CHECK_EVERY seconds with no delivery, it asks the queue for a
    message (basic_get). A node cut off from the majority of its cluster cannot serve the
    queue, and answers with an error that ends the connection (541 INTERNAL_ERROR: once it
    notices that the others are gone, or, where it led the queue, after RabbitMQ's own 30
    s); keep_receiving then goes on with the next node. A message the queue hands over this
    way is printed in its turn: a queue does so only while the consumer's prefetch is full,
    so PREFETCH deliveries are on their way ahead of it, and it comes after them (or, if
    fewer come, at the first check that finds that none came).
    When RabbitMQ cancels the consumer (the queue was deleted or became unavailable), it
    closes the connection, which ends start_consuming()."""
    connected[0] = True
    printed = []  # delivery tags printed since the last ack
    count = [0, 0]  # deliveries printed: in all, and as the last check found
    held = []  # a message a check got, after which delivery it comes: [count, method, ...]

    def flush_and_ack():
        sys.stdout.flush()  # OSError where stdout is full or a closed pipe: no ack then
        # While a message is held, one ack each: a multiple ack would take the held one too.
        for tag in printed if held else printed[-1:]:
            channel.basic_ack(tag, multiple=not held)
        printed.clear()

    def ack(delivery_tag):
        if not printed:  # the first of a burst: ack once pika has handed us the rest
            channel.connection.call_later(0, flush_and_ack)
        printed.append(delivery_tag)
        count[0] += 1
        if held and count[0] == held[0]:  # the last delivery due ahead of the held message
            callback(channel, *held[1:])  # its own delivery counts one more: no second time
            held.clear()

    def check_while_idle():
        if held and count[0] == count[1]:  # nothing came since the last check: none is due
            method, properties, body = held[1:]
            held.clear()
            callback(channel, method, properties, body)
        elif not printed and count[0] == count[1]:  # idle: nothing came since the last check
            with warning_if_no_answer(node, 40):  # RabbitMQ gives up on a get after 30 s
                method, properties, body = channel.basic_get("hello")
            if method:
                held[:] = [count[0] + PREFETCH, method, properties, body]
        count[1] = count[0]
        channel.connection.call_later(CHECK_EVERY, check_while_idle)

    # pika's timers fire only in start_consuming(), so the first check comes after it starts.
    channel.connection.call_later(CHECK_EVERY, check_while_idle)
    channel.add_on_cancel_callback(lambda cancel: channel.connection.close())
    return ack


@contextlib.contextmanager
def warning_if_no_answer(node, seconds=20):
    """Say so on stderr if the block still waits after `seconds`: a quorum queue that has
    lost the majority of its nodes answers nothing until they are back, and then receive.py
    goes on. A thread, as pika's own timers do not fire while a BlockingChannel waits."""
    line = f"No answer from the queue 'hello' at {node.host}:{node.port} in {seconds} s; waiting."
    timer = threading.Timer(seconds, print, [line], {"file": sys.stderr})
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def keep_receiving():
    """Run main() on the nodes of AMQP_URL in turn for as long as receive.py runs: when one
    cannot be used or fails it, go on with the next, round the list. Return the line to
    stop with: for an error that every node would give (stops()), or when no node could be
    used in the first round. Once receive.py has been consuming, say why it goes on."""
    nodes, served = node_parameters(), False
    for attempt, node in enumerate(itertools.cycle(nodes), 1):
        served, connected[0] = served or connected[0], False
        try:
            main(node)  # it returns when RabbitMQ cancelled the consumer: that is what it means
            say("Note: the queue 'hello' was deleted or became unavailable; declaring it again.")
        except Exception as error:
            if stops(error) or not (served or connected[0]) and attempt == len(nodes):
                return explain(error, node)
            if served or connected[0]:
                say(f"{explain(error, node)} Trying again.")
            # Not yet, or a queue not found (404): RabbitMQ 4.3 deletes a queue in two steps,
            # and between them a declare finds the old queue, the consume after it none.
            time.sleep(0.3)


def stops(error):
    """Whether receive.py stops at `error`, whatever node it tries: stdout failed, or RabbitMQ
    refused what receive.py asked of the queue, but for a queue not found (404). Any other
    error tries the next node: a refused virtual host (530) may be down on this node only,
    and pika reports a connection lost while logging in as it does a refused login (403);
    when every node refuses the login, as a wrong password is by each, no node was used in
    the first round, and that stops it too."""
    if isinstance(error, errors.ChannelClosedByBroker):
        return error.reply_code != 404
    return isinstance(error, OSError) and connected[0]  # stdout's: see `connected`


last_said = [-60.0]  # when say() last printed, by time.monotonic()


def say(line, every=60):
    """Print a line about going on with another node, unless one was said in the last
    `every` seconds: a cluster that cannot serve the queue for an hour gets a line a
    minute, not a line for every node tried."""
    if time.monotonic() - last_said[0] >= every:
        print(line, file=sys.stderr, flush=True)
        last_said[0] = time.monotonic()


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
    # A raw / ? # [ ] @ in the password ends it early; bytes that are not UTF-8 cannot log in.
    if re.search("@.*@|[/?#\\[\\]].*@|[\udc80-\udcff]", url.split("//", 1)[1]):
        raise UnusableURL(f"in {which}, encode / ? # [ ] @ and what is not UTF-8 as %XX")
    try:  # an IPv6 address without its ], or a port that is not a number up to 65535
        parts = urllib.parse.urlsplit(url)
        parts.port
    except ValueError:
        raise UnusableURL(f"{which} needs a host name, and a port from 1 to 65535") from None
    userinfo, _, host = parts.netloc.rpartition("@")
    named = {"user name or password": userinfo, "host": host, "virtual host": parts.path}
    for part, text in {**named, "options": parts.query}.items():
        if re.search("%(?![0-9A-Fa-f]{2})", text):
            raise UnusableURL(f"in {which}, a lone % in the {part}: write % as %25")
    for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        try:  # each option alone: pika's message may quote its value
            pika.URLParameters(f"{parts.scheme}://x/?{urllib.parse.urlencode({name: value})}")
        except Exception as error:
            raise UnusableURL(f"in {which}, option {name} fails: {type(error).__name__}") from None
    node = pika.URLParameters(url)
    # A client context that checks the host name also requires a valid certificate.
    if node.ssl_options and not node.ssl_options.context.check_hostname:
        raise UnusableURL(f"{which}'s ssl_options turn off the check of the broker's certificate")
    return node


def use_existing_hello(connection, refusal):
    """A queue "hello" made earlier with other settings: receive from it as it is. The line says
    how it differs; deleting it (rabbitmqctl delete_queue hello) gives the quorum queue."""
    if refusal.reply_code != 406:  # PRECONDITION_FAILED: it exists, declared otherwise
        raise refusal
    print(f"Note: using the existing queue 'hello' ({refusal.reply_text})", file=sys.stderr)
    return connection.channel()


errors = pika.exceptions
# Whether main() has its connection yet (ack_once_printed is called once it has). From then
# on, pika reports a network that fails as its own error (StreamLostError): an OSError can
# only be stdout's.
connected = [False]
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
    ConnectionRefusedError: "Cannot connect to {where}: connection refused. Start the broker "
    "(rabbitmq-server, or docker run -p 5672:5672 rabbitmq:4), or set AMQP_URL.",
    errors.ProbableAuthenticationError: "{where} refused user '{node.credentials.username}' "
    "({cause}): check the user and password in AMQP_URL (guest may log in only from localhost).",
    errors.ProbableAccessDeniedError: "{where} did not open the virtual host "
    "'{node.virtual_host}' ({cause}): fix its name in AMQP_URL, or see to it on the broker.",
    errors.AMQPConnectionError: "Lost the connection to {where} ({cause}).",
    BaseException: "Cannot use {where} ({cause!r}); what was not printed stays queued.",
}


def explain(error, node):
    """One line for the learner: what went wrong and what to do. Never the password."""
    if isinstance(error, OSError) and connected[0]:  # stdout's: see `connected`
        return f"Cannot write to stdout ({error}): stopped; what was not printed stays queued."
    # pika wraps a failed TCP connect in AMQPConnectionError; the socket's error says more.
    inner = error.args[0] if type(error) is errors.AMQPConnectionError and error.args else None
    cause = getattr(inner, "exception", error)
    template = next(FAILURES[kind] for kind in FAILURES if isinstance(cause, kind))
    return template.format(where=f"RabbitMQ at {node.host}:{node.port}", node=node, cause=cause)


if __name__ == "__main__":
    # Lines go out in batches, each flushed before its messages are acknowledged
    # (ack_once_printed); text the terminal cannot show is escaped rather than a crash.
    if sys.stdout is None:
        sys.exit("receive.py has no stdout to print messages to (it is closed): not started.")
    if hasattr(sys.stdout, "reconfigure"):  # IDLE's stdout has none, and shows lines at once
        sys.stdout.reconfigure(
            line_buffering=False, write_through=False, errors="backslashreplace"
        )
    # SIGTERM (docker stop) stops us as Ctrl+C does, and so does SIGINT even where the
    # shell that started us in the background told it to be ignored.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # os._exit: nothing more to flush, as a stdout that failed would only fail again.
    try:
        print(keep_receiving(), file=sys.stderr, flush=True)
    except KeyboardInterrupt:  # Ctrl+C: a clean stop, exit status 0
        os._exit(0)
    except UnusableURL as error:
        print(FAILURES[UnusableURL].format(cause=error), file=sys.stderr, flush=True)
    os._exit(1)
