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

from conftest import (
    PROJECT,
    STOPPED,
    ScriptRunner,
    patched_script,
    preload,
    received,
    settled_count,
)
from fault_proxy import FaultProxy
from private_broker import free_port

# Short heartbeats and handshake timeouts: a connection gone silent is noticed in seconds.
QUICK = "?heartbeat=1&socket_timeout=2&stack_timeout=3"
NOT_SENT = ". The message was not sent."
UNKNOWN = (
    ", while the message was being published: RabbitMQ may have stored it, and sending it again "
    "may deliver it twice."
)
WAITING = " [*] Waiting for messages. To exit press CTRL+C"


def message_count(channel):
    return channel.queue_declare("hello", passive=True).method.message_count


def fresh_hello(channel):
    channel.queue_declare("hello", durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_purge("hello")


LATE = "The message was sent (RabbitMQ confirmed it), but send.py did not end in time\n"


def send_fate(done, channel, text="m", late=""):
    """What send.py said of its message, checked against the queue: "sent", "not sent" or
    "unknown". One line and no traceback whatever happened; "sent" only with the message
    on the queue, "not sent" only without it (the count read twice, a second apart). A
    sent message says no more on stderr, but `late`: what the bound says when the run does
    not end after the confirm."""
    assert "Traceback" not in done.stderr
    if done.returncode == 0:
        assert (done.stdout, done.stderr) == (f" [x] Sent '{text}'\n", late)
        deadline = time.monotonic() + 10
        while message_count(channel) != 1:
            assert time.monotonic() < deadline, "said sent, yet the message is not on the queue"
            time.sleep(0.05)
        return "sent"
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    if done.returncode == 1:
        assert line.endswith(NOT_SENT)
        assert settled_count(channel) == 0, f"said not sent, yet the message is there: {line}"
        return "not sent"
    assert done.returncode == 3, done.stderr
    assert line.endswith(UNKNOWN)
    settled_count(channel)  # a publish still on its way lands now, not in the next run
    return "unknown"


def frame_kinds(names):
    """Each frame of a run as (name, n), the n-th frame of that name: the proxy's way to
    pick one. Heartbeats are left out: when they come depends on the clock."""
    counts, kinds = {}, []
    for name in names:
        counts[name] = counts.get(name, 0) + 1
        if name != "heartbeat":
            kinds.append((name, counts[name]))
    return kinds


def send_through(
    broker, channel, at, action, url_options=QUICK, script="send.py", delay=0.0, late=""
):
    """Run send.py once through a proxy that acts at frame `at`; its fate, and the run."""
    fresh_hello(channel)
    proxy = FaultProxy(broker.port, at, action, delay)
    try:
        done = ScriptRunner(proxy.url(url_options)).run(script, "m", timeout=60)
    finally:
        proxy.stop()
    assert proxy.acted.is_set(), f"the run never came to {at}"
    return send_fate(done, channel, late=late), done


@pytest.fixture
def send_frames(broker, amqp):
    """The frames of one send.py run that nothing disturbs, as (name, n)."""
    fresh_hello(amqp)
    proxy = FaultProxy(broker.port)
    done = ScriptRunner(proxy.url(QUICK)).send("m")
    proxy.stop()
    assert done.returncode == 0
    return frame_kinds(name for _, _, name in proxy.seen)


@pytest.mark.parametrize("action", ["reset", "close"])
def test_send_tells_the_truth_whichever_frame_breaks_the_connection(
    broker, amqp, send_frames, action
):
    fates = [send_through(broker, amqp, at, action)[0] for at in send_frames]

    print(f"\n{action}:", *(f"{at} {fate}" for at, fate in zip(send_frames, fates)), sep="\n")
    published = send_frames.index(("Basic.Publish", 1))
    confirmed = send_frames.index(("Basic.Ack", 1))
    assert set(fates[:published]) == {"not sent"}
    assert set(fates[published : confirmed + 1]) == {"unknown"}
    assert set(fates[confirmed + 1 :]) == {"sent"}


@pytest.mark.script_logic
def test_send_tells_the_truth_when_the_connection_goes_silent(broker, amqp, send_frames):
    # Sampled: each run waits for a handshake timeout or a heartbeat (up to 13 s).
    steps = ["protocol header", "Connection.TuneOk", "Queue.Declare", "body", "Basic.Ack"]
    steps.append("Connection.Close")

    fates = [send_through(broker, amqp, (step, 1), "silent")[0] for step in steps]

    assert fates == ["not sent"] * 3 + ["unknown"] * 2 + ["sent"]


BOUND = 2  # seconds: send.py's SEND_TIMEOUT, shortened


@pytest.fixture
def bounded_send(tmp_path):
    return patched_script(tmp_path, "send.py", {"SEND_TIMEOUT = 25": f"SEND_TIMEOUT = {BOUND}"})


@pytest.mark.parametrize(
    ("step", "fate"),
    [("Queue.Declare", "not sent"), ("Basic.Ack", "unknown"), ("Connection.Close", "sent")],
)
def test_send_ends_at_its_bound_when_rabbitmq_stops_answering(
    broker, amqp, bounded_send, step, fate
):
    # No short heartbeat here: only the bound can end the wait. Once the message is sent,
    # what the bound says is that send.py did not end.
    started = time.monotonic()
    late = LATE if fate == "sent" else ""
    said, done = send_through(broker, amqp, (step, 1), "silent", "", bounded_send, late=late)

    assert time.monotonic() - started < BOUND + 3
    assert said == fate
    if fate != "sent":
        assert done.stderr.startswith("No answer from RabbitMQ at 127.0.0.1:")
        assert f" (in {BOUND} s): " in done.stderr


def test_receiver_says_so_when_the_queue_does_not_answer(broker, amqp, tmp_path):
    # The consume goes unanswered, as on a queue that lost its majority: one line after the
    # bound (20 s, shortened to 2 s here), and receive.py waits on, Ctrl+C still stopping it.
    script = patched_script(tmp_path, "receive.py", {"seconds=20": "seconds=2"})
    proxy = FaultProxy(broker.port, ("Basic.Consume", 1), "silent")
    runner = ScriptRunner(proxy.url())
    try:
        receiver = runner.start_receiver(script=script)
        deadline = time.monotonic() + 10
        while not receiver.stderr_lines:
            assert time.monotonic() < deadline, "receive.py said nothing"
            time.sleep(0.1)
        time.sleep(2)  # no second line, no exit
        receiver.ctrl_c()
    finally:
        runner.stop_all()
        proxy.stop()

    assert receiver.lines == [WAITING]  # said before it asks for the messages
    assert receiver.stderr_lines == [
        f"No answer from the queue 'hello' at 127.0.0.1:{proxy.port} in 2 s; waiting.",
        STOPPED,
    ]


@pytest.mark.script_logic
@pytest.mark.parametrize("step", ["Confirm.SelectOk", "Basic.Ack"])
def test_send_says_one_true_thing_when_rabbitmq_answers_just_as_the_bound_ends(
    broker, amqp, bounded_send, step
):
    # The last answer before publishing, or the confirm, held back until about when the
    # bound ends: the thread that bounds the wait and the main thread race to end the run.
    # send_fate checks each end against the queue.
    fates = []
    for step_ in range(-12, 3):
        held = BOUND + step_ / 50  # the frame comes a moment after the bound starts
        said, _ = send_through(broker, amqp, (step, 1), "delay", "", bounded_send, held)
        fates.append(said)

    print(f"\n{step}: {fates}")
    late = "not sent" if step == "Confirm.SelectOk" else "unknown"
    assert (fates[0], fates[-1]) == ("sent", late), fates


@pytest.mark.timeout(600)
def test_receiver_prints_every_message_whichever_frame_breaks_the_connection(broker, amqp):
    total = 2000
    # Across the handshake, the consume, the deliveries and the acks, as each action in turn.
    handshake = ["protocol header", "Connection.Start", "Connection.StartOk", "Connection.Tune"]
    handshake += ["Connection.TuneOk", "Connection.Open", "Connection.OpenOk", "Channel.Open"]
    handshake += ["Channel.OpenOk", "Queue.Declare", "Queue.DeclareOk", "Basic.Qos"]
    handshake += ["Basic.QosOk", "Basic.Consume", "Basic.ConsumeOk"]
    frames = [(name, 1) for name in handshake]
    frames += [("Basic.Deliver", 1), ("header", 10), ("body", 100), ("Basic.Ack", 1)]
    frames += [("Basic.Deliver", 1000), ("Basic.Ack", 2), ("body", 1999)]
    actions = ["reset", "close"] * len(frames)
    runs = list(zip(frames, actions)) + [(("Basic.ConsumeOk", 1), "silent")]
    runs += [(("Basic.Deliver", 1000), "silent")]
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
        assert proxy.acted.is_set(), f"the run never came to {at}"
        assert "Traceback" not in receiver.stderr
        assert receiver.stderr_lines[-1] == STOPPED
        assert len(receiver.stderr_lines) <= 2, (at, action, receiver.stderr)
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


@pytest.mark.script_logic
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
        f"Cannot connect to RabbitMQ at 127.0.0.1:{ports[1]}: connection refused (README.md"
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


def test_send_ends_with_its_status_when_stderr_fails_too(scripts):
    # Nothing can be said (stderr is full): the exit status still says "not sent", at once.
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        done = subprocess.run(
            [sys.executable, "send.py"],
            cwd=PROJECT,
            env=dict(scripts.env, AMQP_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=full,
            timeout=10,
        )
    finally:
        os.close(full)

    assert (done.returncode, done.stdout) == (1, b"")


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
@pytest.mark.parametrize("amqp_url", ["", " ", " ; ;"], ids=["empty", "blank", "no-url"])
def test_an_amqp_url_without_a_url_means_the_default_broker(scripts, script, amqp_url):
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 5672)) == 0:
            pytest.skip("a broker listens on localhost:5672, where the default would send")

    started = time.monotonic()
    line = scripts.failure_line(script, {"AMQP_URL": amqp_url})

    assert time.monotonic() - started < 10  # no wait for an answer from nowhere
    assert line.startswith("Cannot connect to RabbitMQ at localhost:5672: connection refused (")
