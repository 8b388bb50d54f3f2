"""`make cluster-demo`: the pair on a three-node cluster, one node killed in the middle.

It starts three throwaway RabbitMQ nodes from the installed rabbitmq-server, joins them into
a cluster, runs receive.py with all three in AMQP_URL, sends a message, kills (kill -9) the
node receive.py is connected to, sends another, shows that receive.py printed both, and
removes the nodes.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from demo import PROJECT, show_until, start_receive_py
from private_broker import BrokerError, Cluster, find_server


def main():
    # Line by line, even into a pipe: the scripts' own lines go straight to the same stdout.
    sys.stdout.reconfigure(line_buffering=True)
    server = find_server()
    if server is None:
        sys.exit("make cluster-demo needs RabbitMQ installed here (README.md, 'A cluster').")
    print("Starting three throwaway RabbitMQ nodes and joining them into a cluster...")
    cluster = Cluster(server, tempfile.mkdtemp(prefix="hello-cluster-demo-"))
    try:
        cluster.start()
        run_on_cluster(cluster)
    except BrokerError as error:
        sys.exit(str(error))
    finally:
        cluster.stop()
        shutil.rmtree(cluster.nodes[0].dir.parent, ignore_errors=True)


def run_on_cluster(cluster):
    env = dict(os.environ, AMQP_URL=cluster.url())
    first = cluster.nodes[0]
    print(f"AMQP_URL lists the three nodes: {cluster.url()}")
    receiver, lines = start_receive_py(env)
    try:
        send(env, "before the failure")
        if not show_until(lines, "Received 'before the failure'"):
            sys.exit("receive.py did not print the first message.")
        print(f"$ kill -9 the node at port {first.port}: the first in AMQP_URL, so receive.py's")
        first.kill()
        print("  (the cluster elects a new leader for the queue 'hello' among the others)")
        wait_for_new_leader(cluster, first)
        send(env, "after the failure")
        if not show_until(lines, "Received 'after the failure'"):
            sys.exit("receive.py did not print the second message.")
        print("receive.py printed both: the queue lived on without the killed node.")
    finally:
        receiver.send_signal(signal.SIGINT)
        receiver.wait(10)


def send(env, text):
    print(f"terminal 2 $ python send.py {text}")
    if subprocess.run([sys.executable, "send.py", text], cwd=PROJECT, env=env).returncode:
        sys.exit(1)  # send.py said why
    print("terminal 1:")


def wait_for_new_leader(cluster, dead, timeout=30):
    deadline = time.monotonic() + timeout
    while cluster.leader() is dead:
        if time.monotonic() > deadline:
            raise BrokerError("no new leader for 'hello' within 30 s")
        time.sleep(0.2)


if __name__ == "__main__":
    main()
