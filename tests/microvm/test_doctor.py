"""`tartarus doctor` lists microvm with the accelerator it really got, and why not KVM."""

from __future__ import annotations

import json
import os

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
