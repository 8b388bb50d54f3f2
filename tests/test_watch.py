"""receive.py keeps watch while no message comes: every CHECK_EVERY seconds it asks the
queue for a message (basic_get), which a node cut off from its cluster cannot answer (see
test_split.py). Here: the watch says nothing where all is well, and takes nothing out of
turn. The check runs every few milliseconds instead of every 10 s, in a copy of receive.py
that differs in that constant alone; a proxy counts the checks as they cross the network.
"""

import random
import signal
import time

import pika

from conftest import ScriptRunner, patched_script, wait_for_received
from fault_proxy import FaultProxy

WAITING = " [*] Waiting for messages. To exit press CTRL+C"
CHECK_OFTEN = {"CHECK_EVERY = 10": "CHECK_EVERY = 0.02"}
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
    assert (receiver.lines, receiver.stderr) == ([WAITING], "")


def test_an_idle_receiver_on_a_healthy_cluster_says_nothing(cluster, hello, tmp_path):
    script = patched_script(tmp_path, "receive.py", CHECK_OFTEN)
    follower = next(node for node in cluster.nodes if node is not cluster.leader())

    receiver, checks = watch_idle(follower.port, script, 10)

    assert checks >= TEN_MINUTES_OF_CHECKS
    assert (receiver.lines, receiver.stderr) == ([WAITING], "")


def test_the_watch_takes_no_message_out_of_turn(broker, amqp, tmp_path):
    # A check as often as can be, and a prefetch of 3, so that messages often wait in the
    # queue while a check asks for one: sent in bursts, each must come once, in order.
    script = patched_script(
        tmp_path,
        "receive.py",
        {"CHECK_EVERY = 10": "CHECK_EVERY = 0", "PREFETCH = 5000": "PREFETCH = 3"},
    )
    total = 3000
    proxy = FaultProxy(broker.port)
    runner = ScriptRunner(proxy.url())
    try:
        receiver = runner.start_receiver(script=script)
        receiver.wait_until_ready()
        send_in_bursts(broker, total)
        expected = [f" [x] Received 'message {n}'" for n in range(total)]
        wait_for_received(receiver, expected, 120)
        time.sleep(1)  # a message printed twice would show now
        receiver.signal(signal.SIGINT)
        assert receiver.finish() == 0
    finally:
        runner.stop_all()
        proxy.stop()

    seen = [name for _, _, name in proxy.seen]
    print(f"\n{seen.count('Basic.Get')} checks, {seen.count('Basic.GetOk')} took a message")
    assert receiver.lines == [WAITING, *expected]
    assert receiver.stderr == ""
    assert seen.count("Basic.Get") >= 100
    assert seen.count("Basic.GetOk") > 0  # some checks did take a message, to print in turn


def send_in_bursts(broker, total):
    """Publish `total` numbered messages, confirmed, in bursts of 1 to 50 with pauses."""
    connection = pika.BlockingConnection(broker.parameters)
    channel = connection.channel()
    channel.confirm_delivery()
    number = 0
    while number < total:
        for _ in range(min(random.randint(1, 50), total - number)):
            channel.basic_publish("", "hello", f"message {number}".encode())
            number += 1
        connection.sleep(random.random() / 50)
    connection.close()
