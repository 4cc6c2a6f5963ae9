"""`tartarus run` against a server (TARTARUS_URL/TARTARUS_API_KEY set): the same output and exit
codes as embedded mode, and the sandbox is gone afterwards on every path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import TARTARUS
from tests.engine.helpers import tartarus


def live_sandboxes() -> list[dict[str, Any]]:
    proc = tartarus("ps", "--json")
    assert proc.returncode == 0, proc.stderr
    items: list[dict[str, Any]] = json.loads(proc.stdout)
    return items


@pytest.fixture
def server(remote: str) -> Iterator[str]:
    """Server mode for the CLI subprocesses (their env is ours); nothing may be left running."""
    assert os.environ["TARTARUS_URL"] and os.environ["TARTARUS_API_KEY"]
    yield remote
    assert live_sandboxes() == []


def run(*command: str, opts: tuple[str, ...] = (), input: bytes | None = None) -> Any:
    return tartarus("run", "--template", "python", *opts, "--", *command, input=input)


def test_prints_and_exits_zero(server: str) -> None:
    proc = run("python3", "-c", "print(6*7)")
    assert (proc.returncode, proc.stdout) == (0, b"42\n"), proc.stderr


def test_streams_split_and_exit_code_passes_through(server: str) -> None:
    proc = run("sh", "-c", "echo out; echo err >&2; exit 3")
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, b"out\n", b"err\n")


def test_stdin_passes_through(server: str) -> None:
    data = b"hello\n" + bytes(range(256)) * 64
    proc = run("cat", opts=("--stdin",), input=data)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data


def test_stdin_is_empty_without_flag(server: str) -> None:
    proc = run("cat", input=b"not passed")
    assert (proc.returncode, proc.stdout) == (0, b"")


def test_env_and_workdir(server: str) -> None:
    proc = run(
        "sh",
        "-c",
        'echo "$FOO|$BAR|$(pwd)|$(id -u)"',
        opts=("--env", "FOO=bar baz", "-e", "BAR=", "--workdir", "/work/dir"),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"bar baz||/work/dir|1000\n"


def test_output_streams_live(server: str) -> None:
    proc = subprocess.Popen(
        [TARTARUS, "run", "--", "sh", "-c", "echo first; sleep 3; echo second"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    still_running = proc.poll() is None
    rest, err = proc.communicate(timeout=60)
    assert first == b"first\n", err
    assert still_running, "the first line only arrived after the command ended"
    assert (rest, proc.returncode) == (b"second\n", 0)


def test_timeout_kills_and_reports(server: str) -> None:
    start = time.monotonic()
    proc = run("sleep", "30", opts=("--timeout", "2"))
    assert proc.returncode == 124, proc.stderr
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("tartarus: sandbox sb-") and " timed out" in lines[0]
    assert time.monotonic() - start < 25


def test_missing_command_exits_127(server: str) -> None:
    proc = run("no-such-command", "arg")
    assert proc.returncode == 127
    assert b"no-such-command" in proc.stderr and b"not found" in proc.stderr


def test_unknown_template_is_one_line_and_exit_2(server: str) -> None:
    proc = tartarus("run", "--template", "nope", "--", "true")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope" in lines[0], lines


@pytest.mark.parametrize(
    ("opts", "needle"),
    [
        (("--memory", "0"), b"--memory"),
        (("--timeout", "0"), b"--timeout"),
        (("--env", "1BAD=x"), b"environment variable"),
        (("--workdir", "relative"), b"--workdir"),
    ],
)
def test_invalid_options_same_line_as_embedded(
    server: str, opts: tuple[str, ...], needle: bytes
) -> None:
    proc = tartarus("run", *opts, "--", "true")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in proc.stderr, lines


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_interrupt_deletes_the_sandbox(server: str, signum: int) -> None:
    proc = subprocess.Popen(
        [TARTARUS, "run", "--", "sh", "-c", "echo ready; sleep 60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == b"ready\n"
        assert len(live_sandboxes()) == 1
        proc.send_signal(signum)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
