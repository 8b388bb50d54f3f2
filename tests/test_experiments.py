"""The READMEs' experiments and demos, played as written against a real broker.

An experiment ("Try it yourself") is a heading, the steps (```bash blocks) and what you
see (a ```text block). Each block of steps begins with the terminal it runs in
(`# terminal 1`); `# press Ctrl+Z` is a key pressed there; after a rabbitmqctl line, a
comment says to run it again after a few seconds if the counts lag. In the text block,
`terminal N $ command` starts a command in terminal N and the lines under it are what it
prints; `terminal N:` is what appears later in terminal N, where receive.py runs. Editing
an expected line, a command, a terminal or a key fails a test here.
"""

import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
from test_readme import PROJECT, READMES

from conftest import ScriptRunner

SECTION = {"README.md": "## Try it yourself", "README.ru.md": "## Попробуйте сами"}
CLUSTER = {"README.md": "### A cluster", "README.ru.md": "### Кластер"}
QUICK_START = {"README.md": "## Quick start", "README.ru.md": "## Быстрый старт"}
# The comments of the steps, in each README's language.
MARKS = {
    "README.md": {
        "terminal": "# terminal ",
        "press": "# press ",
        "again": "run the line above again",
    },
    "README.ru.md": {
        "terminal": "# терминал ",
        "press": "# нажмите ",
        "again": "повторите строку выше",
    },
}
COMMAND = re.compile(r"terminal (\d) \$ (.+)")
LATER = re.compile(r"terminal (\d):")
ACTIVATE = "source .venv/bin/activate"


def section(readme, heading):
    text = (PROJECT / readme).read_text(encoding="utf-8")
    level = heading.split(" ")[0]
    return text.split(heading + "\n", 1)[1].split(f"\n{level} ", 1)[0]


def blocks_of(text):
    return re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)


def experiments(readme):
    """[(steps, transcript)] for each numbered experiment: the steps as (terminal, command
    or key, run again if the counts lag)."""
    marks = MARKS[readme]
    found = []
    for part in re.split(r"^### \d+\. .*$", section(readme, SECTION[readme]), flags=re.M)[1:]:
        steps = []
        blocks = blocks_of(part)
        for kind, body in blocks:
            if kind != "bash":
                continue
            first, *lines = body.splitlines()
            assert first.startswith(marks["terminal"]), f"a block without its terminal: {body}"
            terminal = int(first.removeprefix(marks["terminal"]))
            for line in lines:
                if line.startswith(marks["press"]):
                    key = re.match(r"Ctrl\+[A-Z]", line.removeprefix(marks["press"]))[0]
                    steps.append([terminal, f"[{key}]", False])
                elif marks["again"] in line:
                    assert "rabbitmqctl" in steps[-1][1], line
                    steps[-1][2] = True
                else:
                    assert not line.startswith("#"), f"a comment the tests do not know: {line}"
                    steps.append([terminal, line, False])
        [transcript] = [body.splitlines() for kind, body in blocks if kind == "text"]
        found.append(([tuple(step) for step in steps], transcript))
    return found


def played(transcript):
    """The transcript as (terminal, command or None, expected lines)."""
    steps = []
    for line in transcript:
        command, later = COMMAND.fullmatch(line), LATER.fullmatch(line)
        if command or later:
            match = command or later
            steps.append((int(match[1]), command and command[2], []))
        else:
            steps[-1][2].append(line)
    return steps


def test_each_readme_has_the_four_experiments():
    for readme in READMES:
        assert len(experiments(readme)) == 4, readme


def test_both_readmes_run_the_same_experiments():
    assert experiments("README.md") == experiments("README.ru.md")


@pytest.mark.parametrize("readme", READMES)
def test_each_block_is_complete_for_its_terminal(readme):
    for steps, transcript in experiments(readme):
        # The steps are what the transcript shows, terminal by terminal, key by key.
        shown = [(terminal, command) for terminal, command, _ in played(transcript) if command]
        assert [(terminal, command) for terminal, command, _ in steps] == shown
        for terminal, command, again in steps:
            # Each terminal starts the virtual environment before it runs a script.
            if command.startswith("python "):
                started = (terminal, ACTIVATE, False)
                assert started in steps[: steps.index((terminal, command, again))], command
            # The broker's counts lag: the block says to look again.
            assert again == ("rabbitmqctl" in command), command


@pytest.mark.parametrize("number", [1, 2, 3, 4])
@pytest.mark.parametrize("readme", READMES)
def test_experiment_plays_as_the_readme_writes_it(readme, number, scripts, broker, amqp):
    steps, transcript = experiments(readme)[number - 1]
    again = {command for _, command, repeat in steps if repeat}
    terminals = {}
    for terminal, command, expected in played(transcript):
        if command is None or command == "fg":
            if command == "fg":
                terminals[terminal].signal(signal.SIGCONT)
            assert terminals[terminal].next_lines(len(expected)) == expected
        elif command == ACTIVATE:
            assert expected == []
        elif command == "python receive.py":
            terminals[terminal] = Terminal(scripts.start_receiver())
            assert terminals[terminal].next_lines(len(expected)) == expected
        elif command.startswith("python send.py"):
            done = scripts.run(*shlex.split(command)[1:])
            assert (done.returncode, done.stdout.splitlines()) == (0, expected), done.stderr
        elif command.startswith("sudo rabbitmqctl "):
            expected = [columns(line) for line in expected]
            seconds = 10 if command in again else 0  # "run it again after a few seconds"
            assert rabbitmqctl(broker, shlex.split(command)[2:], expected, seconds) == expected
        elif command == "sudo systemctl restart rabbitmq-server":
            broker.restart()
            assert expected == []
        elif command == "[Ctrl+Z]":
            # Ctrl+Z sends SIGTSTP, which receive.py leaves to its default: stop. The
            # kernel drops SIGTSTP where no shell does job control (CI), so: SIGSTOP.
            terminals[terminal].signal(signal.SIGSTOP)
        elif command == "[Ctrl+C]":
            terminals[terminal].signal(signal.SIGINT)
            assert terminals[terminal].receiver.finish() == 0
        elif command == "kill -9 %1":
            terminals[terminal].signal(signal.SIGKILL)
            assert terminals[terminal].receiver.finish() == -signal.SIGKILL
        else:
            pytest.fail(f"a command the experiments do not know: {command}")
    time.sleep(0.5)
    for terminal in terminals.values():
        assert terminal.nothing_more(), terminal.receiver.lines
        assert terminal.receiver.process.poll() is not None, "the steps leave receive.py running"


def rabbitmqctl(broker, args, expected, seconds):
    """Its output, compared column by column; looked at again for `seconds` until it shows
    the expected counts, as the README says to do where they lag."""
    deadline = time.monotonic() + seconds
    while True:
        shown = [columns(line) for line in broker.ctl(*args).splitlines()]
        if shown == expected or time.monotonic() > deadline:
            return shown
        time.sleep(0.2)


def columns(line):
    return re.sub(r"\s+", " ", line.strip())


class Terminal:
    """receive.py running in one terminal; tells its new lines from those already seen."""

    def __init__(self, receiver):
        self.receiver = receiver
        self.seen = 0

    def next_lines(self, count):
        lines = self.receiver.wait_for_lines(self.seen + count)[self.seen : self.seen + count]
        self.seen += count
        return lines

    def signal(self, signum):
        self.receiver.signal(signum)

    def nothing_more(self):
        return len(self.receiver.lines) == self.seen and len(self.receiver.arrivals) == self.seen


def script_lines(lines):
    """What send.py and receive.py printed on stdout, without a demo's own lines."""
    return [line for line in lines if line.startswith((" [x]", " [*]"))]


def transcript_of(readme, heading):
    [transcript] = [
        body.splitlines() for kind, body in blocks_of(section(readme, heading)) if kind == "text"
    ][:1]
    return transcript


def run_demo(demo, url, timeout):
    env = dict(os.environ, AMQP_URL=url)
    env.pop("PYTHONUNBUFFERED", None)
    done = subprocess.run(
        [sys.executable, f"tools/{demo}"],
        cwd=PROJECT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()


def test_make_demo_runs_the_pair_on_the_broker_amqp_url_names(broker, amqp):
    # A list of nodes, the first of them down: make demo must find the one that answers.
    makefile = (PROJECT / "Makefile").read_text()
    assert "demo: .venv/installed\n\t$(BIN)/python tools/demo.py\n" in makefile
    down = ScriptRunner(broker.url).env["AMQP_URL"].replace(str(broker.port), "1")

    shown = run_demo("demo.py", f"{down};{broker.url}", 60)

    assert not any("throwaway" in line for line in shown), shown
    for readme in READMES:
        assert script_lines(shown) == script_lines(transcript_of(readme, QUICK_START[readme]))


@pytest.mark.timeout(300)
def test_make_cluster_demo_prints_what_the_readme_shows(broker):
    makefile = (PROJECT / "Makefile").read_text()
    assert "cluster-demo: .venv/installed\n\t$(BIN)/python tools/cluster_demo.py\n" in makefile

    shown = run_demo("cluster_demo.py", "", 240)

    for readme in READMES:
        assert script_lines(shown) == script_lines(transcript_of(readme, CLUSTER[readme]))
    assert shown[-1] == "receive.py printed both: the queue lived on without the killed node."
