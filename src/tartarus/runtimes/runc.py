"""runc: the reference OCI runtime; works on hybrid cgroup hosts as is, about 2x crun's start."""

from __future__ import annotations

from tartarus.runtimes.oci_cli import OCIRuntime


class RuncRuntime(OCIRuntime):
    name = "runc"
    binary = "runc"
    package = "runc"
