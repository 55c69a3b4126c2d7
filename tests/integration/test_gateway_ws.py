"""The gateway's WebSockets (`/ws`, `/ws_ctl`) and the page's files on a real stack: every frame, auth, bad input.

`python -m tests.integration.test_gateway_ws [clients ...]` measures how many `/ws` clients one gateway feeds at
5 snapshots/s while a market changes continuously; it is not a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from prometheus_client import REGISTRY
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway import ws
from gateway.ws import MAX_TRADES, Outbox
from tests.conftest import wait_until
from tests.integration.gateway_harness import Stack, gateway_stack

Frame = dict[str, Any]
OPERATOR_KEY = "op-key-0123456789abcdef"
ALICE_KEY = "alice-key-0123456789abcdef"


@pytest.fixture
async def stack(nats_server: Any, nc: Any, js: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    async with gateway_stack(nats_server, nc, js, tmp_path) as s:
        yield s


def url(stack: Stack, path: str, **params: Any) -> str:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return stack.url.replace("http://", "ws://") + path + (f"?{query}" if query else "")


async def frame_of(sock: ClientConnection, kind: str, pred: Callable[[Frame], bool] = lambda f: True,
                   timeout: float = 15.0, what: str = "") -> Frame:  # fmt: skip
    """The next frame of type `kind` (any, if "") that satisfies `pred`, skipping others; fails at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        if left <= 0:
            pytest.fail(f"no {kind} frame within {timeout}s {what}")
        try:
            raw = await asyncio.wait_for(sock.recv(), left)
        except TimeoutError:
            pytest.fail(f"no {kind} frame within {timeout}s {what}")
        frame = json.loads(raw)
        assert isinstance(frame, dict) and "type" in frame, frame
        if (frame["type"] == kind or not kind) and pred(frame):
            return frame


async def command(sock: ClientConnection, frame: Frame) -> tuple[Frame, Frame]:
    """Send a command frame; its ack and its order_response (matched by correlation id)."""
    cid = frame["correlation_id"]
    await sock.send(json.dumps(frame))
    replies: list[Frame] = []
    while len(replies) < 2:
        reply = await frame_of(sock, "", lambda f: f.get("correlation_id") == cid)
        assert reply["type"] != "error", (frame, reply)
        replies.append(reply)
    ack, response = replies
    assert ack["type"] == "ack" and response["type"] == "order_response", replies
    return ack, response


def place(cid: str, account: str, side: str, price: int, qty: int, market: str = "M", **extra: Any) -> Frame:
    return {"type": "place_order", "correlation_id": cid, "market_id": market, "account_id": account,
            "client_order_id": cid, "side": side, "price": price, "qty": qty, **extra}  # fmt: skip


def create(cid: str, market: str = "M") -> Frame:
    return {"type": "create_market", "correlation_id": cid, "market_id": market, "base": "ETH", "quote": "USDC"}


def gauge(endpoint: str) -> float:
    return REGISTRY.get_sample_value("jetbook_gateway_ws_clients", {"endpoint": endpoint}) or 0.0


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- the tests -----------------------------------------------------------------------------------------------


async def test_ws_sends_a_snapshot_on_connect_then_on_each_change_and_the_trades(stack: Stack) -> None:
    async with connect(url(stack, "/ws_ctl")) as ctl:
        _, created = await command(ctl, create("c1"))
        assert created["events"][0]["type"] == "market_created", created
        async with connect(url(stack, "/ws", market_id="M", depth=5, interval_ms=50)) as view:
            first = await frame_of(view, "snapshot")
            assert first["market_id"] == "M" and first["depth"] == 5
            assert first["at_seq"] >= 1 and first["market"]["market_id"] == "M"
            assert first["ladders"][0]["asks"] == [] and first["ladders"][0]["bids"] == []

            _, rested = await command(ctl, place("a1", "alice", "sell", 100, 2))
            assert [e["type"] for e in rested["events"]] == ["order_accepted"], rested
            resting = await frame_of(view, "snapshot", lambda f: f["ladders"][0]["asks"] != [])
            assert resting["ladders"][0]["asks"] == [{"price": 100, "qty": 2, "orders": 1}]
            assert resting["at_seq"] > first["at_seq"]

            _, crossed = await command(ctl, place("b1", "bob", "buy", 100, 2))
            assert [e["type"] for e in crossed["events"]] == ["order_accepted", "fill"], crossed
            trade = await frame_of(view, "trade")
            public = {k: trade[k] for k in ("market_id", "price", "qty", "taker_side", "runner", "trade_id")}
            assert public == {
                "market_id": "M",
                "price": 100,
                "qty": 2,
                "taker_side": "buy",
                "runner": None,
                "trade_id": 1,
            }
            assert not any("account" in k or "client_order" in k for k in trade), trade  # the tape is public
            assert trade["seq"] > resting["at_seq"]
            after = await frame_of(view, "snapshot", lambda f: f["ladders"][0]["asks"] == [])
            assert after["at_seq"] >= trade["seq"] and after["market"]["last_price"] == 100

            await view.send('{"type":"place_order"}')  # /ws is read-only, and stays open
            refused = await frame_of(view, "error")
            assert refused["error"] == "read_only"
            await command(ctl, place("a2", "alice", "sell", 101, 1))
            again = await frame_of(view, "snapshot", lambda f: f["ladders"][0]["asks"] != [])
            assert again["ladders"][0]["asks"][0]["price"] == 101


async def test_ws_ctl_acks_then_answers_with_the_events_rejections_included(stack: Stack) -> None:
    rt_before = sample("jetbook_gateway_command_round_trip_seconds_count", {"via": "ws"})
    async with connect(url(stack, "/ws_ctl", market_id="M")) as ctl:
        ack, response = await command(ctl, create("create-1"))
        assert ack["cmd_seq"] == response["cmd_seq"] and ack["duplicate"] is False
        assert response["rejected"] is None
        _, rejected = await command(ctl, place("p1", "alice", "buy", 10, 1, market="NOPE"))
        assert rejected["rejected"]["reason"] == "unknown_market", rejected
        assert rejected["events"][0]["type"] == "rejected" and rejected["events"][0]["reason"] == "unknown_market"
        # The control commands, each through ws_ctl: lifecycle, runners, risk limits.
        odds = {"type": "create_market", "correlation_id": 7, "market_id": "O", "kind": "odds", "quote": "GBP",
                "runners": [{"runner_id": "H", "label": "Home"}, {"runner_id": "A", "label": "Away"}]}  # fmt: skip
        _, made = await command(ctl, odds)
        assert made["correlation_id"] == 7 and made["rejected"] is None
        controls: list[Frame] = [
            {"type": "add_runner", "runner_id": "D", "label": "Draw"},
            {"type": "set_risk_limits", "account_id": "alice", "max_order_qty": 50},
            {"type": "set_market_state", "state": "suspended"},
            {"type": "set_market_state", "state": "open"},
            {"type": "await_live"},
            {"type": "go_live"},
            {"type": "close_market"},
            {"type": "settle_market", "winner": "H"},
        ]  # fmt: skip
        for i, frame in enumerate(controls):
            _, done = await command(ctl, {**frame, "correlation_id": f"o{i}", "market_id": "O"})
            assert done["rejected"] is None, (frame, done)
        _, voided = await command(ctl, {"type": "void_market", "correlation_id": "v", "market_id": "O"})
        assert voided["rejected"] is not None and voided["rejected"]["reason"], voided  # a settled market stays
        # Trading commands: amend, cancel, cancel_all (the account from the frame).
        await command(ctl, place("t1", "carol", "buy", 90, 5))
        _, amended = await command(ctl, {"type": "amend_order", "correlation_id": "am", "market_id": "M",
                                         "account_id": "carol", "client_order_id": "t1", "qty": 3})  # fmt: skip
        assert amended["events"][0]["type"] == "order_amended", amended
        _, cancelled = await command(ctl, {"type": "cancel_order", "correlation_id": "cx", "market_id": "M",
                                           "account_id": "carol", "client_order_id": "t1"})  # fmt: skip
        assert cancelled["events"][0]["type"] == "order_cancelled", cancelled
        await command(ctl, place("t2", "carol", "buy", 91, 1))
        _, swept = await command(ctl, {"type": "cancel_all", "correlation_id": "ca", "account_id": "carol"})
        assert swept["events"][0]["type"] == "orders_cancelled" and len(swept["events"][0]["orders"]) == 1
        # Idempotency: the same key twice is one command.
        k1 = place("k1", "dave", "buy", 50, 1, idempotency_key="once")
        ack1, _ = await command(ctl, k1)
        ack2, again = await command(ctl, {**k1, "correlation_id": "k1-again"})
        assert ack2["cmd_seq"] == ack1["cmd_seq"] and ack2["duplicate"] is True
        assert again["events"][0]["type"] == "order_accepted"
    assert sample("jetbook_gateway_command_round_trip_seconds_count", {"via": "ws"}) > rt_before


async def test_no_ack_sends_no_replies_but_still_reports_errors(stack: Stack) -> None:
    async with connect(url(stack, "/ws_ctl")) as ctl:
        await command(ctl, create("c"))
    async with connect(url(stack, "/ws_ctl", market_id="M", no_ack=1)) as fast:
        for i in range(5):
            await fast.send(json.dumps(place(f"n{i}", "erin", "buy", 10 + i, 1)))
        await fast.send(json.dumps(place("bad", "erin", "up", 10, 1)))
        error = await frame_of(fast, "error", lambda f: f.get("correlation_id") == "bad")
        assert error["error"] == "invalid_side"
        # The five were decided: the order list (a query, answered even with no_ack) shows them.
        seen: list[Frame] = []

        async def five_open() -> bool:
            await fast.send(json.dumps({"type": "orders", "correlation_id": "q", "account_id": "erin"}))
            frame = await frame_of(fast, "orders")
            seen.append(frame)
            return len(frame["orders"]) == 5

        await wait_until(five_open, what="erin's five orders")
        assert not any(f["type"] in ("ack", "order_response") for f in seen)
        snap = await frame_of(fast, "snapshot", lambda f: len(f["ladders"][0]["bids"]) == 5)
        assert snap["ladders"][0]["bids"][0]["price"] == 14


async def test_status_frame_every_second_and_subscribe_and_list_markets(stack: Stack) -> None:
    async with connect(url(stack, "/ws_ctl")) as ctl:
        status = await frame_of(ctl, "status")
        assert set(status) >= {"evt_seq", "markets", "lease", "projection_seq"}
        assert status["markets"] == 0
        for cid, market in (("c1", "M1"), ("c2", "M2")):
            await command(ctl, create(cid, market))
        status = await frame_of(ctl, "status", lambda f: f["markets"] == 2)
        assert status["evt_seq"] >= 2 and status["lease"] is None  # the in-process engine runs without a lease
        await ctl.send(json.dumps({"type": "list_markets", "correlation_id": "l"}))
        listed = await frame_of(ctl, "market_list")
        assert [m["market_id"] for m in listed["markets"]] == ["M1", "M2"] and listed["correlation_id"] == "l"
        await ctl.send(json.dumps({"type": "subscribe", "correlation_id": "s", "market_id": "M2", "depth": 3}))
        subscribed = await frame_of(ctl, "subscribed")
        assert subscribed == {"type": "subscribed", "correlation_id": "s", "market_id": "M2", "depth": 3,
                              "runner": None}  # fmt: skip
        snap = await frame_of(ctl, "snapshot")
        assert snap["market_id"] == "M2" and snap["depth"] == 3
        # Commands default to the subscribed market.
        frame = place("x", "alice", "sell", 5, 1)
        del frame["market_id"]
        _, response = await command(ctl, frame)
        assert response["events"][0]["market_id"] == "M2"
        # A market that does not exist yet: an error, then its snapshot once it is created.
        await ctl.send(json.dumps({"type": "subscribe", "correlation_id": "s2", "market_id": "LATER"}))
        missing = await frame_of(ctl, "error", lambda f: f.get("market_id") == "LATER")
        assert missing["error"] == "not_found"
        await command(ctl, create("c3", "LATER"))
        assert (await frame_of(ctl, "snapshot"))["market_id"] == "LATER"


HOSTILE: list[str | bytes] = [
    "not json", "", "[1,2]", "42", '"text"', "null", "{}", '{"type":"nope"}', '{"type":7}',
    '{"type":"place_order","correlation_id":{"a":1}}', '{"type":"place_order","correlation_id":true}',
    '{"type":"place_order","correlation_id":"' + "c" * 200 + '"}',
    '{"type":"place_order","market_id":"M","account_id":"z","client_order_id":"h","side":"buy","price":1.5,"qty":1}',
    '{"type":"place_order","market_id":"M","account_id":"z","client_order_id":"h","side":"buy","price":NaN,"qty":1}',
    '{"type":"place_order","market_id":"M","account_id":"z","client_order_id":"h","side":"buy","price":1,"qty":1e999}',
    '{"type":"place_order","market_id":"M","account_id":"a b","client_order_id":"h","side":"buy","qty":1}',
    '{"type":"place_order","market_id":["M"],"account_id":"z"}', '{"type":"place_order","market_id":"M"}',
    '{"type":"place_order","market_id":"M","account_id":7}', '{"type":"place_order","market_id":"M","account_id":"z",'
    '"client_order_id":"h","side":"buy","price":1,"qty":1,"runner":' + "[" * 600 + "]" * 600 + "}",
    '{"type":"place_order","market_id":"M","account_id":"z","client_order_id":"h","side":"buy","price":1,"qty":'
    + "9" * 5000 + "}",
    "[" * 100_000, '{"a":' * 25_000, "x" * 70_000, '{"type":"subscribe","market_id":"a b"}',
    '{"type":"subscribe","market_id":"M","depth":0}', '{"type":"subscribe","market_id":"M","depth":true}',
    '{"type":"list_markets","extra":1}', '{"type":"orders","status":"weird"}', '{"type":"orders","limit":-1}',
    '{"type":"create_market","market_id":"_x","quote":"Q"}', '{"type":"cancel_all","market_id":"_all"}',
    '{"type":"set_market_state","market_id":"M","state":"bogus"}', b"\x00\xff binary",
    '{"type":"place_order","idempotency_key":5,"market_id":"M","account_id":"z"}',
]  # fmt: skip


async def test_hostile_frames_get_an_error_and_the_connection_still_trades(stack: Stack) -> None:
    async with connect(url(stack, "/ws_ctl", market_id="M"), max_size=None) as ctl:
        await command(ctl, create("c"))
        for raw in HOSTILE:
            await ctl.send(raw)
            answer = await frame_of(ctl, "", lambda f: f["type"] in ("error", "order_response"), what=repr(raw[:80]))
            if answer["type"] == "order_response":  # valid JSON the engine itself refuses: decided, with a reason
                assert answer["rejected"]["reason"], (raw[:80], answer)
                continue
            error = answer
            assert isinstance(error["error"], str) and error["error"] and isinstance(error["detail"], str), error
            assert error["error"] != "internal", (raw[:80], error)
        _, response = await command(ctl, place("ok", "zed", "buy", 10, 1))
        assert response["events"][0]["type"] == "order_accepted", response


async def test_a_frame_past_the_servers_cap_closes_with_1009_and_the_next_connection_trades(stack: Stack) -> None:
    """uvicorn refuses a frame over WS_MAX_SIZE before the gateway reads it: close 1009, said by the protocol."""
    async with connect(url(stack, "/ws_ctl", market_id="M"), max_size=None) as ctl:
        await command(ctl, create("c"))
        await ctl.send("x" * (ws.WS_MAX_SIZE + 1))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ctl.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    async with connect(url(stack, "/ws_ctl", market_id="M")) as ctl:
        _, response = await command(ctl, place("after", "zed", "buy", 10, 1))
        assert response["events"][0]["type"] == "order_accepted", response


async def test_bad_url_parameters_close_the_socket_with_a_reason(stack: Stack) -> None:
    for params in ({}, {"market_id": "a b"}, {"market_id": "M", "depth": "x"}, {"market_id": "M", "depth": 0},
                   {"market_id": "M", "runner": "!"}):  # fmt: skip
        async with connect(url(stack, "/ws", **params)) as sock:
            error = await frame_of(sock, "error")
            assert error["error"] == "invalid_field", error
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(sock.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == ws.CLOSE_BAD_REQUEST
    async with connect(url(stack, "/ws", market_id="M", interval_ms=1)) as sock:  # clamped, not refused
        assert (await frame_of(sock, "error"))["error"] == "not_found"  # no market M yet: said, and stays open


async def test_api_keys_traders_act_for_themselves_only(nats_server: Any, nc: Any, js: Any, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"key": OPERATOR_KEY, "account": "ops", "role": "operator"},
                                         {"key": ALICE_KEY, "account": "alice", "role": "trader"}]}))  # fmt: skip
    async with gateway_stack(nats_server, nc, js, tmp_path, keys_file=keys) as stack:
        for bad in ({}, {"api_key": "wrong-key-0123456789abc"}):
            async with connect(url(stack, "/ws_ctl", **bad)) as sock:
                assert (await frame_of(sock, "error"))["error"] == "unauthorized"
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(sock.recv(), 10)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        async with connect(url(stack, "/ws", market_id="M")) as sock:
            with pytest.raises(ConnectionClosed):
                await frame_of(sock, "snapshot")
        async with connect(url(stack, "/ws_ctl"), additional_headers={"X-API-Key": OPERATOR_KEY}) as op:
            await command(op, create("c"))
        headers = {"Authorization": f"Bearer {ALICE_KEY}"}
        async with connect(url(stack, "/ws_ctl", market_id="M"), additional_headers=headers) as alice:
            await alice.send(json.dumps(place("for-bob", "bob", "buy", 10, 1)))
            assert (await frame_of(alice, "error", lambda f: f.get("correlation_id") == "for-bob"))[
                "error"
            ] == "forbidden"
            await alice.send(json.dumps(create("ctl", "M9")))
            assert (await frame_of(alice, "error", lambda f: f.get("correlation_id") == "ctl"))["error"] == "forbidden"
            await alice.send(json.dumps({"type": "orders", "correlation_id": "o", "account_id": "bob"}))
            assert (await frame_of(alice, "error", lambda f: f.get("correlation_id") == "o"))["error"] == "forbidden"
            own = place("mine", "alice", "buy", 10, 1)
            del own["account_id"]  # a trader's account is its key's
            _, response = await command(alice, own)
            assert response["events"][0]["account_id"] == "alice"
        async with connect(url(stack, "/ws_ctl", market_id="M", api_key=OPERATOR_KEY)) as op:
            _, crossed = await command(op, place("sell", "bob", "sell", 10, 1))
            fill = crossed["events"][1]
            assert fill["maker_account"] == "alice" and fill["taker_account"] == "bob"  # an operator sees both


async def test_trader_sees_only_its_side_of_a_fill(nats_server: Any, nc: Any, js: Any, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"key": OPERATOR_KEY, "account": "ops", "role": "operator"},
                                         {"key": ALICE_KEY, "account": "alice", "role": "trader"}]}))  # fmt: skip
    async with gateway_stack(nats_server, nc, js, tmp_path, keys_file=keys) as stack:
        async with connect(url(stack, "/ws_ctl", market_id="M", api_key=OPERATOR_KEY)) as op:
            await command(op, create("c"))
            await command(op, place("bob-sells", "bob", "sell", 10, 1))
        async with connect(url(stack, "/ws_ctl", market_id="M", api_key=ALICE_KEY)) as alice:
            _, response = await command(alice, place("alice-buys", "alice", "buy", 10, 1))
            fill = response["events"][1]
            assert fill["type"] == "fill" and fill["taker_account"] == "alice"
            assert fill["maker_account"] is None and fill["maker_client_order_id"] is None


async def test_a_killed_connection_leaves_the_client_gauge(stack: Stack) -> None:
    frames_before = sample("jetbook_gateway_ws_frames_total", {"endpoint": "/ws_ctl", "type": "status"})
    for endpoint, params in (("/ws", {"market_id": "M"}), ("/ws_ctl", {})):
        before = gauge(endpoint)
        sock = await connect(url(stack, endpoint, **params))

        async def counted(endpoint: str = endpoint, before: float = before) -> bool:
            return gauge(endpoint) == before + 1

        await wait_until(counted, what=f"{endpoint} counted")
        if endpoint == "/ws_ctl":
            await frame_of(sock, "status")
        sock.transport.abort()  # no close handshake: the peer just vanishes

        async def gone(endpoint: str = endpoint, before: float = before) -> bool:
            return gauge(endpoint) == before

        await wait_until(gone, what=f"{endpoint} uncounted")
    assert sample("jetbook_gateway_ws_frames_total", {"endpoint": "/ws_ctl", "type": "status"}) > frames_before
    async with connect(url(stack, "/ws_ctl")) as ctl:  # and the gateway still serves
        await command(ctl, create("c"))


async def test_the_page_and_its_files(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as client:
        index = await client.get("/")
        assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
        assert "connect-src 'self'" in index.headers["content-security-policy"]
        assert '<script src="/static/app.js"' in index.text
        for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
            got = await client.get(f"/static/{name}")
            assert got.status_code == 200 and got.headers["content-type"].startswith(kind) and got.text
        for bad in ("/static/index.html", "/static/..%2Fws.py", "/static/%00", "/static/" + "a" * 5000):
            got = await client.get(bad)
            assert got.status_code == 404, (bad, got.status_code)
        assert "http" not in (await client.get("/static/app.js")).text.replace("https:", "")  # no CDN, no URL


async def test_the_trade_lane_drops_its_oldest_and_says_how_many() -> None:
    box = Outbox()
    for i in range(MAX_TRADES + 5):
        box.trade(json.dumps({"type": "trade", "trade_id": i}, separators=(",", ":")))
    box.put_snapshot('{"type":"snapshot","n":1}')
    box.put_snapshot('{"type":"snapshot","n":2}')  # unsent: replaced
    first, lane = await box.next()
    assert lane == "trade" and json.loads(first) == {"type": "trade", "trade_id": 5, "dropped": 5}
    for _ in range(MAX_TRADES - 1):
        assert (await box.next())[1] == "trade"
    assert await box.next() == ('{"type":"snapshot","n":2}', "snapshot")


# --- the figure: /ws clients one gateway feeds at 5 snapshots/s --------------------------------------------
#
# python -m tests.integration.test_gateway_ws [clients ...]   (default 50 100 200 400)
#
# One process runs nats-server (its own), the engine, the projection, the query service and the gateway; a second
# process holds the N /ws clients (interval_ms=200, depth 10), so that decoding N streams does not share the
# gateway's event loop. A load connection places one order every 20 ms on market B for SECONDS (50 changes/s, so
# every interval has a change). A snapshot is LATE when it arrives more than two intervals (400 ms) after the first
# order it is the first to show was sent (wall clock, one machine). Reported: the per-client snapshot rate (min and
# median over the clients), the share of late snapshots, the p50/p99 of that send-to-frame delay (about one interval
# by construction: the oldest change a frame is the first to show was made just after the previous frame), and the
# CPU the stack's process used (one core = 100%).

SECONDS = 10.0
LOAD_EVERY_S = 0.02  # the measuring load's pace: one book change every 20 ms
LATE_S = 0.4


async def _measure(counts: list[int]) -> None:
    import tempfile

    import nats

    from jetbook.server import EmbeddedServer
    from protocol.streams import ensure_streams

    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer(Path(tmp) / "nats", port=0)
        server.start()
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            await ensure_streams(js)
            async with gateway_stack(server, nc, js, Path(tmp)) as stack:
                async with connect(url(stack, "/ws_ctl", market_id="B")) as ctl:
                    await command(ctl, create("c", "B"))
                for n in counts:
                    print(await _round(stack, n, Path(tmp) / f"frames-{n}.json"), flush=True)
            await nc.close()
        finally:
            server.stop()


async def _round(stack: Stack, n: int, out: Path) -> str:
    from events.model import OrderAccepted, decode
    from protocol.subjects import EVT_STREAM
    from tests.integration.harness import read_all

    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.test_gateway_ws", "--viewers", url(stack, "/ws"), str(n), str(out),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None
    assert (await asyncio.wait_for(child.stdout.readline(), 300)).strip() == b"ready"
    prefix = f"w{n}-"
    sent: dict[str, float] = {}
    cpu = time.process_time()
    async with connect(url(stack, "/ws_ctl", market_id="B", no_ack=1)) as load:
        start = time.time()
        i = 0
        while time.time() - start < SECONDS:
            i += 1
            coid = f"{prefix}{i}"
            sent[coid] = time.time()
            await load.send(json.dumps(place(coid, "mm", "buy", 1000 + i % 50, 1, market="B")))
            # The sleep is the event itself: the load's pace, one change every LOAD_EVERY_S.
            await asyncio.sleep(LOAD_EVERY_S)
    cpu = (time.process_time() - cpu) / (time.time() - start)
    await asyncio.wait_for(child.communicate(), 300)
    recorded = json.loads(out.read_text())
    frames: list[list[list[float]]] = recorded["frames"]
    # Each order's JB_EVT position, read back from the log.
    changes: list[tuple[int, float]] = []
    for msg in await read_all(stack.js, EVT_STREAM):
        event = decode(msg.data)
        if isinstance(event, OrderAccepted) and event.client_order_id in sent:
            changes.append((msg.seq, sent[event.client_order_id]))
    changes.sort()
    window = (changes[0][0], changes[-1][0]) if changes else (0, 0)
    late = total = 0
    delays: list[float] = []
    rates: list[float] = []
    for client in frames:
        prev = 0
        count = 0
        for at_seq, arrived in client:
            first = next(((e, t) for e, t in changes if prev < e <= at_seq), None)
            prev = int(at_seq)
            if first is None:
                continue
            count += 1
            total += 1
            delays.append(arrived - first[1])
            late += arrived - first[1] > LATE_S
        rates.append(count / SECONDS)
    rates.sort()
    delays.sort()

    def pct(q: float) -> float:
        return delays[min(int(len(delays) * q), len(delays) - 1)] * 1e3 if delays else float("nan")

    return (
        f"clients {n:4}: snapshots/s per client min {rates[0]:.2f} median {rates[len(rates) // 2]:.2f}; "
        f"late (> {LATE_S * 1e3:.0f} ms) {late}/{total} = {100 * late / max(total, 1):.2f}%; "
        f"order sent -> snapshot p50 {pct(0.5):.0f} ms p99 {pct(0.99):.0f} ms; "
        f"{len(changes)} changes, JB_EVT {window[0]}..{window[1]}; CPU: stack process {100 * cpu:.0f}%, "
        f"clients' process {100 * recorded['cpu']:.0f}%"
    )


async def _viewers(ws_url: str, n: int, out: Path) -> None:
    """The client process: N /ws clients; "ready" once each has its first snapshot; frames to `out` at the end."""
    got: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    stop = asyncio.Event()
    target = f"{ws_url}?market_id=B&depth=10&interval_ms=200"

    async def viewer(i: int) -> None:
        async with connect(target, max_queue=None, open_timeout=120) as sock:
            while not stop.is_set():
                try:
                    raw = await asyncio.wait_for(sock.recv(), 0.5)
                except TimeoutError:
                    continue
                if isinstance(raw, str) and raw.startswith('{"type":"snapshot"'):
                    got[i].append((json.loads(raw)["at_seq"], time.time()))

    tasks = [asyncio.create_task(viewer(i)) for i in range(n)]
    await wait_until(_all_have(got), timeout=300, what="every viewer's first snapshot")
    for frames in got:
        frames.clear()
    print("ready", flush=True)
    cpu, start = time.process_time(), time.time()
    # The sleep is the event itself: the measuring window (and the last interval).
    await asyncio.sleep(SECONDS + 1.0)
    cpu = (time.process_time() - cpu) / (time.time() - start)
    stop.set()
    await asyncio.gather(*tasks)
    out.write_text(json.dumps({"frames": got, "cpu": cpu}))


def _all_have(got: list[list[tuple[int, float]]]) -> Callable[[], Any]:
    async def check() -> bool:
        return all(got)

    return check


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        if sys.argv[1:2] == ["--viewers"]:
            asyncio.run(_viewers(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])))
        else:
            asyncio.run(_measure([int(a) for a in sys.argv[1:]] or [50, 100, 200, 400]))
