"""Combining policies into the effective one: the most restrictive of each field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tartarus.models import Enforcement, EnforcementAction, Isolation, NetworkMode
from tartarus.models.policy import RUNTIME_ISOLATION, Policy, combine, covers
from tartarus.runtimes.registry import RUNTIME_CLASSES


def test_no_policy_restricts_nothing() -> None:
    eff = combine([])
    assert eff.allowed_templates is None and eff.min_isolation is None
    assert eff.allow_hibernate and eff.allow_snapshot and not eff.untrusted
    assert eff.egress is None and eff.quotas.max_sandboxes is None


def test_most_restrictive_wins_field_by_field() -> None:
    glob = Policy.model_validate(
        {
            "name": "global",
            "version": 3,
            "allowed_templates": ["python", "base", "python-ds"],
            "max_resources": {"memory_mb": 2048, "cpu": 2},
            "quotas": {"max_sandboxes": 10, "max_memory_mb": 8192},
            "max_timeout": 3600,
            "network": {"modes": ["none", "allowlist"]},
            "enforcement": {"output_bytes": 1000, "action": "throttle"},
            "deny_labels": ["env=prod"],
            "rate_limit": 100,
        }
    )
    tenant = Policy.model_validate(
        {
            "name": "acme",
            "version": 1,
            "tenant": "acme",
            "allowed_templates": ["python", "base"],
            "min_isolation": "gvisor",  # a runtime name means its isolation
            "max_resources": {"memory_mb": 4096, "pids": 128},
            "quotas": {"max_sandboxes": 3},
            "network": {"modes": ["none"]},
            "allow_snapshot": False,
            "enforcement": {"output_bytes": 5000, "cpu_seconds": 60, "action": "kill"},
            "deny_labels": ["secret"],
            "untrusted": True,
        }
    )
    eff = combine([glob, tenant])
    assert eff.sources == ("global@3", "acme@1")
    assert eff.allowed_templates == {"python", "base"}
    assert eff.min_isolation == Isolation.USER_KERNEL
    assert (eff.max_resources.memory_mb, eff.max_resources.cpu) == (2048, 2)
    assert eff.max_resources.pids == 128  # set in one only: that one
    assert (eff.quotas.max_sandboxes, eff.quotas.max_memory_mb) == (3, 8192)
    assert eff.max_timeout == 3600 and eff.rate_limit == 100
    assert eff.network_modes == {NetworkMode.NONE}
    assert eff.allow_hibernate and not eff.allow_snapshot and eff.untrusted
    assert eff.enforcement == Enforcement(
        output_bytes=1000, cpu_seconds=60, action=EnforcementAction.KILL
    )
    assert eff.deny_labels == {"env=prod", "secret"}
    assert combine([tenant, glob]).model_dump(exclude={"sources"}) == eff.model_dump(
        exclude={"sources"}
    )


def test_scope_matching() -> None:
    p = Policy(name="p", tenant="acme", template="python")
    assert p.applies_to("acme", "python")
    assert not p.applies_to("other", "python") and not p.applies_to("acme", "base")
    assert not p.applies_to(None, "python")
    assert Policy(name="g").applies_to(None, "anything")


def test_egress_allowlists_meet() -> None:
    a = Policy.model_validate(
        {"name": "a", "network": {"egress": ["*.github.com", "10.0.0.0/8", "pypi.org"]}}
    )
    b = Policy.model_validate(
        {"name": "b", "network": {"egress": ["api.github.com", "10.1.0.0/16", "example.org"]}}
    )
    assert set(combine([a, b]).egress or ()) == {"api.github.com", "10.1.0.0/16"}
    assert combine([a]).egress == a.network.egress


def test_covers() -> None:
    rules = ("*.github.com", "pypi.org", "192.0.2.0/24")
    assert covers(rules, "api.github.com") and covers(rules, "a.b.github.com")
    assert not covers(rules, "github.com")  # a wildcard is for names below
    assert not covers(rules, "evilgithub.com") and not covers(rules, "pypi.org.evil.com")
    assert covers(rules, "PyPI.org")
    assert covers(rules, "192.0.2.7") and covers(rules, "192.0.2.128/25")
    assert not covers(rules, "192.0.0.0/16") and not covers(rules, "198.51.100.1")
    assert not covers(rules, "2001:db8::1")


@pytest.mark.parametrize(
    "body",
    [
        {"name": "Bad Name"},
        {"name": "p", "min_isolation": "kvm-ish"},
        {"name": "p", "network": {"egress": ["not a rule!"]}},
        {"name": "p", "deny_labels": ["=x"]},
        {"name": "p", "quotas": {"max_sandboxes": -1}},
        {"name": "p", "unknown_field": 1},
    ],
)
def test_invalid_policies_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Policy.model_validate(body)


def test_runtime_names_agree_with_the_runtimes() -> None:
    for name, cls in RUNTIME_CLASSES.items():
        assert RUNTIME_ISOLATION[name] == cls.capabilities.isolation, name


def test_the_documented_example_file_parses() -> None:
    """docs/examples/policies.yaml is what the README tells users to apply: it must stay valid."""
    from pathlib import Path

    from tartarus.control import policyfile

    path = Path(__file__).parents[2] / "docs" / "examples" / "policies.yaml"
    names = [p.name for p in policyfile.load(path)]
    assert names == ["baseline", "students", "agents-untrusted"]
