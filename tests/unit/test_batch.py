"""Issue 14 section 2: place_orders, cancel_orders and replace_orders on the pure core.

A batch is its instructions decided in order, each against the state the ones
before it left, as one command: one cmd_seq and one atomic batch of events. The
differential check against the reference exchange is in test_exchange_machine.py;
these are the rules the issue names, one test each.
"""

from __future__ import annotations

from typing import Any

import pytest

from commands.model import MAX_INSTRUCTIONS, Parsed, PlaceOrder, PlaceOrders, encode, parse
from engine.core import MAX_COMMAND_EVENTS, decide, state_hash
from engine.state import State, snapshot
from events.model import (
    Event,
    Fill,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    Rejected,
    RiskLimitsSet,
)
from events.model import encode as encode_event
from tests.unit.helpers import M, Session, raw


def _place(i: int, side: str = "buy", price: int = 100, qty: int = 1, **extra: Any) -> dict[str, Any]:
    return {"client_order_id": f"q{i}", "side": side, "price": price, "qty": qty, **extra}


def _batch(s: Session, account: str, ctype: str, instructions: list[Any], **extra: Any) -> list[Event]:
    return s.trade(account, ctype, instructions=instructions, **extra)


def _markets(s: Session) -> bytes:
    """The markets' part of the state (the command counters aside): what a batch that leaves no trace keeps."""
    return snapshot(State(markets=s.engine.state.markets))


def test_200_instructions_are_one_command_and_201_are_refused_whole() -> None:
    s = Session()
    events = _batch(s, "mm", "place_orders", [_place(i, price=100 - i % 50) for i in range(MAX_INSTRUCTIONS)])
    assert [type(e) for e in events] == [OrderAccepted] * MAX_INSTRUCTIONS
    assert {e.cmd_seq for e in events} == {s.seq}
    assert len(s.engine.state.markets[M].books[None].orders) == MAX_INSTRUCTIONS

    before = _markets(s)
    events = _batch(s, "mm", "place_orders", [_place(1000 + i) for i in range(MAX_INSTRUCTIONS + 1)])
    assert len(events) == 1 and isinstance(events[0], Rejected)
    r = events[0]
    assert (r.reason, r.command_type, r.index) == ("too_many_instructions", "place_orders", None)
    assert _markets(s) == before
    for ctype in ("cancel_orders", "replace_orders"):
        (r,) = _batch(s, "mm", ctype, [{"order_id": 1, "qty": 1}] * (MAX_INSTRUCTIONS + 1))
        assert isinstance(r, Rejected) and r.reason == "too_many_instructions"


@pytest.mark.parametrize("instructions", [[], "x", {"a": 1}, None])
def test_an_instructions_field_that_is_not_a_list_of_one_or_more_is_refused_whole(instructions: Any) -> None:
    s = Session()
    (r,) = _batch(s, "mm", "place_orders", instructions)
    assert isinstance(r, Rejected) and r.reason in ("invalid_field", "missing_field") and r.index is None


def test_a_malformed_instruction_is_refused_at_its_index_and_the_others_go_on() -> None:
    s = Session()
    events = _batch(s, "mm", "place_orders", [_place(0), _place(1, qty=0), 7, _place(3, type="place_order"), _place(4)])
    kinds = [(type(e).__name__, getattr(e, "index", None), getattr(e, "reason", None)) for e in events]
    assert kinds == [
        ("OrderAccepted", None, None),
        ("Rejected", 1, "invalid_qty"),
        ("Rejected", 2, "malformed"),
        ("Rejected", 3, "unknown_field"),
        ("OrderAccepted", None, None),
    ]
    assert [e.client_order_id for e in events] == ["q0", "q1", None, "q3", "q4"]
    assert all(e.command_type == "place_orders" for e in events if isinstance(e, Rejected))


def test_all_or_none_with_a_risk_failure_at_instruction_k_leaves_no_trace() -> None:
    s = Session()
    assert isinstance(s.control(M, "set_risk_limits", account_id="mm", max_open_exposure=1000)[0], RiskLimitsSet)
    s.place("other", "sell", 101, 5, coid="ask")
    # 300 of exposure each: the fourth passes 1000 only counting the three before it in the same batch.
    quotes = [_place(i, price=100, qty=3) for i in range(5)]
    before, hashed = _markets(s), state_hash(s.engine.state)
    events = _batch(s, "mm", "place_orders", quotes, all_or_none=True)
    assert [(type(e), e.index, e.reason, e.client_order_id) for e in events if isinstance(e, Rejected)] == [
        (Rejected, i, "max_open_exposure_exceeded", f"q{i}") for i in range(5)
    ]
    assert len(events) == 5 and events[3].detail.startswith("exposure")
    assert _markets(s) == before and state_hash(s.engine.state) != hashed  # only the counters moved

    # Without all_or_none the first three trade or rest and the fourth and fifth are refused.
    events = _batch(s, "mm", "place_orders", quotes)
    assert [type(e) for e in events] == [OrderAccepted, OrderAccepted, OrderAccepted, Rejected, Rejected]
    assert [e.index for e in events if isinstance(e, Rejected)] == [3, 4]


def test_instructions_are_decided_in_order_and_self_trade_prevention_holds_between_them() -> None:
    s = Session()
    events = _batch(s, "mm", "place_orders", [_place(0, "buy", 100, 2), _place(1, "sell", 100, 1)])
    # cancel_resting (the default): the later sell cancels the earlier buy it would have met, then rests.
    assert [type(e) for e in events] == [OrderAccepted, OrderAccepted, OrderCancelled]
    assert (events[2].order_id, events[2].reason, events[1].resting_qty) == (1, "self_trade", 1)
    events = _batch(s, "mm", "place_orders", [_place(2, "buy", 90, 2), _place(3, "sell", 90, 1, stp="cancel_newest")])
    assert [type(e) for e in events] == [OrderAccepted, OrderAccepted, OrderCancelled]
    assert (events[2].client_order_id, events[2].was_resting) == ("q3", False)
    assert not any(isinstance(e, Fill) for e in events)
    # Another account's batch trades against both quotes that rest, best price first.
    events = _batch(s, "taker", "place_orders", [_place(9, "sell", 90, 2, tif="ioc"), _place(10, "buy", 100, 1)])
    fills = [e for e in events if isinstance(e, Fill)]
    assert [(f.maker_order_id, f.price, f.qty) for f in fills] == [(3, 90, 2), (2, 100, 1)]


def test_cancel_orders_by_order_id_or_client_order_id() -> None:
    s = Session()
    _batch(s, "mm", "place_orders", [_place(i, price=100 - i) for i in range(4)])
    events = _batch(
        s, "mm", "cancel_orders",
        [{"order_id": 1}, {"client_order_id": "q2"}, {"client_order_id": "q2"},
         {"order_id": 4, "client_order_id": "q0"}],
    )  # fmt: skip
    assert [type(e) for e in events] == [OrderCancelled, OrderCancelled, Rejected, Rejected]
    assert [e.order_id for e in events[:2]] == [1, 3]
    assert (events[2].reason, events[2].index, events[2].client_order_id) == ("order_not_open", 2, "q2")
    assert (events[3].reason, events[3].index, events[3].order_id) == ("unknown_order", 3, 4)
    assert sorted(s.engine.state.markets[M].books[None].orders) == [2, 4]


def test_replace_orders_follows_amend_orders_priority_rules() -> None:
    s = Session()
    _batch(s, "mm", "place_orders", [_place(0, qty=5), _place(1, qty=5, price=99)])
    s.place("rival", "buy", 100, 5, coid="r")
    events = _batch(
        s, "mm", "replace_orders",
        [{"client_order_id": "q0", "qty": 3}, {"order_id": 2, "price": 100}, {"order_id": 2, "qty": 1},
         {"order_id": 9}],
    )  # fmt: skip
    assert [type(e) for e in events] == [OrderAmended, OrderAmended, OrderAmended, Rejected]
    assert [e.priority for e in events[:3]] == ["kept", "lost", "kept"]
    assert (events[3].reason, events[3].index) == ("missing_field", 3)
    # q0 kept its place ahead of the rival; q1 lost its place, so it is behind both at 100.
    fills = [e for e in s.place("taker", "sell", 100, 9) if isinstance(e, Fill)]
    assert [(f.maker_client_order_id, f.qty) for f in fills] == [("q0", 3), ("r", 5), ("q1", 1)]


def test_a_batch_with_fills_is_one_atomic_batch_and_an_instruction_past_it_is_refused_alone() -> None:
    s = Session()
    for k in range(8):
        _batch(s, f"m{k}", "place_orders", [_place(i, "sell", 100 + k, 1) for i in range(200)])
    events = _batch(s, "t", "place_orders", [_place(i, "buy", 200, 2, tif="ioc") for i in range(200)])
    assert len(events) == 600 and {e.cmd_seq for e in events} == {s.seq}
    assert sum(isinstance(e, Fill) for e in events) == 400
    # 1200 sells left: a first taker of 700 fits, a second of 300 would pass the command's events, a third fits.
    big = [_place(900, "buy", 200, 700), _place(901, "buy", 200, 300), _place(902, "buy", 200, 1)]
    events = _batch(s, "t", "place_orders", big)
    assert len(events) <= MAX_COMMAND_EVENTS
    refused = [e for e in events if isinstance(e, Rejected)]
    assert [(r.index, r.reason) for r in refused] == [(1, "too_many_fills")]
    assert events[-2].client_order_id == "q902" and isinstance(events[-1], Fill)


def test_decide_on_a_batch_does_not_change_the_state_it_reads() -> None:
    s = Session()
    s.place("other", "sell", 100, 5, coid="ask")
    before = state_hash(s.engine.state)
    cmd = PlaceOrders([PlaceOrder(f"q{i}", "buy", 1, 100, "limit", None, "gtc") for i in range(3)])
    events = decide(s.engine.state, 99, 99, Parsed(M, "mm", cmd))
    assert sum(isinstance(e, Fill) for e in events) == 3
    assert state_hash(s.engine.state) == before


def test_a_batch_encodes_to_what_parse_reads_back() -> None:
    cmd = PlaceOrders([PlaceOrder("a", "buy", 2, 100, "limit", None, "gtc", stp="cancel_both")], all_or_none=True)
    got = parse(f"jb.cmd.{M}.mm", encode(cmd))
    assert isinstance(got, Parsed) and got.command == cmd
    with pytest.raises(ValueError):
        encode(PlaceOrders([parse(f"jb.cmd.{M}.mm", b"\x80")]))  # type: ignore[list-item]


def test_a_single_commands_reject_keeps_its_bytes() -> None:
    """rejected.index is an optional trailing field: absent, a reject packs as it did before issue 14."""
    r = Rejected(market_id=M, cmd_seq=1, ts=2, reason="unknown_order", detail="x", account_id="a",
                 command_type="cancel_order", order_id=5)  # fmt: skip
    assert b"index" not in encode_event(r)
    r.index = 0
    assert encode_event(r).endswith(b"\xa5index\x00")


def test_the_engine_decides_a_batch_in_place_to_the_events_the_pure_decide_gives() -> None:
    s = Session()
    _batch(s, "a", "place_orders", [_place(i, "sell", 100 + i % 5, 2) for i in range(20)])
    _batch(s, "b", "place_orders", [_place(i, "buy", 95 - i % 5, 2) for i in range(20)])
    batches = [
        ("place_orders", [_place(100 + i, "buy" if i % 3 else "sell", 97 + i % 7, 1 + i % 4) for i in range(30)]),
        ("replace_orders", [{"client_order_id": f"q{i}", "price": 99 + i % 3} for i in range(0, 20, 2)]),
        ("cancel_orders", [{"client_order_id": f"q{i}"} for i in range(20)]),
    ]
    for ctype, instructions in batches:
        data = raw({"type": ctype, "instructions": instructions})
        pure = decide(s.engine.state, s.seq + 1, 1_000 + s.seq + 1, parse(f"jb.cmd.{M}.b", data))
        live = s.send(f"jb.cmd.{M}.b", data)
        assert [encode_event(e) for e in live] == [encode_event(e) for e in pure] and len(live) > 1


def test_a_bug_deciding_one_instruction_in_place_is_its_internal_error_and_the_others_stand(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import engine.decide as decide_module

    real = decide_module._decide_place

    def flaky(state: State, seq: int, ts: int, p: Parsed) -> list[Event]:
        assert isinstance(p.command, PlaceOrder)
        if p.command.client_order_id == "q1":
            raise ZeroDivisionError
        return real(state, seq, ts, p)

    monkeypatch.setitem(decide_module._BATCH_DECIDERS, PlaceOrders, flaky)
    s = Session()
    events = _batch(s, "mm", "place_orders", [_place(0), _place(1), _place(2)])
    assert [type(e) for e in events] == [OrderAccepted, Rejected, OrderAccepted]
    assert (events[1].reason, events[1].detail, events[1].index) == ("internal_error", "ZeroDivisionError", 1)
    assert sorted(s.engine.state.markets[M].books[None].orders) == [1, 2]
    assert [d for _, d in s.engine.payloads] == [encode_event(e) for e in events]
