"""v1.3 compact batches: a run of orders that rest untouched is one orders_accepted, a run of cancels one
orders_cancelled, and nothing but the reporting changes.

The reference exchange and the hypothesis machine (test_exchange_machine.py)
hold the engine to the spec's reading; these hold it to the equivalence the
design rests on: expanded, a compact batch's events are exactly the same
batch's events without compact, and it leaves the same markets.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commands.model import CancelOrders, Parsed, PlaceOrder, PlaceOrders, encode, parse
from engine.core import decide, state_hash
from engine.evolve import evolve
from engine.state import State, snapshot
from events.model import (
    Event,
    OrderAccepted,
    OrderCancelled,
    OrdersAccepted,
    OrdersCancelled,
    Rejected,
    accepted_orders,
    decode,
    expand,
    make_encoders,
)
from events.model import encode as encode_event
from tests.unit.helpers import M, Session, raw


def _place(i: int, side: str = "buy", price: int = 100, qty: int = 1, **extra: Any) -> dict[str, Any]:
    return {"client_order_id": f"q{i}", "side": side, "price": price, "qty": qty, **extra}


def _markets(s: Session) -> bytes:
    return snapshot(State(markets=s.engine.state.markets))


def _twins(setup: list[tuple[str, str, list[Any]]]) -> tuple[Session, Session]:
    """Two sessions given the same commands, the second with every batch compact."""
    plain, compact = Session(), Session()
    for account, ctype, instructions in setup:
        plain.trade(account, ctype, instructions=instructions)
        compact.trade(account, ctype, instructions=instructions, compact=ctype != "replace_orders")
    return plain, compact


def _same(plain: list[Event], compact: list[Event]) -> None:
    assert [encode_event(e) for e in expand(compact)] == [encode_event(e) for e in plain]


def test_a_ladder_of_resting_quotes_is_one_orders_accepted() -> None:
    ladder = [_place(i, "buy" if i % 2 else "sell", 1000 + (-1 if i % 2 else 1) * (1 + i // 2), 2) for i in range(200)]
    plain, compact = Session(), Session()
    want = plain.trade("mm", "place_orders", instructions=ladder)
    (got,) = compact.trade("mm", "place_orders", instructions=ladder, compact=True)
    assert isinstance(got, OrdersAccepted) and len(got.orders) == 200 and got.account_id == "mm"
    assert got.orders[0] == [1, "q0", "sell", 1001, 2, "gtc", None, "limit", "cancel_resting", "lapse"]
    _same(want, [got])
    assert _markets(plain) == _markets(compact)
    # The log counts messages: 200 events one way, 1 the other; everything else in the state is the same.
    assert plain.engine.state.event_count - compact.engine.state.event_count == 199
    assert [d for _, d in compact.engine.payloads] == [encode_event(got)]


def test_a_fill_or_a_reject_ends_a_run_and_keeps_its_own_events_in_place() -> None:
    s = Session()
    s.place("other", "sell", 105, 1, coid="ask")
    instructions = [
        _place(0), _place(1, price=99),  # a run of two
        _place(2, price=105, qty=2),  # fills 1, rests 1: its own events
        _place(3, price=98), _place(4, price=97), _place(5, price=96),  # a second run
        _place(6, qty=0),  # a parse reject
        _place(3),  # a duplicate client_order_id: an engine reject
        _place(7, price=95, tif="ioc"),  # accepted, nothing rests: order_accepted + order_cancelled(unfilled)
        _place(8, price=94, tif="post_only"),  # rests untouched: a run of one
    ]  # fmt: skip
    events = s.trade("mm", "place_orders", instructions=instructions, compact=True)
    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "OrdersAccepted", "OrderAccepted", "Fill", "OrdersAccepted", "Rejected", "Rejected", "OrderAccepted",
        "OrderCancelled", "OrdersAccepted",
    ]  # fmt: skip
    assert [len(e.orders) for e in events if isinstance(e, OrdersAccepted)] == [2, 3, 1]
    assert [e.index for e in events if isinstance(e, Rejected)] == [6, 7]
    other = Session()
    other.place("other", "sell", 105, 1, coid="ask")
    _same(other.trade("mm", "place_orders", instructions=instructions), events)
    assert _markets(s) == _markets(other)


def test_self_trade_prevention_inside_a_compact_batch_is_reported_as_without_it() -> None:
    """A later instruction meets an earlier one's resting order (cancel_resting): the earlier order was in a
    run, which is already reported; the later one's self-trade cancel and acceptance are its own events."""
    instructions = [_place(0, "buy", 100), _place(1, "buy", 99), _place(2, "sell", 100), _place(3, "sell", 102)]
    plain, compact = _twins([("mm", "place_orders", instructions)])
    events = compact.trade(
        "mm", "place_orders", instructions=[_place(10, "buy", 102), _place(11, "sell", 90)], compact=True
    )
    want = plain.trade("mm", "place_orders", instructions=[_place(10, "buy", 102), _place(11, "sell", 90)])
    assert any(isinstance(e, OrderCancelled) and e.reason == "self_trade" for e in events)
    _same(want, events)
    assert _markets(plain) == _markets(compact)


def test_a_compact_cancel_orders_is_one_orders_cancelled_of_reason_user_and_rejects_break_the_run() -> None:
    setup = [("mm", "place_orders", [_place(i, price=100 - i) for i in range(6)])]
    plain, compact = _twins(setup)
    cancels = [{"client_order_id": "q0"}, {"order_id": 2}, {"order_id": 99}, {"client_order_id": "q3"},
               {"client_order_id": "q0"}, {"order_id": 5}, {"order_id": 6}]  # fmt: skip
    events = compact.trade("mm", "cancel_orders", instructions=cancels, compact=True)
    assert [type(e).__name__ for e in events] == [
        "OrdersCancelled", "Rejected", "OrdersCancelled", "Rejected", "OrdersCancelled",
    ]  # fmt: skip
    first = events[0]
    assert isinstance(first, OrdersCancelled) and (first.reason, first.account_id) == ("user", "mm")
    assert first.orders == [[1, "mm", "q0", "buy", 100, 1, None], [2, "mm", "q1", "buy", 99, 1, None]]
    _same(plain.trade("mm", "cancel_orders", instructions=cancels), events)
    assert _markets(plain) == _markets(compact)
    assert list(compact.engine.state.markets[M].books[None].orders) == [3]


def test_all_or_none_and_compact_together() -> None:
    ok = [_place(i, price=100 - i) for i in range(3)]
    s = Session()
    (e,) = s.trade("mm", "place_orders", instructions=ok, all_or_none=True, compact=True)
    assert isinstance(e, OrdersAccepted) and len(e.orders) == 3
    refused = s.trade("mm", "place_orders", instructions=[_place(9), _place(0)], all_or_none=True, compact=True)
    assert [(type(r), r.index) for r in refused] == [(Rejected, 0), (Rejected, 1)]


def test_the_engine_in_place_and_the_pure_decide_agree_on_a_compact_batch() -> None:
    s = Session()
    s.trade("a", "place_orders", instructions=[_place(i, "sell", 100 + i % 5, 2) for i in range(20)])
    batches = [
        ("place_orders", [_place(100 + i, "buy" if i % 3 else "sell", 97 + i % 7, 1 + i % 4) for i in range(30)]),
        ("cancel_orders", [{"client_order_id": f"q{i}"} for i in range(100, 130)]),
    ]
    for ctype, instructions in batches:
        data = raw({"type": ctype, "instructions": instructions, "compact": True})
        pure = decide(s.engine.state, s.seq + 1, 1_000 + s.seq + 1, parse(f"jb.cmd.{M}.b", data))
        live = s.send(f"jb.cmd.{M}.b", data)
        assert [encode_event(e) for e in live] == [encode_event(e) for e in pure]
        assert any(isinstance(e, OrdersAccepted | OrdersCancelled) for e in live)
        assert [d for _, d in s.engine.payloads] == [encode_event(e) for e in live]


def test_folding_the_log_of_a_compact_batch_gives_the_live_state() -> None:
    s = Session()
    log: list[Event] = []
    for account, ctype, instructions in [
        ("mm", "place_orders", [_place(i, price=100 - i % 9) for i in range(50)]),
        ("mm", "cancel_orders", [{"order_id": i} for i in range(1, 40, 2)]),
        ("x", "place_orders", [_place(i, "sell", 95, 3) for i in range(5)]),
    ]:
        log += s.trade(account, ctype, instructions=instructions, compact=True)
    assert any(isinstance(e, OrdersAccepted) for e in log) and any(isinstance(e, OrdersCancelled) for e in log)
    fresh = Session()  # the market's creation, then the batches' events as the log holds them
    for e in log:
        evolve(fresh.engine.state, decode(encode_event(e)))
    assert state_hash(fresh.engine.state) == state_hash(s.engine.state)


# --- the field itself -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 0, "true", [True], {"a": 1}, 1.0])
@pytest.mark.parametrize("ctype", ["place_orders", "cancel_orders"])
def test_a_compact_that_is_not_a_bool_is_invalid_field(ctype: str, value: Any) -> None:
    s = Session()
    ins = [_place(0)] if ctype == "place_orders" else [{"order_id": 1}]
    (r,) = s.trade("mm", ctype, instructions=ins, compact=value)
    assert isinstance(r, Rejected) and (r.reason, r.detail, r.index) == ("invalid_field", "compact: not_bool", None)


def test_compact_nil_or_false_is_the_default_and_replace_orders_has_no_compact() -> None:
    s = Session()
    for i, value in enumerate([None, False]):
        events = s.trade("mm", "place_orders", instructions=[_place(2 * i), _place(2 * i + 1)], compact=value)
        assert [type(e) for e in events] == [OrderAccepted, OrderAccepted]
    (r,) = s.trade("mm", "replace_orders", instructions=[{"order_id": 1, "qty": 2}], compact=True)
    assert isinstance(r, Rejected) and (r.reason, r.detail) == ("unknown_field", "compact: unknown")


def test_compact_is_on_the_wire_of_the_command_only_when_true() -> None:
    one = [PlaceOrder("a", "buy", 2, 100, "limit", None, "gtc")]
    assert b"compact" not in encode(PlaceOrders(one))
    assert b"compact" not in encode(CancelOrders([]))
    body = msgpack.unpackb(encode(PlaceOrders(one, compact=True)))
    assert body["compact"] is True
    got = parse(f"jb.cmd.{M}.mm", encode(PlaceOrders(one, compact=True)))
    assert isinstance(got, Parsed) and got.command == PlaceOrders(one, compact=True)


# --- the events ------------------------------------------------------------------------------------


def test_orders_accepted_encodes_the_same_both_ways_and_decodes_back() -> None:
    s = Session()
    (e,) = s.trade("mm", "place_orders", instructions=[_place(0), _place(1, "sell", 200)], compact=True)
    assert make_encoders()[OrdersAccepted](e) == encode_event(e)
    assert decode(encode_event(e)) == e
    assert [a.resting_qty for a in accepted_orders(e)] == [1, 1]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "orders", [[[1, "q"]], [7], ["x" * 12], [[1, "q", "buy", 100, 1, "gtc", None, "limit", "none", "keep", 0]]]
)
def test_a_forged_orders_accepted_with_odd_rows_raises_value_error_in_the_expansion(orders: Any) -> None:
    forged = OrdersAccepted(market_id=M, cmd_seq=1, ts=1, account_id="mm", orders=orders)
    with pytest.raises(ValueError):
        accepted_orders(forged)
    with pytest.raises(ValueError):
        expand([forged])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_compact_batch_expands_to_the_same_batch_without_compact(data: st.DataObject) -> None:
    """The differential: any mix of quotes, crosses, rejects and cancels, compact or not, the same outcomes."""
    plain, compact = Session(), Session()
    plain.engine.checkpoint_every = compact.engine.checkpoint_every = 10**9
    for step in range(data.draw(st.integers(1, 4))):
        account = data.draw(st.sampled_from(["a", "b"]))
        if data.draw(st.booleans()):
            ctype = "place_orders"
            instructions: list[Any] = [
                _place(
                    data.draw(st.integers(0, 30)), data.draw(st.sampled_from(["buy", "sell"])),
                    data.draw(st.integers(95, 105)), data.draw(st.integers(0, 3)),
                    tif=data.draw(st.sampled_from(["gtc", "gtc", "ioc", "post_only"])),
                    stp=data.draw(st.sampled_from(["cancel_resting", "cancel_taking", "cancel_both"])),
                )
                for _ in range(data.draw(st.integers(1, 12)))
            ]  # fmt: skip
        else:
            ctype = "cancel_orders"
            instructions = [{"order_id": data.draw(st.integers(1, 40))} for _ in range(data.draw(st.integers(1, 12)))]
        want = plain.trade(account, ctype, instructions=instructions)
        got = compact.trade(account, ctype, instructions=instructions, compact=True)
        _same(want, got)
        assert len(got) <= len(want)
        assert _markets(plain) == _markets(compact), step


# --- the fan-out ------------------------------------------------------------------------------------


def test_the_fan_out_copies_runs_whole_to_their_account_and_never_raises_on_a_forged_one() -> None:
    from projections.fanout import outputs

    s = Session()
    (run,) = s.trade("mm", "place_orders", instructions=[_place(0), _place(1, price=99)], compact=True)
    (pull,) = s.trade("mm", "cancel_orders", instructions=[{"order_id": 1}, {"order_id": 2}], compact=True)
    for e in (run, pull):
        (out,) = outputs(7, e, encode_event(e))
        assert (out.subject, out.data) == (f"jb.acct.mm.{M}.{e.type}", encode_event(e))
    odd: list[Any] = [[1, "x"], 7, "junk", None]
    for account in ("mm", "bad id", "", 5, None):
        forged = OrdersAccepted(market_id=M, cmd_seq=1, ts=1, account_id=account, orders=odd)  # type: ignore[arg-type]
        got = outputs(8, forged, b"raw")
        assert [o.data for o in got] == ([b"raw"] if account == "mm" else [])
