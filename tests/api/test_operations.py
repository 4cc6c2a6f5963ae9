"""Health, readiness, metrics, templates, the OpenAPI document and the offline docs page."""

from __future__ import annotations

import re

import httpx2

from tests.api.conftest import ApiServer, assert_error, client


def test_health_and_ready(api_server: ApiServer) -> None:
    with client(api_server, None) as anon:
        assert anon.get("/healthz").json() == {"status": "ok"}
        r = anon.get("/readyz")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "ready"


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        m = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
        if m is None or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return 0.0


def test_metrics_count_requests(api_server: ApiServer, http_a: httpx2.Client) -> None:
    with client(api_server, None) as anon:
        before = anon.get("/metrics").text
        for _ in range(3):
            http_a.get("/v1/sandboxes/sb-000000000001")
        after = anon.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    labels = {"route": "/v1/sandboxes/{sandbox_id}", "method": "GET", "status": "404"}
    name = "tartarus_http_requests_total"
    assert _sample(after.text, name, **labels) - _sample(before, name, **labels) == 3
    assert "tartarus_http_request_seconds_bucket" in after.text
    assert re.search(r'^tartarus_sandboxes\{state="running"\} \d', after.text, re.M)
    assert "tartarus_sandbox_phase_seconds" in after.text


def test_phase_histogram_grows_on_create(api_server: ApiServer, http_a: httpx2.Client) -> None:
    name = "tartarus_sandbox_phase_seconds_count"
    with client(api_server, None) as anon:
        before = _sample(anon.get("/metrics").text, name, phase="create")
        sid = http_a.post("/v1/sandboxes", json={}).json()["id"]
        http_a.delete(f"/v1/sandboxes/{sid}")
        after = _sample(anon.get("/metrics").text, name, phase="create")
    assert after == before + 1


def test_templates(http_a: httpx2.Client) -> None:
    items = http_a.get("/v1/templates").json()["items"]
    python = next(t for t in items if t["name"] == "python")
    assert set(python) == {
        "name",
        "source",
        "built",
        "image",
        "description",
        "resources",
        "size_bytes",
        "has_python",
    }
    assert python["source"] == "builtin"
    assert python["built"] is True
    detail = http_a.get("/v1/templates/python").json()
    assert detail["spec"]["name"] == "python"
    assert_error(http_a.get("/v1/templates/nope"), 404, "not_found")


def test_openapi_and_docs(api_server: ApiServer) -> None:
    with client(api_server, None) as anon:
        doc = anon.get("/openapi.json").json()
        page = anon.get("/docs")
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for path in (
        "/v1/sandboxes",
        "/v1/sandboxes/{sandbox_id}",
        "/v1/sandboxes/{sandbox_id}/exec",
        "/v1/sandboxes/{sandbox_id}/files",
        "/v1/sandboxes/{sandbox_id}/files/list",
        "/v1/sandboxes/{sandbox_id}/logs",
        "/v1/sandboxes/{sandbox_id}/code",
        "/v1/sandboxes/{sandbox_id}/timeout",
        "/v1/templates",
        "/v1/tenants",
        "/v1/keys",
        "/v1/keys/{key_id}",
    ):
        assert path in paths, path
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/v1/sandboxes/{sandbox_id}/exec" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
