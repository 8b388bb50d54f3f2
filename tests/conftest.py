"""Fixtures that run the real scripts against a real, private RabbitMQ broker.

The suite starts its own broker from the installed rabbitmq-server: its own node name,
port, distribution port, data directory, config file and Erlang cookie, all under pytest's
temporary directory, so a broker the learner runs on port 5672 is never touched.
Where RabbitMQ is not installed (say it runs in Docker), TEST_AMQP_URL names a broker to
use instead; tests that must restart or reconfigure the broker are then skipped, by name.
"""

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pika
import pytest

PROJECT = Path(__file__).resolve().parent.parent
# Debian's /usr/sbin wrappers switch to the rabbitmq user, which cannot write our temp
# dir; the scripts they wrap run as whoever calls them.
SERVER_CANDIDATES = ["/usr/lib/rabbitmq/bin/rabbitmq-server", "rabbitmq-server"]
BOOT_TIMEOUT = 60
# Small enough that a message typed on the command line can exceed it.
MAX_MESSAGE_SIZE = 65536


def find_server():
    for candidate in [os.environ.get("RABBITMQ_SERVER", "")] + SERVER_CANDIDATES:
        path = shutil.which(candidate) if candidate else None
        if path:
            return path
    return None


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivateBroker:
    """One RabbitMQ node of our own, started and stopped from the tests."""

    def __init__(self, server, base_dir, extra_config=""):
        self.server = server
        self.ctl_path = str(Path(server).with_name("rabbitmqctl"))
        self.dir = Path(base_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.node = f"hello-test-{self.port}@localhost"
        self.log_path = self.dir / "server.log"
        config = self.dir / "rabbitmq.conf"
        config.write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            # A second loopback address that the scripts take for another machine.
            f"listeners.tcp.second = 127.0.0.2:{self.port}\n"
            f"max_message_size = {MAX_MESSAGE_SIZE}\n" + extra_config
        )
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")
        self.env = dict(
            os.environ,
            HOME=str(self.dir),  # the Erlang cookie lives here, shared by server and ctl
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(free_port()),
            RABBITMQ_CONFIG_FILE=str(config),  # a config in /etc/rabbitmq must not apply
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_LOGS="-",
        )
        self.process = None
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def start(self):
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [self.server],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.fail(f"rabbitmq-server exited with status {self.process.returncode}")
            if self.accepts_amqp():
                return
            time.sleep(0.1)
        self.stop()
        self.fail(f"rabbitmq-server did not accept AMQP within {BOOT_TIMEOUT} s")

    def accepts_amqp(self):
        try:
            pika.BlockingConnection(pika.URLParameters(self.url)).close()
            return True
        except pika.exceptions.AMQPError:
            return False

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def restart(self):
        self.stop()
        self.start()

    def ctl(self, *args):
        done = subprocess.run(
            [self.ctl_path, "-n", self.node, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"rabbitmqctl {' '.join(args)}: {done.stderr}"
        return done.stdout

    def fail(self, why):
        log = self.log_path.read_text(errors="replace")[-3000:]
        pytest.fail(f"{why}; its log ends:\n{log}", pytrace=False)


class ExternalBroker:
    """A broker given by TEST_AMQP_URL: usable, but not ours to restart or reconfigure."""

    def __init__(self, url):
        self.url = url

    def __getattr__(self, name):
        pytest.skip(f"needs a private broker ({name}); TEST_AMQP_URL names an external one")


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    external_url = os.environ.get("TEST_AMQP_URL")
    if external_url:
        yield ExternalBroker(external_url)
        return
    server = find_server()
    if server is None:
        pytest.exit(
            "No RabbitMQ for the tests: install rabbitmq-server (apt-get install "
            "rabbitmq-server) or set TEST_AMQP_URL to a broker the tests may use.",
            returncode=2,
        )
    private = PrivateBroker(server, tmp_path_factory.mktemp("broker"))
    private.start()
    yield private
    private.stop()


@pytest.fixture
def amqp(broker):
    """A channel on the test broker, for preparing and inspecting "hello"."""
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
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

    def run(self, script, *args, env=None, timeout=30):
        return subprocess.run(
            [sys.executable, script, *args],
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

    def start_receiver(self, env=None):
        receiver = Receiver(dict(self.env, **(env or {})))
        self.running.append(receiver)
        return receiver

    def stop_all(self):
        for receiver in self.running:
            receiver.kill()


class Receiver:
    """receive.py running in the background, its output read line by line as it comes."""

    def __init__(self, env):
        self.process = subprocess.Popen(
            [sys.executable, "receive.py"],
            cwd=PROJECT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # A shell that started us in the background may have left SIGINT ignored.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.lines = []
        self.new_lines = queue.Queue()
        self.reading = threading.Event()  # cleared: stdout is left unread, so the pipe fills
        self.reading.set()
        self.stderr_lines = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self.stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self.stderr_reader.start()

    def _read_stdout(self):
        for raw in self.process.stdout:
            self.new_lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
            self.reading.wait()
        self.new_lines.put(None)

    def _read_stderr(self):
        for raw in self.process.stderr:
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
