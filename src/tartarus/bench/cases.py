"""The cases of the benchmark (issue 5, and the microVM's of issue 7), their targets, and
`--only` selection.

They run in this order whatever the selection: the cold cases first, before any pool exists
(a pool would serve their creates), and the burst after case 2, whose pooled p50 it uses.
"""

from __future__ import annotations

from tartarus.bench import cold, hibernate, microvm, pooled
from tartarus.bench.context import Case
from tartarus.bench.stats import Target

CASES: tuple[Case, ...] = (
    Case(
        1,
        "cold",
        "cold create -> first `python3 -c pass` result",
        "ms",
        Target("ratio", "<=", 1.3, "<= 1.3x raw `crun run`"),
        cold.cold_create,
    ),
    Case(
        4,
        "exec",
        "exec round-trip `true` in a running sandbox",
        "ms",
        Target("ratio", "<=", 0.3, "<= 0.3x `crun exec`"),
        cold.exec_roundtrip,
    ),
    Case(
        5,
        "throughput",
        "throughput: create + exec + delete, 8 clients",
        "sandboxes/s",
        Target("ratio", ">=", 0.8, ">= 0.8x the raw `crun run` loop's rate"),
        cold.throughput,
        compare="value",
    ),
    Case(
        2,
        "pooled",
        "pooled create -> `run_code('print(1)')`",
        "ms",
        Target("ratio", "<=", 0.5, "<= 0.5x host `python3 -c pass`"),
        pooled.pooled_python,
    ),
    Case(
        3,
        "pandas",
        "pooled python-ds create -> `run_code(import pandas ...)`",
        "ms",
        Target("ratio", "<=", 0.1, "<= 0.1x host `import pandas`"),
        pooled.pooled_pandas,
        templates=("python-ds",),
    ),
    Case(
        6,
        "burst",
        "burst: concurrent creates + first exec from a pool",
        "ms",
        Target("ratio", "<=", 10.0, "zero failures, p99 <= 10x the pooled p50 of case 2"),
        pooled.burst,
        compare="p99",
    ),
    Case(
        7,
        "density",
        "density: PSS per idle pooled sandbox",
        "MiB",
        Target("value", "<=", 15.0, "<= 15 MiB per idle sandbox (>= 270 in 4 GiB)"),
        pooled.density,
    ),
    Case(
        8,
        "hibernate",
        "hibernate -> wake -> first exec",
        "ms",
        None,
        hibernate.hibernate_wake,
    ),
    Case(
        9,
        "microvm",
        "microvm create (a template clone) -> `run_code('print(1)')`",
        "ms",
        None,
        microvm.microvm_clone,
    ),
)

BY_ID = {case.id: case for case in CASES}
BY_KEY = {case.key: case for case in CASES}


def select(only: str | None) -> list[Case]:
    """Cases named by `only` ("1,4" or "cold,exec"; None: all), in running order."""
    if only is None or not only.strip():
        return list(CASES)
    wanted: set[int] = set()
    for item in only.split(","):
        name = item.strip().lower()
        if not name:
            continue
        if name.isdigit() and int(name) in BY_ID:
            wanted.add(int(name))
        elif name in BY_KEY:
            wanted.add(BY_KEY[name].id)
        else:
            known = ", ".join(f"{c.id}={c.key}" for c in sorted(CASES, key=lambda c: c.id))
            raise ValueError(f"unknown case {item.strip()!r}; cases: {known}")
    if not wanted:
        raise ValueError("--only names no case")
    return [case for case in CASES if case.id in wanted]
