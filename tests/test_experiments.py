"""The READMEs' blocks, pasted into new terminals, and their demos, played against a real
broker.

An experiment ("Try it yourself") is a heading, the steps (```bash blocks) and what you
see (a ```text block). Each block of steps begins with the terminal it runs in
(`# terminal 1`); `# press Ctrl+Z` is a key pressed there; after a rabbitmqctl line, or a
receive.py that the broker's restart may refuse, a comment says to run it again after a
few seconds. In the text block, `terminal N $ command` is a command in terminal N and the
lines under it are what it prints (stdout and stderr, as a terminal shows them);
`terminal N:` is what appears later in terminal N. Commands that print nothing (cd,
source) are left out of it. Editing an expected line, a command, a terminal or a key
fails a test here.

Each terminal is a new bash, as a new terminal starts: in a home folder of the test's own
that holds the clone as ~/hello-rabbitmq, with nothing activated and python not on PATH.
The one thing it has that a learner's would not is AMQP_URL, naming the test's private
broker. The broker's CLI lines (sudo rabbitmqctl, sudo systemctl restart) are played on
that broker; the shell's job control (Ctrl+Z, fg, kill -9 %1) by signals to the program
the terminal runs.
"""

import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import pika
import pytest
from test_readme import PROJECT, READMES, blocks

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
# How every block for a new terminal begins: a new terminal starts in the home folder.
NEW_TERMINAL = ["cd ~/hello-rabbitmq", "source .venv/bin/activate"]
WAITING = " [*] Waiting for messages. To exit press CTRL+C"
SENTINEL = re.compile(r"<<done (\d+)>>")


def section(readme, heading):
    text = (PROJECT / readme).read_text(encoding="utf-8")
    level = heading.split(" ")[0]
    return text.split(heading + "\n", 1)[1].split(f"\n{level} ", 1)[0]


def blocks_of(text):
    return re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)


def experiments(readme):
    """[(steps, transcript)] for each numbered experiment: the steps as (terminal, command
    or key, run again if it fails or the counts lag)."""
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
        # The steps are what the transcript shows, terminal by terminal and key by key,
        # but for the commands that print nothing.
        shown = [(terminal, command) for terminal, command, _ in played(transcript) if command]
        done = [(terminal, c) for terminal, c, _ in steps if c not in NEW_TERMINAL]
        assert done == shown
        for number in {terminal for terminal, _, _ in steps}:
            # A new terminal goes to the clone and starts the virtual environment first.
            commands = [command for terminal, command, _ in steps if terminal == number]
            assert commands[:2] == NEW_TERMINAL, commands
        for terminal, command, again in steps:
            # The broker's counts lag, and a restarted broker may still refuse: the block
            # says to look again.
            assert again == (
                "rabbitmqctl" in command
                or command == "python receive.py"
                and "restart" in steps[steps.index((terminal, command, again)) - 1][1]
            )


@pytest.mark.parametrize("readme", READMES)
def test_every_block_that_starts_the_virtual_environment_first_goes_to_the_clone(readme):
    for block in blocks(readme, "bash"):
        commands = [line for line in block if not line.startswith("#")]
        if NEW_TERMINAL[1] in commands:  # a block a reader may paste into a new terminal
            assert commands[0] == NEW_TERMINAL[0], block


class Terminal:
    """A new terminal: bash in a home folder of the test's own, nothing activated. What it
    prints, stdout and stderr together, as a terminal shows it, line by line."""

    def __init__(self, home, url):
        env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        self.shell = subprocess.Popen(
            ["bash", "--norc", "--noprofile"],
            cwd=home,
            env=dict(env, AMQP_URL=url),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.shell.stdout:
            self.lines.put(line.rstrip("\n"))

    def type(self, command):
        """Run a command, and then tell when it has ended (SENTINEL, with its status)."""
        self.shell.stdin.write(f'{command}\necho "<<done $?>>"\n')
        self.shell.stdin.flush()

    def next_lines(self, count, timeout=30):
        """The next `count` lines it shows; a job message of bash's is not one."""
        lines = []
        deadline = time.monotonic() + timeout
        while len(lines) < count:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"the terminal showed only {lines}") from None
            if not re.match(r"bash: line \d+: +\d+ Killed", line):
                lines.append(line)
        return lines

    def until_done(self, timeout=30):
        """The lines until the command that runs ends, and its exit status."""
        lines = []
        while True:
            [line] = self.next_lines(1, timeout)
            done = SENTINEL.fullmatch(line)
            if done:
                return lines, int(done[1])
            lines.append(line)

    def run(self, command, timeout=30):
        self.type(command)
        return self.until_done(timeout)

    def program(self):
        """The process id of the program that runs in it (receive.py, say)."""
        deadline = time.monotonic() + 10
        while True:
            path = f"/proc/{self.shell.pid}/task/{self.shell.pid}/children"
            with open(path) as children:
                found = children.read().split()
            if found:
                return int(found[0])
            assert time.monotonic() < deadline, "nothing runs in this terminal"
            time.sleep(0.05)

    def signal(self, signum):
        os.kill(self.program(), signum)

    def close(self):
        for pid in open(f"/proc/{self.shell.pid}/task/{self.shell.pid}/children").read().split():
            os.kill(int(pid), signal.SIGKILL)
        self.shell.kill()
        self.shell.wait()


@pytest.fixture
def new_terminal(broker, tmp_path):
    """Opens new terminals, as a learner does, each starting in the same home folder."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "hello-rabbitmq").symlink_to(PROJECT)
    opened = []

    def open_one():
        opened.append(Terminal(home, broker.url))
        return opened[-1]

    yield open_one
    for terminal in opened:
        terminal.close()


@pytest.mark.parametrize("number", [1, 2, 3, 4])
@pytest.mark.parametrize("readme", READMES)
def test_experiment_plays_as_the_readme_writes_it(readme, number, broker, amqp, new_terminal):
    steps, transcript = experiments(readme)[number - 1]
    terminals = {}

    def terminal(number):
        if number not in terminals:
            terminals[number] = new_terminal()
        return terminals[number]

    try:
        for at, command, expected in played(transcript):
            if command is None:  # what appears later in that terminal, where receive.py runs
                assert terminals[at].next_lines(len(expected)) == expected
                continue
            while steps[0][1] in NEW_TERMINAL:  # they print nothing: not in the transcript
                assert terminal(steps[0][0]).run(steps.pop(0)[1]) == ([], 0)
            number, step, again = steps.pop(0)
            assert (number, step) == (at, command)
            play(command, expected, again, terminal(at), broker)
        assert steps == []
        time.sleep(0.5)
        for shell in terminals.values():
            assert shell.lines.empty(), shell.next_lines(1)
    finally:
        broker.wait_until_up()  # a restart in the steps may still be under way


BY_HAND = {"README.md": "### The same by hand", "README.ru.md": "### То же самое вручную"}
INSTALL = ["python3 -m venv .venv", "pip install -r requirements.txt"]


@pytest.mark.parametrize("readme", READMES)
def test_the_steps_by_hand_play_in_new_terminals(readme, broker, amqp, new_terminal):
    # Steps 2 and 3 in a first terminal, step 4 and your own text in a second. The clone
    # has its virtual environment already: of step 2, only the lines that use it run.
    found = blocks_of(section(readme, BY_HAND[readme]).split("\n## ")[0])
    install, consume, produce, own = [body.splitlines() for kind, body in found if kind == "bash"]
    waiting, sent, received, sent_own = [
        body.splitlines() for kind, body in found if kind == "text"
    ]
    first, second = new_terminal(), new_terminal()

    for command in install:
        if command not in INSTALL:
            assert first.run(command) == ([], 0), command
    [command] = consume
    start_receiver(first, False, broker, command)
    assert [WAITING] == waiting
    for command in produce[:-1]:
        assert second.run(command) == ([], 0), command
    assert second.run(produce[-1]) == (sent, 0)
    assert first.next_lines(1) == received
    [command] = own
    assert second.run(command) == (sent_own, 0)
    assert first.next_lines(1) == [sent_own[0].replace("Sent", "Received")]


def play(command, expected, again, shell, broker):
    """Play one command or key in its terminal, and check what it shows there."""
    if command == "python receive.py":
        start_receiver(shell, again, broker)
        assert [WAITING, *shell.next_lines(len(expected) - 1)] == expected
    elif command.startswith("python send.py"):
        assert shell.run(command) == (expected, 0)
    elif command.startswith("sudo rabbitmqctl "):
        expected = [columns(line) for line in expected]
        seconds = 10 if again else 0  # "run it again after a few seconds"
        assert rabbitmqctl(broker, shlex.split(command)[2:], expected, seconds) == expected
    elif command == "sudo systemctl restart rabbitmq-server":
        broker.stop()
        broker.launch()  # as docker restart does: back before the broker takes connections
        assert expected == []
    elif command == "[Ctrl+Z]":
        # Ctrl+Z stops what runs in the terminal: SIGSTOP here, as the kernel drops SIGTSTP
        # where no shell does job control.
        shell.signal(signal.SIGSTOP)
        assert expected == []
    elif command == "fg":
        shell.signal(signal.SIGCONT)
        assert shell.next_lines(len(expected)) == expected
    elif command == "[Ctrl+C]":
        shell.signal(signal.SIGINT)
        assert shell.until_done() == (expected, 0)
    elif command == "kill -9 %1":
        shell.signal(signal.SIGKILL)
        assert shell.until_done() == ([], 128 + signal.SIGKILL)
    else:
        pytest.fail(f"a command the experiments do not know: {command}")


def start_receiver(shell, again, broker, command="python receive.py"):
    """Type python receive.py until it is waiting for messages: once, or, where the block
    says to run it again (the broker restarts), every two seconds for a minute. It is
    consuming a moment after it says so: wait for that, as a learner is slower."""
    deadline = time.monotonic() + 60
    before = consumer_count(broker) if not again else 0
    while True:
        shell.type(command)
        [first] = shell.next_lines(1)
        if first == WAITING:
            break
        rest, status = shell.until_done()
        assert again and status == 1 and time.monotonic() < deadline, (first, rest, status)
        time.sleep(2)
    deadline = time.monotonic() + 10
    while consumer_count(broker) <= before:
        assert time.monotonic() < deadline, "receive.py did not start consuming"
        time.sleep(0.05)


def consumer_count(broker):
    """How many consumers "hello" has now; 0 if there is no such queue yet."""
    connection = pika.BlockingConnection(broker.parameters)
    try:
        return connection.channel().queue_declare("hello", passive=True).method.consumer_count
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        connection.close()


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
