"""The gateway's HTTP side on a real stack: nats-server, engine, projection, query service, uvicorn; httpx as client.

Every route, consistency (strong sees the write, min_seq past the log times out with both positions, weak says
where it stands), auth with a key file, idempotency, hostile input on every route.

`python -m tests.integration.test_gateway_http` measures the POST /commands round trip; it is not a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import nats
import pytest

from engine.lease import Lease
from events.model import decode
from gateway.http import MAX_HTTP_BODY
from tests.conftest import wait_until
from tests.integration.gateway_harness import Stack, gateway_stack, running_gateway, running_query_service
from tests.integration.harness import jetbook_proc, log_has, read_all, running_engine, running_projection, stop_proc

ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdef"
OP_KEY = "operator-key-0123456789abcdef"


@pytest.fixture
async def stack(nats_server: Any, nc: Any, js: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    async with gateway_stack(nats_server, nc, js, tmp_path) as s:
        yield s


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as c:
        yield c


def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [
        {"key": ALICE_KEY, "account": "alice", "role": "trader"},
        {"key": BOB_KEY, "account": "bob", "role": "trader"},
        {"key": OP_KEY, "account": "ops", "role": "operator"},
    ]}))  # fmt: skip
    return path


async def command(c: httpx.AsyncClient, market: str, cmd: dict[str, Any], account: str | None = None,
                  **kw: Any) -> httpx.Response:  # fmt: skip
    body: dict[str, Any] = {"market_id": market, "command": cmd}
    if account is not None:
        body["account_id"] = account
    return await c.post("/commands", json=body, **kw)


async def create_market(c: httpx.AsyncClient, market: str, **kw: Any) -> dict[str, Any]:
    r = await command(c, market, {"type": "create_market", "market_id": market, "base": "B", "quote": "Q"}, **kw)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert [e["type"] for e in body["events"]] == ["market_created"]
    return body


def order(market: str, account: str | None, coid: str, side: str, price: int, qty: int) -> dict[str, Any]:
    body: dict[str, Any] = {"market_id": market, "client_order_id": coid, "side": side, "price": price, "qty": qty}
    if account is not None:
        body["account_id"] = account
    return body


async def get_ok(c: httpx.AsyncClient, path: str, **params: Any) -> dict[str, Any]:
    r = await c.get(path, params=params)
    assert r.status_code == 200, (path, params, r.status_code, r.text)
    body: dict[str, Any] = r.json()
    assert isinstance(body["at_seq"], int) and body["at_seq"] >= 0
    return body


# --- every route ------------------------------------------------------------------------------------------


async def test_reads_and_commands_on_every_route(client: httpx.AsyncClient) -> None:
    c = client
    await create_market(c, "M")
    r = await c.post("/orders", json=order("M", "alice", "a1", "buy", 100, 3))
    assert r.status_code == 200, r.text
    placed = r.json()
    accepted = next(e for e in placed["events"] if e["type"] == "order_accepted")
    alice_order = accepted["order_id"]
    r = await c.post("/orders", json=order("M", "bob", "b1", "sell", 100, 1))
    assert r.status_code == 200, r.text
    assert "fill" in [e["type"] for e in r.json()["events"]]
    r = await c.post("/orders", json=order("M", "bob", "b2", "sell", 110, 5))
    bob_rest = next(e for e in r.json()["events"] if e["type"] == "order_accepted")["order_id"]

    strong = {"consistency": "strong"}
    markets = await get_ok(c, "/markets", **strong)
    assert [x["market_id"] for x in markets["result"]] == ["M"] and markets["result"][0]["last_price"] == 100
    snap = await get_ok(c, "/snapshot", market_id="M", depth=5, **strong)
    ladder = snap["result"]["ladders"][0]
    assert ladder["bids"] == [{"price": 100, "qty": 2, "orders": 1}]
    assert ladder["asks"] == [{"price": 110, "qty": 5, "orders": 1}]
    top = await get_ok(c, "/top_of_book", market_id="M", depth=1, **strong)
    assert top["result"]["books"][0]["asks"][0]["price"] == 110
    assert (await get_ok(c, "/order_count", market_id="M", **strong))["result"] == 2
    assert (await get_ok(c, "/order_count", **strong))["result"] == 2
    assert (await get_ok(c, "/order_count", market_id="M", status="filled", **strong))["result"] == 1
    both = await get_ok(c, "/order_count", market_id="M", status=["filled", "open"], **strong)
    assert both["result"] == 2  # bob's b1 filled, bob's b2 open (alice's is partially filled)
    assert (await get_ok(c, "/order_count", market_id="M", status="all", **strong))["result"] == 3
    orders = await get_ok(c, "/orders", market_id="M", account_id="alice", **strong)
    assert [(o["client_order_id"], o["status"], o["open_qty"]) for o in orders["result"]] == [
        ("a1", "partially_filled", 2)
    ]
    one = await get_ok(c, f"/orders/M/{alice_order}", **strong)
    assert one["result"]["client_order_id"] == "a1"
    by_coid = await get_ok(c, "/orders/M/client/a1", account_id="alice", **strong)
    assert by_coid["result"]["order_id"] == alice_order
    fills = await get_ok(c, "/fills", market_id="M", **strong)
    assert [(f["price"], f["qty"], f["maker_account"], f["taker_account"]) for f in fills["result"]] == [
        (100, 1, "alice", "bob")
    ]
    page = await get_ok(c, "/fills", market_id="M", from_seq=fills["result"][0]["seq"] + 1, **strong)
    assert page["result"] == []
    risk = await get_ok(c, "/risk", market_id="M", **strong)
    assert {a["account_id"]: a["net_qty"] for a in risk["result"]["accounts"]} == {"alice": 1, "bob": -1}
    done = await get_ok(c, "/completed_orders", market_id="M", account_id="bob", **strong)
    assert [o["client_order_id"] for o in done["result"]] == ["b1"]

    # the other commands: amend, cancel one, cancel all, and any command through /commands
    r = await c.post(f"/orders/M/{bob_rest}/amend", json={"account_id": "bob", "qty": 2})
    assert r.status_code == 200 and r.json()["events"][0]["type"] == "order_amended", r.text
    r = await c.delete(f"/orders/M/{bob_rest}", params={"account_id": "bob"})
    assert r.status_code == 200 and r.json()["events"][0]["type"] == "order_cancelled", r.text
    r = await c.delete("/orders/M", params={"account_id": "alice", "side": "buy"})
    assert r.status_code == 200 and r.json()["events"][0]["type"] == "orders_cancelled", r.text
    assert (await get_ok(c, "/order_count", market_id="M", **strong))["result"] == 0
    r = await command(c, "M", {"type": "set_market_state", "state": "suspended"})
    assert r.status_code == 200 and r.json()["events"][0]["state"] == "suspended", r.text

    # a rejection: 422 with the engine's reason, and still the cmd_seq and events
    r = await command(c, "M", {"type": "create_market", "market_id": "M", "base": "B", "quote": "Q"})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "market_exists" and body["cmd_seq"] > 0 and body["events"][0]["type"] == "rejected"
    r = await c.get("/orders/M/999999")
    assert r.status_code == 404 and r.json()["error"] == "not_found", r.text
    r = await c.get("/snapshot", params={"market_id": "NOPE"})
    assert r.status_code == 404 and r.json()["error"] == "not_found", r.text


async def test_service_routes(client: httpx.AsyncClient) -> None:
    c = client
    await create_market(c, "S")
    r = await c.post("/orders", json=order("S", "alice", "a1", "buy", 100, 3))
    assert r.status_code == 200
    r = await c.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    counts = (await c.get("/debug/live_counts", params={"consistency": "strong"})).json()
    assert counts["markets"] == 1 and counts["open_orders"] == 1 and counts["orders"] == 1
    assert counts["open_orders_by_market"] == {"S": 1} and counts["evt_tail_seq"] >= 2, counts
    r = await c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'jetbook_gateway_requests_total{method="POST",route="/orders",status="200"}' in text
    assert 'jetbook_gateway_requests_total{method="GET",route="/health",status="200"}' in text
    assert 'jetbook_gateway_command_round_trip_seconds_count{via="http"}' in text
    await c.get("/no/such/route/" + "x" * 50)
    assert 'route="unmatched",status="404"' in (await c.get("/metrics")).text
    schema = (await c.get("/openapi.json")).json()
    assert {"/snapshot", "/risk", "/completed_orders", "/commands", "/ready"} <= set(schema["paths"])
    docs = await c.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    # this stack's engine runs without a lease: not ready, and says why
    r = await c.get("/ready")
    assert r.status_code == 503 and "no engine holds the lease" in r.json()["reasons"], r.text


async def test_ready_when_everything_is_there_and_not_when_not(nats_server: Any, nc: Any, js: Any,
                                                               tmp_path: Path) -> None:  # fmt: skip
    """Ready needs NATS, the streams, a leased engine and a read model near the log; each missing part is named."""
    async with running_gateway(nats_server.url) as alone, httpx.AsyncClient(base_url=alone, timeout=30) as c:
        r = await c.get("/ready")
        reasons = r.json()["reasons"]
        assert r.status_code == 503 and "no engine holds the lease" in reasons, r.text
        assert any(x.startswith("query service: unavailable") for x in reasons), reasons
        assert (await c.get("/health")).status_code == 200  # alive all the same
        r = await c.get("/markets")
        assert r.status_code == 503 and r.json()["error"] == "unavailable", r.text

    db = tmp_path / "rm.db"
    lease = Lease(lambda: nats.connect(nats_server.url), ttl=0.8)
    async with (
        running_engine(nc, lease=lease),
        running_projection(js, db),
        running_query_service(nats_server.url, db),
        running_gateway(nats_server.url) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as c,
    ):
        await create_market(c, "R")

        async def ready() -> bool:
            return (await c.get("/ready")).status_code == 200

        await wait_until(ready, what="/ready")
        checks = (await c.get("/ready")).json()["checks"]
        assert checks["lease"]["holder"] and checks["JB_EVT"] >= 1 and checks["lag"] <= 1000, checks


# --- consistency ------------------------------------------------------------------------------------------


async def test_strong_sees_the_write_weak_says_where_it_stands_min_seq_times_out(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    c = client
    await create_market(c, "C")
    # a command published straight to JB_CMD: once its PubAck is back, a strong read over HTTP sees it
    ack = await stack.js.publish("jb.cmd.C.carol", msgpack.packb(
        {"type": "place_order", "client_order_id": "c1", "side": "buy", "price": 50, "qty": 1}))  # fmt: skip
    seen = await get_ok(c, "/order_count", market_id="C", account_id="carol", consistency="strong")
    assert seen["result"] == 1
    # and right after a POST's answer
    r = await c.post("/orders", json=order("C", "dave", "d1", "buy", 51, 1))
    assert r.status_code == 200
    seen = await get_ok(c, "/orders", market_id="C", account_id="dave", consistency="strong")
    assert [o["client_order_id"] for o in seen["result"]] == ["d1"]

    # weak: what it returns matches its at_seq (present iff at_seq reached the order's order_accepted)
    r = await c.post("/orders", json=order("C", "erin", "e1", "buy", 52, 1))
    cmd_seq = r.json()["cmd_seq"]
    evt_seq = next(m.seq for m in await read_all(stack.js, "JB_EVT") if decode(m.data).cmd_seq == cmd_seq)
    answers = []

    async def shown() -> bool:  # the assertion is checked on every answer, until the order shows
        weak = await get_ok(c, "/orders", market_id="C", account_id="erin")
        present = bool(weak["result"])
        answers.append((weak["at_seq"], present))
        assert present == (weak["at_seq"] >= evt_seq), (evt_seq, weak)
        return present

    await wait_until(shown, what="the weak read to show erin's order")
    assert ack.seq < cmd_seq

    # min_seq beyond the log: 504 with the replica's position and the one asked for
    r = await c.get("/markets", params={"min_seq": 10**12, "timeout_ms": 200})
    body = r.json()
    assert r.status_code == 504 and body["error"] == "timeout", r.text
    assert body["wanted_seq"] == 10**12 and body["at_seq"] >= evt_seq
    # min_seq already reached answers at once, from at least there
    assert (await get_ok(c, "/markets", min_seq=evt_seq))["at_seq"] >= evt_seq


# --- idempotency ------------------------------------------------------------------------------------------


async def test_idempotency_key_does_not_trade_twice(client: httpx.AsyncClient) -> None:
    c = client
    await create_market(c, "I")
    key = {"Idempotency-Key": "retry-7f3a"}
    first = await c.post("/orders", json=order("I", "alice", "a1", "buy", 100, 1), headers=key)
    again = await c.post("/orders", json=order("I", "alice", "a1", "buy", 100, 1), headers=key)
    assert first.status_code == 200 and again.status_code == 200, (first.text, again.text)
    assert first.json()["cmd_seq"] == again.json()["cmd_seq"]
    assert (first.json()["duplicate"], again.json()["duplicate"]) == (False, True)
    assert again.json()["events"] == first.json()["events"]
    assert (await get_ok(c, "/order_count", market_id="I", status="all", consistency="strong"))["result"] == 1
    # the same key for another command is refused, not mistaken for the first
    other = await c.post("/orders", json=order("I", "alice", "a2", "buy", 100, 1), headers=key)
    assert other.status_code == 409 and other.json()["error"] == "idempotency_key_reused", other.text
    # another account's same key is its own
    bobs = await c.post("/orders", json=order("I", "bob", "b1", "buy", 100, 1), headers=key)
    assert bobs.status_code == 200 and bobs.json()["duplicate"] is False
    # without a key, a repeated cancel_all is two commands
    one = await c.delete("/orders/I", params={"account_id": "alice"})
    two = await c.delete("/orders/I", params={"account_id": "alice"})
    assert one.json()["cmd_seq"] != two.json()["cmd_seq"]


# --- auth -------------------------------------------------------------------------------------------------


async def test_keys_bind_traders_to_their_account_and_control_to_operators(
    nats_server: Any, nc: Any, js: Any, tmp_path: Path
) -> None:
    async with (
        gateway_stack(nats_server, nc, js, tmp_path, keys_file=key_file(tmp_path)) as s,
        httpx.AsyncClient(base_url=s.url, timeout=30) as c,
    ):
        alice = {"Authorization": f"Bearer {ALICE_KEY}"}
        bob = {"X-API-Key": BOB_KEY}
        op = {"Authorization": f"Bearer {OP_KEY}"}
        for headers in ({}, {"Authorization": "Bearer nope-nope-nope-nope"}, {"X-API-Key": ALICE_KEY + "x"},
                        {"Authorization": ALICE_KEY}):  # fmt: skip
            r = await c.get("/markets", headers=headers)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", (headers, r.text)
        # a trader cannot create a market; an operator can
        r = await command(c, "A", {"type": "create_market", "market_id": "A", "base": "B", "quote": "Q"},
                          headers=alice)  # fmt: skip
        assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
        await create_market(c, "A", headers=op)
        # a trader commands its own account, by default or by name, and no other
        r = await c.post("/orders", json=order("A", None, "a1", "buy", 100, 2), headers=alice)
        assert r.status_code == 200, r.text
        alice_order = r.json()["events"][0]["order_id"]
        r = await c.post("/orders", json=order("A", "bob", "x1", "buy", 100, 2), headers=alice)
        assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
        r = await c.delete(f"/orders/A/{alice_order}", params={"account_id": "alice"}, headers=bob)
        assert r.status_code == 403, r.text
        r = await command(c, "A", {"type": "cancel_all"}, "alice", headers=bob)
        assert r.status_code == 403, r.text
        r = await command(c, "A", {"type": "set_risk_limits", "account_id": "bob", "max_open_orders": 100},
                          headers=bob)  # fmt: skip
        assert r.status_code == 403, r.text
        r = await c.post("/orders", json=order("A", "bob", "b1", "sell", 100, 1), headers=bob)
        assert r.status_code == 200, r.text
        # bob sees his side of the trade, not alice's account
        fill = next(e for e in r.json()["events"] if e["type"] == "fill")
        assert fill["taker_account"] == "bob" and fill["maker_account"] is None, fill
        # reads: own by default, own by name, never another's
        strong = {"consistency": "strong"}
        mine = (await c.get("/orders", params=strong, headers=alice)).json()
        assert [o["account_id"] for o in mine["result"]] == ["alice"], mine
        for path, params in (("/orders", {}), ("/fills", {"market_id": "A"}), ("/risk", {"market_id": "A"}),
                             ("/completed_orders", {"market_id": "A"}), ("/order_count", {"market_id": "A"}),
                             ("/orders/A/client/a1", {})):  # fmt: skip
            r = await c.get(path, params={**params, "account_id": "alice"}, headers=bob)
            assert r.status_code == 403 and r.json()["error"] == "forbidden", (path, r.text)
        fills = (await c.get("/fills", params={"market_id": "A", **strong}, headers=bob)).json()["result"]
        assert [(f["maker_account"], f["taker_account"]) for f in fills] == [(None, "bob")]
        risk = (await c.get("/risk", params={"market_id": "A", **strong}, headers=bob)).json()["result"]
        assert [a["account_id"] for a in risk["accounts"]] == ["bob"], risk
        r = await c.get(f"/orders/A/{alice_order}", headers=bob)
        assert r.status_code == 404, r.text  # another's order: as if there were none
        assert (await c.get(f"/orders/A/{alice_order}", headers=alice)).status_code == 200
        # public market data: any valid key
        for path in ("/markets", "/snapshot?market_id=A", "/top_of_book?market_id=A", "/order_count?market_id=A"):
            assert (await c.get(path, headers=bob)).status_code == 200, path
        # the operator reads everything; debug counts are for operators
        everyone = (await c.get("/fills", params={"market_id": "A"}, headers=op)).json()["result"]
        assert [(f["maker_account"], f["taker_account"]) for f in everyone] == [("alice", "bob")]
        assert (await c.get("/debug/live_counts", headers=bob)).status_code == 403
        assert (await c.get("/debug/live_counts", headers=op)).json()["markets"] == 1
        # probes need no key
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/metrics")).status_code == 200


# --- hostile input ----------------------------------------------------------------------------------------


async def test_hostile_input_gets_a_reason_and_a_valid_order_still_works(client: httpx.AsyncClient) -> None:
    c = client
    await create_market(c, "H")
    big = 2**64
    hostile: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/snapshot", {}),
        ("GET", "/snapshot?market_id=a.b", {}),
        ("GET", "/snapshot?market_id=" + "x" * 65, {}),
        ("GET", "/snapshot?market_id=H&depth=0", {}),
        ("GET", "/snapshot?market_id=H&depth=1e9", {}),
        ("GET", "/snapshot?market_id=H&depth=99999999999999999999999999", {}),
        ("GET", "/snapshot?market_id=H&consistency=linearizable", {}),
        ("GET", "/snapshot?market_id=H&min_seq=-1", {}),
        ("GET", f"/snapshot?market_id=H&min_seq={2**63}", {}),
        ("GET", "/snapshot?market_id=H&timeout_ms=0", {}),
        ("GET", "/snapshot?market_id=H&dpeth=5", {}),
        ("GET", "/snapshot?market_id=%ff%fe", {}),
        ("GET", "/snapshot?market_id=%00", {}),
        ("GET", "/top_of_book?market_id=H&runner=*", {}),
        ("GET", "/markets?x=1", {}),
        ("GET", "/fills?market_id=H&limit=0", {}),
        ("GET", "/fills?market_id=H&from_seq=abc", {}),
        ("GET", "/orders?status=bogus", {}),
        ("GET", "/orders?account_id=a%20b", {}),
        ("GET", "/order_count?market_id=H&status=", {}),
        ("GET", "/risk?market_id=H&account_id=>", {}),
        ("GET", "/completed_orders?market_id=H&limit=10001", {}),
        ("GET", "/orders/H/0", {}),
        ("GET", "/orders/H/-5", {}),
        ("GET", f"/orders/H/{big}", {}),
        ("GET", "/orders/H/abc", {}),
        ("GET", "/orders/a.b/1", {}),
        ("GET", "/orders/H/client/" + "y" * 65 + "?account_id=alice", {}),
        ("DELETE", "/orders/H/1?account_id=", {}),
        ("DELETE", f"/orders/H/{big}?account_id=alice", {}),
        ("DELETE", "/orders/H?account_id=alice&side=" + "s" * 100, {}),
        ("POST", "/orders/H/1/amend", {"json": {"qty": 1.5, "account_id": "alice"}}),
        ("POST", "/orders/H/1/amend", {"json": {"qty": 1, "account_id": "alice", "zzz": 1}}),
        ("POST", "/commands", {"content": b"\xff\xfe\x00garbage"}),
        ("POST", "/commands", {"content": b"{", "headers": {"Content-Type": "application/json"}}),
        ("POST", "/commands", {"content": b'{"market_id": "H", "command": {"type": "go_live"}}',
                               "headers": {"Content-Type": "text/plain"}}),
        ("POST", "/commands", {"json": []}),
        ("POST", "/commands", {"json": {"market_id": "H"}}),
        ("POST", "/commands", {"json": {"market_id": "H", "command": {"type": "launch_missiles"}}}),
        ("POST", "/commands", {"json": {"market_id": "H", "command": {}}}),
        ("POST", "/commands", {"json": {"market_id": "H", "command": "place_order"}}),
        ("POST", "/commands", {"json": {"market_id": "H", "surprise": 1, "command": {"type": "go_live"}}}),
        ("POST", "/commands", {"json": {"market_id": "H.x", "command": {"type": "go_live"}}}),
        ("POST", "/commands", {"json": {"market_id": "H", "account_id": "a b", "command": {"type": "cancel_all"}}}),
        ("POST", "/commands", {"json": {"market_id": "H", "command": {"type": "cancel_all"}}}),  # no account
        ("POST", "/commands", {"json": {"market_id": "H", "account_id": "alice", "command": {
            "type": "place_order", "client_order_id": "h1", "side": "buy", "qty": big, "price": 100}}}),
        ("POST", "/commands", {"json": {"market_id": "H", "account_id": "alice", "command": {
            "type": "place_order", "client_order_id": "h1", "side": "buy", "qty": 2**70, "price": 100}}}),
        ("POST", "/commands", {"json": {"market_id": "H", "account_id": "alice", "command": {
            "type": "place_order", "client_order_id": "h1", "side": "sideways", "qty": 1, "price": 100}}}),
        ("POST", "/commands", {"json": {"market_id": "H", "account_id": "alice", "command": {
            "type": "place_order", "client_order_id": "h1", "side": "buy", "qty": True, "price": 100}}}),
        ("POST", "/commands", {"json": {"market_id": "H", "account_id": "alice", "command": {
            "type": "place_order", "client_order_id": "h1", "side": "buy", "qty": 1, "price": 100, "x": 1}}}),
        ("POST", "/commands", {"content": b'{"market_id": "H", "command": {"type": "go_live", "v": 1e999}}',
                               "headers": {"Content-Type": "application/json"}}),
        ("POST", "/commands", {"content": b"[" * 100_000, "headers": {"Content-Type": "application/json"}}),
        ("POST", "/commands", {"content": b"x" * (MAX_HTTP_BODY + 1), "headers": {"Content-Type": "application/json"}}),
        ("POST", "/orders", {"json": {"market_id": "H", "account_id": "alice", "client_order_id": "h2",
                                      "side": "buy", "qty": "1", "price": 100}}),
        ("POST", "/orders", {"json": {"market_id": "H", "account_id": "alice", "client_order_id": "h2" * 40,
                                      "side": "buy", "qty": 1, "price": 100}}),
        ("POST", "/orders", {"json": {"market_id": "H", "account_id": "alice", "client_order_id": "h3",
                                      "side": "buy", "qty": 1, "price": 100},
                             "headers": {"Idempotency-Key": "has space"}}),
        ("POST", "/orders", {"json": {"market_id": "H", "account_id": "alice", "client_order_id": "h3",
                                      "side": "buy", "qty": 1, "price": 100},
                             "headers": {"Idempotency-Key": "k" * 201}}),
        ("PUT", "/orders", {"json": {}}),
        ("GET", "/nothing/here", {}),
    ]  # fmt: skip
    for method, path, kw in hostile:
        r = await c.request(method, path, **kw)
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text[:300])
        body = r.json()
        assert isinstance(body.get("error"), str) and body["error"] and "detail" in body, (method, path, body)

    # a chunked body over the cap, with no Content-Length to refuse it by
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(MAX_HTTP_BODY // 1000 + 2):
            yield b" " * 1000

    r = await c.post("/commands", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "too_large", r.text
    # specific reasons where the engine's parser speaks
    r = await command(c, "H", {"type": "place_order", "client_order_id": "h1", "side": "sideways", "qty": 1,
                               "price": 100}, "alice")  # fmt: skip
    assert r.json()["error"] == "invalid_side", r.text
    r = await command(c, "H", {"type": "launch_missiles"})
    assert r.json()["error"] == "unknown_command", r.text
    r = await c.get("/snapshot", params={"market_id": "H", "dpeth": 5})
    assert r.json()["error"] == "invalid_field" and "dpeth" in r.json()["detail"], r.text
    # and after all that, the venue still trades
    r = await c.post("/orders", json=order("H", "alice", "ok1", "buy", 100, 1))
    assert r.status_code == 200 and r.json()["events"][0]["type"] == "order_accepted", r.text
    assert (await get_ok(c, "/order_count", market_id="H", consistency="strong"))["result"] == 1


# --- round trip (run by hand: python -m tests.integration.test_gateway_http) ------------------------------


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


async def _measure(n: int = 2000) -> None:
    import tempfile

    from jetbook.server import EmbeddedServer
    from protocol.streams import ensure_streams

    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer(Path(tmp) / "nats", port=0)
        server.start()
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            await ensure_streams(js)
            async with (
                gateway_stack(server, nc, js, Path(tmp)) as s,
                httpx.AsyncClient(base_url=s.url, timeout=30) as c,
            ):
                await create_market(c, "P")
                for label, make in (
                    ("POST /commands place_order (resting)", lambda i: (
                        "/commands", {"market_id": "P", "account_id": "alice", "command": {
                            "type": "place_order", "client_order_id": f"p{i}", "side": "buy", "price": 100 + i % 50,
                            "qty": 1}})),
                    ("POST /orders crossing (fill)", lambda i: (
                        "/orders", order("P", "bob", f"q{i}", "sell", 1, 1))),
                ):  # fmt: skip
                    times = []
                    for i in range(n):
                        path, body = make(i)
                        t = time.perf_counter()
                        r = await c.post(path, json=body)
                        times.append((time.perf_counter() - t) * 1e3)
                        assert r.status_code == 200, r.text
                    print(f"{label:40} p50 {_pct(times, 0.5):.2f} ms  p99 {_pct(times, 0.99):.2f} ms  (n={n})")
            await nc.close()
        finally:
            server.stop()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_measure())


# --- the command ------------------------------------------------------------------------------------------


async def test_jetbook_gateway_command_serves_and_stops_on_a_signal(nats_server: Any, js: Any, tmp_path: Path) -> None:
    """`jetbook gateway` prints its address, serves, and exits 0 on SIGINT; a bad key file is refused at start."""
    import re
    import signal
    import subprocess
    import sys

    bad = tmp_path / "bad.json"
    bad.write_text('{"keys": [{"key": "short", "account": "alice"}]}')
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "jetbook", "gateway", "--nats-url", nats_server.url, "--http-port", "0",
         "--api-keys", str(bad)],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and b"at least 16 characters" in done.stderr, done.stderr[-500:]
    assert b"Traceback" not in done.stderr

    log = tmp_path / "gateway.log"
    proc = jetbook_proc(log, "gateway", "--nats-url", nats_server.url, "--http-port", "0",
                        "--api-keys", str(key_file(tmp_path)))  # fmt: skip
    try:

        async def listening() -> bool:
            assert proc.poll() is None, log.read_text(errors="replace")
            return log_has(log, "gateway: http://")

        await wait_until(listening, what="the gateway's address")
        found = re.search(r"gateway: (http://127\.0\.0\.1:\d+)", log.read_text())
        assert found, log.read_text()
        async with httpx.AsyncClient(base_url=found.group(1), timeout=30) as c:
            assert (await c.get("/health")).status_code == 200
            assert (await c.get("/markets")).status_code == 401  # the key file is in force
            r = await c.get("/markets", headers={"X-API-Key": OP_KEY})
            assert r.status_code == 503 and r.json()["error"] == "unavailable"  # no query service: said, not hung
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 20) == 0, log.read_text(errors="replace")
        assert "Traceback" not in log.read_text(errors="replace")
    finally:
        stop_proc(proc)
