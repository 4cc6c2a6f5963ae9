"""`tartarus doctor` lists microvm with the accelerator it really got, and why not KVM."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tartarus.runtimes import microvm_image, microvm_probe
from tests.engine.helpers import tartarus


def test_doctor_reports_the_accelerator() -> None:
    proc = tartarus("doctor", "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["runtimes"]["microvm"]
    assert report["works"], report
    assert report["capabilities"]["isolation"] == "vm"
    assert not report["default"]
    detail = report["detail"]
    assert detail.startswith(("accelerator: kvm", "accelerator: tcg")), detail
    if detail.startswith("accelerator: tcg"):
        assert "not KVM: " in detail  # and why not
        if not os.path.exists("/dev/kvm"):
            assert "no /dev/kvm" in detail
    assert report["version"].startswith("QEMU ")


async def test_a_kernel_without_the_drivers_is_reported_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel of the user's (TARTARUS_MICROVM_KERNEL) may have its drivers built in, so
    none are required as modules; one that lacks them is refused by the probe, saying so."""
    kernel = tmp_path / "kernel"
    kernel.mkdir()
    (kernel / "vmlinuz").symlink_to(microvm_image.kernel())  # Debian's, without its modules
    monkeypatch.setenv("TARTARUS_MICROVM_KERNEL", str(kernel))
    result = await microvm_probe.probe(tmp_path / "root")
    assert not result.works
    assert "the guest kernel has no virtio-mmio" in result.reason, result.reason
