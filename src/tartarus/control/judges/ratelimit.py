"""A plugin judge (entry point `rate-limit`): creates per minute per tenant.

Counts the tenant's admitted creates of the last 60 s from the audit log (so the limit
holds across server restarts and API replicas sharing one store), plus those admitted and
still starting. Rejected requests do not count: a client retrying a refused create does not
lock itself out for longer.
"""

from __future__ import annotations

from tartarus.control.judging import AdmissionRequest, Verdict

WINDOW_S = 60.0


class RateLimit:
    name = "rate-limit"

    def __call__(self, request: AdmissionRequest) -> Verdict:
        limit = request.policy.rate_limit
        if limit is not None and request.recent_creates + 1 > limit:
            who = f"tenant {request.tenant}" if request.tenant else "this engine"
            return Verdict.reject(
                f"{who} created {request.recent_creates} sandboxes in the last"
                f" {WINDOW_S:g} s, the limit is {limit} per minute"
            )
        return Verdict.accept()
