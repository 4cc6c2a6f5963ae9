"""Wire and domain types. This layer imports nothing else of ours."""

from tartarus.models.exec import ExecResult
from tartarus.models.resources import NetworkMode, Resources
from tartarus.models.sandbox import (
    TERMINAL_STATES,
    IllegalTransition,
    Sandbox,
    SandboxSpec,
    SandboxState,
    check_transition,
)
from tartarus.models.template import TemplateSpec

__all__ = [
    "TERMINAL_STATES",
    "ExecResult",
    "IllegalTransition",
    "NetworkMode",
    "Resources",
    "Sandbox",
    "SandboxSpec",
    "SandboxState",
    "TemplateSpec",
    "check_transition",
]
