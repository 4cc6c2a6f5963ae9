"""Typhon's classifier: is this request risky enough to quarantine?

Three signals: the caller says so (metadata `untrusted=true`), the policy says so (an
untrusted tenant or template), or the command looks like an attack: a download piped into a
shell, a reverse shell (`/dev/tcp/`, `nc -e`, socat exec), a crypto miner. The patterns are
a cheap first filter, not a defence: a quarantined sandbox is isolated more strongly, an
unflagged one is still a sandbox. False positives cost only speed (gVisor's start).
"""

from __future__ import annotations

import re

from tartarus.control.judging import AdmissionRequest, Verdict

PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "downloads a script into a shell",
        re.compile(r"\b(curl|wget|fetch)\b[^|;&]*\|\s*(sudo\s+)?(ba|z|da|k)?sh\b"),
    ),
    ("decodes a payload into a shell", re.compile(r"base64\s+(-d|--decode)[^|;&]*\|\s*\w*sh\b")),
    ("opens a raw /dev/tcp or /dev/udp connection", re.compile(r"/dev/(tcp|udp)/")),
    ("runs a shell over netcat", re.compile(r"\b(nc|ncat|netcat)\b[^|;&]*\s-(e|c)\s")),
    ("runs a program over socat", re.compile(r"\bsocat\b.*\bexec:", re.IGNORECASE)),
    (
        "looks like a reverse shell",
        re.compile(r"socket\b.*\bdup2\b|pty\.spawn\(", re.DOTALL),
    ),
    (
        "looks like a crypto miner",
        re.compile(r"\b(xmrig|minerd|cpuminer|cgminer|ethminer|stratum\+tcp)\b", re.IGNORECASE),
    ),
)


def classify(command: tuple[str, ...]) -> str | None:
    """Why `command` looks hostile, or None."""
    text = " ".join(command) + " "
    for why, pattern in PATTERNS:
        if pattern.search(text):
            return f"the command {why}"
    return None


class Typhon:
    name = "Typhon"

    def __call__(self, request: AdmissionRequest) -> Verdict:
        spec = request.spec
        if spec.metadata.get("untrusted", "").lower() in ("true", "1", "yes"):
            return Verdict.quarantine("metadata untrusted=true")
        if request.policy.untrusted:
            return Verdict.quarantine(f"untrusted by policy {request.policy.untrusted_by}")
        why = classify(spec.command)
        if why is not None:
            return Verdict.quarantine(why)
        return Verdict.accept()
