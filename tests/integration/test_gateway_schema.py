"""Schemathesis against the gateway's own OpenAPI schema, on a live stack: no input it generates gets a 500.

Valid and invalid inputs (positive and negative generation) for every operation, each sent over real HTTP to
uvicorn, with the engine, projection and query service behind it. Every answer must be no server error and
must match the schema the route declares for its status. Small numbers of examples, so the file stays under
a minute on a 2-core machine; the hostile cases written by hand are in test_gateway_http.py.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.core.failures import ServerError
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.integration.gateway_harness import gateway_stack

# Per operation and mode; JETBOOK_FUZZ_SCALE=10 for a long run (the CI size is 5).
MAX_EXAMPLES = 5 * max(1, int(os.environ.get("JETBOOK_FUZZ_SCALE", "1")))
WAIT_MS = 200  # the reads' timeout_ms: generated min_seq values run far past the log, and each would wait


@schemathesis.check
def no_bug(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis's not_a_server_error, less the 5xx the gateway is specified to give: 503 (the query service
    or JetStream is not there; /ready when not ready) and 504 (a wait passed its deadline, with both positions).
    """
    status = response.status_code
    body = response.json() if status >= 500 else {}
    specified = (status in (503, 504) and body.get("error") in ("unavailable", "timeout")) or (
        status == 503 and body.get("ready") is False  # /ready: not ready, with its reasons
    )
    if status >= 500 and not specified:
        raise ServerError(operation=case.operation.label, status_code=status)
    return None


def fuzz(base: str) -> list[str]:
    """Every operation, both modes; the failures, as text (run in a thread: the checks make blocking calls)."""
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    raw = httpx.get(f"{base}/openapi.json").json()
    failures: list[str] = []
    ran = 0
    for result in schema.get_all_operations():
        op = result.ok()
        params = {p["name"] for p in raw["paths"][op.path][op.method.lower()].get("parameters", [])}
        fixed: dict[str, Any] = {"timeout_ms": WAIT_MS} if "timeout_ms" in params else {}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = op.as_strategy(generation_mode=mode, query=fixed or None)

            @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck), derandomize=True)  # fmt: skip
            @given(case=strategy)
            def check(case: Any) -> None:
                nonlocal ran
                response = case.call(base_url=base, timeout=20)
                ran += 1
                case.validate_response(response, checks=[no_bug, response_schema_conformance])

            try:
                check()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE and not params, op.label  # nothing to make invalid
            except (Exception, BaseExceptionGroup) as err:  # gather every operation's failure; fail once, below
                failures.append(f"{op.method.upper()} {op.path} ({mode}): {type(err).__name__}: {str(err)[:1500]}")
    assert ran > 100, ran  # the fuzzing really ran
    return failures


@pytest.mark.slow
async def test_no_generated_input_gets_a_server_error(nats_server: Any, nc: Any, js: Any, tmp_path: Path) -> None:
    async with gateway_stack(nats_server, nc, js, tmp_path) as s, httpx.AsyncClient(base_url=s.url) as c:
        # a market with a resting order, so that reads find data and path ids sometimes exist
        r = await c.post("/commands", json={"market_id": "M", "command": {"type": "create_market", "market_id": "M",
                                                                           "base": "B", "quote": "Q"}})  # fmt: skip
        assert r.status_code == 200, r.text
        r = await c.post("/orders", json={"market_id": "M", "account_id": "alice", "client_order_id": "a1",
                                          "side": "buy", "price": 100, "qty": 1})  # fmt: skip
        assert r.status_code == 200, r.text
        failures = await asyncio.to_thread(fuzz, s.url)
        assert not failures, "\n\n".join(failures)
        # and the venue still works after the fuzzing
        r = await c.post("/orders", json={"market_id": "M", "account_id": "alice", "client_order_id": "after",
                                          "side": "buy", "price": 100, "qty": 1})  # fmt: skip
        assert r.status_code == 200, r.text
        r = await c.get("/orders/M/client/after", params={"account_id": "alice", "consistency": "strong"})
        assert r.status_code == 200 and r.json()["result"]["status"] == "open", r.text
