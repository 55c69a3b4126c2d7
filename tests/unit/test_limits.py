"""A command's events must fit one atomic batch: mass commands adapt or refuse, and never overflow."""

from __future__ import annotations

import pytest

import engine.core as core
from engine.core import CHUNK, MAX_COMMAND_EVENTS, Engine, _chunk_size, state_hash
from events.model import OrdersCancelled, Rejected
from tests.unit.helpers import Session


def test_chunks_stay_at_500_until_a_list_would_not_fit() -> None:
    assert _chunk_size(10, 1, 998) == CHUNK
    assert _chunk_size(CHUNK * 997, 1, 998) == CHUNK
    big = 2_000_000
    size = _chunk_size(big, 1, 998)
    assert -(-big // size) <= 998 and size > CHUNK


def test_cancel_all_over_more_markets_than_a_batch_holds_is_refused_whole() -> None:
    s = Session(market=None)
    for i in range(MAX_COMMAND_EVENTS + 1):
        s.create(f"M{i}")
        s.place("x", "buy", 100, 1, market=f"M{i}")
    before = state_hash(s.engine.state)
    (event,) = s.send("jb.cmd._all.x", {"type": "cancel_all"})
    assert isinstance(event, Rejected) and event.reason == "too_many_events"
    s.engine.state.last_cmd_seq -= 1
    s.engine.state.event_count -= 1
    assert state_hash(s.engine.state) == before
    s.engine.state.last_cmd_seq += 1
    s.engine.state.event_count += 1
    # Narrowed to one market it works, and over all markets once a few are gone.
    (one,) = s.trade("x", "cancel_all", market="M0")
    assert isinstance(one, OrdersCancelled) and len(one.orders) == 1
    events = s.send("jb.cmd._all.x", {"type": "cancel_all"})
    assert len(events) == MAX_COMMAND_EVENTS and all(isinstance(e, OrdersCancelled) for e in events)
    assert sum(len(e.orders) for e in events if isinstance(e, OrdersCancelled)) == MAX_COMMAND_EVENTS


def test_a_decider_that_overflows_becomes_an_internal_error_reject(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine()
    engine.handle(1, 1, "jb.ctl.M", b"\x84\xa4type\xadcreate_market\xa9market_id\xa1M\xa4base\xa1B\xa5quote\xa1Q")
    from commands.model import PlaceOrder
    from engine.decide import DECIDERS

    original = DECIDERS[PlaceOrder]
    monkeypatch.setitem(DECIDERS, PlaceOrder, lambda *a: [original(*a)[0]] * (MAX_COMMAND_EVENTS + 1))
    monkeypatch.setattr(core, "place", lambda *args: None)  # the fused path would take this order past decide
    (event,) = engine.handle(2, 2, "jb.cmd.M.a", b"\x85\xa4type\xabplace_order\xafclient_order_id\xa1c"
                             b"\xa4side\xa3buy\xa5price\x01\xa3qty\x01")  # fmt: skip
    assert isinstance(event, Rejected) and event.reason == "internal_error" and event.detail == "OverflowError"
    assert not engine.state.markets["M"].books[None].orders
