"""The READMEs' "Try it yourself": each experiment played as written against a real broker.

An experiment is a heading, the commands to paste (```bash blocks) and a transcript
(a ```text block): `terminal N $ command` starts a command in terminal N and the lines
under it are what it prints; `terminal N:` is what appears later in terminal N, where
receive.py runs. Editing an expected line, or a command, fails a test here.
"""

import re
import shlex
import signal
import time

import pytest
from cluster_demo import run_on_cluster
from test_readme import PROJECT, READMES

SECTION = {"README.md": "## Try it yourself", "README.ru.md": "## Попробуйте сами"}
COMMAND = re.compile(r"terminal (\d) \$ (.+)")
LATER = re.compile(r"terminal (\d):")
KEYS = "[Ctrl+Z]"  # a key pressed, not a command to paste


def experiments(readme):
    """[(commands, transcript)] for each numbered experiment of the README's section."""
    text = (PROJECT / readme).read_text(encoding="utf-8")
    section = text.split(SECTION[readme] + "\n", 1)[1].split("\n## ", 1)[0]
    found = []
    for part in re.split(r"^### \d+\. .*$", section, flags=re.M)[1:]:
        blocks = re.findall(r"^```(\w*)\n(.*?)^```", part, re.S | re.M)
        commands = [line for kind, body in blocks if kind == "bash" for line in body.splitlines()]
        [transcript] = [body.splitlines() for kind, body in blocks if kind == "text"]
        found.append((commands, transcript))
    return found


def steps(transcript):
    """The transcript as (terminal, command or None, expected lines)."""
    played = []
    for line in transcript:
        command, later = COMMAND.fullmatch(line), LATER.fullmatch(line)
        if command or later:
            match = command or later
            played.append((int(match[1]), command and command[2], []))
        else:
            played[-1][2].append(line)
    return played


def test_each_readme_has_the_five_experiments():
    for readme in READMES:
        assert len(experiments(readme)) == 5, readme


def test_both_readmes_run_the_same_experiments():
    assert experiments("README.md") == experiments("README.ru.md")


@pytest.mark.parametrize("number", [1, 2, 3, 4])
@pytest.mark.parametrize("readme", READMES)
def test_experiment_plays_as_the_readme_writes_it(readme, number, scripts, broker, amqp):
    commands, transcript = experiments(readme)[number - 1]
    played = steps(transcript)
    assert commands == [command for _, command, _ in played if command not in (None, KEYS)]
    terminals = {}
    for terminal, command, expected in played:
        if command is None or command == "fg":
            if command == "fg":
                terminals[terminal].signal(signal.SIGCONT)
            assert terminals[terminal].next_lines(len(expected)) == expected
        elif command == "python receive.py":
            terminals[terminal] = Terminal(scripts.start_receiver())
            assert terminals[terminal].next_lines(len(expected)) == expected
        elif command.startswith("python send.py"):
            done = scripts.run(*shlex.split(command)[1:])
            assert (done.returncode, done.stdout.splitlines()) == (0, expected), done.stderr
        elif command.startswith("sudo rabbitmqctl "):
            expected = [columns(line) for line in expected]
            assert rabbitmqctl(broker, shlex.split(command)[2:], expected) == expected
        elif command == "sudo systemctl restart rabbitmq-server":
            broker.restart()
            assert expected == []
        elif command == KEYS:
            # Ctrl+Z sends SIGTSTP, which receive.py leaves to its default: stop. The
            # kernel drops SIGTSTP where no shell does job control (CI), so: SIGSTOP.
            terminals[terminal].signal(signal.SIGSTOP)
        elif command == "kill -9 %1":
            terminals[terminal].signal(signal.SIGKILL)
            assert terminals[terminal].receiver.finish() == -signal.SIGKILL
        else:
            pytest.fail(f"a command the experiments do not know: {command}")
    time.sleep(0.5)
    for terminal in terminals.values():
        assert terminal.nothing_more(), terminal.receiver.lines


@pytest.mark.parametrize("readme", READMES)
def test_cluster_experiment_prints_what_the_readme_shows(readme, cluster, hello, capfd):
    commands, transcript = experiments(readme)[4]
    assert commands == ["make cluster-demo"]
    makefile = (PROJECT / "Makefile").read_text()
    assert "cluster-demo: .venv/installed\n\t$(BIN)/python tools/cluster_demo.py\n" in makefile

    run_on_cluster(cluster)

    shown = capfd.readouterr().out.splitlines()
    assert script_lines(shown) == script_lines(transcript)


def script_lines(lines):
    """What send.py and receive.py printed on stdout, without the demo's own lines."""
    return [line for line in lines if line.startswith((" [x]", " [*]"))]


def rabbitmqctl(broker, args, expected, timeout=10):
    """Its output, once it shows the expected counts (the broker updates them a moment
    after a delivery or an ack), compared column by column."""
    deadline = time.monotonic() + timeout
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
        return self.receiver.process.poll() is not None or len(self.receiver.arrivals) == self.seen
