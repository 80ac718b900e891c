"""Fault 6: the HTTP API fuzzed from its own OpenAPI document by schemathesis, over real HTTP to
an `engine api` process with the session's broker, Redis and worker behind it: valid and
invalid parameters and bodies (positive and negative generation), each operation both without
credentials and with a key. No answer may be a 5xx or carry a stack trace; admin operations
without credentials must be refused (401/403); oversized bodies get 413."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given
from schemathesis.generation import GenerationMode

from engine.config import Settings
from engine.embedded import ManagedProcess

from ..conftest import start_api
from .harness import FULL, save_figures

pytestmark = [pytest.mark.integration, pytest.mark.faults]

EXAMPLES = 1000 if FULL else 40
READ_KEY = "fuzz-reader-0123456789abcdef"
ADMIN_KEY = "fuzz-admin-0123456789abcdefg"
#: What only a stack trace or a leaked exception would put in a body.
LEAKS = ("Traceback", 'File "/', "Exception:", "Error:", "redis.exceptions", "aiokafka.errors",
         READ_KEY, ADMIN_KEY)


@pytest.fixture(scope="module")
def api_url(settings: Settings, worker: ManagedProcess, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[str]:
    proc, url = start_api(settings, tmp_path_factory.mktemp("fuzz") / "api.log",
                          ENGINE_API_KEYS=(f'["shop:read+events:{READ_KEY}", '
                                           f'"ops:admin:{ADMIN_KEY}"]'),
                          ENGINE_API_RATE_LIMIT_PER_S="0")
    try:
        yield url
    finally:
        proc.stop()
        log = Path(proc.log_path).read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]


def operations(url: str) -> list:
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def is_admin(operation: object) -> bool:
    return getattr(operation, "method", "").upper() not in ("GET", "HEAD") and \
        getattr(operation, "path", "") != "/v1/events"


def fuzz(api_url: str, operation: Any, mode: GenerationMode, credentials: str,
         statuses: Counter[str], failures: list[str]) -> None:
    """``EXAMPLES // 4`` requests generated for one operation, mode and credentials."""
    label = f"{operation.method.upper()} {operation.path}"
    admin = is_admin(operation)
    headers = {} if credentials == "none" else {
        "Authorization": f"Bearer {ADMIN_KEY if admin else READ_KEY}"}

    @hypothesis.settings(max_examples=EXAMPLES // 4, deadline=None, database=None,
                         derandomize=True, suppress_health_check=list(HealthCheck),
                         phases=[hypothesis.Phase.generate])
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        case.headers = {k: v for k, v in (case.headers or {}).items()
                        if credentials == "key" or k.lower() not in ("authorization",
                                                                     "x-api-key")}
        case.headers.update(headers)
        response = case.call(base_url=api_url, timeout=30)
        statuses[f"{label} {response.status_code}"] += 1
        body = response.text
        if response.status_code >= 500:
            failures.append(f"{label}: {response.status_code} {body[:300]} "
                            f"for {case.as_curl_command()[:500]}")
        if any(leak in body for leak in LEAKS):
            failures.append(f"{label}: a body leaks internals: {body[:300]}")
        if admin and credentials == "none" and response.status_code not in (401, 403):
            failures.append(f"{label}: {response.status_code} without credentials")

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        # nothing to make invalid: an operation without parameters or body
        assert mode is GenerationMode.NEGATIVE, label


def test_fuzz_every_operation(api_url: str) -> None:
    statuses: Counter[str] = Counter()
    failures: list[str] = []
    ops = operations(api_url)
    assert len(ops) >= 12
    for operation in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for credentials in ("none", "key"):
                fuzz(api_url, operation, mode, credentials, statuses, failures)
    total = sum(statuses.values())
    by_status: Counter[str] = Counter()
    for key, n in statuses.items():
        by_status[key.rsplit(" ", 1)[1]] += n
    save_figures("api_fuzz", {
        "operations": len(ops), "requests": total,
        "per_operation": {f"{o.method.upper()} {o.path}": sum(
            n for k, n in statuses.items() if k.startswith(f"{o.method.upper()} {o.path} "))
            for o in ops},
        "by_status": dict(sorted(by_status.items())),
        "server_errors": sum(n for s, n in by_status.items() if s.startswith("5")),
        "failures": len(failures)})
    assert failures[:20] == []


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/events"), ("PUT", "/v1/items/x/price/override")])
def test_oversized_bodies_get_413(api_url: str, method: str, path: str) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
    declared = requests.request(method, api_url + path, data=b"{" + b" " * (9 * 2**20) + b"}",
                                headers=headers, timeout=30)

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b" " * 2**18

    streamed = requests.request(method, api_url + path, data=chunks(), headers=headers,
                                timeout=30)
    assert declared.status_code == 413 and "over" in declared.json()["detail"]
    assert streamed.status_code == 413


def test_admin_operations_refuse_missing_or_lesser_keys(api_url: str) -> None:
    admin = [o for o in operations(api_url) if is_admin(o)]
    assert {o.path for o in admin} == {"/v1/items/{item_id}/price/override"}
    for o in admin:
        url = api_url + o.path.replace("{item_id}", "x")
        body = {"price": 1.0, "ttl_minutes": 5}
        assert requests.request(o.method, url, json=body, timeout=5).status_code == 401
        lesser = requests.request(o.method, url, json=body, timeout=5,
                                  headers={"X-API-Key": READ_KEY})
        assert lesser.status_code == 403
