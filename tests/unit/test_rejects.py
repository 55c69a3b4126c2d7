"""Every reject reason: a `rejected` event, no state change, and the next valid order still goes through."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine.core as core
from commands.model import Invalid, Parsed, parse
from engine.core import MAX_FILLS, state_hash
from events.model import OrderAccepted, Rejected
from tests.unit.helpers import M, Session, raw

P = f"jb.cmd.{M}.bob"


def place(**over: Any) -> dict[str, Any]:
    body = {"type": "place_order", "client_order_id": "x1", "side": "buy", "price": 100, "qty": 1}
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


def without(key: str) -> dict[str, Any]:
    body = place()
    del body[key]
    return body


# (reason, subject, payload) sent to a market that exists and has one resting order of alice (order 1, "a1").
CASES: list[tuple[str, str, Any]] = [
    ("malformed", P, b"\xc1\x00garbage"),
    ("malformed", P, b""),
    ("malformed", P, raw([1, 2, 3])),
    ("malformed", P, raw({1: "int keys"})),
    ("missing_field", P, raw({"client_order_id": "x"})),
    ("unknown_type", P, raw({"type": "launch_rocket"})),
    ("unknown_type", P, raw({"type": 7})),
    ("wrong_subject", f"jb.ctl.{M}", raw(place())),
    ("wrong_subject", P, raw({"type": "create_market", "market_id": M, "base": "B", "quote": "Q"})),
    ("unsupported_version", P, raw({**place(), "v": 2})),
    ("unsupported_version", P, raw({**place(), "v": "1"})),
    ("invalid_subject", "jb.cmd.ETH-USDC", raw(place())),
    ("invalid_subject", "jb.cmd.ETH-USDC.bob.extra", raw(place())),
    ("invalid_subject", "jb.cmd.ETH-USDC.bad$acct", raw(place())),
    (
        "invalid_subject",
        "jb.ctl.ETH-USDC.more",
        raw({"type": "create_market", "market_id": M, "base": "B", "quote": "Q"}),
    ),
    ("missing_field", P, raw(without("client_order_id"))),
    ("missing_field", P, raw(without("side"))),
    ("missing_field", P, raw(without("price"))),
    ("missing_field", P, raw(without("qty"))),
    ("missing_field", P, raw({"type": "cancel_order"})),
    ("invalid_price", P, raw(place(price=0))),
    ("invalid_price", P, raw(place(price=-5))),
    ("invalid_price", P, raw(place(price="100"))),
    ("invalid_price", P, raw(place(price=1.5))),
    ("invalid_price", P, raw(place(price=True))),
    ("invalid_price", P, raw(place(price=10**9 + 1))),
    ("invalid_qty", P, raw(place(qty=0))),
    ("invalid_qty", P, raw(place(qty=-1))),
    ("invalid_qty", P, raw(place(qty=None) | {"qty": "lots"})),
    ("invalid_side", P, raw(place(side="long"))),
    ("invalid_tif", P, raw(place(tif="day"))),
    ("unknown_field", P, raw(place(leverage=100))),
    ("invalid_field", P, raw(place(client_order_id=5))),
    ("invalid_field", P, raw(place(client_order_id="has space"))),
    ("invalid_field", P, raw(place(client_order_id="x" * 65))),
    ("invalid_field", P, raw({"type": "cancel_order", "order_id": "1"})),
    ("invalid_field", P, raw({"type": "cancel_order", "order_id": 0})),
    ("account_mismatch", P, raw(place(account_id="alice"))),
    ("market_mismatch", P, raw(place(market_id="BTC-USDC"))),
    ("invalid_market_id", P, raw(place(market_id="bad id"))),
    ("unknown_market", "jb.cmd.NOPE.bob", raw(place())),
    ("unknown_market", "jb.cmd.NOPE.bob", raw({"type": "cancel_order", "order_id": 1})),
    (
        "duplicate_client_order_id",
        f"jb.cmd.{M}.alice",
        raw(place(client_order_id="a1", side="sell", price=200)),
    ),
    ("unknown_order", P, raw({"type": "cancel_order", "order_id": 99})),
    ("unknown_order", P, raw({"type": "cancel_order", "client_order_id": "a1"})),  # a1 is alice's, not bob's
    (
        "unknown_order",
        f"jb.cmd.{M}.alice",
        raw({"type": "cancel_order", "order_id": 1, "client_order_id": "zz"}),
    ),
    ("not_order_owner", P, raw({"type": "cancel_order", "order_id": 1})),
    (
        "market_exists",
        f"jb.ctl.{M}",
        raw({"type": "create_market", "market_id": M, "base": "B", "quote": "Q"}),
    ),
    (
        "market_mismatch",
        f"jb.ctl.{M}",
        raw({"type": "create_market", "market_id": "OTHER", "base": "B", "quote": "Q"}),
    ),
    (
        "invalid_market_id",
        "jb.ctl._sys",
        raw({"type": "create_market", "market_id": "_sys", "base": "B", "quote": "Q"}),
    ),
    ("missing_field", "jb.ctl.NEW", raw({"type": "create_market", "market_id": "NEW", "base": "B"})),
    (
        "invalid_field",
        "jb.ctl.NEW",
        raw({"type": "create_market", "market_id": "NEW", "base": "", "quote": "Q"}),
    ),
]


def _session() -> Session:
    s = Session()
    s.place("alice", "sell", 200, 5, coid="a1")
    return s


@pytest.mark.parametrize(("reason", "subject", "payload"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_command_is_rejected_and_changes_nothing(reason: str, subject: str, payload: bytes) -> None:
    s = _session()
    before = state_hash(s.engine.state)
    events = s.send(subject, payload)
    assert len(events) == 1
    (event,) = events
    assert isinstance(event, Rejected), event
    assert event.reason == reason, event
    assert event.cmd_seq == s.seq and event.ts == 1_000 + s.seq
    assert event.detail
    # Nothing half-applied: only the position moved.
    s.engine.state.last_cmd_seq -= 1
    s.engine.state.event_count -= 1
    assert state_hash(s.engine.state) == before
    s.engine.state.last_cmd_seq += 1
    s.engine.state.event_count += 1
    # And the engine goes on: the next valid order is processed.
    (accepted,) = s.place("bob", "buy", 100, 1, coid="after")
    assert isinstance(accepted, OrderAccepted)


def test_mismatched_order_reference_echoes_the_order_id() -> None:
    s = _session()
    (r,) = s.cancel("alice", order_id=1, client_order_id="zz")
    assert isinstance(r, Rejected) and r.reason == "unknown_order" and r.order_id == 1


def test_reject_echoes_client_order_id_and_account() -> None:
    s = _session()
    (r,) = s.send(P, raw(place(client_order_id="mine-7", price=0)))
    assert isinstance(r, Rejected)
    assert (r.client_order_id, r.account_id, r.command_type, r.market_id) == (
        "mine-7",
        "bob",
        "place_order",
        M,
    )


def test_unroutable_subject_is_filed_under_the_reserved_market() -> None:
    s = _session()
    (r,) = s.send("jb.cmd", raw(place()))
    assert isinstance(r, Rejected) and r.reason == "invalid_subject" and r.market_id == "_invalid"


def test_cancel_of_a_filled_order_is_order_not_open() -> None:
    s = _session()
    s.place("bob", "buy", 200, 5)
    (r,) = s.cancel("alice", order_id=1)
    assert isinstance(r, Rejected) and r.reason == "order_not_open" and r.order_id == 1
    (r2,) = s.cancel("alice", client_order_id="a1")
    assert isinstance(r2, Rejected) and r2.reason == "order_not_open"


def test_cancelled_order_cannot_be_cancelled_twice() -> None:
    s = _session()
    s.cancel("alice", order_id=1)
    (r,) = s.cancel("alice", order_id=1)
    assert isinstance(r, Rejected) and r.reason == "order_not_open"


def test_client_order_id_stays_used_after_the_order_is_gone() -> None:
    s = _session()
    s.cancel("alice", order_id=1)
    (r,) = s.place("alice", "sell", 300, 1, coid="a1")
    assert isinstance(r, Rejected) and r.reason == "duplicate_client_order_id"


def test_same_client_order_id_is_fine_for_another_account_or_market() -> None:
    s = _session()
    s.create("BTC-USDC")
    assert isinstance(s.place("bob", "buy", 100, 1, coid="a1")[0], OrderAccepted)
    assert isinstance(s.place("alice", "buy", 100, 1, coid="a1", market="BTC-USDC")[0], OrderAccepted)


def test_rejected_place_does_not_use_up_its_client_order_id() -> None:
    s = _session()
    assert s.place("bob", "buy", 0, 1, coid="retry-me")[0].reason == "invalid_price"  # type: ignore[attr-defined]
    assert isinstance(s.place("bob", "buy", 100, 1, coid="retry-me")[0], OrderAccepted)


def test_order_needing_more_fills_than_a_batch_holds_is_refused_whole() -> None:
    s = Session()
    for i in range(MAX_FILLS + 1):
        s.place(f"m{i % 7}", "sell", 100, 1)
    before = state_hash(s.engine.state)
    (r,) = s.place("t", "buy", 100, MAX_FILLS + 1)
    assert isinstance(r, Rejected) and r.reason == "too_many_fills"
    s.engine.state.last_cmd_seq -= 1
    s.engine.state.event_count -= 1
    assert state_hash(s.engine.state) == before
    s.engine.state.last_cmd_seq += 1
    s.engine.state.event_count += 1
    events = s.place("t", "buy", 100, MAX_FILLS, coid="just-fits")
    assert len(events) == MAX_FILLS + 1  # accepted + fills: exactly one full atomic batch


def test_extra_fields_on_create_market_are_ignored() -> None:
    s = Session(market=None)
    (e,) = s.create("X", colour="blue", venue={"any": "thing"})
    assert e.type == "market_created"


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=12,
)
_keys = st.sampled_from(
    [
        "type",
        "client_order_id",
        "side",
        "price",
        "qty",
        "tif",
        "order_id",
        "v",
        "market_id",
        "account_id",
        "base",
        "quote",
    ]
)
_types = st.sampled_from(["place_order", "cancel_order", "create_market"])
_bodies = st.builds(lambda t, b: {"type": t, **b}, _types, st.dictionaries(_keys, _values, max_size=8))


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(st.binary(max_size=64), _bodies.map(lambda b: msgpack.packb(b, use_bin_type=True))),
    st.sampled_from([P, f"jb.cmd.{M}.alice", f"jb.ctl.{M}", "jb.ctl.NEW", "jb.cmd", "jb.cmd.a.b.c.d", "jb.ctl.x.y"]),
)
def test_any_bytes_on_any_subject_give_events_and_never_an_exception(data: bytes, subject: str) -> None:
    assert isinstance(parse(subject, data), Parsed | Invalid)
    s = _session()
    events = s.send(subject, data)
    assert events and all(e.cmd_seq == s.seq for e in events)
    assert isinstance(s.place("bob", "buy", 100, 1, coid="after")[0], OrderAccepted)


def test_a_bug_in_decide_is_an_internal_error_reject_not_a_halt(monkeypatch: pytest.MonkeyPatch) -> None:
    from commands.model import PlaceOrder
    from engine import decide

    def broken(*_: Any) -> list[Any]:
        raise ZeroDivisionError

    s = _session()
    monkeypatch.setitem(decide.DECIDERS, PlaceOrder, broken)
    monkeypatch.setattr(core, "place", lambda *args: None)  # the fused path would take this order past decide
    before = state_hash(s.engine.state)
    (r,) = s.place("bob", "buy", 100, 1, coid="boom")
    assert isinstance(r, Rejected)
    assert (r.reason, r.detail, r.command_type, r.account_id) == (
        "internal_error",
        "ZeroDivisionError",
        "place_order",
        "bob",
    )
    s.engine.state.last_cmd_seq -= 1
    s.engine.state.event_count -= 1
    assert state_hash(s.engine.state) == before
    s.engine.state.last_cmd_seq += 1
    s.engine.state.event_count += 1
    monkeypatch.undo()
    assert isinstance(s.place("bob", "buy", 100, 1, coid="after")[0], OrderAccepted)
