"""Tutorial one as a learner runs it: receive.py in one terminal, send.py in another."""

import signal

import pika
import pytest

from conftest import STOPPED

WAITING = " [*] Waiting for messages. To exit press CTRL+C"


def test_receive_first_then_send_prints_the_message(scripts):
    receiver = scripts.start_receiver()
    receiver.wait_until_ready()

    sent = scripts.send()

    assert (sent.returncode, sent.stdout, sent.stderr) == (0, " [x] Sent 'Hello World!'\n", "")
    assert receiver.wait_for_lines(2) == [WAITING, " [x] Received 'Hello World!'"]


def test_message_sent_while_nobody_listens_waits_for_the_receiver(scripts, amqp):
    assert scripts.send().returncode == 0
    assert amqp.queue_declare("hello", passive=True).method.message_count == 1

    receiver = scripts.start_receiver()

    assert receiver.wait_for_lines(2) == [WAITING, " [x] Received 'Hello World!'"]


def test_arguments_are_sent_as_the_text_including_non_ascii(scripts):
    receiver = scripts.start_receiver()
    receiver.wait_until_ready()

    sent = scripts.send("Привет,", "мир!")

    assert sent.stdout == " [x] Sent 'Привет, мир!'\n"
    assert receiver.wait_for_lines(2)[1] == " [x] Received 'Привет, мир!'"


def test_sent_message_is_persistent_utf8_plain_text(scripts, amqp):
    scripts.send("Привет, мир!")

    method, properties, body = amqp.basic_get("hello", auto_ack=True)

    assert body == "Привет, мир!".encode()
    assert properties.delivery_mode == 2
    assert properties.content_type == "text/plain"


@pytest.mark.parametrize("script", ["send.py", "receive.py"])
def test_each_script_declares_hello_as_a_durable_quorum_queue(scripts, amqp, script):
    # The test starts without a queue "hello": only the script can make it.
    if script == "send.py":
        assert scripts.send().returncode == 0
    else:
        scripts.start_receiver().wait_until_ready()

    channel = amqp.connection.channel()
    channel.queue_declare("hello", passive=True)  # raises if the script made none
    # Declaring with other settings than the existing queue's fails: these pass only when
    # the script declared exactly a durable quorum queue.
    channel.queue_declare("hello", durable=True, arguments={"x-queue-type": "quorum"})
    with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="PRECONDITION_FAILED"):
        channel.queue_declare("hello", durable=True, arguments={"x-queue-type": "classic"})


def test_body_that_is_not_utf8_is_shown_escaped_and_receiving_goes_on(scripts, amqp):
    receiver = scripts.start_receiver()
    receiver.wait_until_ready()

    amqp.basic_publish("", "hello", b"caf\xe9")
    scripts.send("after")

    assert receiver.wait_for_lines(3)[1:] == [
        " [x] Received 'caf\\udce9'",
        " [x] Received 'after'",
    ]


def test_lines_reach_a_pipe_as_they_happen_without_pythonunbuffered(scripts):
    # The runner pipes stdout and removes PYTHONUNBUFFERED: each line must arrive while
    # receive.py is still running, not when it exits.
    receiver = scripts.start_receiver()
    receiver.wait_until_ready()

    for number in range(1, 4):
        scripts.send(f"message {number}")
        assert receiver.wait_for_lines(number + 1)[-1] == f" [x] Received 'message {number}'"
    assert receiver.process.poll() is None


def test_ctrl_c_exits_0_without_traceback_or_lost_lines(scripts):
    receiver = scripts.start_receiver()
    receiver.wait_until_ready()
    scripts.send("one")
    scripts.send("two")
    receiver.wait_for_lines(3)

    receiver.signal(signal.SIGINT)

    assert receiver.finish() == 0
    assert receiver.lines == [WAITING, " [x] Received 'one'", " [x] Received 'two'"]
    assert "Traceback" not in receiver.stderr


def test_sigint_stops_a_receiver_that_a_script_started_in_the_background(scripts):
    # A non-interactive shell starts "python receive.py &" with SIGINT ignored.
    receiver = scripts.start_receiver(sigint=signal.SIG_IGN)
    receiver.wait_until_ready()

    receiver.signal(signal.SIGINT)

    assert receiver.finish() == 0
    assert receiver.stderr_lines == [STOPPED]
