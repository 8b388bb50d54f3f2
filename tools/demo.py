"""`make demo`: tutorial one end to end in one command.

It uses the broker at AMQP_URL (by default localhost:5672). When none answers there but
RabbitMQ is installed, it starts a throwaway private broker for the demo, the same way
the tests do, and removes it afterwards.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pika

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT / "tests"))
from private_broker import BrokerError, PrivateBroker, find_server  # noqa: E402


def main():
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
    private = None
    if not answers(url):
        server = find_server()
        if server is None:
            sys.exit(
                "No RabbitMQ answers at AMQP_URL and none is installed here: start one "
                "(README.md, 'Start a broker'), then run make demo again."
            )
        print("No RabbitMQ answers at AMQP_URL: starting a throwaway one for this demo.")
        private = PrivateBroker(server, tempfile.mkdtemp(prefix="hello-demo-"))
        try:
            private.start()
        except BrokerError as error:
            sys.exit(str(error))
        url = private.url
    try:
        run_pair(dict(os.environ, AMQP_URL=url))
    finally:
        if private:
            private.stop()
            shutil.rmtree(private.dir, ignore_errors=True)


def answers(url):
    try:
        pika.BlockingConnection(pika.URLParameters(url)).close()
        return True
    except (pika.exceptions.AMQPError, OSError, ValueError):
        return False


def run_pair(env):
    """What a learner does in two terminals, one after the other."""
    print("terminal 1 $ python receive.py")
    receiver = subprocess.Popen(
        [sys.executable, "receive.py"], cwd=PROJECT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        print(receiver.stdout.readline(), end="")
        print("terminal 2 $ python send.py")
        if subprocess.run([sys.executable, "send.py"], cwd=PROJECT, env=env).returncode:
            sys.exit(1)
        print("terminal 1:")
        for line in receiver.stdout:  # older messages in "hello" come out first
            print(line, end="")
            if "Received 'Hello World!'" in line:
                break
    finally:
        receiver.send_signal(signal.SIGINT)
        receiver.wait(10)


if __name__ == "__main__":
    main()
