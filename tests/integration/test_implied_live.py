"""Implied matching on a real nats-server: a two_runner market's log re-decides to its bytes, and folds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack

from events.model import Fill, decode
from events.stream_readers import last_seq
from projections import queries
from protocol.subjects import EVT_STREAM
from tests.conftest import wait_until
from tests.integration.harness import (
    assert_log_is_exact,
    projection_position,
    publish_all,
    running_engine,
    running_projection,
    wait_for_command,
)


def _cmd(subject: str, body: dict[str, Any]) -> tuple[str, bytes]:
    return subject, bytes(msgpack.packb(body))


async def test_an_implied_fill_is_logged_re_decided_and_folded(nc: Any, js: Any, tmp_path: Path) -> None:
    runners = [{"runner_id": "A", "label": "Player 1"}, {"runner_id": "B", "label": "Player 2"}]
    commands = [
        _cmd("jb.ctl.T", {"type": "create_market", "market_id": "T", "kind": "odds", "quote": "GBP",
                          "runners": runners, "book_type": "two_runner"}),
        # a back on B at 2.50 is a lay on A at 2.50/1.50 = 1.666...: a back on A at 1.60 (asking less) crosses it
        _cmd("jb.cmd.T.maker", {"type": "place_order", "client_order_id": "m", "runner": "B", "side": "back",
                                "price": 250, "qty": 10}),
        _cmd("jb.cmd.T.taker", {"type": "place_order", "client_order_id": "t", "runner": "A", "side": "back",
                                "price": 160, "qty": 10}),
    ]  # fmt: skip
    db = tmp_path / "rm.db"
    last = await publish_all(js, commands)
    async with running_engine(nc), running_projection(js, db):
        await wait_for_command(js, last)
        end = await last_seq(js, EVT_STREAM)
        await wait_until(lambda: _at(db, end), what="the projection to fold the implied fill")
    stored = await assert_log_is_exact(js)  # JB_CMD re-decided gives JB_EVT, byte for byte
    fills = [e for e in (decode(m.data) for m in stored) if isinstance(e, Fill)]
    assert fills and all(f.implied and f.maker_runner == "B" for f in fills), [decode(m.data) for m in stored]
    import sqlite3

    con = sqlite3.connect(db)
    answer = queries.at(con, lambda c: queries.risk(c, "T", None))
    con.close()
    accounts = {row["account_id"] for row in answer.value}
    assert {"maker", "taker"} <= accounts, answer.value


async def _at(db: Path, end: int) -> bool:
    return projection_position(db) == end


async def test_the_gateway_shows_implied_prices_and_fills(nats_server: Any, nc: Any, js: Any, tmp_path: Path) -> None:
    """A user's view end to end: the implied level marked on the other runner's ladder over HTTP before the
    match; the implied fill with its fields on /fills and as a public trade on /ws; positions that sum to 0."""
    import httpx
    from websockets.asyncio.client import connect

    from tests.integration.gateway_harness import gateway_stack
    from tests.integration.test_gateway_ws import command, frame_of, place, url

    async with (
        gateway_stack(nats_server, nc, js, tmp_path) as stack,
        httpx.AsyncClient(base_url=stack.url) as http,
        connect(url(stack, "/ws_ctl")) as ctl,
    ):
        players = [{"runner_id": "P1", "label": "Player 1"}, {"runner_id": "P2", "label": "Player 2"}]
        _, created = await command(ctl, {"type": "create_market", "correlation_id": "c", "market_id": "T",
                                         "kind": "odds", "quote": "GBP", "book_type": "two_runner",
                                         "runners": players})  # fmt: skip
        assert created["events"][0]["book_type"] == "two_runner", created
        strong = {"market_id": "T", "consistency": "strong"}
        async with connect(url(stack, "/ws", market_id="T", interval_ms=50)) as view:
            # alice backs Player 2 at 2.50 for 10: on Player 1 that is a lay at 1.6667, shown at 1.67 (up a tick)
            # for the 15 units her stake covers there
            await command(ctl, place("a", "alice", "back", 250, 10, market="T", runner="P2"))
            snap = (await http.get("/snapshot", params=strong)).json()["result"]
            assert snap["market"]["book_type"] == "two_runner"
            p1, p2 = snap["ladders"]
            assert p1["runner"] == "P1" and p1["bids"] == [{"price": 167, "qty": 0, "orders": 0, "implied_qty": 15}]
            assert p1["asks"] == [] and p2["bids"] == []
            assert p2["asks"] == [{"price": 250, "qty": 10, "orders": 1, "implied_qty": 0}]

            # bob backs Player 1 at 1.66: it crosses the exact 1.6667 (not the shown 1.67): PROTOCOL 11.1's example
            _, took = await command(ctl, place("b", "bob", "back", 166, 10, market="T", runner="P1"))
            (fill,) = [e for e in took["events"] if e["type"] == "fill"]
            assert (fill["implied"], fill["maker_runner"], fill["maker_qty"]) == (True, "P2", 7), fill
            trade = await frame_of(view, "trade")
            assert (trade["runner"], trade["implied"], trade["maker_runner"], trade["price"], trade["qty"]) == (
                "P1", True, "P2", 250, 10)  # fmt: skip
            assert not any("account" in k or "client_order" in k for k in trade), trade  # the tape is public

        fills = (await http.get("/fills", params=strong)).json()["result"]
        assert [
            (f["runner"], f["implied"], f["maker_runner"], f["maker_qty"], f["maker_stake"], f["taker_stake"])
            for f in fills
        ] == [("P1", True, "P2", 7, 666, 1000)]
        risk = (await http.get("/risk", params=strong)).json()["result"]["accounts"]
        wins = {r["account_id"]: {w["runner"]: w["pnl"] for w in r["if_wins"]} for r in risk}
        assert wins == {"alice": {"P1": -666, "P2": 1000}, "bob": {"P1": 666, "P2": -1000}}
        after = (await http.get("/snapshot", params=strong)).json()["result"]["ladders"]
        assert after[1]["asks"] == [{"price": 250, "qty": 3, "orders": 1, "implied_qty": 0}]
        assert after[0]["bids"] == [{"price": 167, "qty": 0, "orders": 0, "implied_qty": 4}]  # 3 x 1.50, floored
