"""Images imported from OCI: one without python3 runs through the runtime's own exec.

gVisor cannot run one (documented in runtimes/gvisor.py: runsc 20221219 cannot pass the
descriptor such an init keeps), nor microvm (the guest agent is a VM's only channel): there,
the create must fail with a clear error, nothing left.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tartarus.errors import CapabilityError, RuntimeUnavailableError
from tartarus.models import SandboxSpec, SandboxState
from tartarus.node.engine import Engine
from tests.engine.helpers import tartarus
from tests.images.conftest import make_busybox_layout


@pytest.fixture
def busybox_template(engine: Engine, tmp_path: Path) -> str:
    name = f"bb-{uuid.uuid4().hex[:8]}"
    engine.catalog.register_oci(make_busybox_layout(tmp_path / "layout"), name)
    yield name
    engine.catalog.remove(name)


async def test_python_less_image_runs_commands(
    engine: Engine, runtime: str, busybox_template: str
) -> None:
    refusals = {
        "gvisor": (RuntimeUnavailableError, r"gvisor: .*cannot pass"),
        "microvm": (CapabilityError, r"images without python3: the guest agent is its only"),
    }
    if runtime in refusals:
        before = set(engine.settings.sandboxes_dir.iterdir())
        error, message = refusals[runtime]
        with pytest.raises(error, match=message):
            await engine.create(SandboxSpec(template=busybox_template, runtime=runtime))
        assert engine.running_ids() == []
        assert set(engine.settings.sandboxes_dir.iterdir()) == before
        return
    sandbox = await engine.create(
        SandboxSpec(template=busybox_template, runtime=runtime, timeout=60)
    )
    result = await engine.exec(sandbox.id, ["sh", "-c", "echo hi; echo err >&2; id -u; exit 4"])
    assert (result.exit_code, result.stdout, result.stderr) == (4, b"hi\n1000\n", b"err\n")
    piped = await engine.exec(sandbox.id, ["cat"], stdin=b"through stdin")
    assert piped.stdout == b"through stdin"
    missing = await engine.exec(sandbox.id, ["no-such-command"])
    assert missing.exit_code == 127
    slow = await engine.exec(sandbox.id, ["sh", "-c", "while :; do :; done"], timeout=1)
    assert slow.timed_out
    with pytest.raises(CapabilityError, match="python3"):
        await engine.agent(sandbox.id).read_file("/etc/hostname")
    final = await engine.kill(sandbox.id)
    assert final.state == SandboxState.KILLED


@pytest.mark.runtimes("crun", "runc", why="gvisor: the engine test above asserts its refusal")
def test_cli_runs_an_imported_image(runtime: str, tmp_path: Path) -> None:
    name = f"bb-{uuid.uuid4().hex[:8]}"
    layout = make_busybox_layout(tmp_path / "layout")
    assert tartarus("template", "import", str(layout), "--name", name).returncode == 0
    try:
        proc = tartarus(
            "run",
            "--template",
            name,
            "--runtime",
            runtime,
            "--",
            "sh",
            "-c",
            "echo from busybox; exit 5",
        )
        assert proc.returncode == 5, proc.stderr
        assert proc.stdout == b"from busybox\n"
    finally:
        tartarus("template", "rm", name)
