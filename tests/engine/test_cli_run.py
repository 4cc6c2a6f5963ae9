"""`tartarus run` end to end: output, exit codes, streams, stdin, env, workdir, bad input."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.conftest import TARTARUS
from tests.engine.helpers import run, tartarus


def test_prints_and_exits_zero(runtime: str) -> None:
    proc = run(runtime, "python3", "-c", "print(6*7)")
    assert proc.stdout == b"42\n", proc.stderr
    assert proc.returncode == 0


def test_exit_code_passes_through(runtime: str) -> None:
    assert run(runtime, "sh", "-c", "exit 3").returncode == 3


def test_stdout_and_stderr_go_to_matching_streams(runtime: str) -> None:
    proc = run(runtime, "sh", "-c", "echo out; echo err >&2; echo out2")
    assert proc.stdout == b"out\nout2\n"
    assert proc.stderr == b"err\n"


def test_output_streams_live(runtime: str) -> None:
    """The first line arrives while the command is still running, not at the end."""
    proc = subprocess.Popen(
        [
            TARTARUS,
            "run",
            "--runtime",
            runtime,
            "--",
            "sh",
            "-c",
            "echo first; sleep 3; echo second",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    still_running = proc.poll() is None
    rest, err = proc.communicate(timeout=60)
    assert first == b"first\n", err
    assert still_running, "the first line only arrived after the sandbox ended"
    assert rest == b"second\n"
    assert proc.returncode == 0


def test_stdin_passes_through(runtime: str) -> None:
    data = b"hello\n" + bytes(range(256)) * 64
    proc = run(runtime, "cat", opts=("--stdin",), input=data)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data


def test_stdin_is_empty_without_flag(runtime: str) -> None:
    proc = run(runtime, "cat", input=b"not passed")
    assert proc.returncode == 0
    assert proc.stdout == b""


def test_env_and_workdir(runtime: str) -> None:
    proc = run(
        runtime,
        "sh",
        "-c",
        'echo "$FOO|$BAR|$(pwd)|$(id -u)"',
        opts=("--env", "FOO=bar baz", "-e", "BAR=", "--workdir", "/work/dir"),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"bar baz||/work/dir|1000\n"


def test_default_workdir_is_writable_home(runtime: str) -> None:
    proc = run(runtime, "sh", "-c", "pwd; echo hi > f.txt && cat f.txt")
    assert proc.stdout == b"/home/user\nhi\n", proc.stderr


def test_missing_command_in_sandbox_exits_127(runtime: str) -> None:
    proc = run(runtime, "no-such-command", "arg")
    assert proc.returncode == 127
    assert b"no-such-command" in proc.stderr
    assert b"not found" in proc.stderr


@pytest.mark.parametrize(
    ("opts", "needle"),
    [
        (("--cpu", "-1"), b"--cpu"),
        (("--cpu", "abc"), b"--cpu"),
        (("--memory", "0"), b"--memory"),
        (("--pids", "1"), b"--pids"),
        (("--disk", "0"), b"--disk"),
        (("--timeout", "0"), b"--timeout"),
        (("--env", "NOVALUE"), b"--env"),
        (("--env", "1BAD=x"), b"environment variable"),
        (("--workdir", "relative"), b"--workdir"),
        (("--runtime", "docker"), b"--runtime"),
    ],
)
def test_invalid_options_give_one_line_and_exit_2(opts: tuple[str, ...], needle: bytes) -> None:
    proc = tartarus("run", *opts, "--", "true")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert needle in proc.stderr
    assert lines[0].startswith("error:")


def test_unknown_template_names_the_existing_ones() -> None:
    proc = tartarus("run", "--template", "nope", "--", "true")
    assert proc.returncode == 2
    msg = proc.stderr.decode()
    assert "nope" in msg and "python" in msg and "base" in msg
    assert len(msg.strip().splitlines()) == 1


def test_missing_command_is_a_usage_error() -> None:
    proc = tartarus("run", "--template", "python")
    assert proc.returncode == 2
    assert b"COMMAND" in proc.stderr


def test_help_lists_the_options() -> None:
    proc = tartarus("run", "--help")
    assert proc.returncode == 0
    for flag in (
        b"--template",
        b"--runtime",
        b"--cpu",
        b"--memory",
        b"--pids",
        b"--disk",
        b"--timeout",
        b"--env",
        b"--workdir",
        b"--stdin",
    ):
        assert flag in proc.stdout


def test_timeout_kills_and_reports(runtime: str) -> None:
    start = time.monotonic()
    proc = run(runtime, "sleep", "60", opts=("--timeout", "2"))
    assert proc.returncode == 124
    assert b"timed out" in proc.stderr
    assert time.monotonic() - start < 30
