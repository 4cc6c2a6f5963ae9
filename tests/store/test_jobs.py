"""The job queue: atomic, leased claims, also across processes."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from tartarus.store import Database
from tartarus.store.jobs import JobQueue, enqueue
from tartarus.store.schema import jobs


def _queue(tmp_path: Path, n: int) -> tuple[Database, JobQueue, list[int]]:
    db = Database(tmp_path / "t.db")
    with db.begin() as conn:
        ids = [enqueue(conn, "create", f"sb-{i}") for i in range(n)]
    return db, JobQueue(db), ids


def test_claim_finish_and_no_double_claim(tmp_path: Path) -> None:
    _, queue, ids = _queue(tmp_path, 3)
    first = queue.claim("node-a", limit=2)
    assert [j.id for j in first] == ids[:2]
    assert all(j.state == "claimed" and j.node == "node-a" and j.attempts == 1 for j in first)
    assert [j.id for j in queue.claim("node-b", limit=5)] == ids[2:]
    assert queue.claim("node-b") == []
    assert queue.finish(ids[0], "node-a")
    assert not queue.finish(ids[1], "node-b"), "only the holder may finish a job"
    assert queue.finish(ids[1], "node-a", error="boom")
    states = {j.id: (j.state, j.error) for j in queue.for_sandbox("sb-1")}
    assert states == {ids[1]: ("failed", "boom")}


def test_expired_lease_is_claimable_again(tmp_path: Path) -> None:
    db, queue, ids = _queue(tmp_path, 1)
    queue.claim("node-a")
    with db.begin() as conn:
        conn.execute(jobs.update().values(lease_until=datetime.now(UTC) - timedelta(seconds=1)))
    again = queue.claim("node-b")
    assert [(j.id, j.node, j.attempts) for j in again] == [(ids[0], "node-b", 2)]
    assert not queue.finish(ids[0], "node-a"), "the old holder lost it"


def test_abandon_fails_open_jobs(tmp_path: Path) -> None:
    _, queue, _ = _queue(tmp_path, 1)
    assert queue.abandon("sb-0", "reaped") == 1
    assert queue.claim("node-a") == []


def _claimer(path: str, node: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue = JobQueue(Database(Path(path)))
    got: list[int] = []
    while batch := queue.claim(node, limit=3):
        got.extend(j.id for j in batch)
    out.put(got)


def test_concurrent_processes_claim_disjoint_sets(tmp_path: Path) -> None:
    db, _, ids = _queue(tmp_path, 120)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(str(db.path), f"n{i}", out)) for i in range(4)]
    for p in procs:
        p.start()
    claimed = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    flat = [i for part in claimed for i in part]
    assert sorted(flat) == ids, "every job claimed exactly once"
    with db.begin() as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).where(jobs.c.state == "queued")).scalar() == 0
        )
