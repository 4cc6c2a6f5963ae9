"""One exception tree for the whole engine (httpx style); the API maps it to HTTP statuses.

TartarusError
├── InvalidRequestError      bad input: unknown template, invalid resources (HTTP 400/422)
├── NotFoundError            no such sandbox, template or file (404)
├── AdmissionDenied          a judge rejected the request (403), names the judge and why
├── ConflictError            the object's state does not allow the action (409)
├── CapabilityError          the runtime cannot do this here (409), names runtime and capability
├── RuntimeUnavailableError  no usable runtime, or the runtime binary failed (503)
├── BuildError               a template build failed (500), with the failing step
└── AgentError               the guest agent is unreachable or broke the protocol (502)
    └── AgentTimeoutError    it did not answer in time
"""

from __future__ import annotations


class TartarusError(Exception):
    """Base class; `str(err)` is one readable line meant for users."""


class InvalidRequestError(TartarusError):
    """Bad input: an unknown template, an invalid resource or path."""


class NotFoundError(TartarusError):
    """No such sandbox, template, file or key (or another tenant's)."""


class AdmissionDenied(TartarusError):
    """An admission judge (policy, quota, classification) rejected the request."""

    def __init__(self, judge: str, reason: str) -> None:
        super().__init__(f"denied by {judge}: {reason}")
        self.judge = judge
        self.reason = reason


class ConflictError(TartarusError):
    """The object's state does not allow the action."""


class CapabilityError(ConflictError):
    def __init__(self, runtime: str, capability: str, detail: str = "") -> None:
        msg = f"runtime {runtime!r} does not support {capability}"
        super().__init__(f"{msg}: {detail}" if detail else msg)
        self.runtime = runtime
        self.capability = capability


class RuntimeUnavailableError(TartarusError):
    """No usable runtime, or the runtime binary failed."""


class BuildError(TartarusError):
    """A template build or import failed; the message names the step."""


class AgentError(TartarusError):
    """The guest agent is unreachable or broke the protocol."""


class AgentTimeoutError(AgentError):
    """The guest agent did not answer in time."""
