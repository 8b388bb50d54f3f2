"""receive.py keeps watch while no message comes: after CHECK_EVERY seconds without an
acknowledgement it asks the queue for a message (basic_get), which a node cut off from its
cluster cannot answer (see test_split.py). Here: the watch says nothing where all is well,
and takes nothing from a queue that serves receive.py. The check runs every few
milliseconds instead of every 10 s (and its timer every few milliseconds instead of every
second), in a copy of receive.py that differs in those constants alone; a proxy counts the
checks as they cross the network. test_queue.py shows the watch off on an older "hello".
"""

import random
import time

import pika

from conftest import STOPPED, ScriptRunner, patched_script, wait_for_received
from fault_proxy import FaultProxy

WAITING = " [*] Waiting for messages. To exit press CTRL+C"
CHECK_OFTEN = {
    "CHECK_EVERY = 10": "CHECK_EVERY = 0.02",
    "call_later(1, every_second)": "call_later(0.02, every_second)",
}
# receive.py checks once per CHECK_EVERY (10 s): as many checks as in ten minutes.
TEN_MINUTES_OF_CHECKS = 60


def watch_idle(port, script, seconds):
    """receive.py through a proxy to `port`, left idle for `seconds`: it, and how many
    checks (basic_get) it made."""
    proxy = FaultProxy(port)
    runner = ScriptRunner(proxy.url())
    try:
        receiver = runner.start_receiver(script=script)
        receiver.wait_until_ready()
        time.sleep(seconds)
        checks = sum(1 for _, _, name in proxy.seen if name == "Basic.Get")
        receiver.ctrl_c()
    finally:
        runner.stop_all()
        proxy.stop()
    return receiver, checks


def test_an_idle_receiver_on_a_single_node_says_nothing(broker, amqp, tmp_path):
    script = patched_script(tmp_path, "receive.py", CHECK_OFTEN)

    receiver, checks = watch_idle(broker.port, script, 10)

    assert checks >= TEN_MINUTES_OF_CHECKS
    assert (receiver.lines, receiver.stderr_lines) == ([WAITING], [STOPPED])


def test_an_idle_receiver_on_a_healthy_cluster_says_nothing(cluster, hello, tmp_path):
    script = patched_script(tmp_path, "receive.py", CHECK_OFTEN)
    follower = next(node for node in cluster.nodes if node is not cluster.leader())

    receiver, checks = watch_idle(follower.port, script, 10)

    assert checks >= TEN_MINUTES_OF_CHECKS
    assert (receiver.lines, receiver.stderr_lines) == ([WAITING], [STOPPED])


def test_a_burst_larger_than_the_prefetch_as_the_watch_asks_loses_nothing(broker, amqp, tmp_path):
    # A check as soon as no ack came for a moment, a prefetch of 50 and bursts of up to
    # 200: messages often wait in the queue as a check asks, and the check takes one while
    # pika still holds part of the burst before it. That message is printed at once and
    # acknowledged alone: a multiple ack would take what pika still holds, unprinted, and
    # the next ack would fail. Every message comes once; that one before its burst.
    # Whether a check takes one is a matter of timing: rounds of 1,000 messages, until one
    # has (at most 10 rounds).
    script = patched_script(
        tmp_path, "receive.py", {**CHECK_OFTEN, "PREFETCH = 2000": "PREFETCH = 50"}
    )
    proxy = FaultProxy(broker.port)
    runner = ScriptRunner(proxy.url())
    expected = []
    try:
        receiver = runner.start_receiver(script=script)
        receiver.wait_until_ready()
        for first in range(0, 10_000, 1000):
            send_in_bursts(broker, 1000, largest=200, first=first)
            expected += [f" [x] Received 'message {n}'" for n in range(first, first + 1000)]
            wait_for_received(receiver, expected, 120)
            if any(name == "Basic.GetOk" for _, _, name in proxy.seen):
                break
        time.sleep(1)  # a message printed twice would show now
        receiver.ctrl_c()
    finally:
        runner.stop_all()
        proxy.stop()

    seen = [name for _, _, name in proxy.seen]
    print(f"\n{seen.count('Basic.Get')} checks, {seen.count('Basic.GetOk')} took a message")
    assert sorted(receiver.lines[1:]) == sorted(expected)
    assert seen.count("Basic.GetOk") > 0  # the checks did take messages


def send_in_bursts(broker, total, largest=50, first=0):
    """Publish `total` messages numbered from `first`, confirmed, in bursts of 1 to
    `largest` with pauses."""
    connection = pika.BlockingConnection(broker.parameters)
    channel = connection.channel()
    channel.confirm_delivery()
    number, end = first, first + total
    while number < end:
        for _ in range(min(random.randint(1, largest), end - number)):
            channel.basic_publish("", "hello", f"message {number}".encode())
            number += 1
        connection.sleep(random.random() / 10)  # longer than a check: the watch comes in
    connection.close()
