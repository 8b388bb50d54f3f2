"""Every promise at its edges: a fault at every frame, any password, any node, any stdout.

send.py ends in one of three ways, each with its exit status: sent (0: RabbitMQ confirmed
the message), not sent (1: it is not on the broker) or unknown (3: published, no confirm,
so it may be there). The fault tests break a script's connection at each frame, through
tools/fault_proxy.py, and compare what the script said with what the queue holds.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PROJECT, ScriptRunner, preload, received
from fault_proxy import FaultProxy
from private_broker import free_port

# Short heartbeats and handshake timeouts: a connection gone silent is noticed in seconds.
QUICK = "?heartbeat=1&socket_timeout=2&stack_timeout=3"
NOT_SENT = ". The message was not sent."
UNKNOWN = (
    ", after the message was published: RabbitMQ may have stored it, and sending it again "
    "may deliver it twice."
)
WAITING = " [*] Waiting for messages. To exit press CTRL+C"


def message_count(channel):
    return channel.queue_declare("hello", passive=True).method.message_count


def fresh_hello(channel):
    channel.queue_declare("hello", durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_purge("hello")


def send_fate(done, channel):
    """What send.py said of its message, checked against the queue: "sent", "not sent" or
    "unknown". One line and no traceback whatever happened; "sent" only with the message
    on the queue, "not sent" only without it."""
    assert "Traceback" not in done.stderr
    time.sleep(0.3)  # a publish that did reach the broker is on the queue by now
    stored = message_count(channel)
    if done.returncode == 0:
        assert (done.stdout, done.stderr, stored) == (" [x] Sent 'm'\n", "", 1)
        return "sent"
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    if done.returncode == 1:
        assert line.endswith(NOT_SENT)
        assert stored == 0, f"said not sent, yet the message is on the queue: {line}"
        return "not sent"
    assert done.returncode == 3, done.stderr
    assert line.endswith(UNKNOWN)
    return "unknown"


def send_through_faults(broker, channel, action, frames):
    """Run send.py once for each frame number in `frames`, the proxy acting at it."""
    table = []
    for at in frames:
        fresh_hello(channel)
        proxy = FaultProxy(broker.port, at, action)
        try:
            done = ScriptRunner(proxy.url(QUICK)).send("m", timeout=60)
        finally:
            proxy.stop()
        name = f"{proxy.seen[at][1]} {proxy.seen[at][2]}" if at < len(proxy.seen) else "-"
        table.append((at, name, send_fate(done, channel)))
    print(f"\n{action}:", *(f"{at:3} {name:22} {fate}" for at, name, fate in table), sep="\n")
    return table


@pytest.fixture
def send_frames(broker, amqp):
    """The frames of one send.py run that nothing disturbs."""
    fresh_hello(amqp)
    proxy = FaultProxy(broker.port)
    done = ScriptRunner(proxy.url(QUICK)).send("m")
    proxy.stop()
    assert done.returncode == 0
    return [name for _, _, name in proxy.seen]


@pytest.mark.parametrize("action", ["reset", "close"])
def test_send_tells_the_truth_whichever_frame_breaks_the_connection(
    broker, amqp, send_frames, action
):
    table = send_through_faults(broker, amqp, action, range(len(send_frames)))

    fates = [fate for _, _, fate in table]
    published = send_frames.index("Basic.Publish")
    assert set(fates[:published]) == {"not sent"}
    assert set(fates[published : send_frames.index("Basic.Ack") + 1]) == {"unknown"}
    assert set(fates[send_frames.index("Basic.Ack") + 1 :]) == {"sent"}


def test_send_tells_the_truth_when_the_connection_goes_silent(broker, amqp, send_frames):
    # Sampled: each run waits for a handshake timeout or a heartbeat (up to 13 s).
    steps = ["protocol header", "Connection.TuneOk", "Queue.Declare", "body", "Basic.Ack"]
    steps.append("Connection.Close")
    frames = [send_frames.index(step) for step in steps]

    table = send_through_faults(broker, amqp, "silent", frames)

    assert [fate for _, _, fate in table] == ["not sent"] * 3 + ["unknown"] * 2 + ["sent"]


@pytest.mark.timeout(600)
def test_receiver_prints_every_message_whichever_frame_breaks_the_connection(broker, amqp):
    total = 2000
    # Across the handshake, the consume, the deliveries and the acks; some twice, as each
    # action in turn.
    frames = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 30, 301, 1000]
    frames += [2500, 4000, 5999]
    actions = ["reset", "close"] * len(frames)
    runs = list(zip(frames, actions)) + [(14, "silent"), (3000, "silent")]
    for at, action in runs:
        fresh_hello(amqp)
        preload(amqp, total)
        proxy = FaultProxy(broker.port, at, action)
        runner = ScriptRunner(f"{proxy.url(QUICK)};{broker.url}")
        receiver = runner.start_receiver()
        try:
            expected = {f" [x] Received 'message {n}'" for n in range(total)}
            missing = set(expected)
            while missing:
                lines = receiver.wait_for_lines(len(receiver.lines) + 1, timeout=30)
                missing.discard(lines[-1])
            receiver.signal(signal.SIGINT)
            assert receiver.finish() == 0, (at, action, receiver.stderr)
        finally:
            runner.stop_all()
            proxy.stop()
        assert "Traceback" not in receiver.stderr
        assert len(receiver.stderr_lines) <= 1, (at, action, receiver.stderr)
        assert received(receiver.lines) == expected


# --- passwords, by property ------------------------------------------------------------

DOWN_PORT = free_port()  # where nothing listens
MARK = "Qz7"  # begins and ends every generated password: a short one cannot match by chance
PASSWORDS = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12
).map(lambda text: f"{MARK}{text}{MARK}")


@st.composite
def urls_with(draw, password, port):
    """An AMQP_URL holding `password`, raw or percent-encoded, each part right or wrong."""
    scheme = draw(st.sampled_from(["amqp://", "amqps://", "http://", "", "amqp:/"]))
    written = draw(st.sampled_from([password, urllib.parse.quote(password, safe="")]))
    host = draw(st.sampled_from(["127.0.0.1", "", "no-such-host.invalid", "[::1"]))
    port_part = draw(st.sampled_from([f":{port}", ":notaport", ":0", ":70000", ""]))
    rest = draw(st.sampled_from(["/%2F", "/", "", "/%zz", "?heartbeat=abc", "/%2F?x=1"]))
    url = f"{scheme}guest:{written}@{host}{port_part}{rest}"
    down = f"amqp://guest:guest@127.0.0.1:{DOWN_PORT}/%2F"
    return draw(st.sampled_from([url, f"{down};{url}", f"{url};", f"{url};{down}"]))


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), password=PASSWORDS)
def test_no_password_is_ever_shown(broker, data, password):
    url = data.draw(urls_with(password, broker.port))
    env = dict(os.environ, AMQP_URL=url)
    runs = [
        subprocess.Popen(
            [sys.executable, script],
            cwd=PROJECT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for script in ("send.py", "receive.py")
    ]
    for run in runs:
        stdout, stderr = (out.decode("utf-8", "replace") for out in run.communicate(timeout=60))
        shown = stdout + stderr
        assert run.returncode != 0
        assert stdout == ""
        assert len(stderr.splitlines()) == 1, stderr
        assert "Traceback" not in shown
        for secret in (password, urllib.parse.quote(password, safe=""), MARK):
            assert secret not in shown, (url, shown)


# --- nodes that cannot be used --------------------------------------------------------

GONE = "amqp://guest:guest@gone-node.invalid:5672/%2F"  # a name that does not resolve


def test_send_skips_a_first_node_whose_name_does_not_resolve(scripts, broker, amqp):
    done = scripts.send("m", env={"AMQP_URL": f"{GONE};{broker.url}"})

    assert (done.returncode, done.stdout, done.stderr) == (0, " [x] Sent 'm'\n", "")
    assert message_count(amqp) == 1


def test_receiver_skips_a_first_node_whose_name_does_not_resolve(scripts, broker):
    receiver = scripts.start_receiver(env={"AMQP_URL": f"{GONE};{broker.url}"})
    receiver.wait_until_ready()
    scripts.send("m")

    assert receiver.wait_for_lines(2)[1] == " [x] Received 'm'"
    assert receiver.stderr == ""


def test_receiver_skips_an_unresolvable_node_when_it_moves_on(scripts, broker):
    receiver = scripts.start_receiver(env={"AMQP_URL": f"{broker.url};{GONE}"})
    receiver.wait_until_ready()

    broker.restart()
    scripts.send("after the restart")

    assert receiver.wait_for_lines(3, timeout=60)[1:] == [
        WAITING,
        " [x] Received 'after the restart'",
    ]
    [lost] = receiver.stderr_lines
    assert lost.startswith(f"Lost the connection to RabbitMQ at 127.0.0.1:{broker.port} (")


@pytest.mark.parametrize("script", ["send.py", "receive.py"])
def test_when_no_node_answers_the_line_names_the_last_one_tried(scripts, script):
    ports = [free_port(), free_port()]
    url = ";".join(f"amqp://guest:guest@127.0.0.1:{port}/%2F" for port in ports)

    line = scripts.failure_line(script, {"AMQP_URL": url})

    assert line.startswith(
        f"Cannot connect to RabbitMQ at 127.0.0.1:{ports[1]}: connection refused."
    )


@pytest.mark.parametrize("script", ["send.py", "receive.py"])
def test_when_no_node_can_be_used_the_line_names_the_last_with_its_reason(scripts, script):
    refused = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"

    line = scripts.failure_line(script, {"AMQP_URL": f"{refused};{GONE}"})

    assert line.startswith("Cannot find the host 'gone-node.invalid'")


# --- stdout that fails -----------------------------------------------------------------

STDOUTS = pytest.mark.parametrize("stdout", ["closed", "full", "closed-pipe"])
BUFFERING = pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "unbuffered"])


def run_with_failing_stdout(script, url, stdout, unbuffered, *args):
    """Run a script as `script >&-`, `script > /dev/full`, or into a pipe nobody reads any
    more; its exit status and stderr."""
    if stdout == "full":
        target = os.open("/dev/full", os.O_WRONLY)
    elif stdout == "closed-pipe":
        read_end, target = os.pipe()
        os.close(read_end)
    else:
        target = subprocess.DEVNULL
    process = subprocess.Popen(
        [sys.executable, script, *args],
        cwd=PROJECT,
        env=dict(os.environ, AMQP_URL=url, PYTHONUNBUFFERED=unbuffered),
        stdin=subprocess.DEVNULL,
        stdout=target,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=(lambda: os.close(1)) if stdout == "closed" else None,
    )
    if isinstance(target, int) and target > 0:
        os.close(target)
    _, stderr = process.communicate(timeout=30)
    return process.returncode, stderr


@STDOUTS
@BUFFERING
def test_send_says_the_message_was_sent_when_stdout_fails(broker, amqp, stdout, unbuffered):
    fresh_hello(amqp)

    status, stderr = run_with_failing_stdout("send.py", broker.url, stdout, unbuffered, "m")

    assert status == 0
    [line] = stderr.splitlines()  # no "Exception ignored" either
    if stdout == "closed":  # the line stdout would have had
        assert line == " [x] Sent 'm'"
    else:
        assert line.startswith("The message was sent (RabbitMQ confirmed it), but stdout failed (")
    assert message_count(amqp) == 1


@STDOUTS
@BUFFERING
def test_receiver_stops_without_losing_a_message_when_stdout_fails(
    broker, amqp, stdout, unbuffered
):
    fresh_hello(amqp)
    preload(amqp, 3)

    status, stderr = run_with_failing_stdout("receive.py", broker.url, stdout, unbuffered)

    assert status == 1
    [line] = stderr.splitlines()
    if stdout == "closed":
        assert line == "receive.py has no stdout to print messages to (it is closed): not started."
    else:
        assert line.startswith("Cannot write to stdout (")
        assert line.endswith("): stopped; what was not printed stays queued.")
    deadline = time.monotonic() + 10  # the broker takes back what was delivered, unacknowledged
    while message_count(amqp) < 3:
        assert time.monotonic() < deadline, "a message that was not printed is gone"
        time.sleep(0.1)


# --- what a message and AMQP_URL may hold ----------------------------------------------


def test_a_message_that_is_not_utf8_is_sent_as_the_bytes_given(scripts, amqp):
    done = subprocess.run(
        [sys.executable, "send.py", b"caf\xe9"],
        cwd=PROJECT,
        env=scripts.env,
        capture_output=True,
        timeout=30,
    )

    assert (done.returncode, done.stderr) == (0, b"")
    assert done.stdout == b" [x] Sent 'caf\\udce9'\n"
    _, _, body = amqp.basic_get("hello", auto_ack=True)
    assert body == b"caf\xe9"


def test_a_trailing_semicolon_in_amqp_url_is_ignored(scripts, broker):
    done = scripts.send(env={"AMQP_URL": f"{broker.url};"})

    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize("script", ["send.py", "receive.py"])
def test_an_empty_amqp_url_means_the_default_broker(scripts, script):
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 5672)) == 0:
            pytest.skip("a broker listens on localhost:5672, where the default would send")

    line = scripts.failure_line(script, {"AMQP_URL": ""})

    assert line.startswith("Cannot connect to RabbitMQ at localhost:5672: connection refused.")
