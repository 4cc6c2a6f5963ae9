"""`pause`, `resume`, `terminate` in both modes (embedded engine and a server), with the same
output; and their errors as one `error:` line from the real `tartarus` command."""

from __future__ import annotations

import json
import subprocess

from click.testing import CliRunner, Result

from tartarus.cli.lifecycle import pause, resume, terminate
from tartarus.cli.main import COMMANDS
from tartarus.cli.sandbox import create, exec_, inspect, kill
from tests.conftest import TARTARUS


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result.stdout


def _record(cli: CliRunner, sid: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(ok(cli.invoke(inspect, [sid])))
    return data


def test_pause_resume_terminate_in_both_modes(mode: str, cli: CliRunner) -> None:
    sid = ok(cli.invoke(create, ["-t", "python", "--timeout", "120"])).strip()
    other = ok(cli.invoke(create, ["-t", "python", "--timeout", "120"])).strip()
    try:
        assert ok(cli.invoke(pause, [sid, other])) == f"{sid}\n{other}\n"
        assert _record(cli, sid)["state"] == "paused"  # kept paused across CLI calls

        blocked = cli.invoke(exec_, [sid, "--", "true"])
        assert blocked.exit_code == 1 and "paused" in blocked.stderr, blocked.stderr
        again = cli.invoke(pause, [sid])
        assert again.exit_code == 1
        assert again.stderr.strip().endswith(f"sandbox {sid} is already paused")

        assert ok(cli.invoke(resume, [sid])) == f"{sid}\n"
        hi = cli.invoke(exec_, [sid, "--", "echo", "hi"])
        assert (hi.exit_code, hi.stdout) == (0, "hi\n")
        running = cli.invoke(resume, [sid])
        assert running.exit_code == 1 and "not paused" in running.stderr

        assert ok(cli.invoke(terminate, ["--grace", "5", sid, other])) == f"{sid}\n{other}\n"
        for ended in (sid, other):  # the paused one is thawed, then terminated
            record = _record(cli, ended)
            assert (record["state"], record["reason"]) == (
                "killed",
                "terminated: ended within grace",
            )
    finally:
        cli.invoke(kill, [sid, other])


def test_bad_input(mode: str, cli: CliRunner) -> None:
    for command in (pause, resume, terminate):
        missing = cli.invoke(command, ["sb-000000000000"])
        assert missing.exit_code == 2 and "sb-000000000000" in missing.stderr
        assert cli.invoke(command, []).exit_code == 2  # an id is required
    assert cli.invoke(terminate, ["--grace", "-1", "sb-000000000000"]).exit_code == 2
    assert cli.invoke(terminate, ["--grace", "soon", "sb-000000000000"]).exit_code == 2


def test_real_command_errors_are_one_line(embedded: str) -> None:
    assert {"pause", "resume", "terminate"} <= set(COMMANDS)
    for argv in (["pause", "sb-000000000000"], ["terminate", "--grace", "-1", "sb-1"]):
        proc = subprocess.run([TARTARUS, *argv], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
