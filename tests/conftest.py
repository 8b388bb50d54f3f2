"""Fixtures that run the real scripts against a real, private RabbitMQ broker.

The suite starts its own broker from the installed rabbitmq-server: its own node name,
port, distribution port, data directory, config file and Erlang cookie, all under pytest's
temporary directory, so a broker the learner runs on port 5672 is never touched.
Where RabbitMQ is not installed (say it runs in Docker), TEST_AMQP_URL names a broker to
use instead; tests that must restart or reconfigure the broker are then skipped, by name.
"""

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pika
import pytest
import trustme

from private_broker import BrokerError, Cluster, PrivateBroker, find_server

PROJECT = Path(__file__).resolve().parent.parent
# Small enough that a message typed on the command line can exceed it.
MAX_MESSAGE_SIZE = 65536
# The password in URLs of failing runs: no output may show it.
PASSWORD = "s3cret-pw"
# What receive.py says when Ctrl+C, SIGTERM or SIGHUP stops it.
STOPPED = "Stopped; what was not printed stays queued."

# The scripts start with SIGHUP as a terminal gives it, even when pytest itself runs under
# nohup: an ignored signal stays ignored in the programs a process starts, a handled one
# does not. pytest still outlives a hangup.
if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
    signal.signal(signal.SIGHUP, lambda signum, frame: None)


def preload(channel, count):
    """Put `count` numbered messages in "hello" and wait until the broker holds them."""
    channel.queue_declare("hello", durable=True, arguments={"x-queue-type": "quorum"})
    for number in range(count):
        channel.basic_publish("", "hello", f"message {number}".encode())
    deadline = time.monotonic() + 60
    while channel.queue_declare("hello", passive=True).method.message_count < count:
        assert time.monotonic() < deadline, "the broker did not take the preloaded messages"
        time.sleep(0.05)


def patched_script(directory, script, replacements):
    """A copy of the script in `directory`, with each piece of text in `replacements`
    replaced: to see in seconds what it does after its minutes-long bounds. Each piece must
    be in the script once, so that a renamed constant fails the test instead of passing it."""
    text = (PROJECT / script).read_text(encoding="utf-8")
    for old, new in replacements.items():
        assert text.count(old) == 1, f"{old!r} is not in {script} once"
        text = text.replace(old, new)
    copy = Path(directory) / script
    copy.write_text(text, encoding="utf-8")
    return str(copy)


def settled_count(channel, queue="hello", seconds=1.0):
    """The number of messages in the queue, read twice `seconds` apart and the same both
    times: a message still on its way cannot make a count of 0 look final."""
    while True:
        first = channel.queue_declare(queue, passive=True).method.message_count
        time.sleep(seconds)
        second = channel.queue_declare(queue, passive=True).method.message_count
        if first == second:
            return second


def received(lines):
    return {line for line in lines if line.startswith(" [x] Received")}


def wait_until_consuming(channel, consumers=1, timeout=20):
    """Wait until "hello" has this many consumers: receive.py prints its Waiting line just
    before it asks for the queue's messages."""
    deadline = time.monotonic() + timeout
    while channel.queue_declare("hello", passive=True).method.consumer_count < consumers:
        assert time.monotonic() < deadline, "receive.py did not start consuming"
        time.sleep(0.05)


def wait_for_received(receiver, expected, timeout):
    """Read receive.py's lines until every line of `expected` has come."""
    deadline = time.monotonic() + timeout
    missing = set(expected) - set(receiver.lines)
    while missing:
        lines = receiver.wait_for_lines(len(receiver.lines) + 1, deadline - time.monotonic())
        missing.discard(lines[-1])


class ExternalBroker:
    """A broker given by TEST_AMQP_URL: usable, but not ours to restart or reconfigure."""

    def __init__(self, url):
        self.url = url
        self.parameters = pika.URLParameters(url)

    def __getattr__(self, name):
        pytest.skip(f"needs a private broker ({name}); TEST_AMQP_URL names an external one")


def installed_server():
    if os.environ.get("TEST_AMQP_URL"):
        pytest.skip("needs a private broker; TEST_AMQP_URL names an external one")
    server = find_server()
    if server is None:
        pytest.exit(
            "No RabbitMQ for the tests: install rabbitmq-server (apt-get install "
            "rabbitmq-server) or set TEST_AMQP_URL to a broker the tests may use.",
            returncode=2,
        )
    return server


def started(private):
    """A private broker or cluster, started; if it cannot start, the test fails with why."""
    try:
        private.start()
    except BrokerError as error:
        pytest.fail(str(error), pytrace=False)
    return private


def start_private_broker(tmp_path_factory, **options):
    server = installed_server()
    return started(
        PrivateBroker(
            server, tmp_path_factory.mktemp("broker"), max_message_size=MAX_MESSAGE_SIZE, **options
        )
    )


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    if os.environ.get("TEST_AMQP_URL"):
        yield ExternalBroker(os.environ["TEST_AMQP_URL"])
        return
    private = start_private_broker(tmp_path_factory)
    yield private
    private.stop()


@pytest.fixture(scope="session")
def tls_broker(tmp_path_factory):
    """A second private broker that speaks only TLS, its certificate from a test CA."""
    private = start_private_broker(tmp_path_factory, tls_ca=trustme.CA())
    yield private
    private.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """Three private nodes joined into one cluster, shared by the cluster tests."""
    private = started(Cluster(installed_server(), tmp_path_factory.mktemp("cluster")))
    yield private
    private.stop()


@pytest.fixture
def hello(cluster):
    """A channel through the last node, after "hello" was declared anew through the first."""
    cluster.restart_dead_nodes()
    deadline = time.monotonic() + 30
    while True:
        first = pika.BlockingConnection(cluster.nodes[0].parameters)
        try:
            first.channel().queue_delete("hello")
            first.channel().queue_declare(
                "hello", durable=True, arguments={"x-queue-type": "quorum"}
            )
            first.close()
            break
        except pika.exceptions.ConnectionClosedByBroker as refusal:
            # A node the last test killed and restarted accepts connections a little before
            # it can host a new quorum queue replica: RabbitMQ 3.10 then closes the
            # connection with 541 INTERNAL_ERROR. Setup only; bounded.
            if refusal.reply_code != 541 or time.monotonic() > deadline:
                raise
            time.sleep(1)
    cluster.wait_until_replicated()
    connection = pika.BlockingConnection(cluster.nodes[-1].parameters)
    yield connection.channel()
    try:
        connection.close()
    except pika.exceptions.AMQPError:
        pass  # its node was killed


@pytest.fixture
def amqp(broker):
    """A channel on the test broker, for preparing and inspecting "hello"."""
    connection = pika.BlockingConnection(broker.parameters)
    channel = connection.channel()
    channel.queue_delete("hello")  # every test starts without a "hello" queue
    yield channel
    try:
        connection.close()
    except pika.exceptions.AMQPError:
        pass  # a test restarted the broker under it


@pytest.fixture
def scripts(broker, amqp):
    """Runs send.py and receive.py as a learner would, pointed at the test broker."""
    runner = ScriptRunner(broker.url)
    yield runner
    runner.stop_all()


class ScriptRunner:
    def __init__(self, url):
        self.env = dict(os.environ, AMQP_URL=url)
        self.env.pop("PYTHONUNBUFFERED", None)
        self.running = []

    def run(self, script, *args, env=None, timeout=30, python=sys.executable):
        return subprocess.run(
            [python, script, *args],
            cwd=PROJECT,
            env=dict(self.env, **(env or {})),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=timeout,
        )

    def send(self, *args, **kwargs):
        return self.run("send.py", *args, **kwargs)

    def start_receiver(self, env=None, sigint=signal.SIG_DFL, script="receive.py", python=None):
        receiver = Receiver(dict(self.env, **(env or {})), sigint, script, python)
        self.running.append(receiver)
        return receiver

    def failure_line(self, script, env=None, timeout=30):
        """Run a script that must fail; after the checks every failure must pass (non-zero
        exit, nothing on stdout, one line on stderr, no traceback, no password), return
        that line."""
        if script == "send.py":
            done = self.send(env=env, timeout=timeout)
            status, stdout, stderr = done.returncode, done.stdout, done.stderr
        else:
            receiver = self.start_receiver(env=env)
            status = receiver.finish(timeout=timeout)
            stdout, stderr = "\n".join(receiver.lines), receiver.stderr
        assert status != 0
        assert stdout == ""
        assert "Traceback" not in stderr
        assert PASSWORD not in stderr
        assert len(stderr.strip().splitlines()) == 1, stderr
        return stderr.strip()

    def stop_all(self):
        for receiver in self.running:
            receiver.kill()


class Receiver:
    """receive.py running in the background, its output read line by line as it comes."""

    def __init__(self, env, sigint, script="receive.py", python=None):
        self.process = subprocess.Popen(
            [python or sys.executable, script],
            cwd=PROJECT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # As a terminal starts it; SIG_IGN: as a script's "receive.py &" does.
            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
        )
        self.lines = []
        self.arrivals = []  # when each line of stdout came, by time.monotonic()
        self.new_lines = queue.Queue()
        self.reading = threading.Event()  # cleared: stdout is left unread, so the pipe fills
        self.reading.set()
        self.stderr_lines = []
        self.stderr_arrivals = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self.stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self.stderr_reader.start()

    def _read_stdout(self):
        for raw in self.process.stdout:
            self.arrivals.append(time.monotonic())
            self.new_lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
            self.reading.wait()
        self.new_lines.put(None)

    def _read_stderr(self):
        for raw in self.process.stderr:
            self.stderr_arrivals.append(time.monotonic())
            self.stderr_lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def wait_for_lines(self, count, timeout=20):
        """Wait until stdout has shown `count` lines in all; return them all."""
        deadline = time.monotonic() + timeout
        while len(self.lines) < count:
            try:
                line = self.new_lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                self.new_lines.put(None)
                break
            self.lines.append(line)
        assert len(self.lines) >= count, (
            f"receive.py printed {len(self.lines)} of {count} lines: {self.lines[-5:]}; "
            f"stderr: {self.stderr}"
        )
        return self.lines

    def wait_until_ready(self):
        assert self.wait_for_lines(1)[0] == " [*] Waiting for messages. To exit press CTRL+C"

    def signal(self, signum):
        self.process.send_signal(signum)

    def ctrl_c(self):
        """Stop it as a learner does: it must still be running, and end with status 0 and
        its line on stopping, the last it says."""
        assert self.process.poll() is None, f"receive.py stopped by itself: {self.stderr}"
        self.signal(signal.SIGINT)
        assert self.finish() == 0
        assert self.stderr_lines[-1] == STOPPED

    def finish(self, timeout=15):
        """Wait for exit; gather every remaining line. Returns the exit status."""
        status = self.process.wait(timeout)
        self.reading.set()
        while True:
            line = self.new_lines.get(timeout=5)
            if line is None:
                break
            self.lines.append(line)
        self.stderr_reader.join(5)
        return status

    @property
    def stderr(self):
        return "\n".join(self.stderr_lines)

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
