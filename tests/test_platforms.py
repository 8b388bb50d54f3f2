"""Where learners run the pair: every Python from 3.9 on, and under a debugger."""

import glob
import os
import shutil
import subprocess
import sys
import time

import pika
import pytest

from conftest import PROJECT, ScriptRunner, patched_script, settled_count
from fault_proxy import FaultProxy

VERSIONS = ["3.9", "3.10", "3.11", "3.12", "3.13", "3.14"]


def interpreter(version):
    """A Python of that version on this machine: one of pyenv's, or one on PATH (not a
    pyenv shim, which fails for a version that is not selected)."""
    pyenv = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python3")))
    found = shutil.which(f"python{version}")
    return pyenv[-1] if pyenv else found if found and "shims" not in found else None


@pytest.fixture(scope="module")
def pika_alone(tmp_path_factory):
    """A directory holding only pika, the one package the scripts need (pure Python), for
    PYTHONPATH: any interpreter runs them with it."""
    directory = tmp_path_factory.mktemp("pika")
    shutil.copytree(os.path.dirname(pika.__file__), directory / "pika")
    return str(directory)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_pair_runs_on_each_python(scripts, amqp, pika_alone, version):
    python = interpreter(version)
    if python is None:
        pytest.skip(f"Python {version} is not installed here")
    scripts.env["PYTHONPATH"] = pika_alone
    receiver = scripts.start_receiver(python=python)
    receiver.wait_until_ready()

    sent = scripts.run("send.py", f"from Python {version}", python=python)
    refused = scripts.run("send.py", python=python, env={"AMQP_URL": "amqp://127.0.0.1:1/"})

    assert (sent.returncode, sent.stdout, sent.stderr) == (
        0,
        f" [x] Sent 'from Python {version}'\n",
        "",
    )
    assert receiver.wait_for_lines(2)[1] == f" [x] Received 'from Python {version}'"
    assert refused.returncode == 1
    assert refused.stderr.startswith("Cannot connect to RabbitMQ at 127.0.0.1:1: connection")
    assert refused.stderr.endswith("The message was not sent.\n")


def test_a_learner_paused_in_a_debugger_gets_the_ordinary_run(scripts, amqp, tmp_path):
    # pdb stops in main(); the learner looks around for longer than the bound on send.py's
    # wait (shortened to 2 s here), then continues.
    script = patched_script(tmp_path, "send.py", {"SEND_TIMEOUT = 25": "SEND_TIMEOUT = 2"})
    pdb = subprocess.Popen(
        [sys.executable, "-m", "pdb", script, "looked at"],
        cwd=PROJECT,
        env=scripts.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pdb.stdin.write("break main\ncontinue\np node.host\n")
    pdb.stdin.flush()
    time.sleep(4)
    pdb.stdin.write("continue\n")
    pdb.stdin.flush()
    stdout, stderr = pdb.communicate(timeout=30)

    assert pdb.returncode == 0, stderr
    assert " [x] Sent 'looked at'" in stdout
    assert "Traceback" not in stdout + stderr
    assert settled_count(amqp) == 1


def test_under_a_profiler_the_bound_still_tells_the_truth(broker, amqp, tmp_path):
    # cProfile runs send.py under a main() of its own. RabbitMQ never confirms (a proxy
    # holds the confirm back): the bound, shortened to 2 s, ends the run, and what it says
    # must come from how far send.py got, not from whatever main() is on the stack.
    script = patched_script(tmp_path, "send.py", {"SEND_TIMEOUT = 25": "SEND_TIMEOUT = 2"})
    amqp.queue_declare("hello", durable=True, arguments={"x-queue-type": "quorum"})
    proxy = FaultProxy(broker.port, ("Basic.Ack", 1), "silent")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "cProfile", "-o", str(tmp_path / "profile"), script, "m"],
            cwd=PROJECT,
            env=ScriptRunner(proxy.url()).env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        proxy.stop()

    assert (done.returncode, done.stdout) == (3, "")
    assert done.stderr.startswith("No answer from RabbitMQ at 127.0.0.1:")
    assert done.stderr.endswith("sending it again may deliver it twice.\n")
