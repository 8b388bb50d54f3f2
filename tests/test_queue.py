"""The queue as it really is: a delivery limit, a stream, a single active consumer, a nack.

A quorum queue counts how often each message was given back, and past its delivery limit
drops it (RabbitMQ 4.0 and later: 20 by default; 3.x: only a policy or argument sets one).
What counts differs by version: on 3.x and 4.0 to 4.2, every return; on 4.3, a reject and
a connection that closes holding the message, but not a nack with requeue. So receive.py
takes no message before its stdout has taken a line, and gives back what it holds and did
not print, when it stops, by cancelling its consumer and then nacking. The tests that
depend on how a version counts decide by the installed RabbitMQ's version.
"""

import fcntl
import os
import signal
import subprocess
import sys
import time

import pytest
from test_edges import fresh_hello, run_with_failing_stdout

from conftest import (
    PROJECT,
    STOPPED,
    ScriptRunner,
    patched_script,
    preload,
    settled_count,
)
from fault_proxy import FaultProxy
from private_broker import server_version

WAITING = " [*] Waiting for messages. To exit press CTRL+C"
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux; Python 3.10 names it
CHECK_OFTEN = {"CHECK_EVERY = 10": "CHECK_EVERY = 0.5"}


def version(broker):
    """The (major, minor) version of the private broker's RabbitMQ."""
    return server_version(broker.server)


@pytest.fixture
def delivery_limit(broker):
    """A policy that gives "hello" a delivery limit of 1: a message given back twice in a
    way the broker counts is dropped."""
    limit = '{"delivery-limit": 1}'
    broker.ctl("set_policy", "hello-limit", "^hello$", limit, "--apply-to", "queues")
    yield
    broker.ctl("clear_policy", "hello-limit")


@pytest.mark.parametrize("stdout", ["full", "closed-pipe"])
def test_a_stdout_that_fails_from_the_start_takes_no_message(broker, amqp, delivery_limit, stdout):
    fresh_hello(amqp)
    preload(amqp, 1)

    for _ in range(3):
        status, stderr = run_with_failing_stdout("receive.py", broker.url, stdout, "")
        assert status == 1
        assert stderr.startswith("Cannot write to stdout (")

    assert settled_count(amqp) == 1, "a message receive.py never printed was dropped"


def start_receiver_that_cannot_print(env, script="receive.py"):
    """receive.py with a stdout pipe that nobody reads, with room for its Waiting line and
    no more: it takes messages, then blocks on printing them. The process, and the pipe's
    read end, to be closed once it has ended (closed earlier, the pipe fails instead)."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)
    os.write(write_end, b"-" * (4096 - len(WAITING) - 2))  # a line of a message: no room
    process = subprocess.Popen(
        [sys.executable, script],
        cwd=PROJECT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(write_end)
    return process, read_end


def stop_while_holding(broker, signum, held):
    """Start receive.py, wait until RabbitMQ has handed it `held` messages it cannot print,
    stop it with `signum`: its status, its stderr, and the frames it sent."""
    proxy = FaultProxy(broker.port)
    process, read_end = start_receiver_that_cannot_print(ScriptRunner(proxy.url()).env)
    try:
        deadline = time.monotonic() + 20
        while sum(1 for _, _, name in proxy.seen if name == "Basic.Deliver") < held:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "RabbitMQ handed receive.py too few messages"
            time.sleep(0.05)
        time.sleep(0.3)  # receive.py is blocked on its stdout now
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=15)
    finally:
        process.kill()
        os.close(read_end)
        proxy.stop()
    sent = [name for _, way, name in proxy.seen if way == ">" and name != "heartbeat"]
    return process.returncode, stderr, sent


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stopped_receiver_gives_back_what_it_did_not_print_without_a_reject(
    broker, amqp, signum
):
    fresh_hello(amqp)
    preload(amqp, 30)

    status, stderr, sent = stop_while_holding(broker, signum, 30)

    assert (status, stderr) == (0, STOPPED + "\n")
    # Given back the way no RabbitMQ counts twice, nor 4.3 at all: the consumer cancelled,
    # then one nack for all (a reject counts on 4.3, and so does a closing connection).
    assert "Basic.Reject" not in sent
    assert "Basic.Ack" not in sent
    cancel = sent.index("Basic.Cancel")
    assert sent[cancel:] == ["Basic.Cancel", "Basic.Nack", "Channel.Close", "Connection.Close"]
    assert settled_count(amqp) == 30


def test_each_stop_counts_a_held_message_once_or_not_at_all(broker, amqp):
    # RabbitMQ 3.x and 4.0 to 4.2 count each return of a message once; 4.3 does not count
    # a nack. Given back twice (a nack, then a close with the message redelivered), it
    # would count twice.
    fresh_hello(amqp)
    preload(amqp, 1)

    for _ in range(3):
        assert stop_while_holding(broker, signal.SIGINT, 1)[0] == 0

    method, properties, _ = amqp.basic_get("hello", auto_ack=True)
    counted = (properties.headers or {}).get("x-delivery-count", 0)
    assert counted == (0 if version(broker) >= (4, 3) else 3), properties.headers


@pytest.mark.timeout(300)
def test_stopped_again_and_again_on_rabbitmq_4_3_a_receiver_drops_nothing(broker, amqp):
    # The default delivery limit of RabbitMQ 4.0 and later is 20: more stops than that.
    if version(broker) < (4, 3):
        pytest.skip(
            f"RabbitMQ {'.'.join(map(str, version(broker)))} counts every return toward a "
            "delivery limit: 4.3 and later do not count a nack"
        )
    fresh_hello(amqp)
    preload(amqp, 30)

    for signum in [signal.SIGINT, signal.SIGTERM, signal.SIGHUP] * 8:
        assert stop_while_holding(broker, signum, 30)[0] == 0

    assert settled_count(amqp) == 30


def test_an_existing_stream_hello_gets_one_line_and_no_loop(scripts, amqp, tmp_path):
    amqp.queue_declare("hello", durable=True, arguments={"x-queue-type": "stream"})
    sent = scripts.send("stored in the stream")
    assert (sent.returncode, sent.stdout) == (0, " [x] Sent 'stored in the stream'\n")
    receiver = scripts.start_receiver(script=patched_script(tmp_path, "receive.py", CHECK_OFTEN))
    receiver.wait_until_ready()

    time.sleep(3)  # a stream has no basic_get: a check would end the connection
    assert scripts.send("sent while it reads").returncode == 0

    assert receiver.wait_for_lines(2)[1] == " [x] Received 'sent while it reads'"
    receiver.ctrl_c()
    note, stopped = receiver.stderr_lines
    assert note.startswith("Note: using the existing queue 'hello' (PRECONDITION_FAILED")
    assert note.endswith(" - a stream gives only what is sent from now on")
    assert receiver.lines == [WAITING, " [x] Received 'sent while it reads'"]


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_an_existing_hello_with_a_single_active_consumer_takes_no_turn(
    scripts, amqp, tmp_path, queue_type
):
    arguments = {"x-queue-type": queue_type, "x-single-active-consumer": True}
    amqp.queue_declare("hello", durable=True, arguments=arguments)
    taken = []  # by another program, the active consumer
    tag = amqp.basic_consume("hello", lambda ch, m, p, body: taken.append(body), auto_ack=True)
    receiver = scripts.start_receiver(script=patched_script(tmp_path, "receive.py", CHECK_OFTEN))
    receiver.wait_until_ready()

    for number in range(5):
        assert scripts.send(f"turn {number}").returncode == 0
    amqp.connection.process_data_events(time_limit=3)  # more than a check's worth

    assert taken == [f"turn {number}".encode() for number in range(5)]
    assert receiver.lines == [WAITING]  # nothing taken out of the other consumer's turn
    amqp.basic_cancel(tag)  # receive.py's turn now
    assert scripts.send("its own turn").returncode == 0
    assert receiver.wait_for_lines(2)[1] == " [x] Received 'its own turn'"
    receiver.ctrl_c()
    assert receiver.stderr_lines[0].startswith("Note: using the existing queue 'hello'")
