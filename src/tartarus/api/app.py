"""The FastAPI application factory. The caller owns the engine (opens and closes it in its own
event loop), so the app has no lifespan work and several apps could share one engine."""

from __future__ import annotations

import html

import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response

from tartarus import __version__
from tartarus.api import (
    admin,
    audit,
    errors,
    files,
    lifecycle,
    network,
    policies,
    pools,
    sandboxes,
    snapshots,
    streams,
    templates,
)
from tartarus.api.context import Context, Ctx
from tartarus.api.metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from tartarus.api.schemas import ERROR_RESPONSES
from tartarus.config import Settings
from tartarus.control import policyfile
from tartarus.control.admission import for_engine
from tartarus.node.engine import Engine
from tartarus.runtimes.registry import PREFERENCE
from tartarus.store.auth import AuthStore, load_pepper

DESCRIPTION = (
    "Olympus: create sandboxes, run commands and code in them, move files. See docs/api.md."
)


def create_app(engine: Engine, settings: Settings, auth: AuthStore | None = None) -> FastAPI:
    app = FastAPI(
        title="Tartarus API",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,  # the default Swagger UI loads from a CDN: see /docs below
        redoc_url=None,
    )
    metrics = Metrics(engine.db, engine.pools.status)
    engine.phase_listeners.append(metrics.observe_phase)
    app.state.ctx = Context(
        engine=engine,
        settings=settings,
        auth=auth or AuthStore(engine.db, load_pepper(settings.state_dir)),
        metrics=metrics,
    )
    errors.install(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    # lifecycle after the routes that work in a sandbox: the contract test runs routes in
    # this order on one live sandbox, which pause and terminate freeze and end
    routers = (sandboxes, streams, files, templates, admin, snapshots, network, lifecycle, pools)
    for module in routers:
        app.include_router(module.router, responses=ERROR_RESPONSES)
    for module in (policies, audit):  # admin-only: after the rest
        app.include_router(module.router, responses=ERROR_RESPONSES)
    admission = for_engine(engine)  # loads the judge plugins now: a broken one fails the start
    if settings.policies_file is not None:
        policyfile.apply_unchanged_skipped(
            admission.policies, policyfile.load(settings.policies_file), actor="config"
        )
    _operations(app)
    return app


def _operations(app: FastAPI) -> None:
    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz(ctx: Ctx) -> JSONResponse:
        try:
            with ctx.engine.db.begin() as conn:
                conn.execute(sa.text("SELECT 1"))
        except Exception as exc:
            return errors.error_response(503, "server_error", f"store unusable: {exc}")
        reasons = []
        for name in PREFERENCE:
            result = await ctx.engine.runtimes.probe(name)  # cached per runtime binary
            if result.works:
                return JSONResponse({"status": "ready", "runtime": name})
            reasons.append(f"{name}: {result.reason}")
        return errors.error_response(503, "server_error", "no runtime works: " + "; ".join(reasons))

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics(ctx: Ctx) -> Response:
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(_docs_page(app))


def _docs_page(app: FastAPI) -> str:
    """A self-contained page listing every route; no CDN, so it renders offline."""
    doc = app.openapi()
    rows = []
    for path, operations in sorted(doc.get("paths", {}).items()):
        for method, op in operations.items():
            summary = html.escape(op.get("summary") or "")
            text = html.escape((op.get("description") or "").strip().split("\n")[0])
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}"
                f"</code></td><td>{summary}</td><td>{text}</td></tr>"
            )
    title = html.escape(doc["info"]["title"])
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>"
        "body{font-family:sans-serif;margin:2em}td{padding:.2em .8em;border-bottom:1px solid #ddd}"
        "</style></head><body>"
        f"<h1>{title} {html.escape(doc['info']['version'])}</h1>"
        f"<p>{html.escape(doc['info'].get('description', ''))} "
        "The full contract is the <a href='/openapi.json'>OpenAPI document</a>.</p>"
        "<table><tr><th>method</th><th>path</th><th>summary</th><th></th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )
