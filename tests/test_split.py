"""A cluster split by the network: three nodes in network namespaces of their own, and the
cluster link of one of them taken down while clients can still reach it.

On Mnesia (RabbitMQ 3.x, and 4.0-4.1 by default), with cluster_partition_handling set to
pause_minority, the cut-off node pauses and closes its clients: receive.py moves on to
another node, and the cluster heals by itself. On Khepri (the default from 4.2, and opt-in
from 4.0) the cut-off node keeps its clients: receive.py waits, and goes on when the
network is back. Needs root and `ip netns`; skipped, saying why, where they are missing.
"""

import signal
import time

import pika
import pytest

from conftest import (
    ScriptRunner,
    installed_server,
    preload,
    received,
    started,
    wait_for_received,
)
from private_broker import server_version
from split_cluster import SplitCluster, uses_khepri_by_default, why_no_split

pytestmark = pytest.mark.timeout(600)

MOST_PRINTED_TWICE = 5000  # the prefetch of receive.py
WAITING = " [*] Waiting for messages. To exit press CTRL+C"


def start_split_cluster(tmp_path_factory, khepri):
    why = why_no_split()
    if why:
        pytest.skip(why)
    server = installed_server()
    if not khepri and uses_khepri_by_default(server):
        pytest.skip("this RabbitMQ keeps its metadata in Khepri only")
    if khepri and server_version(server) < (4, 0):
        version = ".".join(map(str, server_version(server)))
        pytest.skip(f"RabbitMQ {version} has no Khepri (4.0 and later)")
    return started(SplitCluster(server, tmp_path_factory.mktemp("split"), khepri=khepri))


@pytest.fixture(scope="module")
def mnesia_cluster(tmp_path_factory):
    cluster = start_split_cluster(tmp_path_factory, khepri=False)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def khepri_cluster(tmp_path_factory):
    cluster = start_split_cluster(tmp_path_factory, khepri=True)
    yield cluster
    cluster.stop()


def fresh_hello(cluster, leader, count):
    """A new quorum queue "hello", led by `leader`, replicated on every node, holding
    `count` numbered messages."""
    connection = pika.BlockingConnection(leader.parameters)
    channel = connection.channel()
    channel.queue_delete("hello")
    preload(channel, count)  # declares it here: the node that declares it leads it
    connection.close()
    deadline = time.monotonic() + 60
    while True:
        status = leader.ctl("quorum_status", "hello", tool="rabbitmq-queues")
        if status.count("follower") == len(cluster.nodes) - 1:
            return
        assert time.monotonic() < deadline, status
        time.sleep(0.5)


def send_every_second(runner, seconds, prefix):
    """Send one message a second; the texts of those that were confirmed."""
    confirmed = []
    for number in range(seconds):
        started = time.monotonic()
        text = f"{prefix} {number}"
        if runner.send(text, timeout=60).returncode == 0:
            confirmed.append(text)
        time.sleep(max(0.0, 1 - (time.monotonic() - started)))
    return confirmed


def read_through_a_split(cluster, total, seconds):
    """receive.py reads `total` waiting messages through the last node, which is cut off
    from the others once it has printed 200, for `seconds` in which send.py sends one
    message a second through the others; then the link is healed. Returns receive.py, once
    it printed every message and the cluster is whole, stopped with Ctrl+C; the texts sent
    during the split; and when the link was cut and healed."""
    cut, others = cluster.nodes[-1], cluster.nodes[:-1]
    reader = ScriptRunner(cluster.url([cut, *others]))
    receiver = reader.start_receiver()
    try:
        receiver.wait_for_lines(200, timeout=60)
        cut_at = time.monotonic()
        cluster.split(cut)
        try:
            sent = send_every_second(ScriptRunner(cluster.url(others)), seconds, "in the split")
        finally:
            healed_at = time.monotonic()
            cluster.heal(cut)
        expected = {f" [x] Received 'message {n}'" for n in range(total)}
        expected |= {f" [x] Received '{text}'" for text in sent}
        wait_for_received(receiver, expected, 120)
        cluster.wait_until_whole()
        receiver.signal(signal.SIGINT)
        assert receiver.finish() == 0
    finally:
        reader.stop_all()
    assert "Traceback" not in receiver.stderr
    assert received(receiver.lines) == expected
    printed = [line for line in receiver.lines if line.startswith(" [x] Received")]
    assert len(printed) - len(set(printed)) <= MOST_PRINTED_TWICE
    return receiver, sent, cut_at, healed_at


@pytest.mark.parametrize("leader_at", ["another-node", "the-cut-off-node"])
def test_on_mnesia_the_receiver_moves_on_from_a_node_cut_off(mnesia_cluster, leader_at):
    cluster = mnesia_cluster
    cut = cluster.nodes[-1]
    fresh_hello(cluster, cut if leader_at == "the-cut-off-node" else cluster.nodes[0], 2000)

    receiver, sent, cut_at, healed_at = read_through_a_split(cluster, 2000, 30)

    assert len(sent) >= 25  # the majority took messages throughout the split
    [line] = receiver.stderr_lines
    assert line.startswith(f"Lost the connection to {cut_where(cut)} (")
    line_after = receiver.stderr_arrivals[0] - cut_at
    assert line_after < 30
    during = [
        at
        for at, text in zip(receiver.arrivals, receiver.lines)
        if "in the split" in text and at < healed_at
    ]
    assert during, "no message sent during the split was printed before it healed"
    printed = [line for line in receiver.lines if line.startswith(" [x] Received")]
    print(
        f"line {line_after:.1f} s after the cut, first new message {min(during) - cut_at:.1f} s;"
        f" {len(printed) - len(set(printed))} printed twice"
    )


def cut_where(node):
    return f"RabbitMQ at {node.parameters.host}:{node.parameters.port}"


def test_send_through_the_cut_off_node_says_what_it_knows(mnesia_cluster):
    cluster = mnesia_cluster
    cut, others = cluster.nodes[2], cluster.nodes[:2]
    fresh_hello(cluster, others[0], 0)
    cluster.split(cut)
    try:
        started = time.monotonic()
        done = ScriptRunner(cut.url).send("through the cut-off node", timeout=60)
        took = time.monotonic() - started
    finally:
        cluster.heal(cut)
    cluster.wait_until_whole()

    assert took < 30
    assert done.returncode in (1, 3)
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    connection = pika.BlockingConnection(others[0].parameters)
    stored = connection.channel().queue_declare("hello", passive=True).method.message_count
    connection.close()
    if done.returncode == 1:  # said "not sent": it must not be there
        assert stored == 0, line
    print(f"send.py through the cut-off node: status {done.returncode} in {took:.1f} s: {line}")


def test_on_khepri_the_receiver_waits_out_the_split_and_loses_nothing(khepri_cluster):
    cluster = khepri_cluster
    fresh_hello(cluster, cluster.nodes[0], 2000)

    receiver, sent, _, healed_at = read_through_a_split(cluster, 2000, 40)

    assert len(sent) >= 35
    print(f"all printed {max(receiver.arrivals) - healed_at:.1f} s after healing")
    print(f"stderr: {receiver.stderr_lines}")
