"""End-to-end tests of the guest agent, run as a plain subprocess and driven by AgentClient.

Why no container: the agent's contract (framing, exec semantics, reaping, run_code) is
independent of the runtime, so testing it directly keeps these tests fast and always runnable.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tartarus.errors import AgentError, InvalidRequestError, NotFoundError
from tartarus.guest import protocol
from tartarus.models import ExecResult
from tartarus.node.agent_client import AgentClient

AGENT_PY = Path(__file__).resolve().parents[2] / "src" / "tartarus" / "guest" / "agent.py"
# The guest code must run on the oldest python3 an image may carry (3.9): point this at one.
GUEST_PYTHON = os.environ.get("TARTARUS_TEST_GUEST_PYTHON") or sys.executable


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    client: AgentClient
    sock: str
    workdir: Path


def _start_agent(tmp_path: Path, sockdir: str, *extra: str) -> Running:
    env_file = tmp_path / "env.json"
    env_file.write_text(json.dumps({"BASE_VAR": "from-env-file"}))
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    sock = os.path.join(sockdir, "a.sock")
    argv = [GUEST_PYTHON, "-I", "-S", str(AGENT_PY), "--listen", sock]
    argv += ["--env-file", str(env_file), "--workdir", str(workdir), *extra]
    proc = subprocess.Popen(argv)
    return Running(proc, AgentClient(sock, connect_timeout=10), sock, workdir)


@pytest.fixture
def sockdir() -> Iterator[str]:
    # AF_UNIX paths are limited to ~108 bytes; pytest's tmp_path can be longer.
    path = tempfile.mkdtemp(prefix="tta-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent(tmp_path: Path, sockdir: str) -> Iterator[Running]:
    running = _start_agent(tmp_path, sockdir)
    yield running
    if running.proc.poll() is None:
        running.proc.terminate()
        assert running.proc.wait(10) == 0


def _alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except FileNotFoundError:
        return False
    return data[data.rfind(")") + 2] != "Z"


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    return int(data[data.rfind(")") + 2 :].split()[1])


async def _wait_dead(pid: int, within: float = 5.0, *, reaped: bool = False) -> None:
    """Wait until pid is dead (a zombie counts, unless `reaped`: then it must be gone)."""
    deadline = time.monotonic() + within
    while os.path.exists(f"/proc/{pid}") if reaped else _alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive or not reaped"
        await asyncio.sleep(0.02)


async def _start_and_get_pid(client: AgentClient) -> tuple[asyncio.Task[object], int]:
    """Start `sleep 30` via exec in a task; return the task and the sleeping pid."""
    got: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on_stdout(data: bytes) -> None:
        if not got.done():
            got.set_result(int(data.split()[0]))

    task: asyncio.Task[object] = asyncio.create_task(
        client.exec(["sh", "-c", "echo $$; exec sleep 30"], on_stdout=on_stdout)
    )
    pid = await asyncio.wait_for(got, 5)
    assert _alive(pid)
    return task, pid


async def _assert_killed(task: asyncio.Task[object]) -> None:
    """The exec either reports SIGKILL (sent before the agent exited) or loses the agent."""
    try:
        result = await asyncio.wait_for(task, 5)
    except AgentError:
        return
    assert isinstance(result, ExecResult)
    assert result.signal == signal.SIGKILL


async def test_ping(agent: Running) -> None:
    pong = await agent.client.ping()
    assert pong["type"] == "pong"
    assert pong["version"] == protocol.PROTOCOL_VERSION
    assert pong["pid"] == agent.proc.pid


async def test_exec_exit_codes_and_streams(agent: Running) -> None:
    c = agent.client
    r = await c.exec(["echo", "hello", "world"])
    assert (r.exit_code, r.stdout, r.stderr, r.signal) == (0, b"hello world\n", b"", None)
    r = await c.exec(["sh", "-c", "exit 3"])
    assert r.exit_code == 3 and r.signal is None and not r.timed_out
    r = await c.exec(["sh", "-c", "echo out; echo err >&2; echo out2"])
    assert r.stdout == b"out\nout2\n"
    assert r.stderr == b"err\n"
    r = await c.exec(["sh", "-c", "kill -TERM $$"])
    assert (r.exit_code, r.signal, r.timed_out) == (128 + 15, 15, False)


async def test_exec_streams_live(agent: Running) -> None:
    chunks: list[tuple[float, bytes]] = []
    t0 = time.monotonic()

    async def on_stdout(data: bytes) -> None:
        chunks.append((time.monotonic() - t0, data))

    r = await agent.client.exec(["sh", "-c", "echo a; sleep 1; echo b"], on_stdout=on_stdout)
    total = time.monotonic() - t0
    assert r.exit_code == 0
    assert r.stdout == b""  # a callback was given: nothing collected
    assert b"".join(d for _, d in chunks) == b"a\nb\n"
    assert chunks[0][1] == b"a\n"
    assert chunks[0][0] < 0.7, "first line was not streamed before the command ended"
    assert total >= 1.0


async def test_exec_stdin(agent: Running) -> None:
    c = agent.client
    r = await c.exec(["cat"], stdin=b"hello stdin")
    assert r.stdout == b"hello stdin"

    async def gen() -> AsyncIterator[bytes]:
        for part in (b"one ", b"two ", b"three"):
            yield part
            await asyncio.sleep(0.01)

    r = await c.exec(["cat"], stdin=gen())
    assert r.stdout == b"one two three"
    # Bigger than any pipe buffer in both directions: exercises non-blocking stdin writes.
    big = os.urandom(3 << 20)
    r = await c.exec(["cat"], stdin=big)
    assert r.exit_code == 0 and r.stdout == big
    # Without stdin the child reads /dev/null and does not hang.
    r = await c.exec(["cat"], timeout=5)
    assert r.exit_code == 0 and r.stdout == b"" and not r.timed_out


async def test_exec_env_and_cwd(agent: Running) -> None:
    c = agent.client
    (agent.workdir / "sub").mkdir()
    r = await c.exec(["sh", "-c", 'echo "$BASE_VAR $REQ_VAR $HOME"; pwd'], env={"REQ_VAR": "x"})
    lines = r.stdout.decode().splitlines()
    assert lines[0].startswith("from-env-file x /")
    assert lines[1] == str(agent.workdir)
    r = await c.exec(["pwd"], cwd="sub")
    assert r.stdout.decode().strip() == str(agent.workdir / "sub")
    r = await c.exec(["sh", "-c", "echo $BASE_VAR"], env={"BASE_VAR": "overridden"})
    assert r.stdout == b"overridden\n"
    with pytest.raises(InvalidRequestError, match="no-such-dir"):
        await c.exec(["pwd"], cwd="/no-such-dir")


async def test_command_not_found_and_not_executable(agent: Running) -> None:
    c = agent.client
    r = await c.exec(["definitely-not-a-command-xyz", "arg"])
    assert r.exit_code == 127
    assert r.stderr == b"tartarus: definitely-not-a-command-xyz: command not found\n"
    script = agent.workdir / "noexec.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    r = await c.exec([str(script)])
    assert r.exit_code == 126
    assert b"permission denied" in r.stderr


async def test_exec_timeout(agent: Running) -> None:
    t0 = time.monotonic()
    r = await agent.client.exec(["sh", "-c", "echo started; sleep 10"], timeout=0.5)
    assert time.monotonic() - t0 < 3
    assert r.timed_out
    assert r.signal == 9 and r.exit_code == 137
    assert r.stdout == b"started\n"


async def test_client_disconnect_kills_child(agent: Running) -> None:
    task, pid = await _start_and_get_pid(agent.client)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _wait_dead(pid, reaped=True)  # killed, and its status collected by the agent
    # The agent is still healthy afterwards.
    assert (await agent.client.ping())["type"] == "pong"


async def test_signal_frame_reaches_process_group(agent: Running) -> None:
    await agent.client.ping()  # wait until the agent listens
    conn_r, conn_w = await asyncio.open_unix_connection(agent.sock)
    try:
        req = {"op": "exec", "argv": ["sleep", "30"], "stdin": True}
        conn_w.write(protocol.encode_frame(req))
        prefix = await conn_r.readexactly(protocol.PREFIX_SIZE)
        hlen, blen = protocol.decode_prefix(prefix)
        started = protocol.decode_header(await conn_r.readexactly(hlen + blen))
        assert started["type"] == "started"
        conn_w.write(protocol.encode_frame({"type": "signal", "signal": signal.SIGUSR1}))
        prefix = await asyncio.wait_for(conn_r.readexactly(protocol.PREFIX_SIZE), 5)
        hlen, blen = protocol.decode_prefix(prefix)
        exit_frame = protocol.decode_header(await conn_r.readexactly(hlen + blen))
        assert exit_frame == {
            "type": "exit",
            "exit_code": None,
            "signal": signal.SIGUSR1,
            "timed_out": False,
        }
    finally:
        conn_w.close()
        await conn_w.wait_closed()


async def test_orphans_reaped_without_stealing_exit_codes(agent: Running) -> None:
    c = agent.client
    t0 = time.monotonic()
    r = await c.exec(["sh", "-c", "sleep 1 & echo $!"])
    # The background sleep still holds stdout open; the exec ends with its main process anyway.
    assert time.monotonic() - t0 < 0.9
    orphan = int(r.stdout)
    # Re-parented to the agent (PID 1 in a sandbox; a child subreaper here) ...
    assert _ppid(orphan) == agent.proc.pid
    # ... and reaped by it once it exits, so no zombie is left.
    await _wait_dead(orphan, within=5, reaped=True)
    # Many short-lived children, each leaving an orphan, in parallel with the reaper: every
    # exit status must still reach its own exec (the classic init-steals-the-status bug gives 0).
    results = await asyncio.gather(
        *(c.exec(["sh", "-c", "(sleep 0.05 &); exit 7"]) for _ in range(20))
    )
    assert [r.exit_code for r in results] == [7] * 20


async def test_concurrent_execs(agent: Running) -> None:
    t0 = time.monotonic()
    results = await asyncio.gather(
        *(agent.client.exec(["sh", "-c", f"sleep 0.5; echo {i}"]) for i in range(5))
    )
    assert time.monotonic() - t0 < 2.0, "execs were serialized"
    assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(5)]


async def test_files(agent: Running) -> None:
    c = agent.client
    data = os.urandom(3 << 20)
    assert await c.write_file("dir/nested/blob.bin", data) == len(data)
    assert (agent.workdir / "dir/nested/blob.bin").read_bytes() == data
    assert await c.read_file("dir/nested/blob.bin") == data
    assert await c.read_file(str(agent.workdir / "dir/nested/blob.bin")) == data

    await c.write_file("dir/secret", b"s", mode=0o600)
    await c.write_file("dir/log", b"a")
    await c.write_file("dir/log", b"b", append=True)
    assert await c.read_file("dir/log") == b"ab"
    await c.write_file("dir/log", b"")  # overwrite with empty content
    assert await c.read_file("dir/log") == b""
    os.symlink("secret", agent.workdir / "dir/link")

    entries = await c.list_dir("dir")
    assert [e["name"] for e in entries] == ["link", "log", "nested", "secret"]
    by_name = {e["name"]: e for e in entries}
    assert by_name["nested"]["type"] == "dir"
    assert by_name["link"]["type"] == "symlink"
    assert by_name["secret"]["type"] == "file"
    assert by_name["secret"]["mode"] == 0o600 and by_name["secret"]["size"] == 1
    assert isinstance(by_name["secret"]["mtime"], float)
    assert not [p for p in os.listdir(agent.workdir / "dir") if p.startswith(".tartarus-")]

    with pytest.raises(NotFoundError, match=r"missing\.txt"):
        await c.read_file("missing.txt")
    with pytest.raises(NotFoundError):
        await c.list_dir("missing-dir")
    with pytest.raises(NotFoundError):
        await c.remove("missing.txt")
    with pytest.raises(InvalidRequestError):
        await c.read_file("dir")  # a directory
    with pytest.raises(InvalidRequestError):
        await c.remove("dir")  # not empty, not recursive
    await c.remove("dir/secret")
    assert not (agent.workdir / "dir/secret").exists()
    await c.remove("dir", recursive=True)
    assert not (agent.workdir / "dir").exists()


async def test_write_error_is_reported_after_upload(agent: Running) -> None:
    (agent.workdir / "file").write_bytes(b"x")
    with pytest.raises(InvalidRequestError):
        await agent.client.write_file("file/child", os.urandom(2 << 20))
    assert (await agent.client.ping())["type"] == "pong"


async def test_run_code_state_and_values(agent: Running) -> None:
    c = agent.client
    r = await c.run_code("x = 41")
    assert r.value is None and r.error is None
    r = await c.run_code("print('side'); x + 1")
    assert r.value == "42" and r.stdout == "side\n" and r.error is None
    r = await c.run_code("None")
    assert r.value is None and r.error is None
    r = await c.run_code("import sys; print('to err', file=sys.stderr); 'text'")
    assert r.value == "'text'" and r.stderr == "to err\n"
    r = await c.run_code("x", context="other")
    assert r.error is not None and r.error.name == "NameError"


async def test_run_code_errors_keep_state(agent: Running) -> None:
    c = agent.client
    await c.run_code("y = 5")
    r = await c.run_code("def f():\n    return 1 / 0\nf()")
    assert r.error is not None
    assert r.error.name == "ZeroDivisionError"
    assert r.error.value == "division by zero"
    assert "Traceback (most recent call last)" in r.error.traceback
    assert "return 1 / 0" in r.error.traceback
    assert "interpreter.py" not in r.error.traceback
    r = await c.run_code("y = ")
    assert r.error is not None and r.error.name == "SyntaxError"
    r = await c.run_code("raise SystemExit(3)")
    assert r.error is not None and r.error.name == "SystemExit"
    r = await c.run_code("y")
    assert r.value == "5"


async def test_run_code_captures_subprocess_output_live(agent: Running) -> None:
    c = agent.client
    r = await c.run_code("import os; os.system('echo hi from sh'); print('after')")
    assert r.stdout == "hi from sh\nafter\n"
    seen: list[float] = []
    t0 = time.monotonic()
    r = await c.run_code(
        "import time; print('first', flush=True); time.sleep(0.8); 'done'",
        on_stdout=lambda data: seen.append(time.monotonic() - t0),
    )
    assert r.value == "'done'"
    assert seen and seen[0] < 0.6


async def test_run_code_interpreter_death_and_timeout(agent: Running) -> None:
    c = agent.client
    await c.run_code("z = 1")
    r = await c.run_code("import os; os._exit(3)")
    assert r.error is not None and r.error.name == "InterpreterDied"
    assert "died" in r.error.value and "exit code 3" in r.error.value
    r = await c.run_code("'z' in globals()")
    assert r.value == "False", "a fresh interpreter should have been started"

    await c.run_code("w = 2")
    t0 = time.monotonic()
    r = await c.run_code("import time; time.sleep(10)", timeout=0.5)
    assert time.monotonic() - t0 < 3
    assert r.error is not None and r.error.name == "TimeoutError"
    assert "state is lost" in r.error.value
    r = await c.run_code("'w' in globals()")
    assert r.value == "False"


async def test_run_code_cancel_interrupts_but_keeps_state(agent: Running) -> None:
    c = agent.client
    await c.run_code("kept = 'yes'")
    task = asyncio.create_task(c.run_code("import time\nfor _ in range(300): time.sleep(0.1)"))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    t0 = time.monotonic()
    r = await c.run_code("kept")
    assert r.value == "'yes'"
    assert time.monotonic() - t0 < 3, "the cancelled cell kept running"


async def test_listening_fd_from_the_host(tmp_path: Path, sockdir: str) -> None:
    # The production mode: the host binds and listens, the agent inherits the socket.
    path = os.path.join(sockdir, "host.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    client = AgentClient(path, connect_timeout=5)
    # Connect before the agent even exists: the request waits in the backlog.
    pending = asyncio.create_task(client.exec(["echo", "queued"]))
    await asyncio.sleep(0.1)
    fd = listener.fileno()
    argv = [GUEST_PYTHON, "-I", "-S", str(AGENT_PY), "--fd", str(fd), "--workdir", str(tmp_path)]
    proc = subprocess.Popen(argv, pass_fds=(fd,))
    listener.close()
    try:
        r = await asyncio.wait_for(pending, 10)
        assert r.stdout == b"queued\n"
        assert (await client.ping())["pid"] == proc.pid
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


async def test_bad_requests_do_not_crash(agent: Running) -> None:
    def raw(payload: bytes) -> dict[str, object]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(agent.sock)
            s.sendall(payload)
            frame = protocol.recv_frame(s)
            assert frame is not None
            return frame[0]

    await agent.client.ping()  # wait until the agent listens
    bad_json = protocol.HEADER_STRUCT.pack(3, 0) + b"{x}"
    assert raw(bad_json)["code"] == "invalid"
    too_big = protocol.HEADER_STRUCT.pack(protocol.MAX_HEADER + 1, 0)
    assert raw(too_big)["code"] == "invalid"
    assert raw(protocol.encode_frame({"op": "frobnicate"}))["code"] == "invalid"
    assert raw(protocol.encode_frame({"op": "exec", "argv": "ls"}))["code"] == "invalid"
    assert (await agent.client.ping())["type"] == "pong"


async def test_sigterm_kills_children(agent: Running) -> None:
    task, pid = await _start_and_get_pid(agent.client)
    r = await agent.client.run_code("import os; os.getpid()")  # an interpreter process, too
    assert r.value is not None
    interp_pid = int(r.value)
    assert _alive(interp_pid)
    agent.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(agent.proc.wait, 5) == 0
    await _wait_dead(pid)
    await _wait_dead(interp_pid)
    await _assert_killed(task)


async def test_deadline_kills_everything(tmp_path: Path, sockdir: str) -> None:
    running = _start_agent(tmp_path, sockdir, "--deadline", str(time.time() + 1.0))
    try:
        task, pid = await _start_and_get_pid(running.client)
        assert await asyncio.to_thread(running.proc.wait, 5) == 124
        await _wait_dead(pid)
        await _assert_killed(task)
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()


async def test_connect_timeout(sockdir: str) -> None:
    client = AgentClient(os.path.join(sockdir, "nobody.sock"), connect_timeout=0.2)
    with pytest.raises(AgentError, match="not reachable"):
        await client.ping()


def test_frame_decoder_roundtrip() -> None:
    frames: list[protocol.Frame] = [
        ({"type": "stdout"}, b"abc"),
        ({"type": "exit", "n": [1, 2]}, b""),
    ]
    wire = b"".join(protocol.encode_frame(h, b) for h, b in frames)
    dec = protocol.FrameDecoder()
    got: list[protocol.Frame] = []
    for i in range(len(wire)):  # one byte at a time
        got += dec.feed(wire[i : i + 1])
    assert got == frames and dec.pending == 0
    with pytest.raises(protocol.ProtocolError):
        protocol.FrameDecoder().feed(protocol.HEADER_STRUCT.pack(2, protocol.MAX_BODY + 1))


# -- the main command: detached, journaled, re-attachable ---------------------------------------


def _raw_attach(sock: str, after: int) -> list[protocol.Frame]:
    """All frames of one `attach` (the main command must have ended: nothing blocks)."""
    frames: list[protocol.Frame] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(sock)
        protocol.send_frame(s, {"op": "attach", "after": after})
        while (frame := protocol.recv_frame(s)) is not None:
            frames.append(frame)
    return frames


async def test_main_command_survives_detach_and_replays(agent: Running) -> None:
    c = agent.client
    status = await c.main_status()
    assert status == {
        "type": "main",
        "started": False,
        "pid": None,
        "running": False,
        "exit_code": None,
        "signal": None,
        "last_seq": 0,
    }
    with pytest.raises(NotFoundError):
        await c.attach()
    await c.start_main(["sh", "-c", "echo a; sleep 1; echo b; exit 3"])
    with pytest.raises(InvalidRequestError, match="already"):
        await c.start_main(["echo", "second"])

    got_a: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on_output(seq: int, stream: str, data: bytes) -> None:
        assert (stream, data) == ("stdout", b"a\n")
        got_a.set_result(seq)

    detached = asyncio.create_task(c.attach(on_output=on_output))
    # Two more attachers at once, following to the end.
    followers = [asyncio.create_task(c.attach()) for _ in range(2)]
    seq_a = await asyncio.wait_for(got_a, 5)
    detached.cancel()
    with pytest.raises(asyncio.CancelledError):
        await detached
    status = await c.main_status()
    assert status["started"] and status["running"] and status["last_seq"] == seq_a
    pid = status["pid"]
    assert isinstance(pid, int) and _alive(pid), "the main command died with its client"

    seen: list[tuple[int, str, bytes]] = []

    async def collect(seq: int, stream: str, data: bytes) -> None:
        seen.append((seq, stream, data))

    r = await asyncio.wait_for(c.attach(after=seq_a, on_output=collect), 5)
    assert seen == [(seq_a + 1, "stdout", b"b\n")]
    assert (r.exit_code, r.signal, r.stdout, r.stderr) == (3, None, b"", b"")
    for r in await asyncio.wait_for(asyncio.gather(*followers), 5):
        assert (r.exit_code, r.stdout, r.stderr) == (3, b"a\nb\n", b"")

    # After the end: a full replay plus the exit, immediately.
    r = await asyncio.wait_for(c.attach(), 2)
    assert (r.exit_code, r.stdout) == (3, b"a\nb\n")
    frames = await asyncio.to_thread(_raw_attach, agent.sock, seq_a)
    assert frames == [
        ({"type": "stdout", "seq": seq_a + 1}, b"b\n"),
        ({"type": "exit", "seq": seq_a + 2, "exit_code": 3, "signal": None}, b""),
    ]
    status = await c.main_status()
    assert status == {
        "type": "main",
        "started": True,
        "pid": pid,
        "running": False,
        "exit_code": 3,
        "signal": None,
        "last_seq": seq_a + 2,
    }


async def test_main_command_journal_cap_reports_gap(tmp_path: Path, sockdir: str) -> None:
    running = _start_agent(tmp_path, sockdir, "--journal-bytes", "100")
    try:
        c = running.client
        script = "i=1; while [ $i -le 30 ]; do echo line-$i; sleep 0.01; i=$((i+1)); done"
        await c.start_main(["sh", "-c", script, "sh"])
        live = await asyncio.wait_for(c.attach(), 10)  # attached from the start: sees all
        full = b"".join(f"line-{i}\n".encode() for i in range(1, 31))
        assert (live.exit_code, live.stdout) == (0, full)
        r = await asyncio.wait_for(c.attach(), 2)  # attached after the end: only the tail
        assert r.exit_code == 0
        assert r.stdout and full.endswith(r.stdout) and len(r.stdout) <= 100

        frames = await asyncio.to_thread(_raw_attach, running.sock, 0)
        gap, *records, (exit_header, _) = frames
        first = gap[0]["first"]
        assert gap[0] == {"type": "gap", "first": first} and first > 1
        assert [h["seq"] for h, _ in records] == list(range(first, first + len(records)))
        assert b"".join(body for _, body in records) == r.stdout
        assert exit_header["exit_code"] == 0 and exit_header["seq"] == first + len(records)
        # Nothing after `first - 1` was dropped: no gap frame.
        frames = await asyncio.to_thread(_raw_attach, running.sock, first - 1)
        assert frames[0][0]["type"] == "stdout" and frames[0][0]["seq"] == first
        assert (await c.main_status())["last_seq"] == exit_header["seq"]
    finally:
        running.proc.terminate()
        assert running.proc.wait(10) == 0


async def test_main_command_not_found(agent: Running) -> None:
    c = agent.client
    await c.start_main(["definitely-not-a-command-xyz"])
    r = await asyncio.wait_for(c.attach(), 5)
    assert r.exit_code == 127
    assert r.stderr == b"tartarus: definitely-not-a-command-xyz: command not found\n"
    status = await c.main_status()
    assert status["started"] and status["pid"] is None and not status["running"]
    assert status["exit_code"] == 127
    with pytest.raises(InvalidRequestError):
        await c.start_main(["echo", "again"])
