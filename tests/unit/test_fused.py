"""The fused place/cancel path (engine/fast.py) gives what decide + fold give: the same event bytes, the same state.

A seeded random flow over pair markets (tick, lot, band, risk limits, STP by
crossing one's own orders, market orders, ioc, cancels of open, filled and
unknown orders, bad fields) and an odds market's cancels goes through one
engine with the fused path and one without it (`engine.core.place` and
`cancel` made to decline, so every command takes parse -> decide -> fold).
After every command the payloads must be equal byte for byte and the two
state hashes equal; a third state, folded from the events alone with
`evolve` (what replay and the standby do), must hash the same too.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

import engine.core as core
from engine.core import Engine, state_hash
from tests.unit.helpers import raw

MARKETS = ("P1", "P2", "P3")
ODDS = "O1"
ACCOUNTS = tuple(f"a{i}" for i in range(12))


def _setup() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("jb.ctl.P1", {"type": "create_market", "market_id": "P1", "base": "B", "quote": "Q"}),
        ("jb.ctl.P2", {"type": "create_market", "market_id": "P2", "base": "B", "quote": "Q", "tick_size": 5,
                       "lot_size": 2, "min_price": 50, "max_price": 400, "max_qty": 60, "band_bps": 2000}),
        ("jb.ctl.P3", {"type": "create_market", "market_id": "P3", "base": "B", "quote": "Q"}),
        ("jb.ctl.O1", {"type": "create_market", "market_id": ODDS, "kind": "odds", "quote": "Q",
                       "runners": [{"runner_id": "r1", "label": "A"}, {"runner_id": "r2", "label": "B"}]}),
        ("jb.ctl.P1", {"type": "set_risk_limits", "account_id": "a1", "max_order_qty": 30}),
        ("jb.ctl.P1", {"type": "set_risk_limits", "account_id": "a2", "max_open_orders": 3}),
    ]  # fmt: skip


def _flow(rng: random.Random, n: int) -> list[tuple[str, dict[str, Any]]]:
    out = _setup()
    placed: list[tuple[str, str, str]] = []  # (market, account, coid)
    for i in range(n):
        market = rng.choice((*MARKETS, ODDS)) if rng.random() < 0.9 else rng.choice(MARKETS)
        account = rng.choice(ACCOUNTS)
        subject = f"jb.cmd.{market}.{account}"
        r = rng.random()
        if r < 0.3 and placed:
            m, a, coid = rng.choice(placed)
            body: dict[str, Any] = {"type": "cancel_order", "client_order_id": coid}
            if rng.random() < 0.2:
                body = {"type": "cancel_order", "order_id": rng.randint(1, 60)}
            elif rng.random() < 0.1:
                body["order_id"] = rng.randint(1, 60)
            out.append((f"jb.cmd.{m}.{a if rng.random() < 0.9 else account}", body))
            continue
        if r < 0.33:
            out.append(
                ("jb.ctl.P3", {"type": "set_market_state", "state": rng.choice(("open", "halted", "suspended"))})
            )
            continue
        coid = f"c{i}" if rng.random() < 0.97 else f"c{rng.randint(0, max(i, 1))}"
        side = rng.choice(("buy", "sell") if market != ODDS else ("back", "lay"))
        body = {"type": "place_order", "client_order_id": coid, "side": side, "qty": rng.choice((1, 2, 3, 5, 10, 40))}
        kind = rng.random()
        if kind < 0.08:
            body["order_type"] = "market"
            if rng.random() < 0.3:
                body["tif"] = rng.choice(("ioc", "fok"))
        else:
            body["price"] = rng.choice((100, 105, 110, 120, 150, 200, 500)) + rng.choice((0, 0, 0, 1))
            if kind > 0.85:
                body["tif"] = rng.choice(("ioc", "gtc", "fok", "post_only"))
        if market == ODDS:
            body["runner"] = rng.choice(("r1", "r2"))
        if rng.random() < 0.02:
            body["qty"] = 0  # a bad field: the general path names it
        out.append((subject, body))
        placed.append((market, account, coid))
    return out


def _declining(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "place", lambda *args: None)
    monkeypatch.setattr(core, "cancel", lambda *args: None)


@pytest.mark.parametrize("seed", range(4))
def test_the_fused_path_gives_the_general_paths_bytes_and_state(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    flow = [(subject, raw(body)) for subject, body in _flow(random.Random(seed), 3000)]
    fused, general, shadow = Engine(checkpoint_every=500), Engine(checkpoint_every=500), Engine()
    got: list[tuple[list[Any], list[tuple[str, bytes]]]] = []
    for seq, (subject, data) in enumerate(flow, 1):
        events = fused.handle(seq, 1000 + seq, subject, data)
        got.append((events, fused.payloads))
        for e in events:
            shadow.apply(e, verify=True)
    with monkeypatch.context() as m:
        _declining(m)
        for seq, (subject, data) in enumerate(flow, 1):
            general.handle(seq, 1000 + seq, subject, data)
            assert general.payloads == got[seq - 1][1], (seq, subject)
    assert state_hash(fused.state) == state_hash(general.state) == state_hash(shadow.state)
    for engine in (fused, general, shadow):  # each side's kept first key is its first key
        for market in engine.state.markets.values():
            for book in market.books.values():
                assert (book.bid_top, book.ask_top) == (next(iter(book.bids), None), next(iter(book.asks), None))
    kinds = {e.type for events, _ in got for e in events}
    assert {"fill", "order_cancelled", "rejected", "checkpoint"} <= kinds


def test_the_fused_path_takes_the_everyday_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """It is actually taken: a resting order, a cross, a cancel and a cancel of a filled order, none through decide."""
    calls: list[Any] = []
    decide = core.decide
    monkeypatch.setattr(core, "decide", lambda *args: calls.append(args) or decide(*args))
    engine = Engine()
    engine.handle(1, 1, "jb.ctl.M", raw({"type": "create_market", "market_id": "M", "base": "B", "quote": "Q"}))
    place = {"type": "place_order", "side": "sell", "price": 10, "qty": 5}
    engine.handle(2, 2, "jb.cmd.M.a", raw({**place, "client_order_id": "x"}))
    engine.handle(3, 3, "jb.cmd.M.b", raw({**place, "client_order_id": "y", "side": "buy", "qty": 5}))
    engine.handle(4, 4, "jb.cmd.M.a", raw({**place, "client_order_id": "z", "tif": "ioc"}))
    engine.handle(5, 5, "jb.cmd.M.a", raw({"type": "cancel_order", "client_order_id": "x"}))
    assert len(calls) == 1  # the create_market
    assert [e.type for e in engine.handle(6, 6, "jb.cmd.M.a", raw({**place, "client_order_id": "w"}))] == [
        "order_accepted"
    ]
    assert engine.state.markets["M"].books[None].ask_top == 10


def test_an_exception_before_the_fold_falls_back_and_after_it_is_half_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine()
    engine.handle(1, 1, "jb.ctl.M", raw({"type": "create_market", "market_id": "M", "base": "B", "quote": "Q"}))
    body = raw({"type": "place_order", "client_order_id": "x", "side": "sell", "price": 10, "qty": 5})

    def early(*args: Any) -> None:
        raise KeyError

    monkeypatch.setattr(core, "place", early)
    assert [e.type for e in engine.handle(2, 2, "jb.cmd.M.a", body)] == ["order_accepted"]  # the general path

    def late(state: Any, seq: int, *args: Any) -> None:
        state.last_cmd_seq = seq
        raise KeyError

    monkeypatch.setattr(core, "place", late)
    with pytest.raises(core.HalfApplied):
        engine.handle(3, 3, "jb.cmd.M.a", raw({"type": "place_order", "client_order_id": "y", "side": "sell",
                                                "price": 10, "qty": 5}))  # fmt: skip
