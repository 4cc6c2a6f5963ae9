"""A plugin judge (entry point `deny-label`): refuse requests carrying denied metadata.

The policy's `deny_labels` lists `key=value` pairs (or a bare `key`, any value) a request
may not carry, e.g. `env=production` on a shared sandbox host. Shipped as an entry point
rather than built in, so the plugin path is the one every deployment exercises.
"""

from __future__ import annotations

from tartarus.control.judging import AdmissionRequest, Verdict


class DenyLabels:
    name = "deny-label"

    def __call__(self, request: AdmissionRequest) -> Verdict:
        metadata = request.spec.metadata
        for label in sorted(request.policy.deny_labels):
            key, sep, value = label.partition("=")
            if key in metadata and (not sep or metadata[key] == value):
                return Verdict.reject(f"metadata {key}={metadata[key]} is denied by policy")
        return Verdict.accept()
