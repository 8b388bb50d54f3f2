"""`make demo`: tutorial one end to end in one command.

It uses the broker at AMQP_URL (by default localhost:5672). When none answers there but
RabbitMQ is installed, it starts a throwaway private broker for the demo, the same way
the tests do, and removes it afterwards.
"""

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pika

from private_broker import BrokerError, PrivateBroker, find_server

PROJECT = Path(__file__).resolve().parent.parent
WAIT = 10  # seconds for receive.py to show a line


def main():
    # Line by line, even into a pipe: the scripts' own lines go straight to the same stdout.
    sys.stdout.reconfigure(line_buffering=True)
    url = os.environ.get("AMQP_URL") or "amqp://guest:guest@localhost:5672/%2F"
    tried = "AMQP_URL" if os.environ.get("AMQP_URL") else "localhost:5672"
    private = None
    if not answers(url):
        server = find_server()
        if server is None:
            sys.exit(
                f"No RabbitMQ answers at {tried}, and none is installed here: start one "
                "(README.md, 'The same by hand', step 1), then run make demo again."
            )
        print(f"No RabbitMQ answers at {tried}: starting a throwaway one for this demo.")
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
    """Whether a node of AMQP_URL answers: it may list the nodes of a cluster, separated by
    ";" (as the scripts read it, a ";" in a password stays in it)."""
    for node in re.split(r";(?=\s*amqps?://)", url):
        try:
            pika.BlockingConnection(pika.URLParameters(node.strip("; "))).close()
            return True
        except Exception:  # noqa: BLE001 - any reason: this node does not answer
            continue
    return False


def run_pair(env):
    """What a learner does in two terminals, one after the other."""
    receiver, lines = start_receive_py(env)
    try:
        print("terminal 2 $ python send.py")
        if subprocess.run([sys.executable, "send.py"], cwd=PROJECT, env=env).returncode:
            sys.exit(1)
        print("terminal 1:")
        if not show_until(lines, "Received 'Hello World!'"):  # older messages come first
            sys.exit(
                f"receive.py did not print the message within {WAIT} s. Is another "
                "receive.py running? It may have taken the message."
            )
    finally:
        print("terminal 1 $ [Ctrl+C]", flush=True)  # receive.py says it stopped, on stderr
        receiver.send_signal(signal.SIGINT)
        receiver.wait(10)


def start_receive_py(env):
    """receive.py as in terminal 1, its lines on a queue; exits if it does not get ready."""
    print("terminal 1 $ python receive.py")
    receiver = subprocess.Popen(
        [sys.executable, "receive.py"], cwd=PROJECT, env=env, stdout=subprocess.PIPE, text=True
    )
    lines = queue.Queue()
    threading.Thread(target=read_lines, args=(receiver.stdout, lines), daemon=True).start()
    if not show_until(lines, "Waiting for messages"):
        receiver.kill()
        sys.exit(1)  # receive.py said why on stderr
    return receiver, lines


def read_lines(stream, lines):
    for line in stream:
        lines.put(line)
    lines.put(None)


def show_until(lines, text):
    """Print receive.py's lines until one contains text; False if it does not come."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            line = lines.get(timeout=max(0, deadline - time.monotonic()))
        except queue.Empty:
            return False
        if line is None:
            return False
        print(line, end="")
        if text in line:
            return True


if __name__ == "__main__":
    main()
