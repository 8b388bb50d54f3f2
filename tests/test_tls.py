"""amqps:// as hosted brokers hand it out: TLS, verified, against a private TLS broker."""

import pika
import pytest

from conftest import PASSWORD, ScriptRunner


@pytest.fixture
def tls_scripts(tls_broker):
    """The scripts pointed at the TLS broker, its test CA trusted the standard way."""
    connection = pika.BlockingConnection(tls_broker.parameters)
    connection.channel().queue_delete("hello")
    connection.close()
    runner = ScriptRunner(tls_broker.url)
    runner.env["SSL_CERT_FILE"] = str(tls_broker.ca_file)
    yield runner
    runner.stop_all()


def test_round_trip_over_amqps_with_a_private_ca(tls_scripts):
    receiver = tls_scripts.start_receiver()
    receiver.wait_until_ready()

    sent = tls_scripts.send("over TLS")

    assert (sent.returncode, sent.stdout, sent.stderr) == (0, " [x] Sent 'over TLS'\n", "")
    assert receiver.wait_for_lines(2)[1] == " [x] Received 'over TLS'"
    assert receiver.stderr == ""


BOTH = pytest.mark.parametrize("script", ["send.py", "receive.py"])


@BOTH
def test_untrusted_certificate_says_how_to_trust_a_private_ca(tls_scripts, tls_broker, script):
    tls_scripts.env.pop("SSL_CERT_FILE")
    url = f"amqps://guest:{PASSWORD}@localhost:{tls_broker.port}/%2F"

    line = tls_scripts.failure_line(script, {"AMQP_URL": url})

    assert line.startswith(f"TLS: RabbitMQ at localhost:{tls_broker.port}'s certificate")
    assert "is not trusted" in line
    assert "SSL_CERT_FILE" in line


@BOTH
def test_host_name_mismatch_names_the_host(tls_scripts, tls_broker, script):
    # The certificate is for "localhost", not for "127.0.0.1".
    url = f"amqps://guest:{PASSWORD}@127.0.0.1:{tls_broker.port}/%2F"

    line = tls_scripts.failure_line(script, {"AMQP_URL": url})

    assert "certificate is not trusted, or not for '127.0.0.1'" in line
    assert "mismatch" in line  # what the check found


@BOTH
def test_amqps_to_a_plain_amqp_port_says_so(tls_scripts, broker, script):
    url = f"amqps://guest:{PASSWORD}@localhost:{broker.port}/%2F"

    line = tls_scripts.failure_line(script, {"AMQP_URL": url})

    assert f"RabbitMQ at localhost:{broker.port} did not answer in TLS" in line
    assert "amqp://" in line


@BOTH
def test_plain_amqp_to_a_tls_port_says_so(tls_scripts, tls_broker, script):
    url = f"amqp://guest:{PASSWORD}@localhost:{tls_broker.port}/%2F"

    line = tls_scripts.failure_line(script, {"AMQP_URL": url})

    assert f"RabbitMQ at localhost:{tls_broker.port} does not speak AMQP 0-9-1" in line
    assert "for TLS, use amqps://" in line


def test_receiver_over_tls_reconnects_after_a_broker_restart(tls_scripts, tls_broker):
    receiver = tls_scripts.start_receiver()
    receiver.wait_until_ready()

    tls_broker.restart()
    sent = tls_scripts.send("after the restart")

    assert sent.returncode == 0
    assert receiver.wait_for_lines(3, timeout=30)[1:] == [
        " [*] Waiting for messages. To exit press CTRL+C",
        " [x] Received 'after the restart'",
    ]
    [lost] = receiver.stderr_lines
    assert "Lost the connection" in lost


@BOTH
def test_url_options_cannot_turn_certificate_checks_off(tls_scripts, tls_broker, script):
    # pika reads ssl_options from the URL; protocol 2 (PROTOCOL_TLS) checks nothing.
    options = f"{{'protocol': 2, 'ca_certs': '{tls_broker.ca_file}'}}"
    url = f"amqps://guest:{PASSWORD}@localhost:{tls_broker.port}/%2F?ssl_options={options}"

    line = tls_scripts.failure_line(script, {"AMQP_URL": url})

    assert "URL 1's ssl_options turn off the check of the broker's certificate" in line
