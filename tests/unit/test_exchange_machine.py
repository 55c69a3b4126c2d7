"""The core against the naive reference exchange, driven by a hypothesis state machine.

Every step sends one command (as msgpack, on its wire subject) to the core and
the same decoded map to `ReferenceExchange`, and after every step the checks
the issue names run against the core: the events equal the reference's (field
for field, key order included, reject `detail` aside), no book is crossed,
filled + open + cancelled is each order's quantity, fills are at the maker's
price, best price first and FIFO within a level, no fill is a self-trade, the
risk counters are the sums over the open orders, and folding the events into a
fresh engine gives the live state's hash.

The machine sends mostly well-formed commands; the bad-field tests at the end
hold the parse-level rejects to the same reference, every single fault of every
command, and mixes of faults for place_order, whose check order the spec fixes.
"""

from __future__ import annotations

import difflib
import pprint
from fractions import Fraction
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from engine.core import Engine, state_hash
from events.model import to_wire
from tests.unit.reference_exchange import BID_LIKE, ReferenceExchange, comparable, exposure, ladder

ACCOUNTS = ["a", "b", "c", "d"]
RUNNER_POOL = ["H", "D", "A", "X", "Y", "F", "Z"]

MARKETS: dict[str, dict[str, Any]] = {
    "P1": {"base": "B", "quote": "Q"},
    "P2": {
        "base": "B", "quote": "Q", "tick_size": 5, "lot_size": 2, "min_qty": 2, "max_qty": 40,
        "min_price": 900, "max_price": 1100, "band_bps": 150,
    },
    "O1": {
        "kind": "odds", "quote": "GBP",
        "runners": [{"runner_id": "H", "label": "Home"}, {"runner_id": "D", "label": "Draw"},
                    {"runner_id": "A", "label": "Away"}],
    },
    "O2": {
        "kind": "odds", "quote": "GBP", "max_qty": 30, "band_bps": 300, "min_price": 110, "max_price": 1000,
        "runners": [{"runner_id": "X", "label": "Yes"}, {"runner_id": "Y", "label": "No"}],
    },
    "T1": {
        "kind": "odds", "quote": "GBP", "book_type": "two_runner", "max_qty": 40,
        "runners": [{"runner_id": "H", "label": "P1"}, {"runner_id": "A", "label": "P2"}],
    },
}  # fmt: skip
MARKET_IDS = [*MARKETS, "NOPE"]
ODDS_PRICES = [p for p in ladder() if 195 <= p <= 206]
# Two-runner prices: around evens, where backs on both runners cross through the implied price, and a few
# pairs either side whose implied odds fall on the ladder (150 <-> 300, 125 <-> 500) or just off it (250 / 167).
TWO_RUNNER_PRICES = [*ODDS_PRICES, 125, 150, 166, 167, 168, 250, 300, 500]
PAIR_PRICES = {"P1": list(range(98, 103)), "P2": list(range(985, 1016, 5))}


def weighted(*pairs: tuple[Any, int]) -> st.SearchStrategy[Any]:
    return st.sampled_from([value for value, weight in pairs for _ in range(weight)])


STEPS = weighted(
    ("place", 50), ("amend", 12), ("cancel", 8), ("cancel_all", 4), ("lifecycle", 5), ("reopen", 8),
    ("set_risk_limits", 4), ("add_runner", 2), ("create_market", 3), ("batch", 8),
)  # fmt: skip
PLACE_SHAPE = st.fixed_dictionaries(
    {
        "account": st.sampled_from(ACCOUNTS),
        "side": st.integers(0, 40).map(lambda i: i % 2 if i < 40 else 2),  # 2: the other kind's side
        "reuse_coid": st.integers(0, 19).map(lambda i: i == 0),  # a client_order_id this account used
        "pick": st.integers(0, 1000),
        "runner": st.integers(0, 29).map(bool),  # odds: give a runner; pair: give none
        "qty": st.integers(1, 8),
        "even": st.integers(0, 9).map(bool),
        "market": st.integers(0, 6).map(lambda i: i == 0),
        "protect": st.booleans(),
        "market_tif": weighted((None, 4), ("ioc", 2), ("fok", 2)),
        "say_limit": st.integers(0, 9).map(lambda i: i == 0),
        "tif": weighted((None, 6), ("gtc", 2), ("ioc", 3), ("fok", 2), ("post_only", 3)),
        "stp": weighted((None, 6), ("cancel_resting", 1), ("cancel_newest", 2), ("cancel_both", 2)),
        "persistence": weighted((None, 3), ("lapse", 1), ("persist", 2)),
        "mutate": st.integers(0, 119),
    }
)


class ExchangeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = Engine()
        self.shadow = Engine()  # folds the core's events only
        self.ref = ReferenceExchange()
        self.seq = 0
        self.coid_n = 0
        self.coids: dict[tuple[str, str], list[str]] = {}
        # (market, order_id) -> [original qty (+ amended up), filled, cancelled (+ amended down)]
        self.tally: dict[tuple[str, int], list[int]] = {}

    # --- plumbing -----------------------------------------------------------------------------

    def send(self, subject: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        self.seq += 1
        ts = 1_000_000 + self.seq
        data = msgpack.packb(body, use_bin_type=True)
        before = {
            (m.market_id, o.order_id): (o.price, o.arrival, o.side)
            for m in self.ref.markets.values()
            for o in m.open_orders
        }
        events = self.core.handle(self.seq, ts, subject, data)
        got = [to_wire(e) for e in events]
        want = self.ref.handle(self.seq, ts, subject, msgpack.unpackb(data, raw=False))
        g, w = [comparable(e) for e in got], [comparable(e) for e in want]
        if g != w:
            ref_lines = pprint.pformat(w, width=150).splitlines()
            core_lines = pprint.pformat(g, width=150).splitlines()
            diff = "\n".join(difflib.unified_diff(ref_lines, core_lines, "reference", "core", lineterm=""))
            raise AssertionError(f"core and reference disagree on {subject} {body}\n{diff}")
        for e in events:
            self.shadow.apply(e)
        assert state_hash(self.shadow.state) == state_hash(self.core.state), "fold of the events != live state"
        self.check_fills(got, before)
        self.tally_events(got)
        self.check_books()
        return got

    def market_for(self, data: st.DataObject) -> str:
        existing = sorted(self.ref.markets)
        if existing and data.draw(st.integers(0, 19)) > 0:
            return str(data.draw(st.sampled_from(existing)))
        return str(data.draw(st.sampled_from(MARKET_IDS)))

    def kind_of(self, market: str) -> str:
        return str(MARKETS.get(market, {}).get("kind", "pair"))

    def price_for(self, data: st.DataObject, market: str) -> int:
        if self.kind_of(market) == "odds":
            if data.draw(st.integers(0, 19)) == 0:
                return int(data.draw(st.integers(190, 212)))  # sometimes off the ladder
            return int(data.draw(st.sampled_from(TWO_RUNNER_PRICES if market == "T1" else ODDS_PRICES)))
        prices = PAIR_PRICES.get(market, PAIR_PRICES["P1"])
        if market == "P2" and data.draw(st.integers(0, 9)) == 0:
            return int(data.draw(st.integers(960, 1040)))  # sometimes off the tick or the band
        return int(data.draw(st.sampled_from(prices)))

    def order_price(self, data: st.DataObject, market: str, side: str, runner: str | None) -> int:
        """A price; half the time one where the other side rests, so orders meet and queue at a level."""
        m = self.ref.markets.get(market)
        if m is not None and data.draw(st.booleans()):
            levels = sorted({o.price for o in m.book(runner) if o.side != side and o.price is not None})
            if levels:
                return int(data.draw(st.sampled_from(levels)))
        return self.price_for(data, market)

    def runner_for(self, data: st.DataObject, market: str) -> str:
        m = self.ref.markets.get(market)
        if m is not None and m.runners and data.draw(st.integers(0, 19)) > 0:
            ids = m.runner_ids()
            return str(data.draw(st.sampled_from(ids[:2] * 3 + ids)))  # busy books: mostly the first two
        return str(data.draw(st.sampled_from(RUNNER_POOL)))

    def pick_order(self, data: st.DataObject, market: str) -> tuple[int, str, str] | None:
        """(order_id, owner, client_order_id) of an order of the market, open ones more often."""
        m = self.ref.markets.get(market)
        if m is None or not m.every_order:
            return None
        pool = m.open_orders if m.open_orders and data.draw(st.integers(0, 4)) > 0 else list(m.every_order.values())
        o = data.draw(st.sampled_from(sorted(pool, key=lambda o: o.order_id)))
        return o.order_id, o.account, o.coid

    # --- checks -------------------------------------------------------------------------------

    def check_fills(self, events: list[dict[str, Any]], before: dict[tuple[str, int], tuple[Any, int, str]]) -> None:
        last_arrival: dict[tuple[str, Any, int], int] = {}
        last_price: Fraction | None = None
        # A batch's later instruction may take an order an earlier one placed or amended: that one's as it is now.
        touched = {(e["market_id"], e["order_id"]) for e in events if e["type"] in ("order_accepted", "order_amended")}
        taker = None
        for e in events:
            if e["type"] != "fill":
                continue
            if e["taker_order_id"] != taker:  # each instruction of a batch walks the book afresh
                taker, last_price, last_arrival = e["taker_order_id"], None, {}
            assert e["maker_account"] != e["taker_account"], f"self-trade {e}"
            key = (e["market_id"], e["maker_order_id"])
            if key in touched or key not in before:
                o = self.ref.markets[e["market_id"]].every_order[e["maker_order_id"]]
                before[key] = (o.price, o.arrival, o.side)
            price, arrival, maker_side = before[key]
            assert e["price"] == price, f"fill away from the maker's price {e}"
            if e.get("implied"):
                assert maker_side == e["taker_side"] and e["maker_runner"] != e["runner"], e
                # The bet stands at the maker's odds or better for the maker, and both stakes are covered.
                w = price - 100
                if maker_side == "back":
                    assert e["taker_stake"] * 100 >= e["maker_stake"] * w, e
                else:
                    assert e["taker_stake"] * 100 <= e["maker_stake"] * w, e
                assert e["taker_stake"] <= 100 * e["qty"] and e["maker_stake"] <= 100 * e["maker_qty"], e
                eff = Fraction(100 * price, w)
            else:
                assert maker_side != e["taker_side"]
                eff = Fraction(price)
            if last_price is not None:  # best (effective) price first
                assert eff >= last_price if e["taker_side"] in BID_LIKE else eff <= last_price, e
            last_price = eff
            level = (e["market_id"], e.get("maker_runner", e["runner"]), price)
            assert arrival > last_arrival.get(level, 0), f"not FIFO within the level {e}"
            last_arrival[level] = arrival

    def tally_events(self, events: list[dict[str, Any]]) -> None:
        t = self.tally
        for e in events:
            m = e["market_id"]
            if e["type"] == "order_accepted":
                t[(m, e["order_id"])] = [e["qty"], 0, 0]
            elif e["type"] == "orders_accepted":
                for row in e["orders"]:
                    t[(m, row[0])] = [row[4], 0, 0]
            elif e["type"] == "fill":
                t[(m, e["maker_order_id"])][1] += e.get("maker_qty", e["qty"])
                t[(m, e["taker_order_id"])][1] += e["qty"]
            elif e["type"] == "order_cancelled":
                t[(m, e["order_id"])][2] += e["cancelled_qty"]
            elif e["type"] == "orders_cancelled":
                for entry in e["orders"]:
                    t[(m, entry[0])][2] += entry[5]
            elif e["type"] == "market_settled":
                assert sum(pnl for _, pnl in e["pnl"]) == 0 or len(e["pnl"]) >= 500, f"P&L does not sum to 0: {e}"
            elif e["type"] == "order_amended":
                delta = e["qty"] - e["old_qty"]
                if delta > 0:
                    t[(m, e["order_id"])][0] += delta
                else:
                    t[(m, e["order_id"])][2] -= delta

    def check_books(self) -> None:
        for market_id, m in self.core.state.markets.items():
            ref = self.ref.markets[market_id]
            bid, ask = ("buy", "sell") if m.kind == "pair" else ("lay", "back")
            open_qty: dict[int, int] = {}
            risk: dict[str, list[int]] = {}
            for runner, book in m.books.items():
                bids, asks = book.depth(bid, 1), book.depth(ask, 1)
                # the kept first keys (engine/fast.py and Book.best / crosses / match read them) are the sides' own
                assert book.bid_top == next(iter(book.bids), None) and book.ask_top == next(iter(book.asks), None)
                if bids and asks:
                    assert bids[0][0] < asks[0][0], f"crossed book {market_id}/{runner}: {bids} {asks}"
                for oid, o in book.orders.items():
                    assert oid == o.order_id and o.runner == runner and o.qty > 0
                    open_qty[oid] = o.qty
                    r = risk.setdefault(o.account_id, [0, 0])
                    r[0] += 1
                    r[1] += exposure(m.kind, o.side, o.price, o.qty)
            if m.book_type == "two_runner":  # no two resting orders cross through the implied price either
                a, b = (m.books[r] for r in m.runners)
                for side in ("back", "lay"):
                    pa, pb = a.best(side), b.best(side)
                    if pa is not None and pb is not None:
                        product = (pa - 100) * (pb - 100)
                        assert product > 10_000 if side == "back" else product < 10_000, (
                            f"{market_id}: {side}s at {pa} and {pb} cross through the implied price"
                        )
            core_open = {
                o.order_id: (o.account_id, o.client_order_id, o.side, o.price, o.qty, o.runner)
                for b in m.books.values()
                for o in b.orders.values()
            }
            ref_open = {o.order_id: (o.account, o.coid, o.side, o.price, o.qty, o.runner) for o in ref.open_orders}
            assert core_open == ref_open, f"open orders of {market_id} differ"
            for account in set(risk) | set(m.risk):
                want = risk.get(account, [0, 0])
                have = m.risk.get(account)
                got = [have.open_orders, have.open_exposure] if have is not None else [0, 0]
                assert got == want, f"risk of {account} in {market_id}: {got} != sums over open orders {want}"
            for (mk, oid), (original, filled, cancelled) in self.tally.items():
                if mk == market_id:
                    assert filled + open_qty.get(oid, 0) + cancelled == original, (
                        f"order {oid} of {mk}: filled {filled} + open {open_qty.get(oid, 0)} + cancelled "
                        f"{cancelled} != {original}"
                    )

    # --- rules --------------------------------------------------------------------------------

    @initialize(which=st.sets(st.sampled_from(sorted(MARKETS)), min_size=1, max_size=2))
    def start(self, which: set[str]) -> None:
        for market in sorted(which):
            self.send(f"jb.ctl.{market}", {"type": "create_market", "market_id": market, **MARKETS[market]})

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        """One command, drawn from a fixed mix: orders are most of the traffic, control commands are rare so
        markets live a while (one rule rather than one per command, so that hypothesis's swarm testing cannot
        switch the orders off for a whole example)."""
        getattr(self, data.draw(STEPS))(data)

    def create_market(self, data: st.DataObject) -> None:
        market = data.draw(st.sampled_from(sorted(MARKETS)))
        broken = data.draw(st.integers(0, 9))
        body: dict[str, Any] = {"type": "create_market", "market_id": market, **MARKETS[market]}
        # Bad fields only on new markets: whether a field error or market_exists wins is left open by the spec.
        if market in self.ref.markets:
            pass
        elif broken == 0:
            body["tick_size"] = 2  # invalid for odds; for pairs the min_price is off the tick
            body["min_price"] = 101 if self.kind_of(market) == "odds" else 1001
        elif broken == 1:
            body["min_qty"] = 50  # above max_qty for P2/O2
        self.send(f"jb.ctl.{market}", body)

    def add_runner(self, data: st.DataObject) -> None:
        market = self.market_for(data)
        runner = data.draw(st.sampled_from(RUNNER_POOL))
        self.send(f"jb.ctl.{market}", {"type": "add_runner", "runner_id": runner, "label": f"L{runner}"})

    def place(self, data: st.DataObject) -> None:
        market = self.market_for(data)
        account, body = self.place_body(data, market)
        events = self.send(f"jb.cmd.{market}.{account}", body)
        if events[0]["type"] == "order_accepted":
            self.coids.setdefault((market, account), []).append(body["client_order_id"])

    def place_body(self, data: st.DataObject, market: str, account: str | None = None) -> tuple[str, dict[str, Any]]:
        """A place_order of a drawn shape (now and then with one thing wrong), and the account that sends it."""
        shape = data.draw(PLACE_SHAPE)  # one draw for the order's shape: far cheaper than a draw per field
        account = account or shape["account"]
        odds = self.kind_of(market) == "odds"
        side = (
            (["back", "lay"] if odds else ["buy", "sell"])[shape["side"]]
            if shape["side"] < 2
            else "buy"
            if odds
            else "back"
        )
        prev = self.coids.get((market, account), [])
        if prev and shape["reuse_coid"]:
            coid = prev[shape["pick"] % len(prev)]
        else:
            self.coid_n += 1
            coid = f"k{self.coid_n}"
        runner: str | None = None
        if odds and shape["runner"]:
            runner = self.runner_for(data, market)
        elif not odds and not shape["runner"]:
            runner = "H"
        body: dict[str, Any] = {"type": "place_order", "client_order_id": coid, "side": side}
        body["qty"] = shape["qty"] * (2 if market == "P2" and shape["even"] else 1)
        if shape["market"]:
            body["order_type"] = "market"
            if shape["protect"]:
                body["protection_price"] = self.order_price(data, market, side, runner)
            tif = shape["market_tif"]
        else:
            if shape["say_limit"]:
                body["order_type"] = "limit"
            body["price"] = self.order_price(data, market, side, runner)
            tif = shape["tif"]
        for name, value in (("tif", tif), ("stp", shape["stp"]), ("persistence", shape["persistence"])):
            if value is not None:
                body[name] = value
        if runner is not None:
            body["runner"] = runner
        self.mutate(shape["mutate"], body)
        return account, body

    def batch(self, data: st.DataObject) -> None:
        """place_orders, cancel_orders or replace_orders of a few instructions, held to the reference's reading:
        the instructions one by one (all_or_none aside), in one command."""
        market = self.market_for(data)
        account = data.draw(st.sampled_from(ACCOUNTS))
        kind = data.draw(st.sampled_from(["place_orders", "place_orders", "cancel_orders", "replace_orders"]))
        n = data.draw(st.integers(1, 5))
        instructions: list[Any] = []
        for _ in range(n):
            if kind == "place_orders":
                instructions.append(self.place_body(data, market, account)[1])
            else:
                instructions.append(self.reference(data, market, account, kind == "replace_orders"))
            del instructions[-1]["type"]
        if data.draw(st.integers(0, 19)) == 0:
            instructions[data.draw(st.integers(0, n - 1))] = data.draw(st.sampled_from([5, [], {"type": "x"}]))
        body: dict[str, Any] = {"type": kind, "instructions": instructions}
        if kind == "place_orders" and data.draw(st.integers(0, 2)) == 0:
            body["all_or_none"] = True
        if kind != "replace_orders" and data.draw(st.booleans()):
            body["compact"] = True  # v1.3: runs reported as orders_accepted / orders_cancelled
        events = self.send(f"jb.cmd.{market}.{account}", body)
        for e in events:
            if e["type"] == "order_accepted":
                self.coids.setdefault((market, account), []).append(e["client_order_id"])
            elif e["type"] == "orders_accepted":
                self.coids.setdefault((market, account), []).extend(row[1] for row in e["orders"])

    @staticmethod
    def mutate(what: int, body: dict[str, Any]) -> None:
        """Now and then one thing wrong, so the parse-level rejects are exercised too."""
        if what == 0:
            body["qty"] = 0
        elif what == 1:
            body["price"] = 0
        elif what == 2:
            body.pop("price", None)
        elif what == 3:
            body["tif"] = "day"
        elif what == 4:
            body["stp"] = "cancel_everything"
        elif what == 5:
            body["persistence"] = "forever"
        elif what == 6:
            body["leverage"] = 10
        elif what == 7:
            body["protection_price"] = 100
        elif what == 8:
            body["order_type"] = "market"
            body["tif"] = "gtc"
        elif what == 9:
            body["market_id"] = "ELSEWHERE"

    def reference(self, data: st.DataObject, market: str, account: str, amend: bool) -> dict[str, Any]:
        """A cancel_order or amend_order body for a batch of `account`'s (mostly its own orders)."""
        m = self.ref.markets.get(market)
        own = sorted((o for o in m.open_orders if o.account == account), key=lambda o: o.order_id) if m else []
        if own and data.draw(st.integers(0, 4)):
            o = data.draw(st.sampled_from(own))
            oid, coid = o.order_id, o.coid
        else:
            picked = self.pick_order(data, market)
            oid, _, coid = picked if picked is not None else (1, "a", "k0")
        body: dict[str, Any] = {"type": "amend_order" if amend else "cancel_order"}
        how = data.draw(st.integers(0, 9))
        if how < 6:
            body["order_id"] = oid if data.draw(st.integers(0, 19)) else oid + 100
        if how >= 4:
            body["client_order_id"] = coid if data.draw(st.integers(0, 9)) else "k0"
        if amend:
            if data.draw(st.integers(0, 2)):
                body["qty"] = data.draw(st.integers(1, 10))
            if data.draw(st.integers(0, 2)) or "qty" not in body:
                body["price"] = self.price_for(data, market)
        return body

    def amend(self, data: st.DataObject) -> None:
        market = self.market_for(data)
        picked = self.pick_order(data, market)
        oid, owner, coid = picked if picked is not None else (1, "a", "k0")
        account = owner if data.draw(st.integers(0, 9)) else data.draw(st.sampled_from(ACCOUNTS))
        body: dict[str, Any] = {"type": "amend_order"}
        how = data.draw(st.integers(0, 9))
        if how < 6:
            body["order_id"] = oid if data.draw(st.integers(0, 19)) else oid + 100
        if how >= 4:
            body["client_order_id"] = coid if data.draw(st.integers(0, 9)) else "k0"
        if data.draw(st.integers(0, 2)):
            body["qty"] = data.draw(st.integers(1, 10))
        if data.draw(st.integers(0, 2)):
            body["price"] = self.price_for(data, market)
        if data.draw(st.integers(0, 3)) == 0 and market in self.ref.markets:
            m = self.ref.markets[market]
            o = m.every_order.get(oid)
            if o is not None and o.price is not None:  # amend to the same price (and maybe qty): no_change
                body["price"] = o.price
        self.send(f"jb.cmd.{market}.{account}", body)

    def cancel(self, data: st.DataObject) -> None:
        market = self.market_for(data)
        picked = self.pick_order(data, market)
        oid, owner, coid = picked if picked is not None else (1, "a", "k0")
        account = owner if data.draw(st.integers(0, 9)) else data.draw(st.sampled_from(ACCOUNTS))
        body: dict[str, Any] = {"type": "cancel_order"}
        how = data.draw(st.integers(0, 9))
        if how < 6:
            body["order_id"] = oid if data.draw(st.integers(0, 19)) else oid + 100
        if how >= 4:
            body["client_order_id"] = coid if data.draw(st.integers(0, 9)) else "k0"
        self.send(f"jb.cmd.{market}.{account}", body)

    def cancel_all(self, data: st.DataObject) -> None:
        market = "_all" if data.draw(st.integers(0, 3)) == 0 else self.market_for(data)
        account = data.draw(st.sampled_from(ACCOUNTS))
        body: dict[str, Any] = {"type": "cancel_all"}
        if data.draw(st.integers(0, 2)) == 0:
            body["side"] = data.draw(st.sampled_from(["buy", "sell", "back", "lay"]))
        if data.draw(st.integers(0, 2)) == 0:
            body["runner"] = self.runner_for(data, market)
        self.send(f"jb.cmd.{market}.{account}", body)

    def lifecycle(self, data: st.DataObject) -> None:
        """One rule for every control command, so orders stay most of the traffic and markets live a while."""
        market = self.market_for(data)
        ctype = data.draw(
            weighted(
                ("set_market_state", 8), ("await_live", 2), ("go_live", 3), ("close_market", 1),
                ("settle_market", 2), ("void_market", 1),
            )
        )  # fmt: skip
        m = self.ref.markets.get(market)
        if m is not None and m.state == "closed" and data.draw(st.integers(0, 2)):
            ctype = "settle_market"  # a closed market is there to be settled
        body: dict[str, Any] = {"type": ctype}
        if ctype == "set_market_state":
            body["state"] = data.draw(weighted(("open", 4), ("suspended", 2), ("halted", 1)))
        elif ctype == "settle_market":
            odds = self.kind_of(market) == "odds"
            how = data.draw(st.integers(0, 9))
            if odds:
                if how > 0:
                    body["winner"] = self.runner_for(data, market)
                if how == 1:
                    body["price"] = 100
            else:
                if how > 0:
                    body["price"] = data.draw(st.sampled_from([1, 90, 100, 110, 1000]))
                if how == 1:
                    body["winner"] = "H"
        self.send(f"jb.ctl.{market}", body)

    def reopen(self, data: st.DataObject) -> None:
        """Suspended and halted markets come back, so orders meet open books."""
        paused = [m for m, v in sorted(self.ref.markets.items()) if v.state in ("suspended", "halted")]
        if paused:
            self.send(f"jb.ctl.{data.draw(st.sampled_from(paused))}", {"type": "set_market_state", "state": "open"})

    def set_risk_limits(self, data: st.DataObject) -> None:
        market = self.market_for(data)
        body: dict[str, Any] = {"type": "set_risk_limits", "account_id": data.draw(st.sampled_from(ACCOUNTS))}
        if data.draw(st.booleans()):
            body["max_order_qty"] = data.draw(st.integers(0, 12))
        if data.draw(st.booleans()):
            body["max_open_orders"] = data.draw(st.integers(0, 8))
        if data.draw(st.booleans()):
            body["max_open_exposure"] = data.draw(st.integers(0, {"P1": 2000, "P2": 40000}.get(market, 3000)))
        self.send(f"jb.ctl.{market}", body)


ExchangeMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
TestExchangeMachine = ExchangeMachine.TestCase


# --- bad fields: the parse-level reasons, one fault (or, for place_order, several) at a time ------------

BAD_ID: list[Any] = [None, 5, "has space", "x" * 65, b"bin", ""]
BAD_INT: list[Any] = [None, 0, -1, 10**9 + 1, 1.0, True, "3"]
SETUP: list[tuple[str, dict[str, Any]]] = [
    ("jb.ctl.P1", {"type": "create_market", "market_id": "P1", **MARKETS["P1"]}),
    ("jb.ctl.O1", {"type": "create_market", "market_id": "O1", **MARKETS["O1"]}),
    ("jb.cmd.P1.a", {"type": "place_order", "client_order_id": "r1", "side": "buy", "price": 100, "qty": 5}),
    ("jb.cmd.P1.b", {"type": "place_order", "client_order_id": "r2", "side": "sell", "price": 105, "qty": 5}),
]
# command -> (subject, valid body, {field: [bad values]}); "MISSING" drops the field
GOOD: dict[str, tuple[str, dict[str, Any], dict[str, list[Any]]]] = {
    "place_order": (
        "jb.cmd.P1.a",
        {"type": "place_order", "client_order_id": "f1", "side": "buy", "qty": 3, "price": 101, "tif": "gtc"},
        {
            "client_order_id": ["MISSING", *BAD_ID],
            "side": ["MISSING", "long", "BUY", 1, None],
            "qty": ["MISSING", *BAD_INT],
            "order_type": ["stop", 1, None],
            "price": ["MISSING", *BAD_INT],
            "protection_price": [100],
            "tif": ["day", "GTC", None, 1],
            "stp": ["x", None],
            "persistence": ["x", None],
            "runner": BAD_ID[1:4],
            "market_id": ["bad id", "OTHER", 7],
            "account_id": ["zed", "bad id"],
            "foo": [1],
        },
    ),
    "market_order": (
        "jb.cmd.P1.a",
        {"type": "place_order", "client_order_id": "f1", "side": "sell", "qty": 3, "order_type": "market"},
        {"price": [100], "protection_price": BAD_INT, "tif": ["gtc", "post_only", None, "day"]},
    ),
    "amend_order": (
        "jb.cmd.P1.a",
        {"type": "amend_order", "order_id": 1, "client_order_id": "r1", "qty": 4, "price": 99},
        {
            "order_id": [0, -1, "1", True, 1.0, 99],
            "client_order_id": [5, "has space", "r2"],
            "qty": [0, -1, 10**9 + 1, "1", True, 1.5],
            "price": [0, 10**9 + 1, "1", True, 1.5],
            "market_id": ["bad id", "OTHER"],
            "account_id": ["zed", "bad id"],
            "foo": [1],
        },
    ),
    "cancel_order": (
        "jb.cmd.P1.a",
        {"type": "cancel_order", "order_id": 1, "client_order_id": "r1"},
        {
            "order_id": [0, -1, "1", True, 1.0, 99, 2],
            "client_order_id": [5, "has space", "r2", "zz"],
            "market_id": ["bad id", "OTHER"],
            "account_id": ["zed", "bad id"],
            "foo": [1],
        },
    ),
    "cancel_all": (
        "jb.cmd.P1.a",
        {"type": "cancel_all", "side": "buy", "runner": "H"},
        {"side": ["up", 5, "BUY"], "runner": [5, "has space"], "market_id": ["OTHER"], "foo": [1]},
    ),
    "place_orders": (
        "jb.cmd.P1.a",
        {"type": "place_orders", "all_or_none": False,
         "instructions": [{"client_order_id": "f1", "side": "buy", "qty": 3, "price": 101}]},
        {
            "instructions": ["MISSING", None, 5, [], {"a": 1}, [{"client_order_id": "f1"}] * 201,
                             [{"client_order_id": "f1", "side": "buy", "qty": 3, "price": 101, "type": "place_order"}],
                             [{"client_order_id": "f1", "side": "buy", "qty": 3, "price": 101}, 7]],
            "all_or_none": [1, "x", True],
            "compact": [1, "x", True, False, None, [True]],
            "market_id": ["bad id", "OTHER"],
            "account_id": ["zed"],
            "foo": [1],
        },
    ),
    "replace_orders": (
        "jb.cmd.P1.a",
        {"type": "replace_orders", "instructions": [{"order_id": 1, "qty": 4}, {"client_order_id": "r1", "price": 99}]},
        {
            "instructions": [[{"order_id": 1}], [{"qty": 4}], [{"order_id": 1, "qty": 0}], [{"order_id": 2, "qty": 1}]],
            "compact": [True],  # not a replace_orders field (PROTOCOL 6.14: every amend has its own events)
        },
    ),
    "cancel_orders": (
        "jb.cmd.P1.a",
        {"type": "cancel_orders", "instructions": [{"order_id": 1}]},
        {
            "instructions": [[{}], [{"order_id": 0}], [{"order_id": 1}, {"order_id": 1}], [{"client_order_id": "r2"}]],
            "compact": [1, "x", True, None],
        },
    ),
    "set_market_state": ("jb.ctl.P1", {"type": "set_market_state", "state": "halted"}, {"state": ["closed", 1]}),
    "settle_market": (
        "jb.ctl.O1",
        {"type": "settle_market", "winner": "H"},
        {"winner": [5, "has space", "Q"], "price": [100, 0, "1"]},
    ),
    "set_risk_limits": (
        "jb.ctl.P1",
        {"type": "set_risk_limits", "account_id": "a", "max_order_qty": 5, "max_open_orders": 2,
         "max_open_exposure": 1000},
        {
            "account_id": ["MISSING", *BAD_ID[1:]],
            "max_order_qty": [-1, 2**62 + 1, True, "1", 1.0],
            "max_open_orders": [-1, True],
            "max_open_exposure": [-1, 2**62 + 1],
            "foo": [1],
        },
    ),
    "add_runner": (
        "jb.ctl.O1",
        {"type": "add_runner", "runner_id": "F", "label": "Field"},
        {"runner_id": ["MISSING", *BAD_ID[1:], "H"], "label": ["MISSING", "", "x" * 65, 5], "foo": [1]},
    ),
    "create_market": (
        "jb.ctl.N",
        {"type": "create_market", "market_id": "N", "base": "B", "quote": "Q", "tick_size": 5, "lot_size": 2,
         "min_qty": 4, "max_qty": 100, "min_price": 100, "max_price": 1000, "band_bps": 50},
        {
            "market_id": ["MISSING", "OTHER", "bad id"],
            "kind": ["bingo", 1],
            "base": ["MISSING", "", "x" * 33, 5],
            "quote": ["MISSING", "", 5],
            "tick_size": [0, -5, True, "5", 3],
            "lot_size": [0, True],
            "min_qty": [0, 101],
            "max_qty": [0, 3, 10**9 + 1],
            "min_price": [0, 101, 2000],
            "max_price": [10**9 + 5, 99, 1003],
            "band_bps": [-1, 10001, True],
            "runners": [[], [{"runner_id": "H", "label": "x"}]],
            "colour": ["ignored"],
        },
    ),
}  # fmt: skip


def _agree(subject: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    core, ref = Engine(), ReferenceExchange()
    for seq, (subj, setup) in enumerate([*SETUP, (subject, body)], start=1):
        data = msgpack.packb(setup, use_bin_type=True)
        got = [comparable(to_wire(e)) for e in core.handle(seq, 1000 + seq, subj, data)]
        want = [comparable(e) for e in ref.handle(seq, 1000 + seq, subj, msgpack.unpackb(data, raw=False))]
        assert got == want, f"{subj} {setup}\ncore      {got}\nreference {want}"
    return [dict(e) for e in want]


def _with(good: dict[str, Any], faults: list[tuple[str, Any]]) -> dict[str, Any]:
    body = dict(good)
    for field, value in faults:
        if value == "MISSING":
            body.pop(field, None)
        else:
            body[field] = value
    return body


SINGLE_FAULTS = [
    (ctype, field, value)
    for ctype, (_, _, faults) in GOOD.items()
    for field, values in faults.items()
    for value in values
]


@pytest.mark.parametrize(
    ("ctype", "field", "value"), SINGLE_FAULTS, ids=[f"{c}-{f}-{i}" for i, (c, f, _) in enumerate(SINGLE_FAULTS)]
)
def test_one_bad_field_is_rejected_like_the_reference(ctype: str, field: str, value: Any) -> None:
    subject, good, _ = GOOD[ctype]
    _agree(subject, _with(good, [(field, value)]))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_several_bad_place_fields_are_rejected_like_the_reference(data: st.DataObject) -> None:
    """The spec fixes place_order's check order field by field, so any mix of faults has one right answer."""
    ctype = data.draw(st.sampled_from(["place_order", "market_order"]))
    subject, good, faults = GOOD[ctype]
    fields = data.draw(st.lists(st.sampled_from(sorted(faults)), min_size=2, max_size=4, unique=True))
    _agree(subject, _with(good, [(f, data.draw(st.sampled_from(faults[f]))) for f in fields]))


def test_the_valid_bodies_of_the_bad_field_test_are_accepted() -> None:
    for subject, good, _ in GOOD.values():
        events = _agree(subject, good)
        # settle_market's body is right, but the market is open: only the transition is refused
        assert events[0]["type"] != "rejected" or events[0]["reason"] == "illegal_transition", (subject, events)
