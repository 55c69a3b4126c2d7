"""The everyday place_order and cancel_order decided and folded in one pass: the general path's events and state.

Most of the venue's traffic is a limit or market order in a pair market with no
risk limits, or a cancel, and on that traffic the general path (parse into a
Parsed + PlaceOrder, decide into events, evolve them one by one through the
dispatch table) spent most of its time on calls and lookups that such an order
does not need. `place` and `cancel` are that path written out once for the
common shape: they read the state, build the same events the deciders build
(positionally: the byte-equality tests pin every field), encode them, and then
make on the state exactly the changes `engine.evolve.fold` makes for those
events, in the same order.

They decline (return None, having changed nothing) whenever an order is not
that shape or any check would fail: the caller then takes the general path,
which decides and names the reason. So each accepts a subset of what the
deciders accept, and for it gives the same events, the same bytes and the
same state; replay and the standby still fold the events with evolve.
tests/unit/test_fused.py checks all three against the general path on a
random workload, and the hypothesis exchange machine folds every event the
engine returns into a shadow state and compares hashes after each command.

Pure like the rest of the core: no I/O, no clock, no randomness, no floats.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import msgspec

from commands.model import MAX_OPEN_ORDERS, MAX_PRICE, _Cancel, _Place
from engine.book import Book, Order
from engine.decide import MAX_COMMAND_EVENTS, MAX_FILLS
from engine.state import Market, Risk, State
from events.model import Event, Fill, OrderAccepted, OrderCancelled, Rejected
from protocol.subjects import ID_PATTERN

# A command's events and their (jb.wal subject, bytes); the engine's encoder per event class.
Encoded = tuple[list[Event], list[tuple[str, bytes]]]
Encoders = dict[type[Event], Callable[[Event], bytes]]
_UNSET: Final = msgspec.UNSET
_MAX_AMOUNT: Final = 2**63 - 1
_NOT_OPEN: Final = "order is filled or cancelled"
_NONE: Final[dict[str, int]] = {}
_is_id: Final = ID_PATTERN.fullmatch  # protocol.subjects.is_id for a value msgspec has already typed str
_OPEN_STATES: Final = frozenset(("open", "suspended"))  # where a cancel is taken (not halted, not an end state)


class Route:
    """A command subject's market and account, with that market's event subjects and the engine's encoders:
    built once per (engine, subject), so the fused path takes one argument for all of them."""

    __slots__ = ("accepted", "account", "cancelled", "enc", "fill", "market_id", "rejected")

    def __init__(self, prefix: str, market_id: str, account: str, enc: Encoders) -> None:
        self.market_id = market_id
        self.account = account
        self.enc = enc
        self.accepted = f"{prefix}.{market_id}.{OrderAccepted.type}"
        self.fill = f"{prefix}.{market_id}.{Fill.type}"
        self.cancelled = f"{prefix}.{market_id}.{OrderCancelled.type}"
        self.rejected = f"{prefix}.{market_id}.{Rejected.type}"


def place(state: State, seq: int, ts: int, cmd: _Place, route: Route) -> Encoded | None:
    """A pair-market limit (gtc, ioc) or market (ioc) order, as `_decide_place` + `fold` would take it; else None.

    The order has no runner, the default stp (cancel_resting) and persistence
    (lapse): `_Place` has no fields for them. The account has no risk limits,
    and nothing is near a bound (MAX_OPEN_ORDERS, the 64-bit amounts, the
    event budget): any of those, or any failed check, declines.
    """
    market_id = route.market_id
    market = state.markets.get(market_id)
    if market is None or market.state != "open" or market.kind != "pair":
        return None
    if cmd.side == "buy":
        side, buying = "buy", True
    elif cmd.side == "sell":
        side, buying = "sell", False
    else:
        return None
    book = market.books[None]
    coid = cmd.client_order_id
    qty = cmd.qty
    price: int | None
    limit: int | None
    if cmd.order_type == "limit":
        if cmd.tif is _UNSET or cmd.tif == "gtc":
            tif, rests = "gtc", True
        elif cmd.tif == "ioc":
            tif, rests = "ioc", False
        else:
            return None  # fok, post_only: the general path
        price = cmd.price if type(cmd.price) is int else None
        if price is None or price % market.tick_size or not market.min_price <= price <= market.max_price:
            return None
        if market.band_bps:
            last = book.last_price
            if last is not None and abs(price - last) * 10_000 > market.band_bps * last:
                return None
        limit = price if buying else -price
        order_type = "limit"
    else:
        if cmd.price is not _UNSET or not (cmd.tif is _UNSET or cmd.tif == "ioc"):
            return None
        price, tif, rests, limit, order_type = None, "ioc", False, None, "market"
    if qty % market.lot_size or qty < market.min_qty or qty > market.max_qty or _is_id(coid) is None:
        return None
    account = route.account
    mine = market.client_orders.get(account)
    if mine is not None and coid in mine:
        return None
    risk = market.risk.get(account)
    if risk is not None and (
        risk.max_order_qty is not None or risk.max_open_exposure is not None or risk.max_open_orders is not None
    ):
        return None

    # The walk (Book.match with stp cancel_resting): best opposite level first, FIFO within it; an own
    # order met on the way is cancelled (q = 0) and the walk goes on.
    plan: list[tuple[Order, int]] = []
    remaining = qty
    top = book.ask_top if buying else book.bid_top
    if top is not None and (limit is None or top <= limit):
        opposite = book.asks if buying else book.bids
        for k in opposite:
            if limit is not None and k > limit:
                break
            for maker in opposite[k].values():
                if maker.account_id == account:
                    plan.append((maker, 0))
                else:
                    take = maker.qty if maker.qty < remaining else remaining
                    plan.append((maker, take))
                    remaining -= take
                if len(plan) > MAX_FILLS:
                    return None
                if remaining == 0:
                    break
            if remaining == 0:
                break
    resting = remaining if rests else 0
    taker_cancel = remaining > 0 and not resting
    if plan:
        if 1 + len(plan) + taker_cancel > MAX_COMMAND_EVENTS:
            return None
        # _check_positions' first test: every account involved stays in bounds with the plan's whole qty and
        # notional; an account near its bound declines (the general path makes the exact test).
        total_qty = total_notional = 0
        for maker, q in plan:
            total_qty += q
            total_notional += maker.price * q
        positions = market.positions
        for who in (account, *[maker.account_id for maker, q in plan if q]):
            pos = positions.get(who) or (0, 0)
            if abs(pos[1]) + total_notional + (abs(pos[0]) + total_qty) * MAX_PRICE > _MAX_AMOUNT:
                return None
    if resting:
        assert price is not None
        open_orders, open_exposure = (0, 0) if risk is None else (risk.open_orders, risk.open_exposure)
        if open_orders >= MAX_OPEN_ORDERS or open_exposure + price * resting > _MAX_AMOUNT:
            return None

    # The events, as _decide_place and _taker_events build them (field order is the classes' own).
    order_id = market.next_order_id
    accepted = OrderAccepted(
        market_id, seq, ts, order_id, account, coid, side, price, qty, tif, resting, None,
        order_type, "cancel_resting", "lapse",
    )  # fmt: skip
    events: list[Event] = [accepted]
    enc = route.enc
    payloads = [(route.accepted, enc[OrderAccepted](accepted))]
    trade_id = market.next_trade_id
    if plan:
        left = qty
        for maker, q in plan:
            if q:
                left -= q
                e: Event = Fill(
                    market_id, seq, ts, trade_id, maker.price, q, maker.order_id, order_id, maker.account_id,
                    account, side, maker.client_order_id, coid, maker.qty - q, left, None,
                )  # fmt: skip
                trade_id += 1
                payloads.append((route.fill, enc[Fill](e)))
            else:
                e = OrderCancelled(
                    market_id, seq, ts, maker.order_id, maker.account_id, maker.client_order_id, maker.side,
                    maker.price, maker.qty, "self_trade", None, True,
                )  # fmt: skip
                payloads.append((route.cancelled, enc[OrderCancelled](e)))
            events.append(e)
    if taker_cancel:
        e = OrderCancelled(
            market_id, seq, ts, order_id, account, coid, side, price, remaining, "unfilled", None, False
        )  # fmt: skip
        events.append(e)
        payloads.append((route.cancelled, enc[OrderCancelled](e)))

    # The fold of those events (evolve's _on_accepted, then _on_fill / _take_off per plan entry, in order).
    # It starts by setting last_cmd_seq: an exception from here on says the state may be half-changed.
    state.last_cmd_seq = seq
    if resting:
        assert price is not None
        order = Order(order_id, account, coid, side, price, resting, None, tif, "cancel_resting", "lapse")  # arrival: 0
        if buying:
            level = book.bids.get(-price)
            if level is None:
                level = book.bids[-price] = {}
                if book.bid_top is None or -price < book.bid_top:
                    book.bid_top = -price
        else:
            level = book.asks.get(price)
            if level is None:
                level = book.asks[price] = {}
                if book.ask_top is None or price < book.ask_top:
                    book.ask_top = price
        level[order_id] = order
        book.orders[order_id] = order
        if risk is None:
            risk = market.risk[account] = Risk()
        risk.open_orders += 1
        risk.open_exposure += price * resting
    if mine is None:
        mine = market.client_orders[account] = {}
    mine[coid] = order_id
    market.next_order_id = order_id + 1
    if plan:
        _fold_plan(market, plan, account, buying)
        market.next_trade_id = trade_id
    state.event_count += len(events)
    return events, payloads


def _fold_plan(market: Market, plan: list[tuple[Order, int]], account: str, buying: bool) -> None:
    """evolve's _on_fill (direct fills) and _take_off (self-trade cancels) over a pair plan, in walk order."""
    book = market.books[None]
    orders = book.orders
    risks = market.risk
    positions = market.positions
    last = book.last_price
    for maker, q in plan:
        mprice = maker.price
        risk = risks[maker.account_id]
        if q:
            maker.qty -= q
            risk.open_exposure -= mprice * q
            if maker.qty <= 0:
                _unlink(book, maker, not buying)
                del orders[maker.order_id]
                risk.open_orders -= 1
            last = mprice
            notional = mprice * q
            taker = positions.get(account)
            if taker is None:
                taker = positions[account] = [0, 0]
            held = positions.get(maker.account_id)
            if held is None:
                held = positions[maker.account_id] = [0, 0]
            if buying:
                taker[0] += q
                taker[1] -= notional
                held[0] -= q
                held[1] += notional
            else:
                taker[0] -= q
                taker[1] += notional
                held[0] += q
                held[1] -= notional
        else:
            _unlink(book, maker, not buying)
            del orders[maker.order_id]
            risk.open_orders -= 1
            risk.open_exposure -= mprice * maker.qty
    book.last_price = last


def _unlink(book: Book, order: Order, bid: bool) -> None:
    key = -order.price if bid else order.price
    level = (book.bids if bid else book.asks)[key]
    del level[order.order_id]
    if not level:
        book.drop_level(bid, key)


def cancel(state: State, seq: int, ts: int, cmd: _Cancel, route: Route) -> Encoded | None:
    """A cancel of the sender's open order (or its order_not_open reject), as `_decide_cancel` + `fold`; else None."""
    market_id = route.market_id
    account = route.account
    market = state.markets.get(market_id)
    if market is None or market.state not in _OPEN_STATES:
        return None
    coid: str | None = None
    if type(cmd.client_order_id) is str:
        coid = cmd.client_order_id
        if _is_id(coid) is None:
            return None
    order_id: int | None = cmd.order_id if type(cmd.order_id) is int else None
    if order_id is None:
        if coid is None:
            return None
        order_id = market.client_orders.get(account, _NONE).get(coid)
        if order_id is None:
            return None  # unknown_order: the general path
    if market.kind == "pair":
        book = market.books[None]
        order = book.orders.get(order_id)
    else:
        found = market.find(order_id)
        if found is None:
            order = None
        else:
            book, order = found
    if order is None:
        if order_id >= market.next_order_id:
            return None  # unknown_order: the general path
        enc = route.enc
        reject = Rejected(market_id, seq, ts, "order_not_open", _NOT_OPEN, account, "cancel_order", coid, order_id)
        payload = enc[Rejected](reject)
        state.last_cmd_seq = seq
        state.event_count += 1
        return [reject], [(route.rejected, payload)]
    if order.account_id != account or (coid is not None and coid != order.client_order_id):
        return None
    event = OrderCancelled(
        market_id, seq, ts, order.order_id, account, order.client_order_id, order.side, order.price, order.qty,
        "user", order.runner, True,
    )  # fmt: skip
    payload = route.enc[OrderCancelled](event)
    state.last_cmd_seq = seq  # the fold (evolve's _take_off) starts here
    book.remove(order.order_id)
    risk = market.risk[account]
    risk.open_orders -= 1
    risk.open_exposure -= market.exposure(order.side, order.price, order.qty)
    state.event_count += 1
    return [event], [(route.cancelled, payload)]
