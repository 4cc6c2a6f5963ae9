from __future__ import annotations

import pytest
from pydantic import ValidationError

from tartarus.models import (
    TERMINAL_STATES,
    IllegalTransition,
    Resources,
    SandboxSpec,
    SandboxState,
    TemplateSpec,
    check_transition,
)

S = SandboxState


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (S.PENDING, S.STARTING),
        (S.STARTING, S.RUNNING),
        (S.RUNNING, S.EXITED),
        (S.RUNNING, S.OOM_KILLED),
        (S.RUNNING, S.TIMED_OUT),
        (S.STARTING, S.FAILED),
        (S.PENDING, S.FAILED),
        (S.RUNNING, S.KILLED),
    ],
)
def test_legal_transitions(a: SandboxState, b: SandboxState) -> None:
    check_transition(a, b)


@pytest.mark.parametrize("end", sorted(TERMINAL_STATES))
def test_terminal_states_are_final(end: SandboxState) -> None:
    for target in SandboxState:
        with pytest.raises(IllegalTransition):
            check_transition(end, target)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (S.RUNNING, S.STARTING),
        (S.RUNNING, S.PENDING),
        (S.PENDING, S.RUNNING),
        (S.PENDING, S.EXITED),
    ],
)
def test_illegal_transitions(a: SandboxState, b: SandboxState) -> None:
    with pytest.raises(IllegalTransition, match=f"{a.value} -> {b.value}"):
        check_transition(a, b)


def test_resources_bounds() -> None:
    with pytest.raises(ValidationError):
        Resources(cpu=0)
    with pytest.raises(ValidationError):
        Resources(memory_mb=1)
    assert Resources(cpu=0.25).cpu == 0.25


def test_spec_rejects_bad_env_and_workdir() -> None:
    with pytest.raises(ValidationError, match="environment variable"):
        SandboxSpec(env={"A-B": "x"})
    with pytest.raises(ValidationError, match="absolute"):
        SandboxSpec(workdir="tmp")
    with pytest.raises(ValidationError):
        SandboxSpec(extra_field=1)  # type: ignore[call-arg]


def test_template_hash_ignores_runtime_only_fields() -> None:
    a = TemplateSpec(name="a", apt=("curl",))
    b = TemplateSpec(
        name="b", apt=("curl",), env={"X": "1"}, workdir="/srv", resources=Resources(memory_mb=64)
    )
    c = TemplateSpec(name="a", apt=("curl", "git"))
    assert a.content_hash() == b.content_hash()
    assert a.content_hash() != c.content_hash()


def test_cli_runtime_choices_match_the_registry() -> None:
    from tartarus.cli.options import RUNTIME_NAMES
    from tartarus.runtimes.registry import RUNTIME_CLASSES

    assert set(RUNTIME_NAMES) == {"auto", *RUNTIME_CLASSES}  # auto: choose by policy
