"""Wire and domain types. This layer imports nothing else of ours."""

from tartarus.models.enforcement import Enforcement, EnforcementAction
from tartarus.models.exec import ExecResult
from tartarus.models.resources import Isolation, NetworkMode, Resources
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
    "Enforcement",
    "EnforcementAction",
    "ExecResult",
    "IllegalTransition",
    "Isolation",
    "NetworkMode",
    "Resources",
    "Sandbox",
    "SandboxSpec",
    "SandboxState",
    "TemplateSpec",
    "check_transition",
]
