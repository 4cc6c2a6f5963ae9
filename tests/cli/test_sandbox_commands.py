"""`create`, `ps`, `inspect`, `exec`, `logs`, `kill` through CliRunner, in both modes, with the
same output; then what differs: main commands, admin commands, errors."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner, Result

from tartarus.cli import admin
from tartarus.cli.sandbox import create, exec_, inspect, kill, logs, ps
from tests.api.conftest import ApiServer

SANDBOX_KEYS = {
    "id",
    "network",
    "egress",
    "tenant",
    "state",
    "template",
    "runtime",
    "command",
    "env",
    "workdir",
    "metadata",
    "resources",
    "timeout",
    "exit_code",
    "reason",
    "created_at",
    "started_at",
    "finished_at",
    "timings_ms",
    "snapshot",
    "hibernated_at",
    "checkpoint_bytes",
}


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result.stdout


def test_sandbox_lifecycle_same_in_both_modes(mode: str, cli: CliRunner) -> None:
    sid = ok(
        cli.invoke(create, ["-t", "python", "--memory", "256", "-m", "suite=cli", "-e", "A=1"])
    )
    sid = sid.strip()
    assert sid.startswith("sb-") and len(sid) == 15
    try:
        hi = cli.invoke(exec_, [sid, "--", "echo", "hi"])
        assert (hi.exit_code, hi.stdout, hi.stderr) == (0, "hi\n", "")

        mixed = cli.invoke(
            exec_,
            [
                "-e",
                "B=2",
                "-w",
                "/tmp",
                sid,
                "--",
                "sh",
                "-c",
                'echo "$A$B $(pwd)"; echo e >&2; exit 7',
            ],
        )
        assert (mixed.exit_code, mixed.stdout, mixed.stderr) == (7, "12 /tmp\n", "e\n")

        piped = cli.invoke(exec_, ["--stdin", sid, "--", "cat"], input=b"data\x00\xff")
        assert piped.exit_code == 0 and piped.stdout_bytes == b"data\x00\xff"

        late = cli.invoke(exec_, ["--timeout", "1", sid, "--", "sleep", "30"])
        assert late.exit_code == 124

        table = ok(cli.invoke(ps, ["-m", "suite=cli"]))
        header, *rows = table.splitlines()
        assert header.split() == ["ID", "TEMPLATE", "STATE", "RUNTIME", "AGE", "EXIT"]
        assert [r.split()[:3] for r in rows] == [[sid, "python", "running"]]

        [listed] = json.loads(ok(cli.invoke(ps, ["--json", "-m", "suite=cli"])))
        assert set(listed) == SANDBOX_KEYS
        assert listed["resources"]["memory_mb"] == 256 and listed["metadata"] == {"suite": "cli"}

        detail = json.loads(ok(cli.invoke(inspect, [sid])))
        assert set(detail) == SANDBOX_KEYS | {"events"}
        assert [e["to"] for e in detail["events"] if e["kind"] == "state"][-1] == "running"
        assert set(detail["timings_ms"]) >= {"create"}

        assert ok(cli.invoke(logs, [sid])) == ""  # no main command
    finally:
        assert ok(cli.invoke(kill, [sid])) == f"{sid}\n"
    assert ok(cli.invoke(kill, [sid])) == f"{sid}\n"  # idempotent
    assert json.loads(ok(cli.invoke(inspect, [sid])))["state"] == "killed"
    assert ok(cli.invoke(ps, ["-m", "suite=cli", "--json"])) == "[]\n"
    states = [
        s["state"] for s in json.loads(ok(cli.invoke(ps, ["--all", "--json", "-m", "suite=cli"])))
    ]
    assert states[0] == "killed"
    assert [
        json.loads(ok(cli.invoke(ps, ["--state", "killed", "--json", "-m", "suite=cli"])))[0]["id"]
    ] == [sid]


def test_errors_same_in_both_modes(mode: str, cli: CliRunner) -> None:
    missing = cli.invoke(exec_, ["sb-000000000000", "--", "true"])
    assert missing.exit_code == 2 and "sb-000000000000" in missing.stderr
    for command in (inspect, kill, logs):
        assert cli.invoke(command, ["sb-000000000000"]).exit_code == 2
    bad = cli.invoke(create, ["--memory", "1"])
    assert (bad.exit_code, bad.stderr) == (
        2,
        "Error: invalid --memory: Input should be greater than or equal to 16\n",
    )
    assert cli.invoke(create, ["-t", "no-such-template"]).exit_code == 2
    assert cli.invoke(create, ["-e", "novalue"]).exit_code == 2


def test_embedded_refuses_main_command_and_admin(embedded: str, cli: CliRunner) -> None:
    result = cli.invoke(create, ["--", "echo", "hi"])
    assert result.exit_code == 2 and "TARTARUS_URL" in result.stderr
    for args in (["keys", "ls"], ["tenants", "ls"], ["keys", "create", "--tenant", "x"]):
        group = admin.keys if args[0] == "keys" else admin.tenants
        result = cli.invoke(group, args[1:])
        assert result.exit_code == 2, result.output
        assert result.stderr.count("\n") == 1 and "set TARTARUS_URL" in result.stderr


def test_remote_main_command_logs(remote: str, cli: CliRunner) -> None:
    sid = ok(cli.invoke(create, ["--", "sh", "-c", "echo out; echo err >&2"])).strip()
    try:
        followed = cli.invoke(logs, ["-f", sid])
        assert (followed.exit_code, followed.stdout, followed.stderr) == (0, "out\n", "err\n")
        deadline = time.monotonic() + 10
        while json.loads(ok(cli.invoke(inspect, [sid])))["state"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        detail = json.loads(ok(cli.invoke(inspect, [sid])))
        assert (detail["state"], detail["exit_code"], detail["command"][0]) == ("exited", 0, "sh")
        ended = cli.invoke(exec_, [sid, "--", "true"])
        assert ended.exit_code == 1 and ended.stderr.startswith("Error: ")
    finally:
        cli.invoke(kill, [sid])


def test_remote_wrong_key(remote: str, cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TARTARUS_API_KEY", "tt_nope_nope")
    result = cli.invoke(ps, [])
    assert result.exit_code == 1 and result.stderr.startswith("Error: ")


def test_admin_commands(
    api_server: ApiServer, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TARTARUS_URL", api_server.url)
    monkeypatch.setenv("TARTARUS_API_KEY", api_server.admin_key)
    name = f"cli-{time.time_ns()}"
    assert ok(cli.invoke(admin.tenants, ["create", name])) == f"{name}\n"
    assert name in ok(cli.invoke(admin.tenants, ["ls"]))
    assert name in [t["name"] for t in json.loads(ok(cli.invoke(admin.tenants, ["ls", "--json"])))]

    key = ok(cli.invoke(admin.keys, ["create", "--tenant", name, "--name", "ci"])).strip()
    assert key.startswith("tt_")
    [record] = json.loads(ok(cli.invoke(admin.keys, ["ls", "--tenant", name, "--json"])))
    assert (record["tenant"], record["role"], record["name"], record["revoked_at"]) == (
        name,
        "member",
        "ci",
        None,
    )
    assert "key" not in record and key not in ok(cli.invoke(admin.keys, ["ls"]))

    monkeypatch.setenv("TARTARUS_API_KEY", key)
    assert ok(cli.invoke(ps, ["--json"])) == "[]\n"
    denied = cli.invoke(admin.tenants, ["ls"])
    assert denied.exit_code == 1 and denied.stderr.startswith("Error: ")

    monkeypatch.setenv("TARTARUS_API_KEY", api_server.admin_key)
    assert ok(cli.invoke(admin.keys, ["revoke", record["id"]])) == f"{record['id']}\n"
    assert cli.invoke(admin.keys, ["revoke", "no-such-key"]).exit_code == 2
    monkeypatch.setenv("TARTARUS_API_KEY", key)
    assert cli.invoke(ps, []).exit_code == 1
