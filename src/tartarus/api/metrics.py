"""Prometheus metrics (Hermes), one registry per app so tests and several apps never collide.

Requests are labelled by route *template* (`/v1/sandboxes/{sandbox_id}`), never the raw path,
so label cardinality stays bounded. The sandbox gauge is computed from the store at scrape
time: it is always right, even for sandboxes another engine process changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tartarus.models import SandboxState
from tartarus.models.pool import PoolStatus
from tartarus.store.database import Database
from tartarus.store.schema import sandboxes

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PHASE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _SandboxStates(Collector):
    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "tartarus_sandboxes", "Sandboxes in the store by state", labels=["state"]
        )
        counts = dict.fromkeys((s.value for s in SandboxState), 0)
        query = (
            sa.select(sandboxes.c.state, sa.func.count())
            .where(sandboxes.c.pool.is_(None))  # waiting in a pool: see tartarus_pool_*
            .group_by(sandboxes.c.state)
        )
        with self.db.begin() as conn:
            for state, count in conn.execute(query).all():
                counts[state] = count
        for state, count in counts.items():
            family.add_metric([state], count)
        yield family


class _Pools(Collector):
    def __init__(self, status: Callable[[], list[PoolStatus]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        gauges = {
            name: GaugeMetricFamily(f"tartarus_pool_{name}", text, labels=["template"])
            for name, text in (
                ("ready", "Pooled sandboxes ready to hand out"),
                ("starting", "Pooled sandboxes being started"),
                ("in_use", "Sandboxes handed out by the pool and still running"),
                ("target", "Ready sandboxes the pool fills towards"),
            )
        }
        counters = {
            name: CounterMetricFamily(f"tartarus_pool_{name}", text, labels=["template"])
            for name, text in (
                ("hits", "Creates served from the pool"),
                ("misses", "Creates that found no fitting ready sandbox"),
            )
        }
        for pool in self.status():
            for name, family in gauges.items():
                family.add_metric([pool.template], getattr(pool, name))
            for name, counter in counters.items():
                counter.add_metric([pool.template], getattr(pool, name))
        yield from gauges.values()
        yield from counters.values()


class Metrics:
    def __init__(self, db: Database, pools: Callable[[], list[PoolStatus]] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tartarus_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tartarus_http_request_seconds",
            "HTTP request duration (streams: until the stream ends)",
            ["route", "method"],
            registry=self.registry,
        )
        self.phases = Histogram(
            "tartarus_sandbox_phase_seconds",
            "Duration of each start-up phase (node/timings.py); create is their total",
            ["phase"],
            buckets=PHASE_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_SandboxStates(db))
        if pools is not None:
            self.registry.register(_Pools(pools))

    def observe_phase(self, phase: str, ms: float) -> None:
        self.phases.labels(phase).observe(ms / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware) so streaming responses pass through untouched."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        scope.setdefault("state", {})["received"] = start  # the `admit` phase starts here
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.latency.labels(template, method).observe(time.perf_counter() - start)
