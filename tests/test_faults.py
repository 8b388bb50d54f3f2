"""Faults a learner can meet: nothing lost, no traceback, one clear line."""

import signal
import time

import pika
import pytest

from conftest import (
    PASSWORD,
    ScriptRunner,
    preload,
    received,
    settled_count,
    wait_for_received,
    wait_until_consuming,
)
from private_broker import free_port

WAITING = " [*] Waiting for messages. To exit press CTRL+C"
DELETED = "Note: RabbitMQ cancelled the consumer ('hello' deleted?); declaring it again."


def waiting_count(channel):
    return channel.queue_declare("hello", passive=True).method.message_count


@pytest.mark.parametrize(
    ("signum", "status"),
    [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGINT, 0), (signal.SIGTERM, 0)],
    ids=["kill-9", "ctrl-c", "sigterm"],
)
def test_receiver_stopped_mid_backlog_loses_nothing(scripts, amqp, signum, status):
    total = 20000
    preload(amqp, total)
    first = scripts.start_receiver()
    first.wait_for_lines(2000)
    first.reading.clear()  # stop reading: the pipe fills and receive.py stalls mid-stream
    time.sleep(0.5)

    first.signal(signum)

    assert first.finish() == status
    assert "Traceback" not in first.stderr
    assert len(received(first.lines)) < total, "the first run was not stopped mid-stream"
    assert waiting_count(amqp) > 0
    second = scripts.start_receiver()
    missing = {f" [x] Received 'message {number}'" for number in range(total)}
    missing -= received(first.lines)
    seen = 0
    while missing:  # fails inside wait_for_lines if the second run stops short
        lines = second.wait_for_lines(seen + 1)
        missing -= set(lines[seen:])
        seen = len(lines)


def test_receiver_acknowledges_what_it_printed(scripts, amqp):
    preload(amqp, 3)
    receiver = scripts.start_receiver()
    receiver.wait_for_lines(4)

    time.sleep(1)
    receiver.signal(signal.SIGINT)
    assert receiver.finish() == 0

    # Once its consumer is gone, RabbitMQ has put back what it delivered and was not acked.
    deadline = time.monotonic() + 10
    while amqp.queue_declare("hello", passive=True).method.consumer_count:
        assert time.monotonic() < deadline, "the consumer of receive.py outlived it"
        time.sleep(0.1)
    assert settled_count(amqp) == 0


def test_receiver_reconnects_after_a_broker_restart(scripts, broker):
    receiver = scripts.start_receiver()
    receiver.wait_until_ready()
    scripts.send("before")
    receiver.wait_for_lines(2)

    broker.restart()
    scripts.send("after")

    lines = receiver.wait_for_lines(4, timeout=30)
    assert lines[1] == " [x] Received 'before'"
    assert lines[2:] == [WAITING, " [x] Received 'after'"]
    assert receiver.process.poll() is None
    [lost] = receiver.stderr_lines
    assert lost.startswith(f"Lost the connection to RabbitMQ at 127.0.0.1:{broker.port} (")
    assert lost.endswith("). Trying again.")


def test_receiver_reconnects_when_the_broker_stops_answering(scripts, broker):
    # Only heartbeats notice a silent network; a short interval keeps the test short.
    receiver = scripts.start_receiver(env={"AMQP_URL": broker.url + "?heartbeat=2"})
    receiver.wait_until_ready()
    broker.freeze()
    try:
        deadline = time.monotonic() + 30
        while not receiver.stderr_lines:
            assert time.monotonic() < deadline, "receive.py did not notice the silence"
            time.sleep(0.2)
    finally:
        broker.freeze(False)

    sent = scripts.send("after the silence")

    assert sent.returncode == 0
    assert receiver.wait_for_lines(3, timeout=60)[1:] == [
        WAITING,
        " [x] Received 'after the silence'",
    ]
    [lost] = receiver.stderr_lines
    assert lost.startswith(f"Lost the connection to RabbitMQ at 127.0.0.1:{broker.port} (")


def test_waiting_messages_survive_a_broker_restart(scripts, broker):
    for text in ("one", "two"):
        assert scripts.send(text).returncode == 0

    broker.restart()
    receiver = scripts.start_receiver()

    assert receiver.wait_for_lines(3)[1:] == [" [x] Received 'one'", " [x] Received 'two'"]


def test_ctrl_c_while_waiting_for_the_broker_exits_0_at_once(scripts, broker):
    receiver = scripts.start_receiver()
    receiver.wait_until_ready()
    try:
        broker.stop()
        deadline = time.monotonic() + 15
        while not any("Trying again." in line for line in receiver.stderr_lines):
            assert time.monotonic() < deadline, "receive.py did not say it lost the broker"
            time.sleep(0.1)
        time.sleep(1.5)  # inside the retry loop now

        started = time.monotonic()
        receiver.signal(signal.SIGINT)

        assert receiver.finish() == 0
        assert time.monotonic() - started < 2
        assert "Traceback" not in receiver.stderr
    finally:
        broker.start()


def test_receiver_declares_hello_again_when_it_is_deleted(scripts, amqp):
    receiver = scripts.start_receiver()
    receiver.wait_until_ready()
    wait_until_consuming(amqp)

    amqp.queue_delete("hello")
    time.sleep(0.5)
    scripts.send("still here")

    assert receiver.wait_for_lines(3)[1:] == [WAITING, " [x] Received 'still here'"]
    assert receiver.stderr == DELETED


def test_receiver_keeps_receiving_however_often_hello_is_deleted(scripts, broker, amqp):
    # RabbitMQ 4.3 deletes a queue in two steps: a declare between them finds the old
    # queue, and the consume after it finds none (404, or 541 "noproc").
    receiver = scripts.start_receiver()
    receiver.wait_until_ready()
    wait_until_consuming(amqp)

    for number in range(20):
        amqp.queue_delete("hello")
        assert scripts.send(f"after deletion {number}").returncode == 0
        wait_for_received(receiver, [f" [x] Received 'after deletion {number}'"], 20)

    assert receiver.process.poll() is None
    assert receiver.stderr_lines[0] == DELETED  # then at most a line a minute
    assert "Traceback" not in receiver.stderr


def test_receiver_closes_the_connection_whose_consumer_was_cancelled(scripts, broker, amqp):
    receiver = scripts.start_receiver()
    receiver.wait_until_ready()
    wait_until_consuming(amqp)

    amqp.queue_delete("hello")
    assert scripts.send("still here").returncode == 0
    wait_for_received(receiver, [" [x] Received 'still here'"], 20)

    # The test's own connection and the new one of receive.py; not the old one.
    deadline = time.monotonic() + 10
    while len(connections(broker)) != 2:
        assert time.monotonic() < deadline, connections(broker)
        time.sleep(0.2)


def connections(broker):
    return broker.ctl("list_connections", "-q", "--no-table-headers", "name").splitlines()


def test_receiver_keeps_going_when_hello_is_deleted_and_the_next_node_is_down(scripts, amqp):
    # After the deletion receive.py tries the next node in AMQP_URL, which does not
    # answer; having been connected, it must go round to the first node again.
    down = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    receiver = scripts.start_receiver(env={"AMQP_URL": f"{scripts.env['AMQP_URL']};{down}"})
    receiver.wait_until_ready()
    wait_until_consuming(amqp)

    amqp.queue_delete("hello")

    assert receiver.wait_for_lines(2)[1] == WAITING
    assert scripts.send("still here").returncode == 0
    assert receiver.wait_for_lines(3)[2] == " [x] Received 'still here'"
    assert receiver.stderr == DELETED


# --- one clear line for every failure -------------------------------------------------


BOTH = pytest.mark.parametrize("script", ["send.py", "receive.py"])


@BOTH
def test_no_broker_at_the_address_says_how_to_start_one(scripts, script):
    port = free_port()
    url = f"amqp://guest:{PASSWORD}@127.0.0.1:{port}/%2F"
    line = scripts.failure_line(script, {"AMQP_URL": url})
    # Where README.md says how to start one.
    assert (
        f"Cannot connect to RabbitMQ at 127.0.0.1:{port}: connection refused (README.md, step 1)"
        in line
    )


@BOTH
def test_wrong_password_names_the_user(scripts, broker, script):
    url = f"amqp://guest:{PASSWORD}@127.0.0.1:{broker.port}/%2F"
    line = scripts.failure_line(script, {"AMQP_URL": url})
    assert f"Cannot log in to RabbitMQ at 127.0.0.1:{broker.port} as 'guest' (" in line
    assert "(403) 'ACCESS_REFUSED" in line  # what RabbitMQ said
    assert "check the user and password" in line


@BOTH
def test_a_login_every_node_refuses_stops_at_once(scripts, broker, script):
    # The nodes of a cluster share their users: each refuses a wrong password.
    refused = [f"amqp://guest:{PASSWORD}@127.0.0.{n}:{broker.port}/%2F" for n in (1, 2)]

    started = time.monotonic()
    line = scripts.failure_line(script, {"AMQP_URL": ";".join(refused)})

    assert time.monotonic() - started < 5
    assert f"Cannot log in to RabbitMQ at 127.0.0.2:{broker.port} as 'guest' (" in line


@BOTH
def test_unknown_virtual_host_says_what_rabbitmq_said(scripts, broker, script):
    url = f"amqp://guest:guest@127.0.0.1:{broker.port}/no-such-vhost"
    line = scripts.failure_line(script, {"AMQP_URL": url})
    assert (
        f"Cannot open the virtual host 'no-such-vhost' on RabbitMQ at 127.0.0.1:{broker.port} ("
        in line
    )
    assert "(530) 'NOT_ALLOWED - vhost no-such-vhost not found'" in line


@pytest.fixture
def full_vhost(broker):
    """A virtual host that guest may use, but that takes no connection (max-connections 0)."""
    broker.ctl("add_vhost", "full")
    broker.ctl("set_permissions", "-p", "full", "guest", ".*", ".*", ".*")
    broker.ctl("set_vhost_limits", "-p", "full", '{"max-connections": 0}')
    yield f"amqp://guest:guest@127.0.0.1:{broker.port}/full"
    broker.ctl("delete_vhost", "full")


@BOTH
def test_a_virtual_host_at_its_connection_limit_says_so(scripts, full_vhost, script):
    line = scripts.failure_line(script, {"AMQP_URL": full_vhost})

    assert "Cannot open the virtual host 'full' on RabbitMQ at " in line
    assert "connection limit (0) is reached" in line  # RabbitMQ's own words


def test_after_a_refused_virtual_host_the_next_node_is_tried(scripts, broker, amqp, full_vhost):
    runner = ScriptRunner(f"{full_vhost};{broker.url}")
    receiver = runner.start_receiver()
    try:
        receiver.wait_until_ready()
        sent = runner.send("through the next node")

        assert (sent.returncode, sent.stderr) == (0, "")
        assert receiver.wait_for_lines(2)[1] == " [x] Received 'through the next node'"
        assert receiver.stderr == ""
    finally:
        runner.stop_all()


@BOTH
@pytest.mark.parametrize(
    ("url", "wrong_part"),
    [
        (
            f"amqp://guest:{PASSWORD}@localhost:notaport/%2F",
            "needs a host name, and a port from 1",
        ),
        (f"amqp://guest:{PASSWORD}@localhost:65536/%2F", "needs a host name, and a port from 1"),
        (f"amqp://guest:{PASSWORD}@[::1/%2F", "needs a host name, and a port from 1"),
        (f"http://guest:{PASSWORD}@localhost/", "URL 1 must begin with amqp:// or amqps://"),
        # The / ends the host part early: zq9 would be taken for the port, xk7@... the vhost.
        (
            "amqp://guest:zq9/xk7@localhost/%2F",
            "in URL 1, encode / ? # [ ] @ and what is not UTF-8 as %XX",
        ),
        (
            "amqp://guest:zq9[xk7@localhost/%2F",
            "in URL 1, encode / ? # [ ] @ and what is not UTF-8 as %XX",
        ),
        ("amqp://guest:zq9%xk7@localhost/%2F", "in URL 1, a lone % in the user name or password"),
        # Bytes that are not UTF-8 (a password typed in another encoding) cannot log in.
        ("amqp://guest:zq9\udce9xk7@localhost/%2F", "and what is not UTF-8 as %XX"),
        (f"amqp://guest:{PASSWORD}@localhost/50%off", "in URL 1, a lone % in the virtual host"),
        (f"amqp://guest:{PASSWORD}@localhost/%2F?x=zq9%xk7", "in URL 1, a lone % in the options"),
        (f"amqp://guest:{PASSWORD}@localhost/%2F?heartbeat=zq9", "an option fails: ValueError"),
        # Options pika cannot read, with the password of a TLS key in them.
        (
            "amqps://guest:guest@localhost/%2F?ssl_options={'password': 'zq9xk7'",
            "in URL 1, an option fails: SyntaxError",
        ),
        (
            "amqps://guest:guest@localhost/%2F?ssl_options={'ca_certs': '/zq9/xk7.pem'}",
            "in URL 1, an option fails: FileNotFoundError",
        ),
        (f"amqp://localhost/%2F;amqp://guest:{PASSWORD}@h:0x1/", "URL 2 needs a host name"),
    ],
    ids=[
        "bad-port",
        "port-out-of-range",
        "unclosed-ipv6-host",
        "not-amqp",
        "slash-in-password",
        "bracket-in-password",
        "lone-percent-in-password",
        "not-utf8-in-password",
        "lone-percent-in-vhost",
        "lone-percent-in-options",
        "bad-option",
        "unreadable-ssl-options",
        "missing-ca-file",
        "second-url",
    ],
)
def test_malformed_url_names_the_wrong_part_without_showing_the_password(
    scripts, script, url, wrong_part
):
    line = scripts.failure_line(script, {"AMQP_URL": url})
    assert line.startswith("AMQP_URL cannot be used: ")
    assert wrong_part in line
    for secret in ("zq9", "xk7", PASSWORD):
        assert secret not in line


@BOTH
def test_host_that_does_not_resolve_is_named(scripts, script):
    url = f"amqp://guest:{PASSWORD}@no-such-host.invalid/%2F"
    line = scripts.failure_line(script, {"AMQP_URL": url})
    assert "Cannot find the host 'no-such-host.invalid'" in line


def test_send_gives_up_when_the_broker_blocks_publishers(scripts, broker, amqp):
    broker.ctl("set_vm_memory_high_watermark", "0")
    try:
        started = time.monotonic()
        line = scripts.failure_line("send.py", {"AMQP_URL": broker.url}, timeout=60)
        assert time.monotonic() - started < 30
    finally:
        broker.ctl("set_vm_memory_high_watermark", "0.4")
    # Its frames were written before the broker stopped reading: once the alarm is gone,
    # RabbitMQ may read and store the message, so send.py cannot say it was not sent.
    where = f"RabbitMQ at 127.0.0.1:{broker.port}"
    assert line.startswith(f"{where} blocked publishers for 10 s: a memory or disk alarm")
    assert line.endswith(
        "while the message was being published: RabbitMQ may have stored it, and "
        "sending it again may deliver it twice."
    )


def test_send_says_when_the_message_is_too_large(scripts, amqp, broker):
    text = "x" * (broker.max_message_size // 2 + 1)  # sent twice: just over the limit

    done = scripts.send(text, text)

    assert done.returncode != 0
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert done.returncode == 1
    assert line.startswith(f"RabbitMQ at 127.0.0.1:{broker.port} refused: PRECONDITION_FAILED")
    assert f"is larger than configured max size {broker.max_message_size}" in line
    assert line.endswith(". The message was not sent.")
    assert waiting_count(amqp) == 0


def test_a_message_the_broker_nacks_may_have_been_stored(scripts, amqp, broker):
    # A full queue that rejects new messages makes the broker nack the publish. RabbitMQ
    # documents a nack as "refuses responsibility", not as "not stored": a queue whose
    # process fails nacks what it may have written. So send.py says it cannot know.
    limits = {"x-max-length": 0, "x-overflow": "reject-publish"}
    amqp.queue_declare("hello", durable=True, arguments=limits)

    done = scripts.send()

    # The first line is the note on the queue's other settings, the second the outcome.
    assert (done.returncode, done.stdout) == (3, "")
    note, line = done.stderr.splitlines()
    assert note.startswith("Note: using the existing queue 'hello'")
    assert line == (
        f"RabbitMQ at 127.0.0.1:{broker.port} nacked the message (a full queue, or a cluster "
        "without a leader), while the message was being published: RabbitMQ may have stored "
        "it, and sending it again may deliver it twice."
    )


# --- a "hello" queue left over with other settings --------------------------------------


@pytest.mark.parametrize(
    "settings",
    [{}, {"durable": True}],
    ids=["2012-text-transient", "classic-durable"],
)
def test_leftover_hello_queue_is_used_as_it_is(scripts, amqp, settings):
    try:
        amqp.queue_declare("hello", **settings)
    except pika.exceptions.AMQPError as refusal:  # RabbitMQ 4.3 closes the connection
        assert "transient_nonexcl_queues" in str(refusal)
        pytest.skip("this broker denies non-durable shared queues (transient_nonexcl_queues)")
    receiver = scripts.start_receiver()
    receiver.wait_until_ready()

    sent = scripts.send()

    assert sent.returncode == 0
    assert sent.stdout == " [x] Sent 'Hello World!'\n"
    assert receiver.wait_for_lines(2)[1] == " [x] Received 'Hello World!'"
    for stderr in (sent.stderr, receiver.stderr):
        assert stderr.startswith("Note: using the existing queue 'hello'")
        assert len(stderr.strip().splitlines()) == 1


def test_text_the_terminal_cannot_show_is_escaped(scripts):
    receiver = scripts.start_receiver(env={"PYTHONIOENCODING": "ascii"})
    receiver.wait_until_ready()

    scripts.send("Привет")
    scripts.send("next")

    assert receiver.wait_for_lines(3)[1:] == [
        " [x] Received '\\u041f\\u0440\\u0438\\u0432\\u0435\\u0442'",
        " [x] Received 'next'",
    ]
    assert receiver.stderr == ""
