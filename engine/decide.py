"""decide(state, command) -> events: every rule of the exchange, one decider per command type.

Pure: no I/O, no clock, no randomness, no floats, and it never mutates the
state it reads (engine/evolve.py is the only code that does). Each decider
returns the command's events; a failed check raises `_Refuse`, which `decide`
turns into the command's one `rejected` event.

The rules (order types, amend, self-trade prevention, market lifecycle, odds,
risk) and the order in which a command's checks run are specified in
docs/PROTOCOL.md; the deciders follow that page section by section.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable
from typing import Any, Final, NamedTuple

from commands.model import (
    MAX_AMOUNT,
    MAX_MARKETS,
    MAX_OPEN_ORDERS,
    MAX_PRICE,
    MAX_RUNNERS,
    AddRunner,
    AmendOrder,
    AwaitLive,
    Batch,
    CancelAll,
    CancelOrder,
    CancelOrders,
    CloseMarket,
    Command,
    CreateMarket,
    GoLive,
    Invalid,
    Parsed,
    PlaceOrder,
    PlaceOrders,
    ReplaceOrders,
    SetMarketState,
    SetRiskLimits,
    SettleMarket,
    VoidMarket,
)
from engine.book import Book, Order, Take, implied_crosses, match_two_runner
from engine.evolve import apply_uncounted, evolve
from engine.state import Market, State
from events.model import (
    Event,
    Fill,
    MarketCreated,
    MarketSettled,
    MarketStateChanged,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrdersAccepted,
    OrdersCancelled,
    Rejected,
    RiskLimitsSet,
    RunnerAdded,
    accepted_row,
    cancelled_row,
)
from protocol.odds import ODDS_LADDER, ODDS_MAX, ODDS_MIN
from protocol.reasons import Reason
from protocol.subjects import ALL_MARKETS
from protocol.vocab import ODDS_SIDES, PAIR_SIDES, TERMINAL, MarketState, Phase

# One command's events are published as one ADR-50 atomic batch, which the
# server caps at 1000 messages. One slot is kept for a checkpoint; an order that
# would need more events is refused whole rather than split across batches.
MAX_EVENTS_PER_COMMAND: Final = 1000
MAX_COMMAND_EVENTS: Final = MAX_EVENTS_PER_COMMAND - 1
MAX_FILLS: Final = MAX_COMMAND_EVENTS - 1  # after the order_accepted
# Lists of many orders or accounts (mass cancels, settlement) are split into events of this many
# entries, so even a market with 400k resting orders closes in one atomic batch.
CHUNK: Final = 500

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


# --- the checks the deciders share ------------------------------------------------------------------


class _Refuse(Exception):
    """A check failed: decide turns this into the command's one Rejected event."""

    def __init__(self, reason: Reason, detail: str, order_id: int | None = None) -> None:
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
        if cmd.book_type == "two_runner" and len(cmd.runners) != 2:
            raise _Refuse("invalid_field", "book_type: two_runner needs exactly two runners")
    if cmd.kind == "pair" and cmd.book_type != "multi_runner":
        raise _Refuse("invalid_field", "book_type: not_allowed")
    if min_price > max_price:
        raise _Refuse("invalid_field", "min_price: out_of_range")
    min_qty = cmd.lot_size if cmd.min_qty is None else cmd.min_qty
    if min_qty > cmd.max_qty:
        raise _Refuse("invalid_field", "min_qty: out_of_range")
    return [
        MarketCreated(
            market_id=cmd.market_id, cmd_seq=seq, ts=ts, kind=cmd.kind, base=cmd.base, quote=cmd.quote,
            tick_size=cmd.tick_size, lot_size=cmd.lot_size, min_qty=min_qty, max_qty=cmd.max_qty,
            min_price=min_price, max_price=max_price, band_bps=cmd.band_bps,
            runners=[list(r) for r in cmd.runners or []], book_type=cmd.book_type,
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
    if market.book_type == "two_runner":
        raise _Refuse("runners_fixed", "a two_runner market has exactly its two runners")
    if cmd.runner_id in market.runners:
        raise _Refuse("runner_exists", f"runner {cmd.runner_id} exists")
    if len(market.runners) >= MAX_RUNNERS:
        raise _Refuse("too_many_runners", f"at most {MAX_RUNNERS} runners")
    return [RunnerAdded(market_id=p.market_id, cmd_seq=seq, ts=ts, runner_id=cmd.runner_id, label=cmd.label)]


def _illegal(market: Market, ctype: str) -> _Refuse:
    return _Refuse("illegal_transition", f"{market.state}/{market.phase} -> {ctype}")


def _changed(market: Market, seq: int, ts: int, ctype: str, state: MarketState, phase: Phase | None = None) -> Event:
    return MarketStateChanged(
        market_id=market.market_id, cmd_seq=seq, ts=ts, state=state, phase=phase or market.phase,
        previous_state=market.state, previous_phase=market.phase, cause=ctype,
    )  # fmt: skip


def _mass_cancel(
    market: Market, seq: int, ts: int, reason: str, orders: list[Order], account: str | None, size: int = 0
) -> list[Event]:
    """orders_cancelled events; by default sized so they leave room for one more event of the command."""
    size = size or _chunk_size(len(orders), 1, MAX_COMMAND_EVENTS - 1)
    rows = [[o.order_id, o.account_id, o.client_order_id, o.side, o.price, o.qty, o.runner] for o in orders]
    return [
        OrdersCancelled(market_id=market.market_id, cmd_seq=seq, ts=ts, reason=reason, account_id=account, orders=chunk)
        for chunk in _chunks(rows, size)
    ]


# --- the market's life: one decider per command (docs/PROTOCOL.md section 12) -----------------------


def _decide_set_market_state(state: State, seq: int, ts: int, p: Parsed) -> list[Event]:
    cmd = p.command
    assert isinstance(cmd, SetMarketState)
    market = _market(state, p)
    if market.state not in ("open", "suspended", "halted") or cmd.state == market.state:
        raise _illegal(market, cmd.type)
    return [_changed(market, seq, ts, cmd.type, cmd.state)]


def _before_the_event(market: Market, ctype: str) -> None:
    """await_live and go_live: only before the event starts, and not from halted or an end state."""
    if market.phase != "pre" or market.state not in ("open", "suspended"):
        raise _illegal(market, ctype)


def _decide_await_live(state: State, seq: int, ts: int, p: Parsed) -> list[Event]:
    market = _market(state, p)
    _before_the_event(market, AwaitLive.type)
    return [_changed(market, seq, ts, AwaitLive.type, "suspended")]


def _decide_go_live(state: State, seq: int, ts: int, p: Parsed) -> list[Event]:
    market = _market(state, p)
    _before_the_event(market, GoLive.type)
    lapsing = market.open_orders(lambda o: o.persistence == "lapse")
    return [
        *_mass_cancel(market, seq, ts, "lapsed", lapsing, None),
        _changed(market, seq, ts, GoLive.type, "open", "in_play"),
    ]


def _decide_close_market(state: State, seq: int, ts: int, p: Parsed) -> list[Event]:
    market = _market(state, p)
    if market.state not in ("open", "suspended", "halted"):
        raise _illegal(market, CloseMarket.type)
    resting = market.open_orders(lambda o: True)
    return [
        *_mass_cancel(market, seq, ts, "market_closed", resting, None),
        _changed(market, seq, ts, CloseMarket.type, "closed"),
    ]


def _decide_void_market(state: State, seq: int, ts: int, p: Parsed) -> list[Event]:
    market = _market(state, p)
    if market.state not in ("open", "suspended", "halted", "closed"):
        raise _illegal(market, VoidMarket.type)
    resting = market.open_orders(lambda o: True)
    return [
        *_mass_cancel(market, seq, ts, "market_voided", resting, None),
        _changed(market, seq, ts, VoidMarket.type, "voided"),
    ]


def _decide_settle_market(state: State, seq: int, ts: int, p: Parsed) -> list[Event]:
    cmd = p.command
    assert isinstance(cmd, SettleMarket)
    market = _market(state, p)
    ctype = cmd.type
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
    if market.state != "closed":
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
    m = p.market_id
    out += [
        MarketSettled(market_id=m, cmd_seq=seq, ts=ts, winner=cmd.winner, price=cmd.price, pnl=chunk)
        for chunk in _chunks(pnl, size)
    ] or [MarketSettled(market_id=m, cmd_seq=seq, ts=ts, winner=cmd.winner, price=cmd.price, pnl=[])]
    return out


# --- risk and trading ----------------------------------------------------------------------------


def _decide_risk_limits(state: State, seq: int, ts: int, p: Parsed) -> list[Event]:
    cmd = p.command
    assert isinstance(cmd, SetRiskLimits)
    market = _market(state, p)
    if market.state in ("settled", "voided"):
        raise _Refuse("market_closed", f"market is {market.state}")
    return [
        RiskLimitsSet(
            market_id=p.market_id,
            cmd_seq=seq,
            ts=ts,
            account_id=cmd.account_id,
            max_order_qty=cmd.max_order_qty,
            max_open_orders=cmd.max_open_orders,
            max_open_exposure=cmd.max_open_exposure,
        )
    ]


def _taker_events(
    market: Market, seq: int, ts: int, plan: list[tuple[Order, int]], order_id: int, account: str, coid: str,
    side: str, qty: int, runner: str | None, takes: list[Take] | None = None,
) -> list[Event]:  # fmt: skip
    """The fills and self-trade cancels of a match plan, in walk order (`takes`: a two_runner market's plan)."""
    out: list[Event] = []
    m = market.market_id
    remaining = qty
    trade_id = market.next_trade_id
    for n, (maker, q) in enumerate(plan):
        if q and takes is not None and maker.runner != runner:
            _, _, maker_q, maker_stake, taker_stake = takes[n]
            remaining -= q
            out.append(
                Fill(
                    market_id=m, cmd_seq=seq, ts=ts, trade_id=trade_id, price=maker.price, qty=q,
                    maker_order_id=maker.order_id, taker_order_id=order_id, maker_account=maker.account_id,
                    taker_account=account, taker_side=side, maker_client_order_id=maker.client_order_id,
                    taker_client_order_id=coid, maker_remaining=maker.qty - maker_q, taker_remaining=remaining,
                    runner=runner, implied=True, maker_runner=maker.runner, maker_qty=maker_q,
                    maker_stake=maker_stake, taker_stake=taker_stake,
                )
            )  # fmt: skip
            trade_id += 1
        elif q:
            remaining -= q
            out.append(
                Fill(
                    market_id=m, cmd_seq=seq, ts=ts, trade_id=trade_id, price=maker.price, qty=q,
                    maker_order_id=maker.order_id, taker_order_id=order_id, maker_account=maker.account_id,
                    taker_account=account, taker_side=side, maker_client_order_id=maker.client_order_id,
                    taker_client_order_id=coid, maker_remaining=maker.qty - q, taker_remaining=remaining,
                    runner=runner,
                )
            )  # fmt: skip
            trade_id += 1
        else:
            out.append(
                OrderCancelled(
                    market_id=m, cmd_seq=seq, ts=ts, order_id=maker.order_id, account_id=maker.account_id,
                    client_order_id=maker.client_order_id, side=maker.side, price=maker.price,
                    cancelled_qty=maker.qty, reason="self_trade", runner=maker.runner, was_resting=True,
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
    pair = market.kind == "pair"
    if pair:
        # Each account's change is a signed sum of the plan's terms, so it is at most the plan's total qty and
        # notional: if every account involved stays in bounds with those, the exact sums below would too.
        total_qty = total_notional = 0
        for maker, q in plan:
            total_qty += q
            total_notional += maker.price * q
        positions = market.positions
        for who in (account, *[maker.account_id for maker, q in plan if q]):
            pos = positions.get(who) or (0, 0)
            if abs(pos[1]) + total_notional + (abs(pos[0]) + total_qty) * MAX_PRICE > MAX_AMOUNT:
                break
        else:
            return
    deltas: dict[str, list[int]] = {}
    sign = 1 if side == "buy" or side == "back" else -1
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


def _check_positions_two(market: Market, takes: list[Take], account: str, side: str, runner: str | None) -> None:
    """_check_positions for a two_runner plan: an implied take moves each party's figures on its own runner."""
    deltas: dict[tuple[str, str | None], list[int]] = {}
    sign = 1 if side == "back" else -1

    def add(who: str, r: str | None, win: int, lose: int) -> None:
        d = deltas.get((who, r))
        if d is None:
            d = deltas[(who, r)] = [0, 0]
        d[0] += win
        d[1] += lose

    for maker, q, _maker_q, maker_stake, taker_stake in takes:
        if not q:
            continue
        if maker.runner == runner:
            add(account, runner, sign * q * (maker.price - 100), -sign * q * 100)
            add(maker.account_id, runner, -sign * q * (maker.price - 100), sign * q * 100)
        else:
            add(account, runner, sign * maker_stake, -sign * taker_stake)
            add(maker.account_id, maker.runner, sign * taker_stake, -sign * maker_stake)
    for (who, r), (dw, dl) in deltas.items():
        wl = (market.positions.get(who) or {}).get(r) or [0, 0]
        if not (abs(wl[0] + dw) <= MAX_ODDS_PNL and abs(wl[1] + dl) <= MAX_ODDS_PNL):
            raise _Refuse("amount_out_of_range", "a position would pass its 64-bit bound")


def _match(
    market: Market, book: Book, side: str, price: int | None, qty: int, account: str, stp: str, runner: str | None
) -> tuple[list[tuple[Order, int]], bool, int, bool, list[Take] | None]:
    """Book.match, or in a two_runner market the walk over both runners' books (the takes come back too)."""
    if market.book_type != "two_runner":
        plan, stopped, filled, overflow = book.match(side, price, qty, account, stp, MAX_FILLS)
        return plan, stopped, filled, overflow, None
    other = market.books[next(r for r in market.runners if r != runner)]
    takes, stopped, filled, overflow = match_two_runner(book, other, side, price, qty, account, stp, MAX_FILLS)
    return [(t[0], t[1]) for t in takes], stopped, filled, overflow, takes


def _would_take(market: Market, book: Book, side: str, price: int, runner: str | None) -> bool:
    """post_only's test: the best opposite order of the book, or in a two_runner market the implied one."""
    if book.crosses(side, price):
        return True
    if market.book_type != "two_runner":
        return False
    return implied_crosses(market.books[next(r for r in market.runners if r != runner)], side, price)


def _decide_place(state: State, seq: int, ts: int, p: Parsed) -> list[Event]:
    """A new order. The checks run in the order PROTOCOL.md gives; each one that an order does not use
    (a runner, risk limits, post_only, an implied book, a fill) costs it one test. A check that can fail
    is first made as one cheap comparison, and only a failure calls the function that names the reason.
    """
    cmd = p.command
    assert isinstance(cmd, PlaceOrder) and p.account_id is not None
    market = state.markets.get(p.market_id)
    if market is None:
        market = _market(state, p)  # raises unknown_market
    if market.state != "open":
        raise _Refuse("market_not_open", f"market is {market.state}")
    runner = cmd.runner
    side = cmd.side
    pair = market.kind == "pair"
    if not pair:
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
    order_type = cmd.order_type
    price = cmd.price if order_type == "limit" else cmd.protection_price
    if price is not None and (
        not pair or price % market.tick_size or not market.min_price <= price <= market.max_price or market.band_bps
    ):
        _check_price(market, book, price)
    qty = cmd.qty
    if qty % market.lot_size or qty < market.min_qty or qty > market.max_qty:
        _check_qty(market, qty)
    account = p.account_id
    coid = cmd.client_order_id
    mine = market.client_orders.get(account)
    if mine is not None and coid in mine:
        raise _Refuse("duplicate_client_order_id", "client_order_id already used")
    risk = market.risk.get(account)
    if risk is not None and risk.max_order_qty is not None and qty > risk.max_order_qty:
        raise _Refuse("max_order_qty_exceeded", f"qty: above {risk.max_order_qty}")
    tif = cmd.tif
    assert tif is not None  # parse resolved the default
    if tif == "post_only" and price is not None and _would_take(market, book, side, price, runner):
        raise _Refuse("post_only_would_take", "the order would take liquidity")
    if market.book_type != "two_runner":
        plan, stopped, filled, overflow = book.match(side, price, qty, account, cmd.stp, MAX_FILLS)
        takes = None
    else:
        plan, stopped, filled, overflow, takes = _match(market, book, side, price, qty, account, cmd.stp, runner)
    if filled < qty and tif == "fok":
        raise _Refuse("fok_not_filled", f"only {filled} of {qty} available")
    if overflow:
        raise _Refuse("too_many_fills", f"would need more than {MAX_COMMAND_EVENTS} events")
    remainder = qty - filled
    resting = remainder if not stopped and (tif == "gtc" or tif == "post_only") else 0
    taker_cancel = remainder > 0 and not resting
    if plan and 1 + len(plan) + taker_cancel > MAX_COMMAND_EVENTS:
        raise _Refuse("too_many_fills", f"would need more than {MAX_COMMAND_EVENTS} events")
    if risk is not None:
        if risk.max_open_exposure is not None:
            if price is not None:
                exposure = market.exposure(side, price, qty)
            elif takes is None:
                exposure = sum(market.exposure(side, maker.price, q) for maker, q in plan)
            else:  # an implied lay risks the maker's stake; a back its own
                exposure = sum(
                    t[3] if side == "lay" and t[0].runner != runner else market.exposure(side, t[0].price, t[1])
                    for t in takes
                )
            if risk.open_exposure + exposure > risk.max_open_exposure:
                raise _Refuse("max_open_exposure_exceeded", f"exposure would exceed {risk.max_open_exposure}")
        if risk.max_open_orders is not None and resting and risk.open_orders + 1 > risk.max_open_orders:
            raise _Refuse("max_open_orders_exceeded", f"at most {risk.max_open_orders} open orders")
    if resting:
        assert price is not None  # only limit orders rest
        if risk is not None and risk.open_orders >= MAX_OPEN_ORDERS:
            raise _Refuse("too_many_open_orders", f"at most {MAX_OPEN_ORDERS} open orders per account and market")
        exposure = price * resting if pair else market.exposure(side, price, resting)
        if (risk.open_exposure if risk is not None else 0) + exposure > MAX_AMOUNT:
            raise _Refuse("amount_out_of_range", "open exposure would pass its 64-bit bound")
    if takes is not None:
        _check_positions_two(market, takes, account, side, runner)
    elif plan:
        _check_positions(market, plan, account, side)

    m = p.market_id
    order_id = market.next_order_id
    out: list[Event] = [
        OrderAccepted(
            market_id=m, cmd_seq=seq, ts=ts, order_id=order_id, account_id=account, client_order_id=coid,
            side=side, price=price, qty=qty, tif=tif, resting_qty=resting, runner=runner,
            order_type=order_type, stp=cmd.stp, persistence=cmd.persistence,
        )
    ]  # fmt: skip
    if plan:
        out += _taker_events(market, seq, ts, plan, order_id, account, coid, side, qty, runner, takes)
    if taker_cancel:
        reason = "self_trade" if stopped else "unfilled"
        out.append(
            OrderCancelled(
                market_id=m, cmd_seq=seq, ts=ts, order_id=order_id, account_id=account, client_order_id=coid,
                side=side, price=price, cancelled_qty=remainder, reason=reason, runner=runner, was_resting=False,
            )
        )  # fmt: skip
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
            market_id=p.market_id,
            cmd_seq=seq,
            ts=ts,
            order_id=o.order_id,
            account_id=o.account_id,
            client_order_id=o.client_order_id,
            side=o.side,
            price=o.price,
            cancelled_qty=o.qty,
            reason="user",
            runner=o.runner,
            was_resting=True,
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
        takes: list[Take] | None = None
        stopped = False
        if not kept:
            if (
                price != order.price and order.tif == "post_only"
                and _would_take(market, book, order.side, price, order.runner)
            ):  # fmt: skip
                raise _Refuse("post_only_would_take", "the amended order would take liquidity")
            plan, stopped, filled, overflow, takes = _match(
                market, book, order.side, price, qty, order.account_id, order.stp, order.runner
            )
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
        if takes is not None:
            _check_positions_two(market, takes, order.account_id, order.side, order.runner)
        elif plan:
            _check_positions(market, plan, order.account_id, order.side)
    except _Refuse as refusal:
        refusal.order_id = oid
        raise
    m = p.market_id
    a, c, side, runner = order.account_id, order.client_order_id, order.side, order.runner
    out: list[Event] = [
        OrderAmended(
            market_id=m,
            cmd_seq=seq,
            ts=ts,
            order_id=oid,
            account_id=a,
            client_order_id=c,
            side=side,
            old_price=order.price,
            old_qty=order.qty,
            price=price,
            qty=qty,
            priority="kept" if kept else "lost",
            resting_qty=resting,
            runner=runner,
        )
    ]
    if plan:
        out += _taker_events(market, seq, ts, plan, oid, a, c, side, qty, runner, takes)
    if taker_cancel:
        out.append(
            OrderCancelled(
                market_id=m, cmd_seq=seq, ts=ts, order_id=oid, account_id=a, client_order_id=c, side=side,
                price=price, cancelled_qty=remainder, reason="self_trade", runner=runner, was_resting=False,
            )
        )  # fmt: skip
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
    return out or [
        OrdersCancelled(market_id=p.market_id, cmd_seq=seq, ts=ts, reason="cancel_all", account_id=account, orders=[])
    ]


# --- batches: place_orders, cancel_orders, replace_orders (docs/PROTOCOL.md "Batch commands") --------


def _scratch(state: State, market: Market) -> State:
    """A private copy of the one market a batch trades in, for its instructions to be decided and folded into.

    Each instruction must see the effects of the ones before it, yet decide may
    not change the state it reads: the instructions are folded into this copy,
    and the live state gets the batch's events from the engine like any
    command's. Only the batch's market is copied (no instruction reaches
    another). pickle rather than deepcopy: it is several times faster, and
    rebuilds the same dicts in the same order.
    """
    copy = pickle.loads(pickle.dumps(market, pickle.HIGHEST_PROTOCOL))
    return State({market.market_id: copy}, state.last_cmd_seq, state.event_count)


def _instruction_rejected(
    p: Parsed, seq: int, ts: int, cmd: Batch, index: int, reason: Reason, detail: str, order_id: int | None = None
) -> Rejected:
    ins = cmd.instructions[index]
    return Rejected(
        market_id=p.market_id, cmd_seq=seq, ts=ts, reason=reason, detail=detail, account_id=p.account_id,
        command_type=cmd.type, client_order_id=ins.client_order_id, order_id=order_id, index=index,
    )  # fmt: skip


class Folding(NamedTuple):
    """How a batch's decided events reach the state its later instructions are decided against.

    `events(index, events)` folds an instruction's events (in place, the engine
    also encodes them there) and returns what was folded. A compact batch
    folds each order of a run as it is decided with `row(event)`, the one
    order_accepted or order_cancelled it stands for, not logged on its own; and
    hands the run, once closed, to `run(event)`, which logs it as one event.
    """

    events: Callable[[int, list[Event]], list[Event]]
    row: Callable[[Event], None]
    run: Callable[[Event], None]


def _decide_batch(state: State, seq: int, ts: int, p: Parsed) -> list[Event]:
    """The batch decided purely: its instructions folded into a scratch copy of the market, never into `state`.

    The engine takes this path only for all_or_none, which may have to leave no
    trace; other batches it decides in place (`decide_in_place`), to the same
    events without the copy.
    """
    market = _market(state, p)
    cmd = p.command
    assert isinstance(cmd, PlaceOrders | CancelOrders | ReplaceOrders)
    if len(cmd.instructions) == 1:
        return _batch_loop(state, seq, ts, p, None)
    work = _scratch(state, market)

    def fold(index: int, events: list[Event]) -> list[Event]:
        for e in events:
            evolve(work, e)
        return events

    def row(event: Event) -> None:
        apply_uncounted(work, event)

    def run(event: Event) -> None:
        pass  # the scratch copy counts nothing anyone reads

    return _batch_loop(work, seq, ts, p, Folding(fold, row, run))


def decide_in_place(state: State, seq: int, ts: int, p: Parsed, folding: Folding) -> list[Event] | None:
    """A batch (not all_or_none) decided instruction by instruction against the live state, each folded in by
    `folding` before the next is decided; None if the batch is refused whole (nothing folded: decide it as
    usual).

    A batch is its instructions one by one, so deciding each against the state
    the ones before left, as separate commands would be, gives exactly
    `_decide_batch`'s events, without copying the market. `folding.events(index,
    events)` folds an instruction's events into `state` (the engine also
    encodes them there) and returns what was folded. A bug while deciding one instruction becomes that
    instruction's `internal_error` reject: the ones before it are folded, as
    they would be had they been sent alone, so nothing is half-applied.
    """
    cmd = p.command
    assert isinstance(cmd, PlaceOrders | CancelOrders | ReplaceOrders)
    if p.market_id not in state.markets or (isinstance(cmd, PlaceOrders) and cmd.all_or_none):
        return None
    return _batch_loop(state, seq, ts, p, folding, in_place=True)


def _compact_row(cmd: Batch, events: list[Event]) -> list[Any] | None:
    """The run row of an instruction's events if a compact batch reports them in a run, else None.

    place_orders: an order accepted that rests untouched (its order_accepted
    alone, resting_qty == qty); cancel_orders: a cancel that succeeded (its
    order_cancelled alone). Anything else (fills, self-trade cancels, an
    unfilled rest, a reject) keeps its own events and ends the run.
    """
    if len(events) != 1:
        return None
    e = events[0]
    if type(cmd) is PlaceOrders:
        return accepted_row(e) if isinstance(e, OrderAccepted) and e.resting_qty == e.qty else None
    return cancelled_row(e) if isinstance(e, OrderCancelled) else None


def _open_run(cmd: Batch, p: Parsed, seq: int, ts: int, row: list[Any]) -> OrdersAccepted | OrdersCancelled:
    """A compact run's one event, holding its first order's row."""
    m, account = p.market_id, p.account_id
    assert account is not None
    if type(cmd) is PlaceOrders:
        return OrdersAccepted(market_id=m, cmd_seq=seq, ts=ts, account_id=account, orders=[row])
    return OrdersCancelled(market_id=m, cmd_seq=seq, ts=ts, reason="user", account_id=account, orders=[row])


def _batch_loop(
    work: State, seq: int, ts: int, p: Parsed, folding: Folding | None, in_place: bool = False
) -> list[Event]:
    """Each instruction decided by its single command's decider, in order, against `work` as the ones before
    left it (`folding` folds them in; the last one's only when in place, the live state needing them all).

    Every instruction gets at least one event, so the batch's events stay within
    one atomic batch: an instruction whose events would leave too few slots for
    the rest is refused `too_many_fills`. With all_or_none the first refusal
    refuses every instruction, each with that reason, and nothing else happens.

    With `compact`, each run of consecutive instructions that `_compact_row`
    picks is reported as one orders_accepted / orders_cancelled, in the place
    of its first order's event. Only the reporting changes: the slots are
    counted as if every order had its own event (`size`), so a compact batch
    has the same outcomes as without compact, and `events.model.expand` turns
    its events into exactly the events it would have had.
    """
    cmd = p.command
    assert isinstance(cmd, PlaceOrders | CancelOrders | ReplaceOrders)
    decider = _BATCH_DECIDERS[type(cmd)]
    instructions = cmd.instructions
    n = len(instructions)
    out: list[Event] = []
    size = 0  # the batch's events so far, each order of a compact run counted as its own event
    compact = not isinstance(cmd, ReplaceOrders) and cmd.compact
    run: OrdersAccepted | OrdersCancelled | None = None
    for i, ins in enumerate(instructions):
        if isinstance(ins, Invalid):
            events: list[Event] = [_instruction_rejected(p, seq, ts, cmd, i, ins.reason, ins.detail)]
        else:
            try:
                events = decider(work, seq, ts, Parsed(p.market_id, p.account_id, ins))
                if size + len(events) + n - 1 - i > MAX_COMMAND_EVENTS:
                    raise _Refuse("too_many_fills", f"the batch would need more than {MAX_COMMAND_EVENTS} events")
            except _Refuse as r:
                events = [_instruction_rejected(p, seq, ts, cmd, i, r.reason, r.detail, r.order_id)]
            except Exception as err:
                if not in_place:
                    raise  # decided purely: the engine makes the whole command its internal_error
                events = [_instruction_rejected(p, seq, ts, cmd, i, "internal_error", type(err).__name__)]
        if type(events[0]) is Rejected and isinstance(cmd, PlaceOrders) and cmd.all_or_none:
            first = events[0]
            assert isinstance(first, Rejected) and not in_place
            return [
                first if j == i else
                _instruction_rejected(p, seq, ts, cmd, j, first.reason, f"all_or_none: instruction {i} refused")
                for j in range(n)
            ]  # fmt: skip
        folds = folding is not None and (in_place or i < n - 1)
        row = _compact_row(cmd, events) if compact else None
        if row is not None:
            if run is None:
                run = _open_run(cmd, p, seq, ts, row)
                out.append(run)
            else:
                run.orders.append(row)
            if folds:
                assert folding is not None
                folding.row(events[0])
            size += 1
            continue
        if run is not None:
            if folding is not None:
                folding.run(run)
            run = None
        if folds:
            assert folding is not None
            events = folding.events(i, events)
        out += events
        size += len(events)
    if run is not None and folding is not None:
        folding.run(run)
    return out


_BATCH_DECIDERS: Final[dict[type[Command], Decider]] = {
    PlaceOrders: _decide_place,
    CancelOrders: _decide_cancel,
    ReplaceOrders: _decide_amend,
}


# --- decide ------------------------------------------------------------------------------------------

Decider = Callable[[State, int, int, Parsed], list[Event]]
# One decider per command type; `decide` looks the command's class up here rather than walking an isinstance chain.
DECIDERS: Final[dict[type[Command], Decider]] = {
    CreateMarket: _decide_create_market,
    AddRunner: _decide_add_runner,
    SetMarketState: _decide_set_market_state,
    AwaitLive: _decide_await_live,
    GoLive: _decide_go_live,
    CloseMarket: _decide_close_market,
    SettleMarket: _decide_settle_market,
    VoidMarket: _decide_void_market,
    SetRiskLimits: _decide_risk_limits,
    PlaceOrder: _decide_place,
    CancelOrder: _decide_cancel,
    AmendOrder: _decide_amend,
    CancelAll: _decide_cancel_all,
    PlaceOrders: _decide_batch,
    CancelOrders: _decide_batch,
    ReplaceOrders: _decide_batch,
}


def decide(state: State, cmd_seq: int, ts: int, item: Parsed | Invalid) -> list[Event]:
    """The events one command causes. Never raises for bad input: that is a Rejected event."""
    if isinstance(item, Invalid):
        return [
            Rejected(
                market_id=item.market_id, cmd_seq=cmd_seq, ts=ts, reason=item.reason, detail=item.detail,
                account_id=item.account_id, command_type=item.command_type, client_order_id=item.client_order_id,
            )
        ]  # fmt: skip
    try:
        return DECIDERS[type(item.command)](state, cmd_seq, ts, item)
    except _Refuse as r:
        cmd = item.command
        return [
            Rejected(
                market_id=item.market_id, cmd_seq=cmd_seq, ts=ts, reason=r.reason, detail=r.detail,
                account_id=item.account_id, command_type=cmd.type,
                client_order_id=getattr(cmd, "client_order_id", None), order_id=r.order_id,
            )
        ]  # fmt: skip
