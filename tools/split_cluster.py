"""Three RabbitMQ nodes, each in a network namespace of its own, for network-split tests.

Each namespace has two links. eth0 is on a cluster network, which Erlang distribution
uses; eth1 is on a client network, which the scripts reach from this machine's own
namespace through a bridge. The node names resolve inside each namespace through
/etc/netns/<namespace>/hosts. split(node) takes the node's cluster link down, so that the
node can still talk to clients but no longer to the other nodes; heal(node) brings it up.

Everything made here (namespaces, links, bridges, hosts files, the epmd of each
namespace) is removed by stop(), even after a failure.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

from private_broker import BrokerError, Cluster, uses_khepri

# Both sides notice a cut link within about this many seconds (Erlang's default is 60).
NET_TICKTIME = 10


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def why_no_split():
    """Why network-split tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root, for network namespaces"
    if not shutil.which("ip"):
        return "needs iproute2 (ip netns)"
    probe = f"hsprobe{os.getpid()}"
    try:
        ip("netns", "add", probe)
        try:
            ip("netns", "exec", probe, "true")  # in a chroot, / must be a mount point
        finally:
            ip("netns", "del", probe)
    except (subprocess.CalledProcessError, OSError) as error:
        return f"ip netns does not work here: {getattr(error, 'stderr', error)}"
    return None


class SplitCluster(Cluster):
    """Three nodes, each in a network namespace of its own, joined into one cluster: on
    Khepri from RabbitMQ 4.2, else on Mnesia with `partition_handling`."""

    def __init__(self, server, base_dir, partition_handling="pause_minority", size=3):
        self.tag = f"hs{random.randrange(1000, 9999)}"
        # Networks of its own, so that two such clusters can run at once.
        subnet = random.randrange(0, 127)
        self.nets = [f"10.241.{2 * subnet}", f"10.241.{2 * subnet + 1}"]  # cluster, client
        self.bridges = [f"{self.tag}c", f"{self.tag}k"]
        self.namespaces = [f"{self.tag}n{number}" for number in range(1, size + 1)]
        self.khepri = uses_khepri(server)
        erl_args = f"-kernel net_ticktime {NET_TICKTIME}"
        super().__init__(
            server,
            base_dir,
            size,
            partition_handling,
            lambda n: dict(
                namespace=self.namespaces[n - 1],
                address=f"{self.nets[1]}.{n}",
                erl_args=erl_args,
            ),
        )

    def start(self):
        try:
            self._make_network()
        except BaseException:
            self.stop()
            raise
        super().start()  # stops everything if it fails

    def _make_network(self):
        for bridge in self.bridges:
            ip("link", "add", bridge, "type", "bridge")
            ip("link", "set", bridge, "up")
        ip("addr", "add", f"{self.nets[1]}.254/24", "dev", self.bridges[1])
        hosts = "127.0.0.1 localhost\n" + "".join(
            f"{self.nets[0]}.{n} {name}\n" for n, name in enumerate(self.namespaces, 1)
        )
        for number, name in enumerate(self.namespaces, 1):
            ip("netns", "add", name)
            ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
            for link, (bridge, net) in enumerate(zip(self.bridges, self.nets)):
                outside = f"{name}{'ck'[link]}"
                ip(
                    "link",
                    "add",
                    outside,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    f"eth{link}",
                    "netns",
                    name,
                )
                ip("link", "set", outside, "master", bridge, "up")
                ip(
                    "netns",
                    "exec",
                    name,
                    "ip",
                    "addr",
                    "add",
                    f"{net}.{number}/24",
                    "dev",
                    f"eth{link}",
                )
                ip("netns", "exec", name, "ip", "link", "set", f"eth{link}", "up")
            hosts_file = Path("/etc/netns") / name / "hosts"
            hosts_file.parent.mkdir(parents=True, exist_ok=True)
            hosts_file.write_text(hosts)

    def cluster_link(self, node):
        return f"{node.namespace}c"

    def split(self, node):
        """Cut `node` off from the other nodes; clients still reach it."""
        ip("link", "set", self.cluster_link(node), "down")

    def heal(self, node):
        ip("link", "set", self.cluster_link(node), "up")

    def running_nodes(self, node):
        """The nodes `node` sees running, and the partitions it knows of."""
        status = json.loads(node.ctl("cluster_status", "--formatter", "json"))
        return sorted(status.get("running_nodes", [])), status.get("partitions", {})

    def wait_until_whole(self, timeout=120):
        """Wait until every node sees every node running, and no partition."""
        everyone = sorted(node.node for node in self.nodes)
        deadline = time.monotonic() + timeout
        while True:
            try:
                views = [self.running_nodes(node) for node in self.nodes]
                if all(running == everyone and not parts for running, parts in views):
                    return
            except AssertionError:
                views = "a node did not answer"
            if time.monotonic() > deadline:
                raise BrokerError(f"the cluster did not become whole again: {views}")
            time.sleep(1)

    def stop(self):
        for node in self.nodes:
            try:
                node.stop()
            except Exception:  # noqa: BLE001 - tear down the rest all the same
                pass
        for name in self.namespaces:
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
            for pid in pids.stdout.split():  # epmd, and anything else left in there
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)
        for link in [f"{name}{side}" for name in self.namespaces for side in "ck"]:
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        for bridge in self.bridges:
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)
