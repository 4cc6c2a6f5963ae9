"""The OpenAPI contract, checked by schemathesis against a real server.

For every operation in `/openapi.json`, schemathesis generates a few requests in positive and
negative mode and sends them with the admin key (which may call every route); operations on
`{sandbox_id}` run once with generated ids (404 paths) and once against a live sandbox (the
real work: files, code, exec). The checks: no 5xx (`not_a_server_error`), only documented
status codes (`status_code_conformance`), documented content types
(`content_type_conformance`), bodies matching the documented schema
(`response_schema_conformance`). `TARTARUS_CONTRACT_EXAMPLES=100` digs deeper locally.

Excluded, and why:
- `POST /v1/sandboxes`, entirely: every valid generated body would boot a real sandbox (a
  container, its overlay and cgroup): most of the time budget, and sandboxes en masse. Its
  validation and answers are covered in test_sandboxes.py.
- `GET /v1/sandboxes/{sandbox_id}/logs` on the live sandbox: with `follow=true` it streams
  until the sandbox ends, so it cannot finish; it runs with generated ids only.
The exec streams (`POST .../exec`, `GET .../exec/{exec_id}`) are included: their answers end
(`exit`), and their JSON errors are checked like any other route's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta

import httpx2
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis.strategies import SearchStrategy
from schemathesis import GenerationMode, checks

from tests.api.conftest import ApiServer

MAX_EXAMPLES = int(os.environ.get("TARTARUS_CONTRACT_EXAMPLES", "8"))
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def api_schema(api_server: ApiServer) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{api_server.url}/openapi.json", timeout=10)
    return schema.exclude(method="POST", path="/v1/sandboxes")


@pytest.fixture(scope="module")
def admin_headers(api_server: ApiServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_server.admin_key}"}


@pytest.fixture(scope="module")
def live_sandbox(api_server: ApiServer, admin_headers: dict[str, str]) -> Iterator[str]:
    """One running sandbox: operations on `{sandbox_id}` also run against it, not only 404."""
    with httpx2.Client(base_url=api_server.url, headers=admin_headers, timeout=60) as http:
        r = http.post("/v1/sandboxes", json={"template": "python", "timeout": 300})
        assert r.status_code == 201, r.text
        sandbox_id = str(r.json()["id"])
        try:
            yield sandbox_id
        finally:
            http.delete(f"/v1/sandboxes/{sandbox_id}")


# These end the live sandbox (or may: a tiny timeout) or leave it unable to serve the others
# (paused), so they run after all the others.
ENDS_SANDBOX = {
    "DELETE /v1/sandboxes/{sandbox_id}",
    "POST /v1/sandboxes/{sandbox_id}/timeout",
    "POST /v1/sandboxes/{sandbox_id}/pause",
    "POST /v1/sandboxes/{sandbox_id}/terminate",
}
# `logs?follow=true` on a live sandbox streams until the sandbox ends: generated ids only.
NOT_PINNED = {"GET /v1/sandboxes/{sandbox_id}/logs"}


def _strategies(
    operation: schemathesis.APIOperation, sandbox_id: str
) -> Iterator[tuple[str, SearchStrategy[schemathesis.Case]]]:
    pinned = "{sandbox_id}" in operation.path and operation.label not in NOT_PINNED
    for mode in GenerationMode:
        yield mode.value, operation.as_strategy(mode)
        if pinned:
            yield (
                f"{mode.value}, live sandbox",
                operation.as_strategy(mode, path_parameters={"sandbox_id": sandbox_id}),
            )


def test_api_conforms_to_openapi(
    api_schema: schemathesis.BaseSchema, admin_headers: dict[str, str], live_sandbox: str
) -> None:
    # Not `schemathesis.pytest.from_fixture(...).parametrize()`: under pytest 9 it fails with
    # "'Function' object has no attribute '_nodeid'" (pytest dropped that private attribute),
    # so each operation's strategy is driven by hypothesis here, one operation after another.
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 10, "the schema lost its operations"
    operations.sort(key=lambda op: op.label in ENDS_SANDBOX)
    for operation in operations:
        for variant, strategy in _strategies(operation, live_sandbox):

            @given(case=strategy)
            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=timedelta(seconds=10),
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
            )
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate(headers=admin_headers, checks=CHECKS, timeout=30)

            try:
                check()
            except Unsatisfiable:
                # negative mode on an operation with nothing to break (no parameters, or only
                # unconstrained strings): there is no invalid request to generate
                assert variant.startswith("negative"), f"{operation.label} ({variant})"
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis: a BaseExceptionGroup
                failures.append(f"{operation.label} ({variant}):\n{exc}")
    assert not failures, "\n\n".join(failures)
