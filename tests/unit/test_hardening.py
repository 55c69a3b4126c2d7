"""Issue 9, the pure core: nothing a client sends escapes Engine.handle, amounts stay in 64 bits, venue limits.

Each named test reproduces one way in (the deep-nesting and int64 defects fail
on the code before the fix), and the fuzz tests drive the whole inbound path
(subject + bytes -> parse -> decide -> encode -> evolve -> checkpoint) with
adversarial input. After every fuzzed command the engine must still take a
valid order, and every event it returned must encode to the bytes it publishes.
"""

from __future__ import annotations

import os
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine.core as core
from commands.model import MAX_MARKETS, MAX_OPEN_ORDERS, Invalid, parse
from engine.core import Engine, state_hash
from events.model import (
    EVENT_TYPES,
    Checkpoint,
    Event,
    Fill,
    MarketCreated,
    MarketSettled,
    OrderAccepted,
    Rejected,
    decode,
    encode,
    make_encoders,
)
from protocol.subjects import ID_PATTERN
from tests.unit.helpers import M, Session, raw

DEEP = b"\x91" * 1010 + b"\x00"  # a list nested 1010 deep: under msgpack's own limit of 1024
INT64 = 2**63 - 1


def _deep_under(key: str) -> bytes:
    return b"\x81" + msgpack.packb(key) + DEEP


def _only_reject(events: list[Event]) -> Rejected:
    assert len(events) == 1 and isinstance(events[0], Rejected), events
    return events[0]


def _still_trades(s: Session, market: str = M) -> None:
    """The engine decides a valid order after whatever came before (the fuzz tests' liveness check)."""
    events = s.place("zed", "buy", 1, 1, coid=f"alive{s.seq}", market=market)
    assert isinstance(events[0], OrderAccepted), events


def _published(engine: Engine, events: list[Event]) -> None:
    """Every event encodes, to the bytes the engine says it publishes, on a valid jb.wal subject."""
    assert len(engine.payloads) == len(events)
    for event, (subject, data) in zip(events, engine.payloads, strict=True):
        assert data == encode(event)
        assert decode(data) == event
        _, _, token, kind = subject.split(".")
        assert subject.startswith("jb.wal.") and kind == event.type
        assert ID_PATTERN.fullmatch(token), subject


# --- defect 1: deep nesting --------------------------------------------------------------------------


def test_deep_nesting_under_type_is_an_unknown_type_reject_not_a_recursion_error() -> None:
    # The repro: parse raised RecursionError formatting the detail, before handle's try.
    got = parse(f"jb.cmd.{M}.alice", _deep_under("type"))
    assert isinstance(got, Invalid) and got.reason == "unknown_type" and got.detail == "type '<list>'"
    s = Session()
    r = _only_reject(s.send(f"jb.cmd.{M}.alice", _deep_under("type")))
    assert (r.reason, r.market_id, r.account_id) == ("unknown_type", M, "alice")
    _published(s.engine, [r])
    _still_trades(s)


@pytest.mark.parametrize(
    ("key", "reason"),
    [("v", "unsupported_version"), ("colour", "unknown_field"), ("qty", "invalid_qty"), ("side", "invalid_side"),
     ("client_order_id", "invalid_field"), ("price", "invalid_price")],
)  # fmt: skip
def test_deep_nesting_in_any_field_of_an_order_is_a_reject(key: str, reason: str) -> None:
    body = {"type": "place_order", "client_order_id": "c1", "side": "buy", "price": 5, "qty": 1}
    body.pop(key, None)
    # the fixmap header counts one more entry, the deep value, appended after the others
    data = bytes([0x80 | (len(body) + 1)]) + msgpack.packb(body)[1:] + msgpack.packb(key) + DEEP
    s = Session()
    r = _only_reject(s.send(f"jb.cmd.{M}.alice", data))
    assert r.reason == reason
    _published(s.engine, [r])
    _still_trades(s)


def test_deep_nesting_as_a_map_key_payload_and_unknown_key_are_rejects() -> None:
    s = Session()
    for data in (DEEP, b"\x81" + DEEP[:-1] + b"\xc0\x00", b"\xde\x00\x01" + b"\x91" * 1000 + b"\x00\x00"):
        r = _only_reject(s.send(f"jb.cmd.{M}.alice", data))
        assert r.reason == "malformed"
        _published(s.engine, [r])
    _still_trades(s)


def test_a_shallow_detail_reads_as_before_so_old_logs_re_decide_to_the_same_bytes() -> None:
    got = parse(f"jb.cmd.{M}.alice", raw({"type": [1, [2, {"a": b"x"}]]}))
    assert isinstance(got, Invalid) and got.detail == "type \"[1, [2, {'a': b'x'}]]\""
    got = parse(f"jb.cmd.{M}.alice", raw({"type": "cancel_order", "order_id": 1, "v": 2.5}))
    assert isinstance(got, Invalid) and got.detail == "v: 2.5"


# --- subjects --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "subject",
    ["jb.cmd.\udcff\udcfe.alice", "jb.cmd.M.\udcff", "jb.ctl.\udcff", "jb.cmd..alice", "jb.cmd.M.alice.x",
     "", ".", "jb.cmd", "jb.cmd.M.", "jb.cmd.a b.alice", "jb.cmd.M.alice" * 200, "jb.cmd." + "x" * 65 + ".a",
     "jb.cmd.é.alice", "jb.evt.M.fill", "jb.cmd.M.*", "jb.cmd.>.alice", "jb.ctl._all.x"],
)  # fmt: skip
def test_an_odd_subject_is_invalid_subject_filed_under_a_valid_token(subject: str) -> None:
    s = Session()
    r = _only_reject(s.send(subject, {"type": "cancel_all"}))
    assert r.reason == "invalid_subject"
    assert r.market_id == "_invalid" or ID_PATTERN.fullmatch(r.market_id)
    assert r.account_id is None or ID_PATTERN.fullmatch(r.account_id)
    _published(s.engine, [r])
    _still_trades(s)


def test_a_subject_that_is_not_a_str_is_an_internal_error_not_a_crash() -> None:
    s = Session()
    s.seq += 1
    events = s.engine.handle(s.seq, 1, b"jb.cmd.M.alice", raw({"type": "cancel_all"}))  # type: ignore[arg-type]
    r = _only_reject(events)
    assert (r.reason, r.market_id) == ("internal_error", "_invalid")
    _published(s.engine, events)
    _still_trades(s)


def test_a_bug_in_parse_becomes_an_internal_error_on_the_subjects_market(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Session()

    def broken(subject: str, data: bytes) -> Any:
        raise RecursionError

    monkeypatch.setattr(core, "parse", broken)
    r = _only_reject(s.send(f"jb.cmd.{M}.alice", {"type": "cancel_all"}))
    assert (r.reason, r.detail, r.market_id, r.account_id) == ("internal_error", "RecursionError", M, "alice")
    monkeypatch.undo()
    _still_trades(s)


def test_an_event_that_cannot_be_encoded_becomes_an_internal_error_before_anything_is_folded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = Session()
    before = state_hash(s.engine.state)

    def decide(state: Any, seq: int, ts: int, item: Any) -> list[Event]:
        return [
            OrderAccepted(
                market_id=M,
                cmd_seq=seq,
                ts=ts,
                order_id=1,
                account_id="alice",
                client_order_id="c1",
                side="buy",
                price=2**64,
                qty=1,
                tif="gtc",
                resting_qty=1,
                runner=None,
                order_type="limit",
                stp="x",
                persistence="y",
            )
        ]

    monkeypatch.setattr(core, "decide", decide)
    monkeypatch.setattr(core, "place", lambda *args: None)  # the fused path would take this order
    events = s.place("alice", "buy", 5, 1)
    r = _only_reject(events)
    assert (r.reason, r.detail) == ("internal_error", "OverflowError")
    monkeypatch.undo()
    assert s.engine.state.markets[M].books[None].orders == {}
    assert state_hash(s.engine.state) != before  # only the reject was counted
    _published(s.engine, events)
    _still_trades(s)


def test_a_state_that_cannot_be_hashed_gets_a_fixed_mark_the_same_live_and_on_replay() -> None:
    engine = Engine(checkpoint_every=3)
    ts = 1
    engine.handle(1, ts, f"jb.ctl.{M}", raw({"type": "create_market", "market_id": M, "base": "B", "quote": "Q"}))
    engine.state.markets[M].positions["x"] = [2**70, 0]  # only a bug (or an old log) could put this here
    events = engine.handle(2, ts, f"jb.cmd.{M}.a", raw({"type": "cancel_all"}))
    events += engine.handle(3, ts, f"jb.cmd.{M}.a", raw({"type": "cancel_all"}))
    checkpoint = events[-1]
    assert isinstance(checkpoint, Checkpoint) and checkpoint.state_hash == "unhashable:OverflowError"
    follower = Engine(checkpoint_every=3)
    follower.handle(1, ts, f"jb.ctl.{M}", raw({"type": "create_market", "market_id": M, "base": "B", "quote": "Q"}))
    follower.state.markets[M].positions["x"] = [2**70, 0]
    for e in events:
        follower.apply(e, verify=True)  # agrees: no Diverged


# --- defect 3: int64 ------------------------------------------------------------------------------


def test_ten_fills_of_a_billion_at_a_billion_are_refused_before_cash_passes_int64_and_settlement_encodes() -> None:
    # The repro: cash went below -2**63 and settle_market died in the event encoder.
    s = Session()
    refused = 0
    for i in range(10):
        s.place("seller", "sell", 10**9, 10**9, coid=f"s{i}")
        events = s.place("buyer", "buy", 10**9, 10**9, coid=f"b{i}")
        if isinstance(events[0], Rejected):
            assert events[0].reason == "amount_out_of_range"
            refused += 1
        _published(s.engine, events)
    assert refused > 0
    for pos in s.engine.state.markets[M].positions.values():
        assert abs(pos[1]) + abs(pos[0]) * 10**9 <= INT64
    s.control(M, "close_market")
    events = s.control(M, "settle_market", price=1)  # HEAD: pnl -1e19 + 1e10 failed in the encoder
    assert isinstance(events[-1], MarketSettled)
    _published(s.engine, events)
    assert all(-INT64 <= pnl <= INT64 for _, pnl in events[-1].pnl)
    state_hash(s.engine.state)


def test_resting_orders_whose_open_exposure_would_pass_int64_are_refused() -> None:
    s = Session()
    results = [s.place("whale", "buy", 10**9, 10**9, coid=f"w{i}") for i in range(12)]
    kinds = [e[0].reason if isinstance(e[0], Rejected) else "ok" for e in results]
    assert kinds == ["ok"] * 9 + ["amount_out_of_range"] * 3
    assert s.engine.state.markets[M].risk["whale"].open_exposure <= INT64
    state_hash(s.engine.state)


def test_an_amend_that_would_take_open_exposure_past_int64_is_refused() -> None:
    s = Session()
    for i in range(9):
        s.place("whale", "buy", 10**9, 10**9, coid=f"w{i}")
    s.place("whale", "buy", 1, 10**9, coid="small")
    r = _only_reject(s.trade("whale", "amend_order", client_order_id="small", price=10**9))
    assert (r.reason, r.order_id) == ("amount_out_of_range", 10)


def test_an_amend_whose_fills_would_take_a_position_past_int64_is_refused() -> None:
    s = Session()
    for i in range(5):
        s.place("seller", "sell", 10**9, 10**9, coid=f"s{i}")
    for i in range(4):
        s.place("buyer", "buy", 10**9, 10**9, coid=f"b{i}")  # fills: buyer long 4e9 at 1e9
    s.place("buyer", "buy", 1, 10**9, coid="low")
    r = _only_reject(s.trade("buyer", "amend_order", client_order_id="low", price=10**9))
    assert r.reason == "amount_out_of_range"


def test_odds_positions_stay_within_the_per_runner_bound() -> None:
    s = Session(market=None)
    s.create("O", kind="odds", quote="GBP", runners=[{"runner_id": "H", "label": "Home"}])
    refused = 0
    for i in range(2000):  # a fill moves the backer's win figure by ~1e14; the bound is ~1.4e17
        s.place("layer", "lay", 100_000, 10**9, coid=f"l{i}", market="O", runner="H")
        events = s.place("backer", "back", 100_000, 10**9, coid=f"b{i}", market="O", runner="H")
        refused += isinstance(events[0], Rejected) and events[0].reason == "amount_out_of_range"
        if refused:
            break
    assert refused
    for book in s.engine.state.markets["O"].positions.values():
        for wl in book.values():
            assert all(abs(x) <= core.MAX_ODDS_PNL for x in wl)


def test_settlement_of_a_position_already_out_of_bounds_is_refused_not_a_crash() -> None:
    s = Session()
    s.engine.state.markets[M].positions["old"] = [2**62, 0]  # as an old log made before the bound could
    s.control(M, "close_market")
    r = _only_reject(s.control(M, "settle_market", price=10))
    assert r.reason == "amount_out_of_range"


# --- venue limits ---------------------------------------------------------------------------------


def test_markets_past_the_venue_limit_are_refused() -> None:
    s = Session(market=None)
    for i in range(MAX_MARKETS):
        assert isinstance(s.create(f"m{i}")[0], MarketCreated)
    r = _only_reject(s.create("one-more"))
    assert (r.reason, r.detail) == ("too_many_markets", f"at most {MAX_MARKETS} markets")


def test_resting_orders_past_the_per_account_per_market_limit_are_refused_but_takers_still_trade() -> None:
    s = Session()
    for i in range(MAX_OPEN_ORDERS):
        assert isinstance(s.place("alice", "buy", 1 + i % 50, 1, coid=f"a{i}")[0], OrderAccepted)
    r = _only_reject(s.place("alice", "buy", 1, 1, coid="over"))
    assert r.reason == "too_many_open_orders"
    s.place("bob", "buy", 1, 1, coid="b")  # another account is not affected
    s.place("bob", "sell", 100, 1, coid="ask")
    events = s.place("alice", "buy", 100, 1, coid="take", tif="ioc")  # takes, never rests
    assert isinstance(events[1], Fill)


# --- the encoder -------------------------------------------------------------------------------------


def _sample(cls: type[Event]) -> Event:
    values: dict[str, Any] = {"market_id": M, "cmd_seq": 7, "ts": 2**62}
    annotations: dict[str, Any] = {}  # the declared (string) annotation of every field, the base class's too
    for klass in reversed(cls.__mro__):
        annotations.update(getattr(klass, "__annotations__", {}))
    for name in cls.__struct_fields__:
        if name in values:
            continue
        t = str(annotations[name])
        values[name] = [[1, "a", None]] if "list" in t else -(2**63) if "int" in t else True if "bool" in t else "é\x00"
    return cls(**values)


@pytest.mark.parametrize("cls", list(EVENT_TYPES.values()), ids=lambda c: c.type)
def test_the_fast_encoder_gives_the_same_bytes_as_encode(cls: type[Event]) -> None:
    event = _sample(cls)
    assert make_encoders()[cls](event) == encode(event)


# --- fuzz: the whole inbound path --------------------------------------------------------------------

_ID = st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True)
_TOKEN = st.one_of(
    _ID, st.sampled_from(["", "_all", "_invalid", "_engine", "*", ">", M, "x" * 65, "a b", "é"]),
    st.text(max_size=8), st.text(alphabet=st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF), max_size=3),
)  # fmt: skip
SUBJECTS = st.one_of(
    st.builds(lambda a: f"jb.cmd.{M}.{a}", _ID),
    st.builds(lambda a, b: f"jb.cmd.{a}.{b}", _TOKEN, _TOKEN),
    st.builds(lambda a: f"jb.ctl.{a}", _TOKEN),
    st.builds(lambda ts: ".".join(ts), st.lists(_TOKEN, max_size=12)),
    st.builds(lambda n: "jb.cmd." + "M." * n + "a", st.integers(0, 2000)),
    st.text(max_size=40),
)  # fmt: skip
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=20),
    st.binary(max_size=20), st.sampled_from(["place_order", "cancel_order", "amend_order", "cancel_all", "buy",
                                              "sell", "gtc", "ioc", "limit", "market", "c1", M, "place_orders",
                                              "cancel_orders", "replace_orders"]),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
    st.builds(lambda n: "x" * n, st.integers(60, 70_000)),
)  # fmt: skip
_KEYS = st.sampled_from(
    ["type", "v", "client_order_id", "side", "price", "qty", "tif", "order_type", "order_id", "stp", "runner",
     "persistence", "market_id", "account_id", "protection_price", "state", "runners", "colour", "instructions",
     "all_or_none"]
)  # fmt: skip
VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=5)),
    max_leaves=12,
)


def _nest(depth: int, leaf: bytes) -> bytes:
    return b"\x91" * depth + leaf


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """Bytes a hostile client might publish: mostly near-valid maps, with one field made adversarial."""
    how = draw(st.integers(0, 9))
    if how == 0:
        return draw(st.binary(max_size=200))
    base: dict[str, Any] = {"type": draw(st.sampled_from(["place_order", "cancel_order", "amend_order", "cancel_all",
                                                          "create_market", "settle_market", "place_orders",
                                                          "cancel_orders", "replace_orders"]))}  # fmt: skip
    base.update(draw(st.dictionaries(_KEYS, VALUES, max_size=6)))
    if how <= 3:  # a value nested close to msgpack's limit under one key (or as a key, or the whole payload)
        key = draw(_KEYS)
        deep = _nest(draw(st.integers(900, 1023)), draw(st.sampled_from([b"\x00", b"\xc0", b"\x80", b"\xa1x"])))
        base.pop(key, None)
        head = msgpack.packb(base)[1:] if len(base) < 15 else None
        if head is None:
            return deep
        where = draw(st.integers(0, 3))
        if where == 0:
            return deep
        if where == 1:
            return bytes([0x80 | (len(base) + 1)]) + deep + msgpack.packb("v") + head
        return bytes([0x80 | (len(base) + 1)]) + head + msgpack.packb(key) + deep
    if how == 4:  # a map key that is not a str
        return b"\x82" + msgpack.packb("type") + msgpack.packb("cancel_all") + draw(
            st.sampled_from([b"\x01", b"\x91\x01", b"\xc4\x01x", b"\xcb" + b"\x00" * 8, b"\x80", b"\xc0"])
        ) + b"\x00"  # fmt: skip
    if how == 5:  # oversize strings, lists, maps
        n = draw(st.integers(1_000, 60_000))
        big = draw(st.sampled_from(["x" * n, list(range(n)), {str(i): i for i in range(n // 10)}, b"\x00" * n]))
        base[draw(_KEYS)] = big
    if how == 6:  # trailing bytes, truncation
        data = msgpack.packb(base, use_bin_type=True)
        return data[: draw(st.integers(0, len(data)))] + draw(st.binary(max_size=4))
    return msgpack.packb(base, use_bin_type=draw(st.booleans()))  # type: ignore[no-any-return]


def _fuzz_one(subject: str, data: bytes) -> Session:
    s = Session()
    s.place("maker", "sell", 2, 1, coid="ask")
    events = s.send(subject, data)
    _published(s.engine, events)
    _still_trades(s)
    return s


FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    database=None,
)
SCALE = max(1, int(os.environ.get("JETBOOK_FUZZ_SCALE", "1")))


@settings(FUZZ, max_examples=300)
@given(subject=SUBJECTS, data=payloads())
def test_fuzz_inbound_path_small(subject: str, data: bytes) -> None:
    _fuzz_one(subject, data)


@settings(FUZZ, max_examples=300)
@given(data=payloads())
def test_fuzz_payloads_on_a_valid_subject_small(data: bytes) -> None:
    _fuzz_one(f"jb.cmd.{M}.alice", data)


# The CI size; JETBOOK_FUZZ_SCALE=10 `pytest -m slow` for the long run.
@pytest.mark.slow
@settings(FUZZ, max_examples=1000 * SCALE)
@given(subject=SUBJECTS, data=payloads())
def test_fuzz_inbound_path_large(subject: str, data: bytes) -> None:
    _fuzz_one(subject, data)


# --- batches (issue 14): hostile instructions are that instruction's reject, never the engine's end ------

_GOOD_INSTRUCTION: dict[str, dict[str, Any]] = {
    "place_orders": {"client_order_id": "b1", "side": "buy", "price": 1, "qty": 1},
    "cancel_orders": {"client_order_id": "ask"},
    "replace_orders": {"client_order_id": "ask", "qty": 1, "price": 3},
}


@st.composite
def batch_payloads(draw: st.DrawFn) -> bytes:
    """A batch command whose instructions are near-valid maps, hostile values, or too many of either."""
    ctype = draw(st.sampled_from(sorted(_GOOD_INSTRUCTION)))
    good = _GOOD_INSTRUCTION[ctype]
    item = st.one_of(
        st.builds(lambda extra: {**good, **extra}, st.dictionaries(_KEYS, VALUES, max_size=3)),
        VALUES,
        st.just(good),
    )
    n = draw(st.sampled_from([0, 1, 3, 8, 200, 201, 5000]))
    items = draw(st.lists(item, min_size=min(n, 8), max_size=min(n, 8)))
    items = (items * (n // max(1, len(items)) + 1))[:n] if items else []
    body: dict[str, Any] = {"type": ctype, "instructions": items}
    if draw(st.booleans()):
        body["all_or_none"] = draw(VALUES)
    data: bytes = msgpack.packb(body, use_bin_type=True)
    if draw(st.integers(0, 4)) == 0:  # one instruction nested close to msgpack's limit
        deep = _nest(draw(st.integers(900, 1000)), b"\x00")
        data = b"\x82" + msgpack.packb("type") + msgpack.packb(ctype) + msgpack.packb("instructions") + b"\x92"
        data += msgpack.packb(good) + deep
    return data


@settings(FUZZ, max_examples=150)
@given(data=batch_payloads())
def test_fuzz_batch_payloads_on_a_valid_subject(data: bytes) -> None:
    s = Session()
    s.place("maker", "sell", 2, 1, coid="ask")
    events = s.send(f"jb.cmd.{M}.maker", data)
    _published(s.engine, events)
    assert 1 <= len(events) <= core.MAX_COMMAND_EVENTS and {e.cmd_seq for e in events} == {s.seq}
    _still_trades(s)


def test_a_deeply_nested_instruction_is_that_instructions_reject_and_the_others_go_on() -> None:
    s = Session()
    data = (
        b"\x82" + msgpack.packb("type") + msgpack.packb("place_orders") + msgpack.packb("instructions") + b"\x92"
        + msgpack.packb(_GOOD_INSTRUCTION["place_orders"]) + DEEP
    )  # fmt: skip
    events = s.send(f"jb.cmd.{M}.alice", data)
    assert isinstance(events[0], OrderAccepted)
    assert isinstance(events[1], Rejected) and (events[1].reason, events[1].index) == ("malformed", 1)
    _published(s.engine, events)
    _still_trades(s)
