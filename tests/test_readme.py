"""The READMEs cannot drift from the scripts: what they quote is what the code does."""

import ast
import re
import shlex
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
READMES = ["README.md", "README.ru.md"]
SCRIPTS = ["send.py", "receive.py"]


def blocks(readme, *languages):
    """The fenced code blocks of a README in these languages, each a list of lines."""
    text = (PROJECT / readme).read_text(encoding="utf-8")
    pattern = r"^```(\w*)\n(.*?)^```"
    return [
        body.splitlines()
        for language, body in re.findall(pattern, text, re.S | re.M)
        if language in languages
    ]


def as_pattern(node, template=False):
    """A regular expression for the strings an expression in the scripts can make: an
    f-string, or a str.format template (template=True), its fields matching any text."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        if template:
            return re.sub(r"\\\{.*?\\\}", ".+", re.escape(node.value))
        return re.escape(node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(
            as_pattern(part) if isinstance(part, ast.Constant) else ".+" for part in node.values
        )
    raise AssertionError(f"not a message: {ast.dump(node)}")


def printed(script):
    """(stdout patterns, stderr patterns, stderr pieces) for every line the script can
    print: print() and sys.exit() calls, what explain() or reason() returns, the FAILURES
    table, and a line a timer prints. In send.py, a reason is framed by one of OUTCOMES,
    which says what became of the message: a whole line is each reason in each frame. The
    pieces are the reasons and the frames on their own."""
    tree = ast.parse((PROJECT / script).read_text(encoding="utf-8"))
    stdout, reasons, lines = set(), set(), set()
    assigned = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            assigned[node.targets[0].id] = node.value
        # The line receive.py stops with: line, status = "Stopped; ...", 0
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "(line, status)":
            said = node.value.elts[0] if isinstance(node.value, ast.Tuple) else None
            if isinstance(said, (ast.Constant, ast.JoinedStr)):
                lines.add(as_pattern(said))
    reasons |= {as_pattern(value, template=True) for value in assigned["FAILURES"].values}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in ("explain", "reason"):
            returns = [n.value for n in ast.walk(node) if isinstance(n, ast.Return)]
            # receive.py's explain() returns (line, whether it stops).
            returns = [r.elts[0] if isinstance(r, ast.Tuple) else r for r in returns]
            reasons |= {as_pattern(r) for r in returns if not isinstance(r, (ast.Call, ast.Name))}
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name = ast.unparse(node.func)
        to_stderr = any(ast.unparse(k.value) == "sys.stderr" for k in node.keywords)
        if name == "print" and isinstance(node.args[0], (ast.Constant, ast.JoinedStr)):
            (lines if to_stderr else stdout).add(as_pattern(node.args[0]))
        elif name == "say" and isinstance(node.args[0], (ast.Constant, ast.JoinedStr)):
            lines.add(as_pattern(node.args[0]))  # receive.py's lines while it goes on
        elif name == "sys.exit" and isinstance(node.args[0], (ast.Constant, ast.JoinedStr)):
            lines.add(as_pattern(node.args[0]))
        elif name == "threading.Timer" and ast.unparse(node.args[1]) == "print":
            [line] = node.args[2].elts  # Timer(seconds, print, [line], {"file": sys.stderr})
            lines.add(as_pattern(assigned[line.id]))
    if "OUTCOMES" not in assigned:
        return stdout, lines | reasons, lines | reasons
    outcomes = assigned["OUTCOMES"]
    # The frame of SENT holds why stdout failed, not a reason: a whole line of its own.
    frames = [v.value for k, v in zip(outcomes.keys, outcomes.values) if k.id != "SENT"]
    lines |= {
        as_pattern(v, True) for k, v in zip(outcomes.keys, outcomes.values) if k.id == "SENT"
    }
    framed = {
        re.escape(before) + reason + re.escape(after)
        for before, after in (frame.split("{}") for frame in frames)
        for reason in reasons
    }
    pieces = (
        lines
        | reasons
        | {as_pattern(value, template=True) for value in assigned["OUTCOMES"].values}
    )
    return stdout, lines | framed, pieces


STDOUT = set().union(*(printed(script)[0] for script in SCRIPTS))
STDERR = set().union(*(printed(script)[1] for script in SCRIPTS))
PIECES = set().union(*(printed(script)[2] for script in SCRIPTS))


def troubleshooting_lines(readme):
    text = (PROJECT / readme).read_text(encoding="utf-8")
    return re.findall(r"^\| `(.+?)` \|", text, re.M)


def test_the_scripts_messages_were_found():
    # Guards the extraction itself: an empty set would make the checks below vacuous.
    assert len(STDOUT) == 3
    assert len(STDERR) >= 30
    assert len(PIECES) >= 25


@pytest.mark.parametrize("readme", READMES)
def test_every_output_line_quoted_is_one_the_scripts_print(readme):
    quoted = [
        line
        for block in blocks(readme, "text", "")
        for line in block
        if line.startswith((" [x]", " [*]"))
    ]
    assert quoted
    for line in quoted:
        assert any(re.fullmatch(pattern, line) for pattern in STDOUT), line


@pytest.mark.parametrize("readme", READMES)
def test_troubleshooting_table_lists_only_lines_the_scripts_print(readme):
    lines = troubleshooting_lines(readme)
    assert len(lines) >= len(PIECES) // 2, "the troubleshooting table is not found"
    for line in lines:
        assert any(re.fullmatch(pattern, line) for pattern in STDERR), line


@pytest.mark.parametrize("readme", READMES)
def test_troubleshooting_table_shows_every_line_the_scripts_print(readme):
    lines = troubleshooting_lines(readme)
    for pattern in PIECES:  # each reason, and each frame of send.py's reasons, in some row
        assert any(re.search(pattern, line) for line in lines), pattern


@pytest.mark.parametrize("readme", READMES)
def test_python_quoted_from_the_scripts_is_in_them(readme):
    code = {
        line.strip()
        for script in SCRIPTS
        for line in (PROJECT / script).read_text(encoding="utf-8").splitlines()
    }
    quoted = [line.strip() for block in blocks(readme, "python") for line in block]
    assert quoted
    for line in quoted:
        assert line in code, line


@pytest.mark.parametrize("readme", READMES)
@pytest.mark.parametrize("script", SCRIPTS)
def test_the_code_step_by_step_shows_the_whole_of_main_in_order(readme, script):
    source = (PROJECT / script).read_text(encoding="utf-8")
    tree = ast.parse(source)
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    lines = ast.get_source_segment(source, main).splitlines()
    wanted = [line.strip() for line in lines if line.strip()]
    quoted = iter(line.strip() for block in blocks(readme, "python") for line in block)
    for line in wanted:  # each line of main(), in its order, among the quoted lines
        assert any(line == shown for shown in quoted), line


def commands(readme):
    """Shell lines of a README that run the scripts, the tests or make."""
    return [
        line.strip()
        for block in blocks(readme, "bash", "powershell")
        for line in block
        if re.search(r"\b(send\.py|receive\.py|pytest|make)\b", line)
        and not line.lstrip().startswith("#")  # a comment: a step's note, not a command
    ]


@pytest.mark.parametrize("readme", READMES)
def test_shell_commands_are_ones_the_project_supports(readme):
    makefile = (PROJECT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w.-]+):", makefile, re.M))
    found = commands(readme)
    assert found
    for line in found:
        words = shlex.split(line)
        while words and (re.fullmatch(r"[A-Z_]+=\S*", words[0]) or words[0] == "sudo"):
            words.pop(0)  # VAR=value or sudo before a command
        if words[0] == "make":
            assert set(words[1:]) <= targets, line
        else:
            assert words[0] in ("python", "python3", "py"), line
            assert words[1] in SCRIPTS or words[1:3] == ["-m", "pytest"], line


@pytest.mark.parametrize("readme", READMES)
def test_the_test_commands_given_are_what_ci_runs(readme):
    ci = (PROJECT / ".ci" / "run").read_text()
    assert {"make test", "sudo make test-rabbitmq-4.3"} <= set(commands(readme))
    # .ci/run runs each as the last words of a line: run LABEL VERSIONS COMMAND...
    assert re.search(r" make test$", ci, re.M)
    assert re.search(r" make test-rabbitmq-4\.3$", ci, re.M)


@pytest.mark.parametrize("readme", READMES)
def test_send_commands_given_work(readme, scripts, amqp):
    sends = [line for line in commands(readme) if re.match(r"python3? send\.py", line)]
    assert sends
    for line in sends:
        done = scripts.run(*shlex.split(line)[1:])
        assert done.returncode == 0, (line, done.stderr)
        assert done.stdout.startswith(" [x] Sent '")
    assert amqp.queue_declare("hello", passive=True).method.message_count == len(sends)


def test_readmes_link_to_each_other():
    assert "(README.ru.md)" in (PROJECT / "README.md").read_text(encoding="utf-8")
    assert "(README.md)" in (PROJECT / "README.ru.md").read_text(encoding="utf-8")
