"""The bots' decisions (tui/bots.py) from fixed snapshots, and tui/client.py's queues and backoff without a server."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from engine.decide import on_ladder
from tests.conftest import wait_until
from tui import bots as B
from tui.bots import Fleet, Grid, make_bots
from tui.client import BOT_QUEUE, Connection

Frame = dict[str, Any]

PAIR_MARKET: Frame = {
    "market_id": "P", "kind": "pair", "state": "open", "phase": "pre", "tick_size": 5, "lot_size": 2, "min_qty": 2,
    "max_qty": 1000, "min_price": 5, "max_price": 100000, "last_price": 5000, "runners": [],
}  # fmt: skip
ODDS_MARKET: Frame = {
    "market_id": "O", "kind": "odds", "state": "open", "phase": "pre", "tick_size": 1, "lot_size": 1, "min_qty": 1,
    "max_qty": 10**9, "min_price": 101, "max_price": 100000, "last_price": None,
    "runners": [{"runner_id": r, "label": r} for r in ("HOME", "DRAW", "AWAY")],
}  # fmt: skip


def level(price: int, qty: int) -> Frame:
    return {"price": price, "qty": qty, "orders": 1}


def pair_snapshot(bid: int, ask: int, state: str = "open") -> Frame:
    ladder = {"runner": "", "label": "", "bid_side": "buy", "ask_side": "sell",
              "bids": [level(bid, 4), level(bid - 5, 6)], "asks": [level(ask, 4), level(ask + 5, 6)]}  # fmt: skip
    return {"type": "snapshot", "market_id": "P", "at_seq": 1, "market": {**PAIR_MARKET, "state": state},
            "ladders": [ladder]}  # fmt: skip


def odds_snapshot(shift: int) -> Frame:
    ladders = []
    for runner, (lay, back) in zip(("HOME", "DRAW", "AWAY"), ((250, 260), (330, 345), (400, 420)), strict=True):
        bids = [] if runner == "DRAW" and shift % 2 else [level(lay + 2 * shift, 10)]
        ladders.append({"runner": runner, "label": runner, "bid_side": "lay", "ask_side": "back", "bids": bids,
                        "asks": [level(back + 2 * shift, 10)]})  # fmt: skip
    return {"type": "snapshot", "market_id": "O", "at_seq": 1, "market": ODDS_MARKET, "ladders": ladders}


SNAPSHOTS = [pair_snapshot(5000 - 5 * (i % 4), 5010 + 5 * (i % 3)) for i in range(30)] + [
    odds_snapshot(i % 5) for i in range(30)
]


def run(seed: int, snapshots: list[Frame] = SNAPSHOTS) -> list[Frame]:
    frames: list[Frame] = []
    bots = make_bots(2, 3, 1, seed, run="t")
    for snap in snapshots:
        for bot in bots:
            out = bot.step(snap)
            frames.extend(out)
            for f in out:  # the engine's answer, the same every run: each order rests
                if f.get("compact"):  # a ladder sent compact: one orders_accepted, a row per quote
                    rows = [[0, i["client_order_id"], i["side"], i["price"], i["qty"], "gtc", i.get("runner"), "limit",
                             "cancel_resting", "lapse"] for i in f["instructions"]]  # fmt: skip
                    bot.on_event(f["market_id"], {"type": "orders_accepted", "account_id": bot.account, "orders": rows})
                    continue
                single = {"place_orders": "place_order", "replace_orders": "amend_order"}.get(f["type"], f["type"])
                for i in f.get("instructions") or [f]:
                    if single in ("place_order", "amend_order") and i.get("tif", "gtc") == "gtc":
                        kind = "order_accepted" if single == "place_order" else "order_amended"
                        answer = {"type": kind, "client_order_id": i["client_order_id"], "price": i.get("price")}
                        bot.on_event(f["market_id"], {**answer, "resting_qty": i.get("qty", 2)})
    return frames


def flat(frames: list[Frame]) -> list[Frame]:
    """Each order as a single command would carry it: a batch's instructions one by one, in the batch's market."""
    out: list[Frame] = []
    for f in frames:
        single = {"place_orders": "place_order", "replace_orders": "amend_order"}.get(f["type"])
        if single is None:
            out.append(f)
            continue
        assert 2 <= len(f["instructions"]) <= B.MAX_BATCH
        out += [{"type": single, "correlation_id": f["correlation_id"], "market_id": f["market_id"],
                 "account_id": f["account_id"], **i} for i in f["instructions"]]  # fmt: skip
    return out


def test_same_seed_same_frames_and_another_seed_others() -> None:
    a, b, c = run(11), run(11), run(12)
    assert a == b
    assert a != c
    assert len(a) > 50
    kinds = {f["type"] for f in a}
    # market makers quote a ladder in one place_orders (compact) and move it with one replace_orders
    assert {"set_risk_limits", "place_order", "place_orders", "replace_orders"} <= kinds, kinds
    assert all(f.get("compact") is True for f in a if f["type"] == "place_orders")


def test_frames_are_valid_for_their_market() -> None:
    frames = flat(run(5))
    for f in frames:
        assert f["correlation_id"].split(":")[0] == f["account_id"]
        assert f["account_id"].startswith(("bot-mm-", "bot-noise-", "bot-inf-"))
        if f["type"] != "place_order" and not (f["type"] == "amend_order" and "price" in f):
            continue
        if f["market_id"] == "P":
            assert f["price"] % 5 == 0 and 5 <= f["price"] <= 100000
            assert "runner" not in f and f.get("side", "buy") in ("buy", "sell")
        else:
            assert on_ladder(f["price"]) and f["price"] >= 101
            assert f.get("side", "back") in ("back", "lay")
            assert f["type"] == "amend_order" or f["runner"] in ("HOME", "DRAW", "AWAY")
        if "qty" in f:
            assert f["qty"] % (2 if f["market_id"] == "P" else 1) == 0 and f["qty"] > 0
    # client order ids never repeat for one account in one market
    ids = [(f["market_id"], f["account_id"], f["client_order_id"]) for f in frames if f["type"] == "place_order"]
    assert len(ids) == len(set(ids))


def test_a_closed_market_gets_only_the_limits() -> None:
    bot = make_bots(1, 0, 0, 1)[0]
    frames = bot.step(pair_snapshot(5000, 5010, state="suspended"))
    assert [f["type"] for f in frames] == ["set_risk_limits"]
    assert frames[0]["max_order_qty"] % 2 == 0  # on the lot
    assert bot.step(pair_snapshot(5000, 5010, state="suspended")) == []


def test_market_maker_quotes_both_sides_levels_deep_and_amends_after_a_move() -> None:
    mm = make_bots(1, 0, 0, 3)[0]
    first = mm.step(pair_snapshot(5000, 5020))
    assert [f["type"] for f in first] == ["set_risk_limits", "place_orders"]  # the whole ladder in one command
    places = [f for f in flat(first) if f["type"] == "place_order"]
    assert len(places) == 2 * B.MM_LEVELS
    buys = sorted(f["price"] for f in places if f["side"] == "buy")
    sells = sorted(f["price"] for f in places if f["side"] == "sell")
    assert len(set(buys)) == B.MM_LEVELS and len(set(sells)) == B.MM_LEVELS and max(buys) < min(sells)
    assert mm.step(pair_snapshot(5000, 5020)) == []  # unconfirmed quotes are not touched
    for f in places:  # the engine's answers: each rests
        mm.on_event("P", {"type": "order_accepted", "client_order_id": f["client_order_id"], "resting_qty": f["qty"]})
    moved_frames = mm.step(pair_snapshot(5500, 5520))
    assert [f["type"] for f in moved_frames] == ["replace_orders"]
    moved = flat(moved_frames)
    assert moved and all(f["type"] == "amend_order" for f in moved)
    # a fill that takes a quote away makes the next step place a new one in its slot
    gone = places[0]
    mm.on_event("P", {"type": "fill", "maker_account": mm.account, "maker_client_order_id": gone["client_order_id"],
                      "maker_remaining": 0, "taker_account": "x", "taker_client_order_id": "y"})  # fmt: skip
    for f in moved:
        mm.on_event("P", {"type": "order_amended", "client_order_id": f["client_order_id"],
                          "price": f.get("price"), "resting_qty": f.get("qty", 4)})  # fmt: skip
    again = flat(mm.step(pair_snapshot(5500, 5520)))
    assert any(f["type"] == "place_order" and f["side"] == gone["side"] for f in again)


def test_market_makers_quote_both_runners_of_a_two_runner_market_without_crossing_themselves() -> None:
    """Tennis: an empty two_runner book is quoted around evens on both runners, and no maker's own quotes cross
    through the implied price (a mirrored skew), so its quotes never self-trade; implied levels count as liquidity."""
    players = [{"runner_id": "P1", "label": "Player 1"}, {"runner_id": "P2", "label": "Player 2"}]
    market = {**ODDS_MARKET, "market_id": "T", "book_type": "two_runner", "runners": players}
    empty = {"type": "snapshot", "market_id": "T", "at_seq": 1, "market": market, "ladders": [
        {"runner": r, "label": r, "bid_side": "lay", "ask_side": "back", "bids": [], "asks": []} for r in ("P1", "P2")
    ]}  # fmt: skip
    for mm in make_bots(3, 0, 0, 1):  # half spread 1, skews 1, -1, 1: unmirrored, their lays would cross
        places = [f for f in flat(mm.step(empty)) if f["type"] == "place_order"]
        assert {f["runner"] for f in places} == {"P1", "P2"} and len(places) == 4 * B.MM_LEVELS
        assert all(190 <= f["price"] <= 212 for f in places)  # around 2.00
        by = {(r, s): [f["price"] for f in places if (f["runner"], f["side"]) == (r, s)] for r in ("P1", "P2")
              for s in ("back", "lay")}  # fmt: skip
        for side in ("back", "lay"):  # a back on P1 at a and one on P2 at b cross iff (a-100)(b-100) <= 10000
            a, b = (min(by[(r, side)]) if side == "back" else max(by[(r, side)]) for r in ("P1", "P2"))
            crosses = (a - 100) * (b - 100) <= 10_000 if side == "back" else (a - 100) * (b - 100) >= 10_000
            assert not crosses, (mm.name, side, a, b)
    # an implied-only level is a price the bots can trade at: the fair value sees it
    implied = {**empty, "ladders": [
        {"runner": "P1", "label": "P1", "bid_side": "lay", "ask_side": "back",
         "bids": [{"price": 150, "qty": 0, "orders": 0, "implied_qty": 20}], "asks": []},
        {"runner": "P2", "label": "P2", "bid_side": "lay", "ask_side": "back", "bids": [], "asks": []},
    ]}  # fmt: skip
    (book, _) = B.books_of(implied, Grid.of(market))
    assert book.bids == [(Grid.of(market).index(150), 20)]


def test_noise_trader_bounds_its_open_orders() -> None:
    noise = make_bots(0, 1, 0, 9)[0]
    frames = [f for _ in range(400) for f in noise.step(pair_snapshot(5000, 5010))]
    assert any(f["type"] == "cancel_order" for f in frames)
    assert any(f.get("tif") == "ioc" for f in frames)
    assert noise.open_orders("P") <= B.NOISE_MAX_OPEN


def test_informed_trader_sweeps_through_the_book_with_ioc_only() -> None:
    inf = make_bots(0, 0, 1, 4)[0]
    frames = []
    for i in range(300):  # the book sits still while the private value walks away from it
        frames += inf.step(pair_snapshot(5000, 5010) if i % 2 else odds_snapshot(0))
    orders = [f for f in frames if f["type"] == "place_order"]
    assert orders and all(f["tif"] == "ioc" for f in orders)
    assert inf.open_orders() == 0


def test_the_bots_prices_are_on_the_engines_ladder() -> None:
    assert all(on_ladder(p) for p in B.ODDS_PRICES)
    g = Grid.of(ODDS_MARKET)
    assert g.price(g.lo) == 101 and g.price(g.hi) == 100000
    assert g.price(g.index(251)) == 250 and g.price(g.index(250) + 1) == 252
    narrow = Grid.of({**ODDS_MARKET, "min_price": 150, "max_price": 500})
    assert narrow.price(narrow.lo - 5) == 150 and narrow.price(narrow.hi + 5) == 500
    pair = Grid.of(PAIR_MARKET)
    assert pair.price(pair.index(5003)) == 5000 and pair.price(0) == 5


def test_fleet_attributes_responses_and_counts_a_fill_once_per_bot() -> None:
    fleet = Fleet("http://127.0.0.1:1", mm=1, noise=1, informed=0, seed=1, run="t")
    mm, noise = fleet.bots
    for bot in fleet.bots:
        bot.step(pair_snapshot(5000, 5010))
    fill = {"type": "fill", "market_id": "P", "trade_id": 7, "maker_account": mm.account, "taker_account":
            noise.account, "maker_client_order_id": "a", "taker_client_order_id": "b", "maker_remaining": 0,
            "taker_remaining": 0}  # fmt: skip
    response = {"type": "order_response", "correlation_id": f"{noise.name}:3", "events": [fill], "rejected": None}
    fleet.on_frame(response)
    fleet.on_frame(response)  # the same fill seen twice (a frame the TUI forwards as well)
    assert (mm.trades, noise.trades) == (1, 1)
    assert (mm.responses, noise.responses) == (0, 2)
    fleet.on_frame({"type": "order_response", "correlation_id": f"{mm.name}:9", "events": [],
                    "rejected": {"reason": "off_tick", "detail": ""}})  # fmt: skip
    fleet.on_frame({"type": "error", "correlation_id": f"{mm.name}:10", "error": "invalid_price", "detail": "x"})
    fleet.on_frame({"type": "order_response", "correlation_id": "bot-mm-9:1", "events": [], "rejected": None})
    assert mm.rejects == 2 and fleet.unattributed == 1
    fleet.on_frame({"type": "order_response", "correlation_id": "someone-else:1", "events": [], "rejected": None})
    assert fleet.unattributed == 1  # not a bot's: not ours to count


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_backs_off_keeps_user_frames_and_bounds_bot_frames() -> None:
    seen: list[Frame] = []
    conn = Connection(f"ws://127.0.0.1:{free_port()}/ws_ctl", on_frame=seen.append, name="t")
    conn.subscribe("M", 5)
    conn.send_user({"type": "list_markets"})
    accepted = sum(conn.send_bot({"type": "place_order", "n": i}) for i in range(BOT_QUEUE + 5))
    assert accepted == BOT_QUEUE and conn.bot_queued == BOT_QUEUE
    task = asyncio.create_task(conn.run())
    try:

        async def retried_twice() -> bool:
            return conn.state == "down" and "retry in 0.50s" in conn.detail

        await wait_until(retried_twice, what="the second retry, after a doubled delay")
        assert "ConnectionRefused" in conn.detail or "OSError" in conn.detail, conn.detail
        assert conn.drain_bots() == BOT_QUEUE and conn.bot_queued == 0
        assert conn.user_queued == 1  # the subscribe is remembered, not queued twice; the user frame stays
        assert conn.subscription == {"type": "subscribe", "market_id": "M", "depth": 5}
    finally:
        await conn.stop()
        await asyncio.wait_for(task, 5)
    assert conn.state == "down" and conn.detail == "stopped"
    assert json.dumps(seen) == "[]"


def test_a_bots_pnl_is_realised_once_settled_zero_once_voided_else_marked() -> None:
    odds_risk = {"realised_pnl": None, "if_wins": [{"runner": "A", "pnl": 300}, {"runner": "B", "pnl": -100}]}
    assert B.mark_to_market(odds_risk, {"kind": "odds", "state": "open"}) == 100  # the mean over runners
    assert B.mark_to_market(odds_risk, {"kind": "odds", "state": "voided"}) == 0  # every bet returned
    assert B.mark_to_market({**odds_risk, "realised_pnl": -250}, {"kind": "odds", "state": "settled"}) == -250
    pair_risk = {"realised_pnl": None, "cash": -1000, "net_qty": 3}
    assert B.mark_to_market(pair_risk, {"kind": "pair", "state": "open", "last_price": 400}) == 200
    assert B.mark_to_market(pair_risk, {"kind": "pair", "state": "voided", "last_price": 400}) == 0
