"""The exchange as a pure state machine: decide(state, command) -> events, evolve(state, event) -> state.

No I/O, no clock, no randomness, no floats. Time is the command's JetStream
timestamp, handed in by the shell. `decide` never mutates; `evolve` is the only
code that changes state, and it is the same code for live processing, engine
recovery and replay, so a replayed engine cannot differ from the live one.

`evolve` mutates the state in place and returns it: copying an order book per
event would make the fold quadratic, and nothing keeps old states.

The rules (order types, amend, self-trade prevention, market lifecycle, odds,
risk) and the order in which a command's checks run are specified in
docs/PROTOCOL.md; this file follows that page section by section.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from commands.model import (
    MAX_AMOUNT,
    MAX_MARKETS,
    MAX_OPEN_ORDERS,
    MAX_PRICE,
    MAX_RUNNERS,
    ODDS_SIDES,
    PAIR_SIDES,
    AddRunner,
    AmendOrder,
    AwaitLive,
    CancelAll,
    CancelOrder,
    CloseMarket,
    CreateMarket,
    GoLive,
    Invalid,
    Parsed,
    PlaceOrder,
    SetMarketState,
    SetRiskLimits,
    SettleMarket,
    VoidMarket,
    parse,
)
from engine.book import Book, Order
from events.model import (
    ENGINE_MARKET,
    Checkpoint,
    Event,
    Fill,
    MarketCreated,
    MarketSettled,
    MarketStateChanged,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrdersCancelled,
    Rejected,
    RiskLimitsSet,
    RunnerAdded,
    make_encoders,
)
from protocol.subjects import ALL_MARKETS, UNROUTABLE_MARKET, WAL_PREFIX, is_id, wal_subject

# One command's events are published as one ADR-50 atomic batch, which the
# server caps at 1000 messages. One slot is kept for a checkpoint; an order that
# would need more events is refused whole rather than split across batches.
MAX_EVENTS_PER_COMMAND: Final = 1000
MAX_COMMAND_EVENTS: Final = MAX_EVENTS_PER_COMMAND - 1
MAX_FILLS: Final = MAX_COMMAND_EVENTS - 1  # after the order_accepted
# A checkpoint event follows the command whose events cross a multiple of this many events. It is
# part of the log, so re-deciding JB_CMD must use the same value to reproduce the same bytes.
CHECKPOINT_EVERY: Final = 100_000
# Lists of many orders or accounts (mass cancels, settlement) are split into events of this many
# entries, so even a market with 400k resting orders closes in one atomic batch.
CHUNK: Final = 500

# Decimal odds x 100 on the standard betting-exchange ladder: (from, to, step).
ODDS_LADDER: Final = (
    (101, 200, 1), (200, 300, 2), (300, 400, 5), (400, 600, 10), (600, 1000, 20),
    (1000, 2000, 50), (2000, 3000, 100), (3000, 5000, 200), (5000, 10000, 500), (10000, 100000, 1000),
)  # fmt: skip
ODDS_MIN: Final = 101
ODDS_MAX: Final = 100_000
TERMINAL: Final = ("closed", "settled", "voided")
# An odds account's settlement P&L is one of each runner's two figures summed over at most MAX_RUNNERS
# runners, so each figure is kept within this bound and the sum can never pass MAX_AMOUNT.
MAX_ODDS_PNL: Final = MAX_AMOUNT // MAX_RUNNERS
_EMPTY: Final[dict[str, int]] = {}


def on_ladder(price: int) -> bool:
    if price == ODDS_MAX:
        return True
    for lo, hi, step in ODDS_LADDER:
        if lo <= price < hi:
            return (price - lo) % step == 0
    return False


@dataclass(slots=True)
class Risk:
    """One account in one market: what it has open, and the limits set for it (None: no limit)."""

    open_orders: int = 0
    open_exposure: int = 0
    max_order_qty: int | None = None
    max_open_orders: int | None = None
    max_open_exposure: int | None = None


@dataclass(slots=True)
class Market:
    market_id: str
    kind: str  # "pair" | "odds"
    base: str
    quote: str
    tick_size: int
    lot_size: int
    min_qty: int
    max_qty: int
    min_price: int
    max_price: int
    band_bps: int
    runners: dict[str, str] = field(default_factory=dict)  # runner_id -> label, in creation order
    books: dict[str | None, Book] = field(default_factory=dict)  # None: the one book of a pair market
    state: str = "open"
    phase: str = "pre"
    next_order_id: int = 1
    next_trade_id: int = 1
    # (account, client_order_id) -> order_id, kept for the market's life so a
    # repeated client_order_id is refused long after the broker's dedupe window.
    # Nested by account rather than keyed by (account, coid): a tuple per order is 60 bytes of RAM.
    client_orders: dict[str, dict[str, int]] = field(default_factory=dict)
    risk: dict[str, Risk] = field(default_factory=dict)
    # pair: account -> [net_qty, cash]; odds: account -> {runner: [pnl if it wins, pnl if it loses]}
    positions: dict[str, Any] = field(default_factory=dict)

    def exposure(self, side: str, price: int, qty: int) -> int:
        """Notional for pairs; for odds the stake of a back and the liability of a lay, in stake/100."""
        if self.kind == "pair":
            return price * qty
        return qty * 100 if side == "back" else qty * (price - 100)

    def find(self, order_id: int) -> tuple[Book, Order] | None:
        for book in self.books.values():
            order = book.orders.get(order_id)
            if order is not None:
                return book, order
        return None

    def open_orders(self, keep: Callable[[Order], bool]) -> list[Order]:
        found = [o for book in self.books.values() for o in book.orders.values() if keep(o)]
        found.sort(key=lambda o: o.order_id)
        return found


@dataclass(slots=True)
class State:
    markets: dict[str, Market] = field(default_factory=dict)
    last_cmd_seq: int = 0  # the newest command whose events are folded in
    event_count: int = 0  # events folded in so far; equals the JB_EVT sequence of the newest one


# --- decide -------------------------------------------------------------------------------------
# Each decider returns the command's events; a failed check returns one Rejected and nothing else.


class _Refuse(Exception):
    """A check failed: decide turns this into the command's one Rejected event."""

    def __init__(self, reason: str, detail: str, order_id: int | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.order_id = order_id


def _market(state: State, p: Parsed) -> Market:
    market = state.markets.get(p.market_id)
    if market is None:
        raise _Refuse("unknown_market", f"no market {p.market_id}", getattr(p.command, "order_id", None))
    return market


def _chunks(items: list[Any], size: int = CHUNK) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _chunk_size(total: int, lists: int, budget: int) -> int:
    """Entries per event so that `lists` lists of `total` entries in all take at most `budget` events.

    CHUNK normally; larger only for huge lists (sum of ceil(n_i / c) <= total / c + lists <= budget).
    """
    if lists > budget:
        raise _Refuse("too_many_events", f"would need more than {MAX_COMMAND_EVENTS} events; narrow it")
    return max(CHUNK, -(-total // max(1, budget - lists)))


def _check_price(market: Market, book: Book, price: int) -> None:
    if market.kind == "pair":
        if price % market.tick_size:
            raise _Refuse("off_tick", f"price: not a multiple of tick_size {market.tick_size}")
    elif not on_ladder(price):
        raise _Refuse("off_tick", "price: not on the odds ladder")
    if not market.min_price <= price <= market.max_price:
        raise _Refuse("price_out_of_range", f"price: outside {market.min_price}..{market.max_price}")
    last = book.last_price
    if market.band_bps and last is not None and abs(price - last) * 10_000 > market.band_bps * last:
        raise _Refuse("outside_price_band", f"price: more than {market.band_bps} bps from {last}")


def _check_qty(market: Market, qty: int) -> None:
    if qty % market.lot_size:
        raise _Refuse("off_lot", f"qty: not a multiple of lot_size {market.lot_size}")
    if qty < market.min_qty:
        raise _Refuse("qty_below_min", f"qty: below {market.min_qty}")
    if qty > market.max_qty:
        raise _Refuse("qty_above_max", f"qty: above {market.max_qty}")


def _decide_create_market(state: State, seq: int, ts: int, p: Parsed) -> list[Event]:
    cmd = p.command
    assert isinstance(cmd, CreateMarket)
    if cmd.market_id in state.markets:
        raise _Refuse("market_exists", f"market {cmd.market_id} exists")
    if cmd.market_id.startswith("_"):
        raise _Refuse("invalid_market_id", "market ids starting with '_' are reserved")
    if len(state.markets) >= MAX_MARKETS:
        raise _Refuse("too_many_markets", f"at most {MAX_MARKETS} markets")
    if cmd.kind == "pair":
        if not cmd.base:
            raise _Refuse("missing_field", "base: missing")
        if cmd.runners is not None:
            raise _Refuse("invalid_field", "runners: not_allowed")
        min_price = cmd.tick_size if cmd.min_price is None else cmd.min_price
        max_price = MAX_PRICE - MAX_PRICE % cmd.tick_size if cmd.max_price is None else cmd.max_price
        if min_price % cmd.tick_size or max_price % cmd.tick_size:
            raise _Refuse("invalid_field", "min_price: off_tick")
    else:
        if cmd.runners is None:
            raise _Refuse("missing_field", "runners: missing")
        if cmd.tick_size != 1:
            raise _Refuse("invalid_field", "tick_size: not_allowed")
        min_price = ODDS_MIN if cmd.min_price is None else cmd.min_price
        max_price = ODDS_MAX if cmd.max_price is None else cmd.max_price
        if not (on_ladder(min_price) and on_ladder(max_price)):
            raise _Refuse("invalid_field", "min_price: off_tick")
    if min_price > max_price:
        raise _Refuse("invalid_field", "min_price: out_of_range")
    min_qty = cmd.lot_size if cmd.min_qty is None else cmd.min_qty
    if min_qty > cmd.max_qty:
        raise _Refuse("invalid_field", "min_qty: out_of_range")
    return [
        MarketCreated(
            cmd.market_id, seq, ts, cmd.kind, cmd.base, cmd.quote, cmd.tick_size, cmd.lot_size, min_qty,
            cmd.max_qty, min_price, max_price, cmd.band_bps, [list(r) for r in cmd.runners or []],
        )
    ]  # fmt: skip


def _decide_add_runner(state: State, seq: int, ts: int, p: Parsed) -> list[Event]:
    cmd = p.command
    assert isinstance(cmd, AddRunner)
    market = _market(state, p)
    if market.kind != "odds":
        raise _Refuse("not_odds_market", "only odds markets have runners")
    if market.state in TERMINAL:
        raise _Refuse("market_closed", f"market is {market.state}")
    if cmd.runner_id in market.runners:
        raise _Refuse("runner_exists", f"runner {cmd.runner_id} exists")
    if len(market.runners) >= MAX_RUNNERS:
        raise _Refuse("too_many_runners", f"at most {MAX_RUNNERS} runners")
    return [RunnerAdded(p.market_id, seq, ts, cmd.runner_id, cmd.label)]


def _illegal(market: Market, ctype: str) -> _Refuse:
    return _Refuse("illegal_transition", f"{market.state}/{market.phase} -> {ctype}")


def _changed(market: Market, seq: int, ts: int, ctype: str, state: str, phase: str | None = None) -> Event:
    return MarketStateChanged(
        market.market_id, seq, ts, state, phase or market.phase, market.state, market.phase, ctype
    )


def _mass_cancel(
    market: Market, seq: int, ts: int, reason: str, orders: list[Order], account: str | None, size: int = 0
) -> list[Event]:
    """orders_cancelled events; by default sized so they leave room for one more event of the command."""
    size = size or _chunk_size(len(orders), 1, MAX_COMMAND_EVENTS - 1)
    rows = [[o.order_id, o.account_id, o.client_order_id, o.side, o.price, o.qty, o.runner] for o in orders]
    return [OrdersCancelled(market.market_id, seq, ts, reason, account, chunk) for chunk in _chunks(rows, size)]


def _decide_lifecycle(state: State, seq: int, ts: int, p: Parsed) -> list[Event]:
    cmd = p.command
    market = _market(state, p)
    ctype = cmd.type
    now = market.state
    if isinstance(cmd, SetMarketState):
        if now not in ("open", "suspended", "halted") or cmd.state == now:
            raise _illegal(market, ctype)
        return [_changed(market, seq, ts, ctype, cmd.state)]
    if isinstance(cmd, AwaitLive | GoLive):
        if market.phase != "pre" or now not in ("open", "suspended"):
            raise _illegal(market, ctype)
        if isinstance(cmd, AwaitLive):
            return [_changed(market, seq, ts, ctype, "suspended")]
        lapsing = market.open_orders(lambda o: o.persistence == "lapse")
        return [
            *_mass_cancel(market, seq, ts, "lapsed", lapsing, None),
            _changed(market, seq, ts, ctype, "open", "in_play"),
        ]
    if isinstance(cmd, CloseMarket):
        if now not in ("open", "suspended", "halted"):
            raise _illegal(market, ctype)
        resting = market.open_orders(lambda o: True)
        return [
            *_mass_cancel(market, seq, ts, "market_closed", resting, None),
            _changed(market, seq, ts, ctype, "closed"),
        ]
    if isinstance(cmd, VoidMarket):
        if now not in ("open", "suspended", "halted", "closed"):
            raise _illegal(market, ctype)
        resting = market.open_orders(lambda o: True)
        return [
            *_mass_cancel(market, seq, ts, "market_voided", resting, None),
            _changed(market, seq, ts, ctype, "voided"),
        ]
    assert isinstance(cmd, SettleMarket)
    if market.kind == "pair":
        if cmd.price is None:
            raise _Refuse("missing_field", "price: missing")
        if cmd.winner is not None:
            raise _Refuse("invalid_field", "winner: not_allowed")
    else:
        if cmd.winner is None:
            raise _Refuse("missing_field", "winner: missing")
        if cmd.price is not None:
            raise _Refuse("invalid_field", "price: not_allowed")
        if cmd.winner not in market.runners:
            raise _Refuse("unknown_runner", f"no runner {cmd.winner}")
    if now != "closed":
        raise _illegal(market, ctype)
    pnl: list[list[Any]] = []
    for account in sorted(market.positions):
        pos = market.positions[account]
        if market.kind == "pair":
            assert cmd.price is not None
            pnl.append([account, pos[1] + pos[0] * cmd.price])
        else:
            pnl.append([account, sum(wl[0] if r == cmd.winner else wl[1] for r, wl in pos.items())])
    if any(not -MAX_AMOUNT <= row[1] <= MAX_AMOUNT for row in pnl):
        # Unreachable while fills keep positions in bounds (_check_positions); a guard for old logs.
        raise _Refuse("amount_out_of_range", "pnl: outside the signed 64-bit range")
    out: list[Event] = [_changed(market, seq, ts, ctype, "settled")]
    size = _chunk_size(len(pnl), 1, MAX_COMMAND_EVENTS - 1)
    out += [MarketSettled(p.market_id, seq, ts, cmd.winner, cmd.price, chunk) for chunk in _chunks(pnl, size)] or [
        MarketSettled(p.market_id, seq, ts, cmd.winner, cmd.price, [])
    ]
    return out


def _decide_risk_limits(state: State, seq: int, ts: int, p: Parsed) -> list[Event]:
    cmd = p.command
    assert isinstance(cmd, SetRiskLimits)
    market = _market(state, p)
    if market.state in ("settled", "voided"):
        raise _Refuse("market_closed", f"market is {market.state}")
    return [
        RiskLimitsSet(
            p.market_id, seq, ts, cmd.account_id, cmd.max_order_qty, cmd.max_open_orders, cmd.max_open_exposure
        )
    ]


def _taker_events(
    market: Market, seq: int, ts: int, plan: list[tuple[Order, int]], order_id: int, account: str, coid: str,
    side: str, qty: int, runner: str | None,
) -> list[Event]:  # fmt: skip
    """The fills and self-trade cancels of a match plan, in walk order."""
    out: list[Event] = []
    m = market.market_id
    remaining = qty
    trade_id = market.next_trade_id
    for maker, q in plan:
        if q:
            remaining -= q
            out.append(
                Fill(
                    m, seq, ts, trade_id, maker.price, q, maker.order_id, order_id, maker.account_id, account,
                    side, maker.client_order_id, coid, maker.qty - q, remaining, runner,
                )
            )  # fmt: skip
            trade_id += 1
        else:
            out.append(
                OrderCancelled(
                    m, seq, ts, maker.order_id, maker.account_id, maker.client_order_id, maker.side, maker.price,
                    maker.qty, "self_trade", runner, True,
                )
            )  # fmt: skip
    return out


def _check_positions(market: Market, plan: list[tuple[Order, int]], account: str, side: str) -> None:
    """Refuse a match whose fills would take any account's position out of its 64-bit bounds.

    Pair: |cash| + |net qty| x MAX_PRICE <= MAX_AMOUNT, so cash, net qty and the
    P&L of a settlement at any price (cash + net qty x price) all fit. Odds:
    each runner's two figures within MAX_ODDS_PNL, so any settlement's sum fits.
    Only the state after the whole command counts: Python ints do not overflow
    in between, and nothing is stored or published in between.
    """
    deltas: dict[str, list[int]] = {}
    sign = 1 if side == "buy" or side == "back" else -1
    pair = market.kind == "pair"
    for maker, q in plan:
        if not q:
            continue
        price = maker.price
        a, b = (q, price * q) if pair else (q * (price - 100), q * 100)
        for who, s in ((account, sign), (maker.account_id, -sign)):
            d = deltas.get(who)
            if d is None:
                d = deltas[who] = [0, 0]
            d[0] += s * a
            d[1] -= s * b
    runner = plan[0][0].runner if plan else None
    for who, (da, db) in deltas.items():
        if pair:
            pos = market.positions.get(who) or (0, 0)
            ok = abs(pos[1] + db) + abs(pos[0] + da) * MAX_PRICE <= MAX_AMOUNT
        else:
            mine: dict[str | None, list[int]] = market.positions.get(who) or {}
            wl = mine.get(runner) or [0, 0]
            ok = abs(wl[0] + da) <= MAX_ODDS_PNL and abs(wl[1] + db) <= MAX_ODDS_PNL
        if not ok:
            raise _Refuse("amount_out_of_range", "a position would pass its 64-bit bound")


def _decide_place(state: State, seq: int, ts: int, p: Parsed) -> list[Event]:
    cmd = p.command
    assert isinstance(cmd, PlaceOrder) and p.account_id is not None
    market = _market(state, p)
    if market.state != "open":
        raise _Refuse("market_not_open", f"market is {market.state}")
    runner = cmd.runner
    side = cmd.side
    if market.kind == "odds":
        if runner is None:
            raise _Refuse("missing_field", "runner: missing")
        if runner not in market.runners:
            raise _Refuse("unknown_runner", f"no runner {runner}")
        if side not in ODDS_SIDES:
            raise _Refuse("invalid_side", "side: back or lay in odds markets")
    else:
        if runner is not None:
            raise _Refuse("unknown_runner", "pair markets have no runners")
        if side not in PAIR_SIDES:
            raise _Refuse("invalid_side", "side: buy or sell in pair markets")
    book = market.books[runner]
    price = cmd.price if cmd.order_type == "limit" else cmd.protection_price
    if price is not None:
        _check_price(market, book, price)
    qty = cmd.qty
    _check_qty(market, qty)
    account = p.account_id
    coid = cmd.client_order_id
    if coid in market.client_orders.get(account, _EMPTY):
        raise _Refuse("duplicate_client_order_id", "client_order_id already used")
    risk = market.risk.get(account)
    if risk is not None and risk.max_order_qty is not None and qty > risk.max_order_qty:
        raise _Refuse("max_order_qty_exceeded", f"qty: above {risk.max_order_qty}")
    tif = cmd.tif
    assert tif is not None  # parse resolved the default
    if tif == "post_only" and price is not None and book.crosses(side, price):
        raise _Refuse("post_only_would_take", "the order would take liquidity")
    plan, stopped, filled, overflow = book.match(side, price, qty, account, cmd.stp, MAX_FILLS)
    if tif == "fok" and filled < qty:
        raise _Refuse("fok_not_filled", f"only {filled} of {qty} available")
    if overflow:
        raise _Refuse("too_many_fills", f"would need more than {MAX_COMMAND_EVENTS} events")
    remainder = qty - filled
    resting = remainder if not stopped and (tif == "gtc" or tif == "post_only") else 0
    taker_cancel = remainder > 0 and not resting
    if 1 + len(plan) + taker_cancel > MAX_COMMAND_EVENTS:
        raise _Refuse("too_many_fills", f"would need more than {MAX_COMMAND_EVENTS} events")
    if risk is not None:
        if risk.max_open_exposure is not None:
            if price is not None:
                exposure = market.exposure(side, price, qty)
            else:
                exposure = sum(market.exposure(side, maker.price, q) for maker, q in plan)
            if risk.open_exposure + exposure > risk.max_open_exposure:
                raise _Refuse("max_open_exposure_exceeded", f"exposure would exceed {risk.max_open_exposure}")
        if risk.max_open_orders is not None and resting and risk.open_orders + 1 > risk.max_open_orders:
            raise _Refuse("max_open_orders_exceeded", f"at most {risk.max_open_orders} open orders")
    if resting:
        assert price is not None  # only limit orders rest
        if risk is not None and risk.open_orders >= MAX_OPEN_ORDERS:
            raise _Refuse("too_many_open_orders", f"at most {MAX_OPEN_ORDERS} open orders per account and market")
        if (risk.open_exposure if risk is not None else 0) + market.exposure(side, price, resting) > MAX_AMOUNT:
            raise _Refuse("amount_out_of_range", "open exposure would pass its 64-bit bound")
    if plan:
        _check_positions(market, plan, account, side)

    m = p.market_id
    order_id = market.next_order_id
    out: list[Event] = [
        OrderAccepted(
            m, seq, ts, order_id, account, coid, side, price, qty, tif, resting, runner, cmd.order_type, cmd.stp,
            cmd.persistence,
        )
    ]  # fmt: skip
    if plan:
        out += _taker_events(market, seq, ts, plan, order_id, account, coid, side, qty, runner)
    if taker_cancel:
        reason = "self_trade" if stopped else "unfilled"
        out.append(OrderCancelled(m, seq, ts, order_id, account, coid, side, price, remainder, reason, runner, False))
    return out


def _order_of(p: Parsed, cmd: CancelOrder | AmendOrder, market: Market) -> tuple[Book, Order]:
    """The open order a cancel or amend names, owned by the sender."""
    assert p.account_id is not None
    order_id = cmd.order_id
    if order_id is None:
        assert cmd.client_order_id is not None
        order_id = market.client_orders.get(p.account_id, _EMPTY).get(cmd.client_order_id)
        if order_id is None:
            raise _Refuse("unknown_order", "no such client_order_id for this account")
    found = market.find(order_id)
    if found is None:
        if order_id < market.next_order_id:
            raise _Refuse("order_not_open", "order is filled or cancelled", order_id)
        raise _Refuse("unknown_order", f"no order {order_id}", order_id)
    if found[1].account_id != p.account_id:
        raise _Refuse("not_order_owner", "order belongs to another account", order_id)
    if cmd.client_order_id is not None and cmd.client_order_id != found[1].client_order_id:
        raise _Refuse("unknown_order", "order_id and client_order_id name different orders", order_id)
    return found


def _check_cancellable(market: Market, order_id: int | None) -> None:
    if market.state == "halted":
        raise _Refuse("market_halted", "no cancels while the market is halted", order_id)
    if market.state in TERMINAL:
        raise _Refuse("market_closed", f"market is {market.state}", order_id)


def _decide_cancel(state: State, seq: int, ts: int, p: Parsed) -> list[Event]:
    cmd = p.command
    assert isinstance(cmd, CancelOrder)
    market = _market(state, p)
    _check_cancellable(market, cmd.order_id)
    _, o = _order_of(p, cmd, market)
    return [
        OrderCancelled(
            p.market_id,
            seq,
            ts,
            o.order_id,
            o.account_id,
            o.client_order_id,
            o.side,
            o.price,
            o.qty,
            "user",
            o.runner,
            True,
        )
    ]


def _decide_amend(state: State, seq: int, ts: int, p: Parsed) -> list[Event]:
    cmd = p.command
    assert isinstance(cmd, AmendOrder)
    market = _market(state, p)
    if market.state != "open":
        raise _Refuse("market_not_open", f"market is {market.state}", cmd.order_id)
    book, order = _order_of(p, cmd, market)
    oid = order.order_id
    try:
        price = order.price if cmd.price is None else cmd.price
        qty = order.qty if cmd.qty is None else cmd.qty
        if price != order.price:
            _check_price(market, book, price)
        if cmd.qty is not None:
            _check_qty(market, qty)
        if price == order.price and qty == order.qty:
            raise _Refuse("no_change", "the order already has this price and qty")
        risk = market.risk[order.account_id]
        if risk.max_order_qty is not None and qty > risk.max_order_qty:
            raise _Refuse("max_order_qty_exceeded", f"qty: above {risk.max_order_qty}")
        kept = price == order.price and qty < order.qty
        plan: list[tuple[Order, int]] = []
        stopped = False
        if not kept:
            if price != order.price and order.tif == "post_only" and book.crosses(order.side, price):
                raise _Refuse("post_only_would_take", "the amended order would take liquidity")
            plan, stopped, filled, overflow = book.match(order.side, price, qty, order.account_id, order.stp, MAX_FILLS)
            if overflow:
                raise _Refuse("too_many_fills", f"would need more than {MAX_COMMAND_EVENTS} events")
        else:
            filled = 0
        remainder = qty - filled
        resting = 0 if stopped else remainder
        taker_cancel = remainder > 0 and stopped
        if 1 + len(plan) + taker_cancel > MAX_COMMAND_EVENTS:
            raise _Refuse("too_many_fills", f"would need more than {MAX_COMMAND_EVENTS} events")
        after = risk.open_exposure - market.exposure(order.side, order.price, order.qty)
        if risk.max_open_exposure is not None:
            if after + market.exposure(order.side, price, qty) > risk.max_open_exposure:
                raise _Refuse("max_open_exposure_exceeded", f"exposure would exceed {risk.max_open_exposure}")
        if after + market.exposure(order.side, price, qty) > MAX_AMOUNT:
            raise _Refuse("amount_out_of_range", "open exposure would pass its 64-bit bound")
        if plan:
            _check_positions(market, plan, order.account_id, order.side)
    except _Refuse as refusal:
        refusal.order_id = oid
        raise
    m = p.market_id
    a, c, side, runner = order.account_id, order.client_order_id, order.side, order.runner
    out: list[Event] = [
        OrderAmended(
            m, seq, ts, oid, a, c, side, order.price, order.qty, price, qty, "kept" if kept else "lost", resting, runner
        )
    ]
    if plan:
        out += _taker_events(market, seq, ts, plan, oid, a, c, side, qty, runner)
    if taker_cancel:
        out.append(OrderCancelled(m, seq, ts, oid, a, c, side, price, remainder, "self_trade", runner, False))
    return out


def _decide_cancel_all(state: State, seq: int, ts: int, p: Parsed) -> list[Event]:
    cmd = p.command
    assert isinstance(cmd, CancelAll) and p.account_id is not None
    account = p.account_id
    if p.market_id == ALL_MARKETS:
        markets = [
            state.markets[m] for m in sorted(state.markets) if state.markets[m].state not in ("halted", *TERMINAL)
        ]
    else:
        market = _market(state, p)
        _check_cancellable(market, None)
        markets = [market]

    def keep(o: Order) -> bool:
        return (
            o.account_id == account
            and (cmd.side is None or o.side == cmd.side)
            and (cmd.runner is None or o.runner == cmd.runner)
        )

    found = [(market, orders) for market in markets if (orders := market.open_orders(keep))]
    size = _chunk_size(sum(len(o) for _, o in found), len(found), MAX_COMMAND_EVENTS)
    out: list[Event] = []
    for market, orders in found:
        out += _mass_cancel(market, seq, ts, "cancel_all", orders, account, size)
    return out or [OrdersCancelled(p.market_id, seq, ts, "cancel_all", account, [])]


_DECIDERS: Final[dict[type, Callable[[State, int, int, Parsed], list[Event]]]] = {
    CreateMarket: _decide_create_market,
    AddRunner: _decide_add_runner,
    SetMarketState: _decide_lifecycle,
    AwaitLive: _decide_lifecycle,
    GoLive: _decide_lifecycle,
    CloseMarket: _decide_lifecycle,
    SettleMarket: _decide_lifecycle,
    VoidMarket: _decide_lifecycle,
    SetRiskLimits: _decide_risk_limits,
    PlaceOrder: _decide_place,
    CancelOrder: _decide_cancel,
    AmendOrder: _decide_amend,
    CancelAll: _decide_cancel_all,
}


def decide(state: State, cmd_seq: int, ts: int, item: Parsed | Invalid) -> list[Event]:
    """The events one command causes. Never raises for bad input: that is a Rejected event."""
    if isinstance(item, Invalid):
        return [
            Rejected(
                item.market_id, cmd_seq, ts, item.reason, item.detail, item.account_id,
                item.command_type, item.client_order_id,
            )
        ]  # fmt: skip
    try:
        return _DECIDERS[type(item.command)](state, cmd_seq, ts, item)
    except _Refuse as r:
        cmd = item.command
        coid = getattr(cmd, "client_order_id", None)
        return [Rejected(item.market_id, cmd_seq, ts, r.reason, r.detail, item.account_id, cmd.type, coid, r.order_id)]


# --- evolve -------------------------------------------------------------------------------------


def _risk(market: Market, account: str) -> Risk:
    risk = market.risk.get(account)
    if risk is None:
        risk = market.risk[account] = Risk()
    return risk


def _take_off(market: Market, book: Book, order_id: int) -> None:
    """An open order leaves the book (cancel of any kind): release its exposure."""
    order = book.orders.get(order_id)
    if order is None:
        return  # a taker's remainder that never rested
    book.remove(order_id)
    risk = market.risk[order.account_id]
    risk.open_orders -= 1
    risk.open_exposure -= market.exposure(order.side, order.price, order.qty)


def _on_market_created(state: State, e: Event) -> None:
    assert isinstance(e, MarketCreated)
    market = Market(
        e.market_id, e.kind, e.base, e.quote, e.tick_size, e.lot_size, e.min_qty, e.max_qty, e.min_price,
        e.max_price, e.band_bps,
    )  # fmt: skip
    if e.kind == "pair":
        market.books[None] = Book()
    for runner_id, label in e.runners:
        market.runners[runner_id] = label
        market.books[runner_id] = Book()
    state.markets[e.market_id] = market


def _on_runner_added(state: State, e: Event) -> None:
    assert isinstance(e, RunnerAdded)
    market = state.markets[e.market_id]
    market.runners[e.runner_id] = e.label
    market.books[e.runner_id] = Book()


def _on_state_changed(state: State, e: Event) -> None:
    assert isinstance(e, MarketStateChanged)
    market = state.markets[e.market_id]
    market.state = e.state
    market.phase = e.phase


def _on_risk_limits(state: State, e: Event) -> None:
    assert isinstance(e, RiskLimitsSet)
    risk = _risk(state.markets[e.market_id], e.account_id)
    risk.max_order_qty = e.max_order_qty
    risk.max_open_orders = e.max_open_orders
    risk.max_open_exposure = e.max_open_exposure


def _on_accepted(state: State, e: Event) -> None:
    # Only the part that will rest goes on the book; the fills that follow
    # take from the makers they name.
    assert isinstance(e, OrderAccepted)
    market = state.markets[e.market_id]
    if e.resting_qty > 0:
        assert e.price is not None
        order = Order(
            e.order_id, e.account_id, e.client_order_id, e.side, e.price, e.resting_qty, e.runner, e.tif, e.stp,
            e.persistence,
        )  # fmt: skip
        market.books[e.runner].add(order)
        risk = _risk(market, e.account_id)
        risk.open_orders += 1
        risk.open_exposure += market.exposure(e.side, e.price, e.resting_qty)
    mine = market.client_orders.get(e.account_id)
    if mine is None:
        mine = market.client_orders[e.account_id] = {}
    mine[e.client_order_id] = e.order_id
    market.next_order_id = e.order_id + 1


def _on_amended(state: State, e: Event) -> None:
    assert isinstance(e, OrderAmended)
    market = state.markets[e.market_id]
    book = market.books[e.runner]
    order = book.orders[e.order_id]
    risk = market.risk[e.account_id]
    risk.open_exposure -= market.exposure(order.side, order.price, order.qty)
    if e.priority == "kept":
        order.qty = e.qty
        risk.open_exposure += market.exposure(order.side, order.price, order.qty)
        return
    book.remove(e.order_id)
    risk.open_orders -= 1
    order.price = e.price
    order.qty = e.resting_qty
    if e.resting_qty > 0:
        book.add(order)
        risk.open_orders += 1
        risk.open_exposure += market.exposure(order.side, order.price, order.qty)


def _position(market: Market, account: str, side: str, price: int, qty: int, runner: str | None) -> None:
    if market.kind == "pair":
        pos = market.positions.get(account)
        if pos is None:
            pos = market.positions[account] = [0, 0]
        if side == "buy":
            pos[0] += qty
            pos[1] -= price * qty
        else:
            pos[0] -= qty
            pos[1] += price * qty
        return
    assert runner is not None
    book = market.positions.get(account)
    if book is None:
        book = market.positions[account] = {}
    wl = book.get(runner)
    if wl is None:
        wl = book[runner] = [0, 0]
    if side == "back":
        wl[0] += qty * (price - 100)
        wl[1] -= qty * 100
    else:
        wl[0] -= qty * (price - 100)
        wl[1] += qty * 100


def _on_fill(state: State, e: Event) -> None:
    assert isinstance(e, Fill)
    market = state.markets[e.market_id]
    book = market.books[e.runner]
    maker = book.reduce(e.maker_order_id, e.qty)
    risk = market.risk[maker.account_id]
    risk.open_exposure -= market.exposure(maker.side, maker.price, e.qty)
    if maker.qty <= 0:
        risk.open_orders -= 1
    book.last_price = e.price
    market.next_trade_id = e.trade_id + 1
    _position(market, e.taker_account, e.taker_side, e.price, e.qty, e.runner)
    _position(market, e.maker_account, maker.side, e.price, e.qty, e.runner)


def _on_cancelled(state: State, e: Event) -> None:
    assert isinstance(e, OrderCancelled)
    market = state.markets[e.market_id]
    _take_off(market, market.books[e.runner], e.order_id)


def _on_mass_cancelled(state: State, e: Event) -> None:
    assert isinstance(e, OrdersCancelled)
    market = state.markets.get(e.market_id)
    if market is None:
        return  # a cancel_all over every market that found nothing
    for row in e.orders:
        _take_off(market, market.books[row[6]], row[0])


def _on_nothing(state: State, e: Event) -> None:
    pass


_EVOLVERS: Final[dict[type, Callable[[State, Event], None]]] = {
    MarketCreated: _on_market_created,
    RunnerAdded: _on_runner_added,
    MarketStateChanged: _on_state_changed,
    RiskLimitsSet: _on_risk_limits,
    OrderAccepted: _on_accepted,
    OrderAmended: _on_amended,
    Fill: _on_fill,
    OrderCancelled: _on_cancelled,
    OrdersCancelled: _on_mass_cancelled,
    MarketSettled: _on_nothing,  # the state change before it did the work; this is the report
    Rejected: _on_nothing,
    Checkpoint: _on_nothing,
}


def evolve(state: State, event: Event) -> State:
    _EVOLVERS[type(event)](state, event)
    state.last_cmd_seq = event.cmd_seq
    state.event_count += 1
    return state


# --- the engine as the shell sees it ------------------------------------------------------------


def _internal_error(item: Parsed | Invalid, seq: int, ts: int, err: Exception) -> Rejected:
    command_type = item.command.type if isinstance(item, Parsed) else item.command_type
    return Rejected(item.market_id, seq, ts, "internal_error", type(err).__name__, item.account_id, command_type)


def _unparsed(subject: Any, err: Exception) -> Invalid:
    """What a command becomes when parse itself raised: filed under the subject's ids if it has them.

    Every market or account token that reaches an event (and so a jb.wal subject)
    has passed `is_id`; anything else is filed under `_invalid` with no account.
    """
    market, account = UNROUTABLE_MARKET, None
    try:
        tokens = subject.split(".")
        if len(tokens) in (3, 4) and is_id(tokens[2]):
            market = tokens[2]
            account = tokens[3] if len(tokens) == 4 and is_id(tokens[3]) else None
    except Exception:  # a subject that is not even a str
        pass
    return Invalid(market, account, "internal_error", type(err).__name__)


def _hash(state: State) -> str:
    """state_hash, total: a state that cannot be hashed gets a fixed mark, the same live and on replay.

    By construction every int in the state fits 64 bits, so the mark should never
    be written; it exists so that hashing can never stop the engine.
    """
    try:
        return state_hash(state)
    except Exception as err:
        return f"unhashable:{type(err).__name__}"


class HalfApplied(Exception):
    """Folding a command's own decided events raised: the state may be half-changed, so the engine must stop.

    Unreachable by construction: decide only names books, orders and accounts
    that exist in the state it read, and evolve does nothing but dict and
    sorted-dict updates and Python int arithmetic (which cannot overflow) on
    them. The hypothesis machine and the fuzz test hold that; this is the
    guard that refuses to go on from a state nobody can vouch for.
    """


class Diverged(Exception):
    """A checkpoint in the log does not match the state folded from the events before it."""

    def __init__(self, event: Checkpoint, actual: str) -> None:
        super().__init__(
            f"checkpoint after event {event.covers_seq} says {event.state_hash[:16]}, state is {actual[:16]}"
        )
        self.event = event
        self.actual = actual


class Engine:
    """decode -> validate -> decide -> evolve, for one raw JB_CMD message at a time."""

    def __init__(self, state: State | None = None, *, checkpoint_every: int = CHECKPOINT_EVERY) -> None:
        self.state = state if state is not None else State()
        self.checkpoint_every = checkpoint_every
        # (jb.wal subject, msgpack bytes) of each event the last `handle` returned, in order: the
        # encoding is part of the decision (a value that cannot be encoded becomes a reject), so the
        # shell publishes these bytes rather than encoding the events again.
        self.payloads: list[tuple[str, bytes]] = []
        self._encoders = make_encoders()

    def handle(self, cmd_seq: int, ts: int, subject: str, data: bytes) -> list[Event]:
        """The events of one JB_CMD message, folded into the state. Total for any subject and bytes.

        Every failure on the way (a subject that is not ours, undecodable bytes,
        a parse or decide bug, events that do not encode) becomes the command's
        one `rejected` event, decided before anything is folded, so nothing is
        half-applied; the same input fails the same way on replay, so the
        reject is as deterministic as any other. `cmd_seq` and `ts` come from
        JetStream (unsigned 64-bit, well inside int64 for centuries).
        """
        if cmd_seq <= self.state.last_cmd_seq:
            self.payloads = []
            return []  # its events are already in the log: a redelivery, not a new command
        try:
            parsed = parse(subject, data)
        except Exception as err:  # parse is total by design; this guards a bug in it
            parsed = _unparsed(subject, err)
        try:
            events = decide(self.state, cmd_seq, ts, parsed)
            if len(events) > MAX_COMMAND_EVENTS:
                # A decider's own limits should make this impossible; if one is missed, a command
                # whose events cannot be committed atomically must become a reject, not a crash loop.
                raise OverflowError(f"{len(events)} events")
            enc = self._encoders
            payloads = [(f"{WAL_PREFIX}.{e.market_id}.{e.TYPE}", enc[type(e)](e)) for e in events]
        except Exception as err:
            # A bug must not turn one command into a poison pill that halts every market on every
            # restart. decide does not mutate, so nothing is half-applied.
            events = [_internal_error(parsed, cmd_seq, ts, err)]
            payloads = [(wal_subject(events[0].market_id, Rejected.TYPE), self._encoders[Rejected](events[0]))]
        state = self.state
        before = state.event_count
        try:
            for event in events:
                evolve(state, event)
        except Exception as err:
            raise HalfApplied(f"command {cmd_seq}: folding its own events raised {type(err).__name__}") from err
        if state.event_count // self.checkpoint_every > before // self.checkpoint_every:
            checkpoint = Checkpoint(ENGINE_MARKET, cmd_seq, ts, state.event_count, _hash(state))
            evolve(state, checkpoint)
            events.append(checkpoint)
            payloads.append((wal_subject(ENGINE_MARKET, Checkpoint.TYPE), self._encoders[Checkpoint](checkpoint)))
        self.payloads = payloads
        return events

    def apply(self, event: Event, *, verify: bool = False) -> None:
        """Fold one event from the log; with verify, a checkpoint that disagrees raises Diverged."""
        if verify and isinstance(event, Checkpoint):
            actual = _hash(self.state)
            if actual != event.state_hash:
                raise Diverged(event, actual)
        evolve(self.state, event)


def _state_tree(state: State) -> list[Any]:
    """Everything the engine knows as plain lists, in a canonical order (no hash-order iteration)."""
    markets: list[Any] = []
    for market_id in sorted(state.markets):
        m = state.markets[market_id]
        books = []
        for runner, book in m.books.items():
            sides = []
            for levels in (book.bids, book.asks):
                sides.append(
                    [
                        [abs(k), [[o.order_id, o.account_id, o.client_order_id, o.qty, o.tif, o.stp, o.persistence]
                                  for o in lvl.values()]]
                        for k, lvl in levels.items()
                    ]
                )  # fmt: skip
            books.append([runner, book.last_price, sides])
        clients = sorted([a, c, oid] for a, mine in m.client_orders.items() for c, oid in mine.items())
        risk = [
            [a, r.open_orders, r.open_exposure, r.max_order_qty, r.max_open_orders, r.max_open_exposure]
            for a, r in sorted(m.risk.items())
        ]
        if m.kind == "pair":
            positions = [[a, pos] for a, pos in sorted(m.positions.items())]
        else:
            positions = [[a, sorted([r, wl] for r, wl in pos.items())] for a, pos in sorted(m.positions.items())]
        markets.append([
            market_id, m.kind, m.base, m.quote, m.tick_size, m.lot_size, m.min_qty, m.max_qty, m.min_price,
            m.max_price, m.band_bps, list(m.runners.items()), m.state, m.phase, m.next_order_id, m.next_trade_id,
            books, clients, risk, positions,
        ])  # fmt: skip
    return [state.last_cmd_seq, state.event_count, markets]


def snapshot(state: State) -> bytes:
    """The state as canonical msgpack: equal states give equal bytes, and `restore` reverses it."""
    return msgpack.packb(_state_tree(state), use_bin_type=True)  # type: ignore[no-any-return]


def restore(data: bytes) -> State:
    last_cmd_seq, event_count, markets = msgpack.unpackb(data, raw=False, use_list=True)
    state = State(last_cmd_seq=last_cmd_seq, event_count=event_count)
    for row in markets:
        (market_id, kind, base, quote, tick, lot, min_qty, max_qty, min_price, max_price, band, runners, mstate,
         phase, next_order_id, next_trade_id, books, clients, risk, positions) = row  # fmt: skip
        m = Market(market_id, kind, base, quote, tick, lot, min_qty, max_qty, min_price, max_price, band)
        m.runners = {r: label for r, label in runners}
        m.state, m.phase, m.next_order_id, m.next_trade_id = mstate, phase, next_order_id, next_trade_id
        for runner, last_price, sides in books:
            book = m.books[runner] = Book()
            book.last_price = last_price
            for side, levels in zip(("lay", "back") if kind == "odds" else ("buy", "sell"), sides, strict=True):
                for price, orders in levels:
                    for oid, account, coid, qty, tif, stp, persistence in orders:
                        book.add(Order(oid, account, coid, side, price, qty, runner, tif, stp, persistence))
        for a, c, oid in clients:
            m.client_orders.setdefault(a, {})[c] = oid
        m.risk = {a: Risk(*rest) for a, *rest in risk}
        if kind == "pair":
            m.positions = {a: pos for a, pos in positions}
        else:
            m.positions = {a: {r: wl for r, wl in pos} for a, pos in positions}
        state.markets[market_id] = m
    return state


def state_hash(state: State) -> str:
    """sha256 of the canonical snapshot (exchange-core's state hash)."""
    return hashlib.sha256(snapshot(state)).hexdigest()
