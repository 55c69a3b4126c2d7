"""The core of a market shard: it publishes under its shard's wal prefix and refuses other shards' markets."""

from __future__ import annotations

import msgpack
import pytest

from engine.core import Engine
from engine.exchange import APP, app_for, shard_app
from events.model import OrderAccepted, OrdersCancelled, Rejected
from framework.app import load_app
from jetbook.server import permissions, shard_rules
from protocol.shards import partition

SHARDS = 3


def _market_of(shard: int, shards: int = SHARDS) -> str:
    return next(m for m in (f"M{i}" for i in range(100)) if partition(m, shards) == shard)


def _create(engine: Engine, seq: int, market: str) -> list[object]:
    body = msgpack.packb({"type": "create_market", "market_id": market, "base": "B", "quote": "Q"})
    return list(engine.handle(seq, seq, f"jb.ctl.{market}", body))


def _place(engine: Engine, seq: int, market: str, account: str = "a") -> list[object]:
    body = msgpack.packb({"type": "place_order", "client_order_id": f"c{seq}", "side": "buy", "price": 1000, "qty": 1})
    return list(engine.handle(seq, seq, f"jb.cmd.{market}.{account}", body))


def test_a_shard_decides_its_markets_and_publishes_under_its_prefix() -> None:
    engine = Engine(shard=1, shards=SHARDS)
    mine = _market_of(1)
    assert [type(e) for e in _create(engine, 1, mine)] != [Rejected]
    (accepted,) = _place(engine, 2, mine)
    assert isinstance(accepted, OrderAccepted)
    assert [s for s, _ in engine.payloads] == [f"jbs.1.wal.{mine}.order_accepted"]


@pytest.mark.parametrize("command", ["create", "place"])
def test_a_market_of_another_shard_is_refused_with_wrong_shard(command: str) -> None:
    engine = Engine(shard=1, shards=SHARDS)
    theirs = _market_of(2)
    events = _create(engine, 1, theirs) if command == "create" else _place(engine, 1, theirs)
    (reject,) = events
    assert isinstance(reject, Rejected) and reject.reason == "wrong_shard" and reject.market_id == theirs
    assert reject.command_type == ("create_market" if command == "create" else "place_order")
    assert not engine.state.markets  # nothing applied
    assert engine.payloads[0][0] == f"jbs.1.wal.{theirs}.rejected"
    # Deterministic: a second core of the same shard refuses it with the same bytes.
    again = Engine(shard=1, shards=SHARDS)
    (_create if command == "create" else _place)(again, 1, theirs)
    assert again.payloads == engine.payloads


def test_every_shard_takes_a_cancel_all_over_every_market() -> None:
    for k in range(SHARDS):
        engine = Engine(shard=k, shards=SHARDS)
        _create(engine, 1, _market_of(k))
        _place(engine, 2, _market_of(k))
        events = engine.handle(3, 3, "jb.cmd._all.a", msgpack.packb({"type": "cancel_all"}))
        assert events and not any(isinstance(e, Rejected) for e in events)
        assert any(isinstance(e, OrdersCancelled) for e in events) or events[0].type == "order_cancelled"


def test_the_cache_of_own_markets_changes_no_decision() -> None:
    """A shard's own market, seen once, skips the hash; another shard's is refused every time."""
    engine = Engine(shard=0, shards=SHARDS)
    mine, theirs = _market_of(0), _market_of(1)
    _create(engine, 1, mine)
    for seq in range(2, 10, 2):
        (accepted,) = _place(engine, seq, mine)
        assert isinstance(accepted, OrderAccepted)
        (reject,) = _place(engine, seq + 1, theirs)
        assert isinstance(reject, Rejected) and reject.reason == "wrong_shard"
    assert engine._mine == {mine}


def test_one_shard_has_no_check_and_the_old_prefix() -> None:
    engine = Engine()
    for market in ("M0", "M1", "M2"):
        _create(engine, len(engine.state.markets) + 1, market)
    assert len(engine.state.markets) == 3 and engine.payloads[0][0].startswith("jb.wal.")


def test_a_shard_app_round_trips_through_its_ref() -> None:
    assert shard_app(0, 1) is APP and load_app("engine.exchange") is APP
    app = shard_app(2, SHARDS)
    assert load_app(app.ref) is app is app_for("2/3")
    s = app.streams
    assert (s.cmd, s.evt, s.wal_prefix, s.snapshot_bucket, s.lease_key) == (
        "JB_CMD_2", "JB_EVT_2", "jbs.2.wal", "JB_SNAP_2", "engine-2",
    )  # fmt: skip
    with pytest.raises(ValueError):
        shard_app(3, SHARDS)


def test_sharded_permissions_are_the_one_shard_ones_in_shard_form() -> None:
    assert shard_rules(["jb.wal.>", "x"], 1) == ["jb.wal.>", "x"]
    assert permissions("engine", 1) == permissions("engine")  # one shard: as before
    trader = permissions("alice", 2)["publish"]
    assert "jbs.*.cmd.*.alice" in trader["allow"] and not any(r.startswith("jb.cmd") for r in trader["allow"])
    for user in ("alice", "gateway", "operator", "projection", "query", "fanout"):
        rules = permissions(user, 2)["publish"]
        assert {"jb.wal.>", "jbs.*.wal.>"} <= set(rules["deny"])
        assert not any("wal" in r for r in rules["allow"])
    engine = permissions("engine", 2)["publish"]
    assert "jbs.*.wal.>" in engine["allow"] and "$O.JB_SNAP_1.>" in engine["allow"]
    assert "$JS.API.STREAM.PURGE.JB_EVT_1" in engine["deny"]
