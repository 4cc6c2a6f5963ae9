"""Cerberus' part of admission: who asks, and what only the system may set.

Authentication itself happened at the door (api/auth.py); here the request's identity is
checked against what it claims. Labels under `tartarus.` and the fields admission itself
fills (quarantine, isolation) are the system's: a caller setting them could forge a
quarantine label or dodge one, so such a request is refused outright.
"""

from __future__ import annotations

from tartarus.control.judging import AdmissionRequest, Verdict

RESERVED_PREFIX = "tartarus."


class Cerberus:
    name = "Cerberus"

    def __call__(self, request: AdmissionRequest) -> Verdict:
        spec = request.spec
        reserved = sorted(k for k in spec.metadata if k.startswith(RESERVED_PREFIX))
        if reserved:
            return Verdict.reject(
                f"metadata keys under {RESERVED_PREFIX!r} are set by Tartarus only: "
                + ", ".join(reserved)
            )
        if spec.quarantine is not None:
            return Verdict.reject("quarantine is decided by admission, not requested")
        if request.tenant is None and request.actor is None:
            return Verdict.reject("the request carries no identity")
        return Verdict.accept()
