"""The exchange as a pure state machine: decide(state, command) -> events, evolve(state, event) -> state.

No I/O, no clock, no randomness, no floats. Time is the command's JetStream
timestamp, handed in by the shell. `decide` never mutates; `evolve` is the only
code that changes state, and it is the same code for live processing, engine
recovery and replay, so a replayed engine cannot differ from the live one.

`evolve` mutates the state in place and returns it: copying an order book per
event would make the fold quadratic, and nothing keeps old states.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from commands.model import CancelOrder, CreateMarket, Invalid, Parsed, PlaceOrder, parse
from engine.book import Book, Order
from events.model import (
    ENGINE_MARKET,
    Checkpoint,
    Event,
    Fill,
    MarketCreated,
    OrderAccepted,
    OrderCancelled,
    Rejected,
)

# One command's events are published as one ADR-50 atomic batch, which the
# server caps at 1000 messages. An order that would need more fills is refused
# whole rather than split across batches.
MAX_EVENTS_PER_COMMAND: Final = 1000
MAX_FILLS: Final = MAX_EVENTS_PER_COMMAND - 2  # room for the order_accepted and a checkpoint
# A checkpoint event follows the command whose events cross a multiple of this many events. It is
# part of the log, so re-deciding JB_CMD must use the same value to reproduce the same bytes.
CHECKPOINT_EVERY: Final = 100_000


@dataclass(slots=True)
class Market:
    market_id: str
    base: str
    quote: str
    book: Book = field(default_factory=Book)
    next_order_id: int = 1
    next_trade_id: int = 1
    # (account, client_order_id) -> order_id, kept for the market's life so a
    # repeated client_order_id is refused long after the broker's dedupe window.
    client_orders: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass(slots=True)
class State:
    markets: dict[str, Market] = field(default_factory=dict)
    last_cmd_seq: int = 0  # the newest command whose events are folded in
    event_count: int = 0  # events folded in so far; equals the JB_EVT sequence of the newest one


# --- decide -------------------------------------------------------------------------------------


def _reject(p: Parsed, seq: int, ts: int, reason: str, detail: str, order_id: int | None = None) -> Rejected:
    cmd = p.command
    coid = getattr(cmd, "client_order_id", None)
    return Rejected(p.market_id, seq, ts, reason, detail, p.account_id, cmd.type, coid, order_id)


def _decide_create_market(state: State, seq: int, ts: int, p: Parsed) -> list[Event]:
    cmd = p.command
    assert isinstance(cmd, CreateMarket)
    if cmd.market_id.startswith("_"):
        return [_reject(p, seq, ts, "invalid_market_id", "market ids starting with '_' are reserved")]
    if cmd.market_id in state.markets:
        return [_reject(p, seq, ts, "market_exists", f"market {cmd.market_id} exists")]
    return [MarketCreated(cmd.market_id, seq, ts, cmd.base, cmd.quote)]


def _decide_place(state: State, seq: int, ts: int, p: Parsed) -> list[Event]:
    cmd = p.command
    assert isinstance(cmd, PlaceOrder) and p.account_id is not None
    market = state.markets.get(p.market_id)
    if market is None:
        return [_reject(p, seq, ts, "unknown_market", f"no market {p.market_id}")]
    account = p.account_id
    if (account, cmd.client_order_id) in market.client_orders:
        return [_reject(p, seq, ts, "duplicate_client_order_id", "client_order_id already used")]
    matches = market.book.match(cmd.side, cmd.price, cmd.qty, MAX_FILLS)
    if matches is None:
        return [_reject(p, seq, ts, "too_many_fills", f"would need more than {MAX_FILLS} fills")]

    order_id = market.next_order_id
    resting = cmd.qty - sum(qty for _, qty in matches)
    out: list[Event] = [
        OrderAccepted(
            p.market_id, seq, ts, order_id, account, cmd.client_order_id, cmd.side, cmd.price, cmd.qty,
            cmd.tif, resting,
        )
    ]  # fmt: skip
    remaining = cmd.qty
    trade_id = market.next_trade_id
    for maker, qty in matches:
        remaining -= qty
        out.append(
            Fill(
                p.market_id, seq, ts, trade_id, maker.price, qty, maker.order_id, order_id,
                maker.account_id, account, cmd.side, maker.client_order_id, cmd.client_order_id,
                maker.qty - qty, remaining,
            )
        )  # fmt: skip
        trade_id += 1
    return out


def _decide_cancel(state: State, seq: int, ts: int, p: Parsed) -> list[Event]:
    cmd = p.command
    assert isinstance(cmd, CancelOrder) and p.account_id is not None
    market = state.markets.get(p.market_id)
    if market is None:
        return [_reject(p, seq, ts, "unknown_market", f"no market {p.market_id}", cmd.order_id)]
    book = market.book
    order_id = cmd.order_id
    if order_id is None:
        assert cmd.client_order_id is not None
        order_id = market.client_orders.get((p.account_id, cmd.client_order_id))
        if order_id is None:
            return [_reject(p, seq, ts, "unknown_order", "no such client_order_id for this account")]
    order: Order | None = book.orders.get(order_id)
    if order is None:
        if order_id < market.next_order_id:
            return [_reject(p, seq, ts, "order_not_open", "order is filled or cancelled", order_id)]
        return [_reject(p, seq, ts, "unknown_order", f"no order {order_id}", order_id)]
    if order.account_id != p.account_id:
        return [_reject(p, seq, ts, "not_order_owner", "order belongs to another account", order_id)]
    if cmd.client_order_id is not None and cmd.client_order_id != order.client_order_id:
        return [_reject(p, seq, ts, "unknown_order", "order_id and client_order_id name different orders", order_id)]
    return [
        OrderCancelled(
            p.market_id, seq, ts, order.order_id, order.account_id, order.client_order_id,
            order.side, order.price, order.qty, "user",
        )
    ]  # fmt: skip


_DECIDERS: Final[dict[type, Callable[[State, int, int, Parsed], list[Event]]]] = {
    CreateMarket: _decide_create_market,
    PlaceOrder: _decide_place,
    CancelOrder: _decide_cancel,
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
    return _DECIDERS[type(item.command)](state, cmd_seq, ts, item)


# --- evolve -------------------------------------------------------------------------------------


def _on_market_created(state: State, e: Event) -> None:
    assert isinstance(e, MarketCreated)
    state.markets[e.market_id] = Market(e.market_id, e.base, e.quote)


def _on_accepted(state: State, e: Event) -> None:
    # Only the part that will rest goes on the book; the fills that follow
    # take from the makers they name.
    assert isinstance(e, OrderAccepted)
    market = state.markets[e.market_id]
    if e.resting_qty > 0:
        market.book.add(Order(e.order_id, e.account_id, e.client_order_id, e.side, e.price, e.resting_qty))
    market.client_orders[(e.account_id, e.client_order_id)] = e.order_id
    market.next_order_id = e.order_id + 1


def _on_fill(state: State, e: Event) -> None:
    assert isinstance(e, Fill)
    market = state.markets[e.market_id]
    market.book.reduce(e.maker_order_id, e.qty)
    market.next_trade_id = e.trade_id + 1


def _on_cancelled(state: State, e: Event) -> None:
    assert isinstance(e, OrderCancelled)
    state.markets[e.market_id].book.remove(e.order_id)


def _on_nothing(state: State, e: Event) -> None:
    pass


_EVOLVERS: Final[dict[type, Callable[[State, Event], None]]] = {
    MarketCreated: _on_market_created,
    OrderAccepted: _on_accepted,
    Fill: _on_fill,
    OrderCancelled: _on_cancelled,
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

    def handle(self, cmd_seq: int, ts: int, subject: str, data: bytes) -> list[Event]:
        if cmd_seq <= self.state.last_cmd_seq:
            return []  # its events are already in the log: a redelivery, not a new command
        parsed = parse(subject, data)
        try:
            events = decide(self.state, cmd_seq, ts, parsed)
        except Exception as err:
            # A bug must not turn one command into a poison pill that halts every market on every
            # restart. decide does not mutate, so nothing is half-applied, and the same input
            # raises the same way on replay, so the reject is as deterministic as any other.
            events = [_internal_error(parsed, cmd_seq, ts, err)]
        state = self.state
        before = state.event_count
        for event in events:
            evolve(state, event)
        if state.event_count // self.checkpoint_every > before // self.checkpoint_every:
            checkpoint = Checkpoint(ENGINE_MARKET, cmd_seq, ts, state.event_count, state_hash(state))
            evolve(state, checkpoint)
            events.append(checkpoint)
        return events

    def apply(self, event: Event, *, verify: bool = False) -> None:
        """Fold one event from the log; with verify, a checkpoint that disagrees raises Diverged."""
        if verify and isinstance(event, Checkpoint):
            actual = state_hash(self.state)
            if actual != event.state_hash:
                raise Diverged(event, actual)
        evolve(self.state, event)


def _state_tree(state: State) -> list[Any]:
    """Everything the engine knows as plain lists, in a canonical order (no hash-order iteration)."""
    markets: list[Any] = []
    for market_id in sorted(state.markets):
        m = state.markets[market_id]
        sides = []
        for levels in (m.book.bids, m.book.asks):
            sides.append(
                [
                    [abs(key), [[o.order_id, o.account_id, o.client_order_id, o.qty] for o in lvl.values()]]
                    for key, lvl in levels.items()
                ]
            )
        clients = sorted([a, c, oid] for (a, c), oid in m.client_orders.items())
        markets.append([market_id, m.base, m.quote, m.next_order_id, m.next_trade_id, sides, clients])
    return [state.last_cmd_seq, state.event_count, markets]


def snapshot(state: State) -> bytes:
    """The state as canonical msgpack: equal states give equal bytes, and `restore` reverses it."""
    return msgpack.packb(_state_tree(state), use_bin_type=True)  # type: ignore[no-any-return]


def restore(data: bytes) -> State:
    last_cmd_seq, event_count, markets = msgpack.unpackb(data, raw=False, use_list=True)
    state = State(last_cmd_seq=last_cmd_seq, event_count=event_count)
    for market_id, base, quote, next_order_id, next_trade_id, sides, clients in markets:
        m = Market(market_id, base, quote, next_order_id=next_order_id, next_trade_id=next_trade_id)
        for side, levels in zip(("buy", "sell"), sides, strict=True):
            for price, orders in levels:
                for order_id, account_id, coid, qty in orders:
                    m.book.add(Order(order_id, account_id, coid, side, price, qty))
        m.client_orders = {(a, c): oid for a, c, oid in clients}
        state.markets[market_id] = m
    return state


def state_hash(state: State) -> str:
    """sha256 of the canonical snapshot (exchange-core's state hash)."""
    return hashlib.sha256(snapshot(state)).hexdigest()
