"""Price-time priority, one rule per test."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from engine.core import Diverged, Engine, restore, snapshot, state_hash
from events.model import Checkpoint, Fill, OrderAccepted, OrderCancelled, decode, encode
from tests.unit.helpers import Session


def fills(events: list) -> list[Fill]:
    return [e for e in events if isinstance(e, Fill)]


def test_reference_scenario_gives_one_fill_at_the_resting_price() -> None:
    s = Session()
    s.place("alice", "sell", 300_000, 10)
    s.place("alice", "sell", 301_000, 5)
    s.place("bob", "buy", 299_000, 8)
    events = s.place("bob", "buy", 300_500, 15)
    (f,) = fills(events)
    assert (f.price, f.qty, f.maker_order_id, f.taker_order_id) == (300_000, 10, 1, 4)
    assert (f.maker_account, f.taker_account, f.taker_side) == ("alice", "bob", "buy")
    assert (f.maker_remaining, f.taker_remaining) == (0, 5)
    accepted = events[0]
    assert isinstance(accepted, OrderAccepted) and accepted.resting_qty == 5
    assert s.book() == ([(300_500, 5), (299_000, 8)], [(301_000, 5)])


def test_non_crossing_orders_rest_without_fills() -> None:
    s = Session()
    assert not fills(s.place("a", "sell", 101, 1))
    assert not fills(s.place("b", "buy", 100, 1))
    assert s.book() == ([(100, 1)], [(101, 1)])


def test_fifo_within_a_level() -> None:
    s = Session()
    s.place("m1", "sell", 100, 3)
    s.place("m2", "sell", 100, 3)
    s.place("m3", "sell", 100, 3)
    got = fills(s.place("t", "buy", 100, 7))
    assert [(f.maker_account, f.qty) for f in got] == [("m1", 3), ("m2", 3), ("m3", 1)]
    assert [f.trade_id for f in got] == [1, 2, 3]
    assert s.book() == ([], [(100, 2)])


def test_better_price_beats_earlier_time() -> None:
    s = Session()
    s.place("early", "buy", 99, 5)
    s.place("better", "buy", 100, 5)
    (f,) = fills(s.place("t", "sell", 99, 5))
    assert f.maker_account == "better" and f.price == 100


def test_partial_fill_of_the_maker_keeps_its_priority() -> None:
    s = Session()
    s.place("m1", "sell", 100, 10)
    s.place("m2", "sell", 100, 10)
    s.place("t1", "buy", 100, 4)
    (f,) = fills(s.place("t2", "buy", 100, 4))
    assert f.maker_account == "m1" and f.maker_remaining == 2


def test_sweep_across_levels_fills_at_each_makers_price_and_rests_the_rest() -> None:
    s = Session()
    s.place("a", "sell", 100, 2)
    s.place("b", "sell", 101, 2)
    s.place("c", "sell", 103, 2)
    events = s.place("t", "buy", 102, 10)
    assert [(f.price, f.qty) for f in fills(events)] == [(100, 2), (101, 2)]
    assert events[0].resting_qty == 6  # type: ignore[attr-defined]
    assert s.book() == ([(102, 6)], [(103, 2)])


def test_sell_sweeps_bids_from_the_highest_down() -> None:
    s = Session()
    s.place("a", "buy", 98, 1)
    s.place("b", "buy", 100, 1)
    s.place("c", "buy", 99, 1)
    assert [f.price for f in fills(s.place("t", "sell", 98, 3))] == [100, 99, 98]
    assert s.book() == ([], [])


def test_cancel_removes_only_that_order_and_keeps_the_queue() -> None:
    s = Session()
    s.place("m1", "sell", 100, 1, coid="x1")
    s.place("m2", "sell", 100, 1)
    s.place("m3", "sell", 100, 1)
    (cancelled,) = s.cancel("m2", order_id=2)
    assert isinstance(cancelled, OrderCancelled) and cancelled.cancelled_qty == 1
    (c2,) = s.cancel("m1", client_order_id="x1")
    assert isinstance(c2, OrderCancelled) and c2.order_id == 1
    (f,) = fills(s.place("t", "buy", 100, 5))
    assert f.maker_account == "m3"


def test_cancel_after_partial_fill_cancels_the_open_rest() -> None:
    s = Session()
    s.place("m", "sell", 100, 10)
    s.place("t", "buy", 100, 4)
    (c,) = s.cancel("m", order_id=1)
    assert isinstance(c, OrderCancelled) and c.cancelled_qty == 6
    assert s.book() == ([], [])


def test_markets_are_independent() -> None:
    s = Session()
    s.create("BTC-USDC")
    s.place("a", "sell", 100, 1)
    assert not fills(s.place("b", "buy", 100, 1, market="BTC-USDC"))
    events = s.place("c", "sell", 100, 1, market="BTC-USDC")
    assert events[0].order_id == 2  # type: ignore[attr-defined]  # order ids count per market
    assert fills(events)[0].trade_id == 1


def _script(s: Session) -> list[bytes]:
    out: list[bytes] = []
    for i in range(60):
        out += [encode(e) for e in s.place(f"a{i % 3}", "buy" if i % 2 else "sell", 100 + (i * 7) % 11, 1 + i % 4)]
    out += [encode(e) for e in s.cancel("a0", order_id=3)]
    return out


def test_same_commands_give_the_same_event_bytes() -> None:
    assert _script(Session()) == _script(Session())


def test_folding_the_events_gives_the_live_state_hash() -> None:
    live = Session(market=None)
    log = [encode(e) for e in live.create("ETH-USDC")] + _script(live)
    replayed = Engine()
    for data in log:
        replayed.apply(decode(data))
    assert replayed.state.last_cmd_seq == live.engine.state.last_cmd_seq
    assert state_hash(replayed.state) == state_hash(live.engine.state)
    assert live.book() != ([], [])  # the script leaves orders resting, so the hash covers a real book


def test_a_redelivered_command_is_ignored() -> None:
    s = Session()
    s.place("a", "sell", 100, 1)
    before = state_hash(s.engine.state)
    assert s.engine.handle(s.seq, 0, "jb.cmd.ETH-USDC.a", b"anything") == []
    assert state_hash(s.engine.state) == before


def test_checkpoints_state_the_hash_every_n_events_and_a_forged_one_is_caught() -> None:
    live = Session(market=None)
    live.engine.checkpoint_every = 4
    log = live.create("ETH-USDC") + [e for i in range(6) for e in live.place(f"a{i}", "buy", 100 + i, 1)]
    checkpoints = [(i + 1, e) for i, e in enumerate(log) if isinstance(e, Checkpoint)]
    assert [e.covers_seq for _, e in checkpoints] == [4, 8]  # each after the event that crossed a multiple of 4
    assert [seq for seq, _ in checkpoints] == [5, 9]
    replayed = Engine()
    for e in log:
        replayed.apply(decode(encode(e)), verify=True)
    assert state_hash(replayed.state) == state_hash(live.engine.state)

    forged = replace(checkpoints[-1][1], state_hash="0" * 64)
    follower = Engine()
    with pytest.raises(Diverged):
        for e in [*log[: checkpoints[-1][0] - 1], forged]:
            follower.apply(e, verify=True)


def test_snapshot_restores_an_equal_state() -> None:
    s = Session()
    _script(s)
    restored = restore(snapshot(s.engine.state))
    assert snapshot(restored) == snapshot(s.engine.state)
    assert restored.markets["ETH-USDC"].books[None].depth("buy", 10) == s.book()[0]
