"""The core against a naive reference matcher, on random command sequences (exchange-core's differential test).

The reference keeps every resting order in one flat list and sorts it for each
incoming order: slow and obviously right. It produces the events it expects,
and the core must produce exactly those, in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core import state_hash
from events.model import Event, Fill, OrderAccepted, OrderCancelled, Rejected
from tests.unit.helpers import M, Session


@dataclass
class RefOrder:
    oid: int
    account: str
    coid: str
    side: str
    price: int
    qty: int
    arrival: int


class Reference:
    def __init__(self) -> None:
        self.resting: list[RefOrder] = []
        self.next_oid = 1
        self.next_trade = 1
        self.used: set[tuple[str, str]] = set()

    def place(self, seq: int, account: str, coid: str, side: str, price: int, qty: int) -> list[tuple[Any, ...]]:
        if (account, coid) in self.used:
            return [("rejected", "duplicate_client_order_id")]
        self.used.add((account, coid))
        oid, self.next_oid = self.next_oid, self.next_oid + 1
        crosses = (lambda o: o.price <= price) if side == "buy" else (lambda o: o.price >= price)
        best = (lambda o: (o.price, o.arrival)) if side == "buy" else (lambda o: (-o.price, o.arrival))
        makers = sorted((o for o in self.resting if o.side != side and crosses(o)), key=best)
        left = qty
        fills: list[tuple[Any, ...]] = []
        for m in makers:
            if left == 0:
                break
            take = min(left, m.qty)
            m.qty -= take
            left -= take
            fills.append(("fill", self.next_trade, m.price, take, m.oid, oid, m.account, account, m.qty, left))
            self.next_trade += 1
        self.resting = [o for o in self.resting if o.qty > 0]
        if left:
            self.resting.append(RefOrder(oid, account, coid, side, price, left, seq))
        return [("accepted", oid, left), *fills]

    def cancel(self, account: str, oid: int) -> list[tuple[Any, ...]]:
        for o in self.resting:
            if o.oid == oid:
                if o.account != account:
                    return [("rejected", "not_order_owner")]
                self.resting.remove(o)
                return [("cancelled", oid, o.qty)]
        return [("rejected", "order_not_open" if oid < self.next_oid else "unknown_order")]

    def depth(self, side: str) -> list[tuple[int, int]]:
        levels: dict[int, int] = {}
        for o in self.resting:
            if o.side == side:
                levels[o.price] = levels.get(o.price, 0) + o.qty
        return sorted(levels.items(), reverse=(side == "buy"))


def summarize(events: list[Event]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for e in events:
        if isinstance(e, OrderAccepted):
            out.append(("accepted", e.order_id, e.resting_qty))
        elif isinstance(e, Fill):
            out.append(("fill", e.trade_id, e.price, e.qty, e.maker_order_id, e.taker_order_id,
                        e.maker_account, e.taker_account, e.maker_remaining, e.taker_remaining))  # fmt: skip
        elif isinstance(e, OrderCancelled):
            out.append(("cancelled", e.order_id, e.cancelled_qty))
        elif isinstance(e, Rejected):
            out.append(("rejected", e.reason))
    return out


accounts = st.sampled_from(["a", "b", "c"])
place_cmd = st.tuples(st.just("place"), accounts, st.sampled_from(["buy", "sell"]),
                      st.integers(95, 105), st.integers(1, 12), st.integers(0, 40))  # fmt: skip
cancel_cmd = st.tuples(st.just("cancel"), accounts, st.integers(1, 60))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(place_cmd, place_cmd, place_cmd, cancel_cmd), min_size=1, max_size=80))
def test_core_matches_the_reference_event_for_event(commands: list[tuple[Any, ...]]) -> None:
    core = Session()
    ref = Reference()
    for cmd in commands:
        if cmd[0] == "place":
            _, account, side, price, qty, coid_n = cmd
            got = core.place(account, side, price, qty, coid=f"k{coid_n}")
            want = ref.place(core.seq, account, f"k{coid_n}", side, price, qty)
        else:
            _, account, oid = cmd
            got = core.cancel(account, order_id=oid)
            want = ref.cancel(account, oid)
        assert summarize(got) == want
        bids, asks = core.book()
        assert (bids, asks) == (ref.depth("buy"), ref.depth("sell"))
        if bids and asks:
            assert bids[0][0] < asks[0][0], "book crossed"
    assert state_hash(core.engine.state)  # the hash is computable on any reachable state


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(place_cmd, cancel_cmd), min_size=1, max_size=60))
def test_open_plus_filled_plus_cancelled_is_the_original_qty(commands: list[tuple[Any, ...]]) -> None:
    core = Session()
    original: dict[int, int] = {}
    done: dict[int, int] = {}
    for cmd in commands:
        if cmd[0] == "place":
            _, account, side, price, qty, coid_n = cmd
            events = core.place(account, side, price, qty, coid=f"k{coid_n}")
        else:
            events = core.cancel(cmd[1], order_id=cmd[2])
        for e in events:
            if isinstance(e, OrderAccepted):
                original[e.order_id] = e.qty
            elif isinstance(e, Fill):
                done[e.maker_order_id] = done.get(e.maker_order_id, 0) + e.qty
                done[e.taker_order_id] = done.get(e.taker_order_id, 0) + e.qty
            elif isinstance(e, OrderCancelled):
                done[e.order_id] = done.get(e.order_id, 0) + e.cancelled_qty
    book = core.engine.state.markets[M].book
    for oid, qty in original.items():
        open_qty = book.orders[oid].qty if oid in book.orders else 0
        assert open_qty + done.get(oid, 0) == qty
