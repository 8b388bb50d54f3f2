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

import pika
import pytest
from test_edges import fresh_hello, run_with_failing_stdout

from conftest import (
    PROJECT,
    STOPPED,
    ScriptRunner,
    patched_script,
    preload,
    settled_count,
    wait_for_received,
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


def start_receiver_that_cannot_print(env, stderr=subprocess.PIPE):
    """receive.py with a stdout pipe that nobody reads, with room for its Waiting line and
    no more: it takes messages, then blocks on printing them. The process, and the pipe's
    read end, to be closed once it has ended (closed earlier, the pipe fails instead)."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)
    os.write(write_end, b"-" * (4096 - len(WAITING) - 2))  # a line of a message: no room
    process = subprocess.Popen(
        [sys.executable, "receive.py"],
        cwd=PROJECT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=write_end,
        stderr=stderr,
        text=True,
    )
    os.close(write_end)
    return process, read_end


def stop_while_holding(broker, signum, held, stderr=subprocess.PIPE):
    """Start receive.py, wait until RabbitMQ has handed it `held` messages it cannot print,
    stop it with `signum`: its status, its stderr, and the frames it sent."""
    proxy = FaultProxy(broker.port)
    env = ScriptRunner(proxy.url()).env
    process, read_end = start_receiver_that_cannot_print(env, stderr)
    try:
        deadline = time.monotonic() + 20
        while sum(1 for _, _, name in proxy.seen if name == "Basic.Deliver") < held:
            assert process.poll() is None, "receive.py ended by itself"
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
@pytest.mark.parametrize("held", [30, 500])
def test_a_stopped_receiver_gives_back_what_it_did_not_print_without_a_reject(
    broker, amqp, signum, held
):
    # 30 lines fit in stdout's buffer of old; 500 come in one read of pika's, and are more
    # lines than that buffer took, so that a blocked stdout cut the burst short.
    fresh_hello(amqp)
    preload(amqp, held)

    status, stderr, sent = stop_while_holding(broker, signum, held)

    assert (status, stderr) == (0, STOPPED + "\n")
    # Given back the way no RabbitMQ counts twice, nor 4.3 at all: the consumer cancelled,
    # then one nack for all (a reject counts on 4.3, and so does a closing connection).
    assert "Basic.Reject" not in sent
    assert "Basic.Ack" not in sent
    cancel = sent.index("Basic.Cancel")
    assert sent[cancel:] == ["Basic.Cancel", "Basic.Nack", "Channel.Close", "Connection.Close"]
    assert settled_count(amqp) == held


def test_a_receiver_whose_stderr_fails_still_gives_back_what_it_held(broker, amqp):
    # The terminal closed (SIGHUP): the line on stopping cannot be said; the give-back
    # happens all the same.
    fresh_hello(amqp)
    preload(amqp, 30)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        status, _, sent = stop_while_holding(broker, signal.SIGHUP, 30, stderr=write_end)
    finally:
        os.close(write_end)

    assert status == 0
    assert "Basic.Reject" not in sent
    assert sent[sent.index("Basic.Cancel") :][:2] == ["Basic.Cancel", "Basic.Nack"]
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
    assert note.endswith("); if it is a stream, only what is sent from now on is printed")
    assert receiver.lines == [WAITING, " [x] Received 'sent while it reads'"]


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_an_existing_hello_with_a_single_active_consumer_takes_no_turn(
    scripts, broker, amqp, tmp_path, queue_type
):
    arguments = {"x-queue-type": queue_type, "x-single-active-consumer": True}
    amqp.queue_declare("hello", durable=True, arguments=arguments)
    # Another program, the active consumer, takes one message at a time and is slow to
    # acknowledge it: the others wait in the queue, ready, for its turn.
    other = pika.BlockingConnection(broker.parameters).channel()
    other.basic_qos(prefetch_count=1)
    taken = []
    other.basic_consume("hello", lambda ch, method, p, body: taken.append(body))
    receiver = scripts.start_receiver(script=patched_script(tmp_path, "receive.py", CHECK_OFTEN))
    receiver.wait_until_ready()

    for number in range(5):
        assert scripts.send(f"turn {number}").returncode == 0
    other.connection.process_data_events(time_limit=3)  # more than a check's worth

    assert taken == [b"turn 0"]
    assert receiver.lines == [WAITING]  # nothing taken out of the other consumer's turn
    other.connection.close()  # its turn ends, and what it held goes back: receive.py's turn
    expected = {f" [x] Received 'turn {number}'" for number in range(5)}
    wait_for_received(receiver, expected, 20)
    receiver.ctrl_c()
    assert receiver.stderr_lines[0].startswith("Note: using the existing queue 'hello'")
