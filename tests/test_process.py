"""The process as it really lives: held up past its heartbeat, signalled at any step,
paused in a debugger, refused again and again."""

import signal
import subprocess
import sys
import time

import pytest
from test_edges import UNKNOWN, fresh_hello, send_fate

from conftest import PROJECT, ScriptRunner, patched_script, preload, received, settled_count
from fault_proxy import FaultProxy

WAITING = " [*] Waiting for messages. To exit press CTRL+C"


@pytest.mark.timeout(240)
def test_a_receiver_held_up_past_its_heartbeat_says_so_and_loses_nothing(scripts, broker, amqp):
    total = 5000
    preload(amqp, total)
    # RabbitMQ drops a connection that sends nothing for two or three heartbeat intervals.
    receiver = scripts.start_receiver(env={"AMQP_URL": broker.url + "?heartbeat=2"})
    receiver.wait_for_lines(100)

    receiver.reading.clear()  # a reader that stops reading (| less): the pipe fills up
    time.sleep(20)
    receiver.reading.set()

    expected = {f" [x] Received 'message {number}'" for number in range(total)}
    while not expected <= received(receiver.lines):
        receiver.wait_for_lines(len(receiver.lines) + 1, timeout=60)
    receiver.ctrl_c()
    held_up, stopped = receiver.stderr_lines
    assert held_up.startswith(f"Lost the connection to RabbitMQ at 127.0.0.1:{broker.port} (")
    seconds = int(held_up.split("sent no heartbeat for ", 1)[1].split(" s ", 1)[0])
    assert 15 <= seconds <= 25, held_up
    assert held_up.endswith(
        " s (its output not read, or paused): what it printed since its last ack comes again."
        " Trying again."
    )


SIGNALS = pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
INTERRUPTED = "Interrupted (Ctrl+C, SIGTERM or SIGHUP)"


@SIGNALS
@pytest.mark.parametrize(
    ("step", "fate"),
    [(("Connection.Start", 1), "not sent"), (("Basic.Ack", 1), "unknown")],
    ids=["connecting", "at-the-confirm"],
)
def test_a_signal_to_send_says_what_became_of_the_message(broker, amqp, signum, step, fate):
    fresh_hello(amqp)
    proxy = FaultProxy(broker.port, step, "silent")  # send.py waits there
    try:
        process = subprocess.Popen(
            [sys.executable, "send.py", "m"],
            cwd=PROJECT,
            env=ScriptRunner(proxy.url()).env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proxy.acted.wait(10)
        time.sleep(0.5)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        proxy.stop()

    done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert send_fate(done, amqp) == fate  # checked against the queue
    expected = ". The message was not sent." if fate == "not sent" else UNKNOWN
    assert stderr == f"{INTERRUPTED}{expected}\n"


def test_breakpoint_in_main_is_not_cut_off_by_the_bound(scripts, amqp, tmp_path):
    # The bound on send.py's wait is 25 s; shortened to 2 s here, and the learner looks
    # around at the pdb prompt for twice that before typing c (continue).
    script = patched_script(
        tmp_path,
        "send.py",
        {
            "SEND_TIMEOUT = 25": "SEND_TIMEOUT = 2",
            "    channel.confirm_delivery()\n": "    breakpoint()\n"
            "    channel.confirm_delivery()\n",
        },
    )
    pdb = subprocess.Popen(
        [sys.executable, script, "looked at"],
        cwd=PROJECT,
        env=scripts.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(4)
    stdout, stderr = pdb.communicate("p message\nc\n", timeout=30)

    assert pdb.returncode == 0, stderr
    assert "(Pdb) 'looked at'\n" in stdout  # pdb stopped in main(), where the message is
    assert " [x] Sent 'looked at'" in stdout
    assert stderr == ""
    assert settled_count(amqp) == 1


@pytest.fixture
def retry_vhost(broker):
    broker.ctl("add_vhost", "retry")
    broker.ctl("set_permissions", "-p", "retry", "guest", ".*", ".*", ".*")
    yield "retry"
    broker.ctl("delete_vhost", "retry")


def logins(proxy):
    """When each connection through the proxy asked for its virtual host."""
    return [at for (_, _, name), at in zip(proxy.seen, proxy.seen_at) if name == "Connection.Open"]


@pytest.mark.script_logic
@pytest.mark.timeout(300)
def test_refused_again_and_again_a_receiver_waits_longer_each_round(broker, retry_vhost):
    proxy = FaultProxy(broker.port)
    receiver = ScriptRunner(f"amqp://guest:guest@127.0.0.1:{proxy.port}/retry").start_receiver()
    try:
        receiver.wait_until_ready()
        broker.ctl("delete_vhost", "retry")  # its connections close; logins are refused
        cut = time.monotonic()
        time.sleep(60)
        refused = [at - cut for at in logins(proxy)[1:]]

        broker.ctl("add_vhost", "retry")  # a node takes receive.py again...
        broker.ctl("set_permissions", "-p", "retry", "guest", ".*", ".*", ".*")
        assert receiver.wait_for_lines(2, timeout=40)[1] == WAITING
        broker.ctl("delete_vhost", "retry")  # ...so the wait starts over
        cut_again = time.monotonic()
        time.sleep(3)
        again = [at - cut_again for at in logins(proxy) if at > cut_again]
        receiver.ctrl_c()
    finally:
        receiver.kill()
        proxy.stop()
        if "retry" not in broker.ctl("list_vhosts", "-q").split():
            broker.ctl("add_vhost", "retry")

    print(f"\nlogins in the 60 s after the cut: {[round(at, 1) for at in refused]}")
    assert refused[0] < 1.5  # the first retry stays fast: a broker restart is followed at once
    # Each wait is a third of the time since a node last took receive.py, from 0.3 s: about
    # 17 logins in the first minute (one every 0.3 s would be 200), the last waits 10 s and more.
    assert len(refused) <= 25
    assert refused[-1] - refused[-2] >= 10
    assert again and again[0] < 1.5
    lines = receiver.stderr_lines[:-1]  # before the line on stopping
    assert len(lines) <= 3, lines  # at most one a minute
    # The cut, and a refusal if one falls due while the test gives the vhost back.
    said = (
        "Note: RabbitMQ cancelled",
        "Lost the",
        f"Cannot open the virtual host 'retry' on RabbitMQ at 127.0.0.1:{proxy.port} (",
    )
    assert all(line.startswith(said) for line in lines), lines


def under_nohup(args, env):
    """A script started as nohup starts it: with SIGHUP ignored, to outlive the terminal."""
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=PROJECT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),
    )


def test_under_nohup_sighup_does_not_stop_the_receiver(scripts, amqp):
    receiver = under_nohup(["receive.py"], scripts.env)
    try:
        assert receiver.stdout.readline() == WAITING + "\n"
        receiver.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert receiver.poll() is None, "SIGHUP stopped receive.py under nohup"
        receiver.send_signal(signal.SIGINT)
        assert receiver.wait(10) == 0
    finally:
        receiver.kill()


def test_under_nohup_sighup_does_not_stop_send(broker, amqp):
    fresh_hello(amqp)
    proxy = FaultProxy(broker.port, ("Basic.Ack", 1), "delay", 3)  # the confirm comes late
    try:
        sender = under_nohup(["send.py", "m"], ScriptRunner(proxy.url()).env)
        assert proxy.acted.wait(10)
        sender.send_signal(signal.SIGHUP)  # while it waits for the confirm
        stdout, stderr = sender.communicate(timeout=20)
    finally:
        proxy.stop()

    done = subprocess.CompletedProcess(sender.args, sender.returncode, stdout, stderr)
    assert send_fate(done, amqp) == "sent"
