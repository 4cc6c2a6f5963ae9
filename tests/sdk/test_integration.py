"""Every SDK call against a real server and real sandboxes, sync and async; tenants,
authentication and bad input as the SDK's exceptions."""

from __future__ import annotations

import time

import pytest

from tartarus.sdk import (
    Admin,
    AsyncSandbox,
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    Sandbox,
    TartarusError,
)
from tests.api.conftest import ApiServer
from tests.sdk.conftest import make_tenant

pytestmark = pytest.mark.usefixtures("sdk_env")


def test_sync_sandbox_end_to_end() -> None:
    with Sandbox.create(
        template="python",
        timeout=120,
        memory_mb=256,
        env={"GREETING": "hello"},
        metadata={"t": "e2e"},
    ) as sb:
        info = sb.info()
        assert info.state == "running" and info.resources.memory_mb == 256
        states = [e.to for e in info.events or [] if e.kind == "state"]
        assert states[-1] == "running"
        assert [e.kind for e in info.events or []].count("admission") == 1
        assert sb.id in [s.id for s in Sandbox.list(metadata={"t": "e2e"})]

        out: list[str] = []
        err: list[str] = []
        result = sb.commands.run(
            'echo "$GREETING $X"; echo oops >&2; pwd; exit 3',
            env={"X": "world"},
            cwd="/tmp",
            on_stdout=out.append,
            on_stderr=err.append,
        )
        assert result.exit_code == 3
        assert result.stdout == "hello world\n/tmp\n" == "".join(out)
        assert result.stderr == "oops\n" == "".join(err)
        assert sb.commands.run(["cat"], stdin="piped ☃").stdout == "piped ☃"

        sb.files.write("/home/user/a.txt", "héllo")
        sb.files.write("/home/user/b.bin", bytes(range(256)))
        assert sb.files.read("/home/user/a.txt") == "héllo"
        assert sb.files.read("/home/user/b.bin", format="bytes") == bytes(range(256))
        names = {e.name: e for e in sb.files.list("/home/user")}
        assert names["a.txt"].size == len("héllo".encode()) and names["a.txt"].type == "file"
        sb.files.remove("/home/user/a.txt")
        with pytest.raises(NotFoundError):
            sb.files.read("/home/user/a.txt")
        sb.commands.run("mkdir -p /tmp/d/e && touch /tmp/d/e/f")
        sb.files.remove("/tmp/d", recursive=True)
        assert sb.commands.run("test -e /tmp/d").exit_code == 1

        execution = sb.run_code("x = 20\nprint('side')\nx * 2 + 2")
        assert (execution.value, execution.stdout, execution.error) == ("42", "side\n", None)
        failed = sb.run_code("1 / 0")
        assert failed.error is not None and failed.error.name == "ZeroDivisionError"

        assert sb.set_timeout(600).state == "running"
        assert list(sb.logs()) == []  # no main command
    again = Sandbox.connect(sb.id)
    assert again.info().state == "killed"
    again.close()
    assert sb.id not in [s.id for s in Sandbox.list()]  # only live ones by default
    assert sb.id in [s.id for s in Sandbox.list(state="all")]


def test_main_command_logs() -> None:
    sb = Sandbox.create(command="echo out; echo err >&2", timeout=60)
    try:
        events = list(sb.logs(follow=True))
        assert b"".join(e.data for e in events if e.stream == "stdout") == b"out\n"
        assert b"".join(e.data for e in events if e.stream == "stderr") == b"err\n"
        assert all(e.id is not None for e in events)
        assert list(sb.logs(after=events[0].id)) == events[1:]
        deadline = time.monotonic() + 10
        while (info := sb.info()).state == "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (info.state, info.exit_code) == ("exited", 0)
    finally:
        sb.kill()
        sb.close()


def test_background_command_wait_and_kill() -> None:
    with Sandbox.create(timeout=120) as sb:
        seen: list[str] = []
        handle = sb.commands.run(
            "echo started; sleep 60; echo never", background=True, on_stdout=seen.append
        )
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen == ["started\n"]
        assert handle.kill() is True
        with pytest.raises(TartarusError, match="killed"):
            handle.wait()
        assert sb.commands.run("pgrep -f 'sleep 60' || echo gone").stdout.strip() == "gone"
        done = sb.commands.run("echo quick", background=True)
        assert done.wait(timeout=30).stdout == "quick\n"
        assert done.kill() is False


async def test_async_sandbox_end_to_end() -> None:
    async with await AsyncSandbox.create(timeout=120, metadata={"t": "async"}) as sb:
        assert (await sb.info()).state == "running"
        assert sb.id in [s.id for s in await AsyncSandbox.list(metadata={"t": "async"})]
        chunks: list[str] = []

        async def collect(text: str) -> None:
            chunks.append(text)

        result = await sb.commands.run(["sh", "-c", "echo a; echo b >&2"], on_stdout=collect)
        assert (result.exit_code, result.stdout, result.stderr, chunks) == (
            0,
            "a\n",
            "b\n",
            ["a\n"],
        )
        handle = await sb.commands.run("sleep 60", background=True)
        assert await handle.kill() is True
        with pytest.raises(TartarusError):
            await handle.wait()
        await sb.files.write("/tmp/x", b"\x00\x01")
        assert await sb.files.read("/tmp/x", format="bytes") == b"\x00\x01"
        assert "x" in [e.name for e in await sb.files.list("/tmp")]
        await sb.files.remove("/tmp/x")
        assert (await sb.run_code("6 * 7")).value == "42"
        await sb.set_timeout(300)
        assert [e async for e in sb.logs()] == []
        other = await AsyncSandbox.connect(sb.id)
        assert (await other.info()).id == sb.id
        await other.close()
    gone = await AsyncSandbox.connect(sb.id)
    with pytest.raises(ConflictError):
        await gone.commands.run("true")
    await gone.close()


def test_tenants_cannot_see_each_other(api_server: ApiServer) -> None:
    _, other_key = make_tenant(api_server)
    with Sandbox.create(timeout=60) as sb:
        with pytest.raises(NotFoundError):
            Sandbox.connect(sb.id, api_key=other_key)
        assert sb.id not in [s.id for s in Sandbox.list(state="all", api_key=other_key)]
        with Sandbox.create(timeout=60, api_key=other_key) as theirs:
            with pytest.raises(NotFoundError):
                Sandbox.connect(theirs.id)
            assert theirs.id not in [s.id for s in Sandbox.list()]


def test_wrong_or_revoked_key_is_authentication_error(api_server: ApiServer) -> None:
    with pytest.raises(AuthenticationError):
        Sandbox.list(api_key="tt_nope_nope")
    with pytest.raises(AuthenticationError):
        Sandbox.create(api_key="not-a-key")
    tenant, key = make_tenant(api_server)
    assert Sandbox.list(api_key=key) == []
    with Admin(api_server.url, api_server.admin_key) as admin:
        [record] = admin.keys(tenant)
        assert record.key is None and record.revoked_at is None
        assert admin.revoke_key(record.id).revoked_at is not None
    with pytest.raises(AuthenticationError):
        Sandbox.list(api_key=key)


def test_member_key_cannot_administer(member: tuple[str, str], api_server: ApiServer) -> None:
    with Admin(api_server.url, member[1]) as admin, pytest.raises(PermissionDeniedError):
        admin.create_tenant("nope")


def test_bad_input_is_invalid_request() -> None:
    with pytest.raises(InvalidRequestError):
        Sandbox.create(template="no-such-template")
    with pytest.raises(InvalidRequestError, match="memory"):
        Sandbox.create(memory_mb=1)
    with pytest.raises(InvalidRequestError):
        Sandbox.create(env={"BAD NAME": "x"})
    with pytest.raises(NotFoundError):
        Sandbox.connect("sb-000000000000")


def test_ended_sandbox_is_conflict() -> None:
    sb = Sandbox.create(timeout=60)
    sb.kill()
    try:
        with pytest.raises(ConflictError):
            sb.commands.run("true")
        assert sb.kill().state == "killed"  # idempotent
    finally:
        sb.close()
