"""Implied matching in two_runner odds markets (issue 13): the named cases, each on a fresh engine.

The hypothesis machine holds the core to the naive reference on random traffic; these pin the rules the
issue names one by one, with the numbers worked out by hand in docs/PROTOCOL.md section 11.1.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack

from engine.core import Engine
from events.model import Fill, encode, to_wire
from tests.unit.test_golden import golden_log


class Venue:
    def __init__(self, book_type: str = "two_runner") -> None:
        self.engine = Engine()
        self.seq = 0
        self.ctl({"type": "create_market", "market_id": "T", "kind": "odds", "quote": "GBP", "book_type": book_type,
                  "runners": [{"runner_id": "A", "label": "P1"}, {"runner_id": "B", "label": "P2"}]})  # fmt: skip

    def send(self, subject: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        self.seq += 1
        events = self.engine.handle(self.seq, self.seq, subject, msgpack.packb(body, use_bin_type=True))
        return [to_wire(e) for e in events]

    def ctl(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        return self.send("jb.ctl.T", body)

    def place(self, account: str, runner: str, side: str, price: int, qty: int, **more: Any) -> list[dict[str, Any]]:
        self.seq_coid = getattr(self, "seq_coid", 0) + 1
        body = {"type": "place_order", "client_order_id": f"c{self.seq_coid}", "runner": runner, "side": side,
                "price": price, "qty": qty, **more}  # fmt: skip
        return self.send(f"jb.cmd.T.{account}", body)


def fills(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "fill"]


def test_create_market_book_type_checks() -> None:
    v = Venue()
    three = [{"runner_id": r, "label": r} for r in "XYZ"]
    bad = v.send("jb.ctl.U", {"type": "create_market", "market_id": "U", "kind": "odds", "quote": "G",
                              "book_type": "two_runner", "runners": three})  # fmt: skip
    assert bad[0]["reason"] == "invalid_field"
    pair = v.send("jb.ctl.P", {"type": "create_market", "market_id": "P", "base": "B", "quote": "Q",
                               "book_type": "two_runner"})  # fmt: skip
    assert pair[0]["reason"] == "invalid_field"
    assert v.ctl({"type": "add_runner", "runner_id": "C", "label": "C"})[0]["reason"] == "runners_fixed"


def test_rounding_at_tick_boundaries() -> None:
    """Crossing is exact: 250 on B is 166.67 on A, so a back on A at 166 takes it and one at 168 does not.

    The 10-stake back at 166 stakes 1000 hundredths; the maker's stake is 10000 x 10 / 150 = 666.67,
    rounded down to 666 (a back maker risks less: odds 2.5015 >= 2.50) and its order gives up 7.
    """
    v = Venue()
    v.place("x", "B", "back", 250, 10)
    assert fills(v.place("y", "A", "back", 168, 10)) == []  # 166.67 < 1.68: no cross, and it rests
    v.send("jb.cmd.T.y", {"type": "cancel_all"})
    (f,) = fills(v.place("y", "A", "back", 166, 10))
    assert (f["implied"], f["maker_runner"], f["price"], f["qty"]) == (True, "B", 250, 10)
    assert (f["maker_stake"], f["taker_stake"], f["maker_qty"], f["maker_remaining"]) == (666, 1000, 7, 3)
    # the lay side: a lay on B at 300 is a back on A at exactly 150; a lay on A at 150 takes it, at 149 not
    v2 = Venue()
    v2.place("x", "B", "lay", 300, 4)
    assert fills(v2.place("y", "A", "lay", 149, 10)) == []
    v2.send("jb.cmd.T.y", {"type": "cancel_all"})
    (g,) = fills(v2.place("y", "A", "lay", 150, 10))
    # maker-limited: the maker's whole 4 (stake 400) against the taker's 4 x 200 = 800, exact at 3.00 / 1.50
    assert (g["maker_stake"], g["taker_stake"], g["maker_qty"], g["qty"], g["taker_remaining"]) == (400, 800, 4, 8, 2)


def test_equal_price_from_two_sources_older_wins() -> None:
    v = Venue()
    v.place("m1", "B", "back", 150, 5)  # implied lay on A at exactly 300, older
    v.place("m2", "A", "lay", 300, 5)  # direct lay on A at 300, newer
    got = fills(v.place("t", "A", "back", 300, 12))
    assert [(f["maker_account"], f.get("implied", False)) for f in got] == [("m1", True), ("m2", False)]
    v = Venue()
    v.place("m2", "A", "lay", 300, 5)  # now the direct one is older
    v.place("m1", "B", "back", 150, 5)
    got = fills(v.place("t", "A", "back", 300, 12))
    assert [f["maker_account"] for f in got] == ["m2", "m1"]


def test_a_sweep_alternates_between_direct_and_implied_levels() -> None:
    v = Venue()
    v.place("d1", "A", "lay", 300, 2)  # direct 300
    v.place("i1", "B", "back", 160, 2)  # implied 266.67
    v.place("d2", "A", "lay", 250, 2)  # direct 250
    v.place("i2", "B", "back", 170, 2)  # implied 242.86
    v.place("i3", "B", "back", 150, 2)  # implied 300: equal to d1, newer
    got = fills(v.place("t", "A", "back", 240, 100, tif="ioc"))
    assert [f["maker_account"] for f in got] == ["d1", "i3", "i1", "d2", "i2"]
    assert [f.get("implied", False) for f in got] == [False, True, True, False, True]


def test_stp_across_runners() -> None:
    """The same account's back on A and back on B are one bet against itself: a self-trade."""
    v = Venue()
    v.place("a", "B", "back", 150, 5)
    out = v.place("a", "A", "back", 300, 5)
    assert fills(out) == []
    cancel = next(e for e in out if e["type"] == "order_cancelled")
    assert (cancel["reason"], cancel["runner"], cancel["was_resting"]) == ("self_trade", "B", True)
    out = v.place("a", "B", "back", 150, 5, stp="cancel_newest")
    assert [e["type"] for e in out] == ["order_accepted", "order_cancelled"] and out[1]["runner"] == "B"


def test_lapse_at_go_live_and_void() -> None:
    v = Venue()
    v.place("x", "B", "back", 250, 10)
    v.place("y", "A", "back", 166, 4)  # implied fill
    v.place("z", "A", "lay", 300, 3, persistence="persist")
    out = v.ctl({"type": "go_live"})
    lapsed = [row[0] for e in out if e["type"] == "orders_cancelled" for row in e["orders"]]
    assert lapsed == [1]  # x's rest lapses; z's persists
    assert fills(v.place("w", "B", "lay", 150, 1)) != []  # z's lay on A at 300 meets a lay on B at 150
    market = v.engine.state.markets["T"]
    # w's 1 stake (100) meets z's stake of 10000 / 200 = 50 (a lay maker wins at least its odds: ceil): z gives 1
    assert market.risk["z"].open_orders == 1 and market.risk["z"].open_exposure == 2 * 200
    out = v.ctl({"type": "void_market"})
    assert out[-1]["state"] == "voided"
    assert not any(b.orders for b in market.books.values())
    assert all(r.open_orders == 0 and r.open_exposure == 0 for r in market.risk.values())


def test_pnl_sums_to_zero_whoever_wins() -> None:
    for winner in ("A", "B"):
        v = Venue()
        v.place("x", "B", "back", 250, 10)
        v.place("y", "A", "back", 166, 3)
        v.place("z", "B", "lay", 204, 7)
        v.place("u", "A", "lay", 198, 9)
        v.place("w", "A", "lay", 101, 5)
        v.ctl({"type": "close_market"})
        (settled,) = [e for e in v.ctl({"type": "settle_market", "winner": winner}) if e["type"] == "market_settled"]
        assert settled["pnl"] and sum(p for _, p in settled["pnl"]) == 0


def test_multi_runner_bytes_do_not_change() -> None:
    """A multi_runner market's events carry none of the new fields, and the golden log re-decides to its bytes."""
    v = Venue("multi_runner")
    body = {"type": "create_market", "market_id": "U", "kind": "odds", "quote": "G",
            "runners": [{"runner_id": "A", "label": "a"}]}  # fmt: skip
    assert "book_type" not in v.send("jb.ctl.U", body)[0]
    v.place("x", "A", "back", 200, 2)
    (f,) = fills(v.place("y", "A", "lay", 200, 2))
    assert "implied" not in f and "maker_runner" not in f
    # same log, two fresh engines (replay verify's check): the same bytes, and the encoders agree with encode
    log = golden_log(3000, seed=13)
    digests = []
    for _ in range(2):
        engine, h = Engine(checkpoint_every=500), hashlib.sha256()
        for seq, (subject, data) in enumerate(log, start=1):
            events = engine.handle(seq, 1000 + seq, subject, data)
            for e, (_, payload) in zip(events, engine.payloads, strict=True):
                assert payload == encode(e)
                h.update(payload)
        digests.append(h.hexdigest())
    assert digests[0] == digests[1]


def test_implied_fill_round_trips_the_codec() -> None:
    v = Venue()
    v.place("x", "B", "back", 250, 10)
    v.place("y", "A", "back", 166, 10)
    events = v.engine.handle(99, 99, "jb.cmd.T.z", msgpack.packb({"type": "place_order", "client_order_id": "q",
                             "runner": "A", "side": "back", "price": 101, "qty": 1}))  # fmt: skip
    fill = next(e for e in events if isinstance(e, Fill))
    from events.model import decode

    assert decode(encode(fill)) == fill and encode(fill) == v.engine.payloads[1][1]


async def test_the_read_model_folds_implied_fills(tmp_path: Any) -> None:
    """Book levels, positions and filled quantities of the read model agree with the engine's state."""
    import random
    import sqlite3

    from projections.read_model import ReadModel

    v = Venue()
    rng = random.Random(5)
    events: list[Any] = []
    for _ in range(300):
        body = {"type": "place_order", "client_order_id": f"r{v.seq}", "runner": rng.choice("AB"),
                "side": rng.choice(("back", "lay")), "price": rng.choice((150, 166, 198, 200, 204, 250, 300)),
                "qty": rng.randint(1, 9)}  # fmt: skip
        v.seq += 1
        events += v.engine.handle(v.seq, v.seq, f"jb.cmd.T.{rng.choice('wxyz')}", msgpack.packb(body))
    create = Engine().handle(1, 1, "jb.ctl.T", msgpack.packb({"type": "create_market", "market_id": "T",
        "kind": "odds", "quote": "GBP", "book_type": "two_runner",
        "runners": [{"runner_id": "A", "label": "P1"}, {"runner_id": "B", "label": "P2"}]}))  # fmt: skip
    assert any(isinstance(e, Fill) and e.implied for e in events)
    model = await ReadModel.open(tmp_path / "rm.db")
    await model.apply(list(enumerate([*create, *events], start=1)))
    await model.close()
    con = sqlite3.connect(tmp_path / "rm.db")
    market = v.engine.state.markets["T"]
    levels = sorted(con.execute("SELECT runner, side, price, qty, orders FROM book_levels WHERE qty != 0"))
    want = sorted(
        (r, side, p, q, n)
        for r, book in market.books.items()
        for side in ("back", "lay")
        for p, q, n in ((p, q, len(book.levels(side)[p if side == "back" else -p])) for p, q in book.depth(side, 99))
    )
    assert levels == want
    positions = {(a, r): [win, lose] for a, r, win, lose in con.execute(
        "SELECT account_id, runner, if_win, if_lose FROM positions")}  # fmt: skip
    assert positions == {(a, r): wl for a, pos in market.positions.items() for r, wl in pos.items()}
    # the trades keep the implied fields as exact integers, and the fills query gives them back
    from projections import queries

    wire = [to_wire(e) for e in events if isinstance(e, Fill)]
    got = queries.fills(con, "T")
    assert len(got) == len(wire)
    for row, f in zip(got, wire, strict=True):
        assert row["implied"] == f.get("implied", False) and row["maker_runner"] == f.get("maker_runner")
        if row["implied"]:
            assert (row["maker_qty"], row["maker_stake"], row["taker_stake"]) == (
                f["maker_qty"], f["maker_stake"], f["taker_stake"])  # fmt: skip
        else:
            assert row["maker_qty"] is row["maker_stake"] is row["taker_stake"] is None
    # the snapshot shows each runner's direct levels and, marked apart, the other's through the quoting rule
    from protocol.odds import IMPLIED_SIDE, implied_levels

    snap = queries.snapshot(con, "T", depth=-1)
    assert snap is not None and snap["market"]["book_type"] == "two_runner"
    for lad in snap["ladders"]:
        other = market.books["B" if lad["runner"] == "A" else "A"]
        for key, side in (("bids", "lay"), ("asks", "back")):
            implied = implied_levels(IMPLIED_SIDE[side], other.depth(IMPLIED_SIDE[side], 999))
            direct = dict(market.books[lad["runner"]].depth(side, 999))
            assert {lv["price"]: lv["implied_qty"] for lv in lad[key] if lv["implied_qty"]} == implied
            assert {lv["price"]: lv["qty"] for lv in lad[key] if lv["qty"]} == direct
            prices = [lv["price"] for lv in lad[key]]
            assert prices == sorted(prices, reverse=key == "bids")
    top = queries.snapshot(con, "T", depth=2)
    assert top is not None and all(len(lad[k]) <= 2 for lad in top["ladders"] for k in ("bids", "asks"))
    assert [lad["bids"] for lad in top["ladders"]] == [lad["bids"][:2] for lad in snap["ladders"]]


def test_implied_prices_on_the_ladder_at_tick_boundaries() -> None:
    """The quoting rule: the other runner's back shows as a lay here rounded UP a tick, its lay as a back DOWN."""
    from engine.decide import on_ladder
    from protocol import odds

    assert all(odds.on_ladder(p) == on_ladder(p) for p in range(90, 100_100))
    assert odds.implied_price("back", 200) == odds.implied_price("lay", 200) == 200  # evens is evens
    assert odds.implied_price("back", 300) == odds.implied_price("lay", 300) == 150  # exact and on the ladder
    assert odds.implied_price("back", 250) == 167  # 166.67: up for a back, down for a lay
    assert odds.implied_price("lay", 250) == 166
    assert odds.implied_price("back", 150) == 300  # 300 exactly, on a step boundary (2 below it, 5 above)
    assert odds.implied_price("back", 149) == 305  # 304.08: up to the 5-tick band
    assert odds.implied_price("lay", 149) == 300  # 304.08: down to the 5-tick band's 300
    assert odds.implied_price("back", 101) == 11_000  # 10100: up to the 1000-tick band
    assert odds.implied_price("lay", 101) == 10_000
    assert odds.implied_price("back", 100_000) == 101  # 100.1 rounds up to the ladder's first price
    assert odds.implied_price("lay", 100_000) is None  # 100.1 down is off the ladder: not shown
    assert odds.implied_qty(250, 10) == 15 and odds.implied_qty(150, 1) == 0 and odds.implied_qty(101, 99) == 0
    # two prices that round to one tick add up; a level covering no whole unit is left out
    assert odds.implied_levels("back", [(191, 10), (192, 10), (150, 1)]) == {210: 9 + 9}  # 209.89, 208.70


async def test_a_layout_3_read_model_is_refused_with_the_rebuild_message(tmp_path: Any) -> None:
    """Layout 4 adds the implied columns: a file of layout 3 would lose them, so it is refused, saying what to do."""
    import sqlite3

    import pytest

    from projections.read_model import SCHEMA_VERSION, ReadModel

    assert SCHEMA_VERSION == 4
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.executescript("CREATE TABLE orders (x INTEGER); PRAGMA user_version = 3;")
    con.close()
    with pytest.raises(ValueError, match=r"layout 3, this version writes 4: rebuild it \(jetbook replay rebuild"):
        await ReadModel.open(path)
