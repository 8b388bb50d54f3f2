"""Private RabbitMQ nodes, for the tests, `make demo` and `make cluster-demo`.

Each node runs the installed rabbitmq-server with its own node name, ports, data
directory, config file and Erlang cookie, all under one directory of ours, so a broker the
learner runs on port 5672 is never touched. A Cluster is three such nodes that share one
cookie and are joined with `rabbitmqctl join_cluster`.
"""

import logging
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pika

# Debian's /usr/sbin wrappers switch to the rabbitmq user, which cannot write our temp
# dir; the scripts they wrap run as whoever calls them.
SERVER_CANDIDATES = ["/usr/lib/rabbitmq/bin/rabbitmq-server", "rabbitmq-server"]
BOOT_TIMEOUT = 60
# While a node boots, each refused connection makes pika log an error: not for the demos.
logging.getLogger("pika").addHandler(logging.NullHandler())


class BrokerError(Exception):
    """The private broker would not start."""


def find_server():
    for candidate in [os.environ.get("RABBITMQ_SERVER", "")] + SERVER_CANDIDATES:
        path = shutil.which(candidate) if candidate else None
        if path:
            return path
    return None


def server_version(server):
    """The installed RabbitMQ's version, as (major, minor), from the directory its scripts
    live in (rabbitmq_server-3.10.8); (0, 0) where that does not say."""
    found = re.search(r"rabbitmq_server-(\d+)\.(\d+)", str(Path(server).resolve()))
    return (int(found[1]), int(found[2])) if found else (0, 0)


def uses_khepri(server):
    """Whether this RabbitMQ keeps its metadata in Khepri (4.2 and later), not Mnesia."""
    return server_version(server) >= (4, 2)


def partition_handling_config(server, mode="pause_minority"):
    """On Mnesia, what the side of a split that holds a minority of the nodes does: with
    pause_minority, it pauses: it closes its clients, which move on to the majority, and
    it rejoins by itself once the network is back. RabbitMQ's default, ignore, leaves both
    sides running apart until an operator restarts one. Khepri has no such key."""
    return "" if uses_khepri(server) else f"cluster_partition_handling = {mode}\n"


def free_port():
    """A free port below the ephemeral range (32768 and up on Linux), so that no client
    socket can take it while the broker restarts."""
    while True:
        port = random.randint(20000, 32000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


class PrivateBroker:
    """One RabbitMQ node of our own, started and stopped from the tests.

    By default it listens on 127.0.0.1 and 127.0.0.2 (which the scripts take for another
    machine) at a free port. In a network namespace of its own (`namespace`), it runs
    there with the usual ports, open to the namespace's addresses, and clients reach it at
    `address`. `config` holds more rabbitmq.conf lines, `erl_args` Erlang's."""

    def __init__(
        self,
        server,
        base_dir,
        tls_ca=None,
        max_message_size=None,
        home=None,
        namespace=None,
        address="127.0.0.1",
        config="",
        erl_args="",
    ):
        self.server = server
        self.bin = Path(server).parent
        self.dir = Path(base_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "server.log"
        self.max_message_size = max_message_size
        self.namespace = namespace
        if namespace:
            self.port, dist_port, self.node = 5672, 25672, f"rabbit@{namespace}"
            self.prefix = ["ip", "netns", "exec", namespace]  # for server and CLI tools
            listeners = "listeners.tcp.default = 5672\nloopback_users.guest = false\n"
        else:
            self.port, dist_port = free_port(), free_port()
            self.node = f"hello-test-{self.port}@localhost"
            self.prefix = []
            listeners = (
                f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
                f"listeners.tcp.second = 127.0.0.2:{self.port}\n"
            )
        if tls_ca:
            listeners = self.tls_config(tls_ca)
        else:
            self.url = f"amqp://guest:guest@{address}:{self.port}/%2F"
            self.parameters = pika.URLParameters(self.url)
        (self.dir / "rabbitmq.conf").write_text(
            listeners
            + (f"max_message_size = {max_message_size}\n" if max_message_size else "")
            + config
        )
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")
        self.env = dict(
            os.environ,
            # The Erlang cookie lives here, shared by server and ctl (and a cluster's nodes).
            HOME=str(home or self.dir),
            RABBITMQ_NODENAME=self.node,
            # Else it is the AMQP port + 20000, which may be another broker's.
            RABBITMQ_DIST_PORT=str(dist_port),
            # A config in /etc/rabbitmq must not apply.
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_LOGS="-",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=erl_args,
            RABBITMQ_CTL_ERL_ARGS=erl_args,
        )
        self.process = None

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
        self.launch()
        self.wait_until_up()

    def launch(self):
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*self.prefix, self.server],
                cwd=self.dir,  # where a node that fails to boot writes erl_crash.dump
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_until_up(self):
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

    def kill(self):
        """kill -9 the whole node: no goodbye to its clients or to the other nodes."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def freeze(self, frozen=True):
        """Stop (or resume) the whole node without closing a socket: to its clients, a
        network that went silent."""
        os.killpg(self.process.pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def restart(self):
        self.stop()
        self.start()

    def ctl(self, *args, tool="rabbitmqctl", timeout=60):
        """Run a CLI tool of the installed RabbitMQ against this node; its output."""
        done = subprocess.run(
            [*self.prefix, str(self.bin / tool), "-n", self.node, *args],
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"{tool} {' '.join(args)}: {done.stderr}"
        return done.stdout

    def fail(self, why):
        log = self.log_path.read_text(errors="replace")[-3000:]
        raise BrokerError(f"{why}; its log ends:\n{log}")


def shared_home(base):
    """A HOME for the nodes of a cluster and their CLI tools: it holds their shared cookie."""
    home = base / "home"
    home.mkdir(parents=True, exist_ok=True)
    cookie = home / ".erlang.cookie"
    cookie.write_text(f"HELLOCLUSTER{random.getrandbits(64)}")
    cookie.chmod(0o400)
    return home


class Cluster:
    """Three private nodes joined into one cluster, started in parallel. On Mnesia, set to
    `partition_handling` (see partition_handling_config). `node_options(n)` gives more
    options for node n (from 1), as a network namespace of its own."""

    def __init__(
        self, server, base_dir, size=3, partition_handling="pause_minority", node_options=None
    ):
        self.server = server
        base = Path(base_dir)
        home = shared_home(base)
        config = partition_handling_config(server, partition_handling)
        self.nodes = [
            PrivateBroker(
                server,
                base / f"node{n}",
                home=home,
                config=config,
                **(node_options(n) if node_options else {}),
            )
            for n in range(1, size + 1)
        ]

    def start(self):
        """Start the nodes and join them; if that fails, stop every node it started."""
        try:
            for node in self.nodes:
                node.launch()
            for node in self.nodes:
                node.wait_until_up()
            first = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", first.node)
                node.ctl("start_app")
            for node in self.nodes:
                node.wait_until_up()
        except BaseException:
            self.stop()
            raise

    def stop(self):
        for node in self.nodes:
            node.stop()

    def restart_dead_nodes(self):
        """Start again, one after another as an operator would, the nodes a test killed;
        they rejoin the cluster."""
        for node in self.nodes:
            if node.process.poll() is not None:
                node.start()

    def url(self, nodes=None):
        """AMQP_URL listing these nodes (all by default), separated by ";"."""
        return ";".join(node.url for node in (self.nodes if nodes is None else nodes))

    def wait_until_replicated(self, queue="hello", timeout=30):
        """Wait until every node runs a replica of the quorum queue: one leader, and a
        follower on each other node."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.nodes[0].ctl("quorum_status", queue, tool="rabbitmq-queues")
            roles = re.findall(r"\b(leader|follower)\b", status)
            if sorted(roles) == ["follower"] * (len(self.nodes) - 1) + ["leader"]:
                return
            if time.monotonic() > deadline:
                raise BrokerError(f"{queue!r} was not replicated to every node: {status}")
            time.sleep(0.2)

    def leader(self, queue="hello"):
        """The node that leads a quorum queue now, as `rabbitmqctl list_queues` names it."""
        for node in self.nodes:
            if node.process.poll() is None:
                for line in node.ctl("list_queues", "-q", "name", "leader").splitlines():
                    name, _, leader = line.partition("\t")
                    if name == queue:
                        return next(n for n in self.nodes if n.node == leader.strip())
        raise BrokerError(f"no running node knows a leader for {queue!r}")
