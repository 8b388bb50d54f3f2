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
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pika
import pytest
import trustme

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

    def __init__(self, server, base_dir, tls_ca=None):
        self.server = server
        self.ctl_path = str(Path(server).with_name("rabbitmqctl"))
        self.dir = Path(base_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.node = f"hello-test-{self.port}@localhost"
        self.log_path = self.dir / "server.log"
        config = self.dir / "rabbitmq.conf"
        config.write_text(
            (self.tls_config(tls_ca) if tls_ca else self.plain_config())
            + f"max_message_size = {MAX_MESSAGE_SIZE}\n"
        )
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")
        self.env = dict(
            os.environ,
            HOME=str(self.dir),  # the Erlang cookie lives here, shared by server and ctl
            RABBITMQ_NODENAME=self.node,
            # Else it is the AMQP port + 20000, which may be another broker's.
            RABBITMQ_DIST_PORT=str(free_port()),
            RABBITMQ_CONFIG_FILE=str(config),  # a config in /etc/rabbitmq must not apply
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_LOGS="-",
        )
        self.process = None

    def plain_config(self):
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"
        self.parameters = pika.URLParameters(self.url)
        return (
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            # A second loopback address, which the scripts take for another machine.
            f"listeners.tcp.second = 127.0.0.2:{self.port}\n"
        )

    def tls_config(self, ca):
        """TLS only, with a certificate for "localhost" from the test's own CA."""
        self.ca_file = self.dir / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        server_cert = ca.issue_cert("localhost")
        server_cert.cert_chain_pems[0].write_to_path(str(self.dir / "cert.pem"))
        server_cert.private_key_pem.write_to_path(str(self.dir / "key.pem"))
        self.url = f"amqps://guest:guest@localhost:{self.port}/%2F"
        self.parameters = pika.URLParameters(self.url)
        self.parameters.ssl_options = pika.SSLOptions(
            ssl.create_default_context(cafile=str(self.ca_file)), "localhost"
        )
        return (
            "listeners.tcp = none\n"
            f"listeners.ssl.default = 127.0.0.1:{self.port}\n"
            f"ssl_options.cacertfile = {self.ca_file}\n"
            f"ssl_options.certfile = {self.dir / 'cert.pem'}\n"
            f"ssl_options.keyfile = {self.dir / 'key.pem'}\n"
            "ssl_options.verify = verify_none\n"
            "ssl_options.fail_if_no_peer_cert = false\n"
        )

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
            pika.BlockingConnection(self.parameters).close()
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
        self.parameters = pika.URLParameters(url)

    def __getattr__(self, name):
        pytest.skip(f"needs a private broker ({name}); TEST_AMQP_URL names an external one")


def start_private_broker(tmp_path_factory, **options):
    if os.environ.get("TEST_AMQP_URL"):
        pytest.skip("needs a private broker; TEST_AMQP_URL names an external one")
    server = find_server()
    if server is None:
        pytest.exit(
            "No RabbitMQ for the tests: install rabbitmq-server (apt-get install "
            "rabbitmq-server) or set TEST_AMQP_URL to a broker the tests may use.",
            returncode=2,
        )
    private = PrivateBroker(server, tmp_path_factory.mktemp("broker"), **options)
    private.start()
    return private


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
