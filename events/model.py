"""Event types: the facts in JB_EVT.

Field order is wire order. `encode` walks the fields in declaration order, so
the same event always packs to the same bytes; that is what the determinism
check in `replay/` compares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Final

import msgpack
import msgspec

from protocol.reasons import Reason
from protocol.vocab import MarketKind, MarketState, Phase

# Events are msgspec Structs (not frozen, not tracked by the garbage collector: they hold no cycles):
# one is built in about a quarter of a slotted dataclass's time, and msgspec packs it in C, `type`
# first as its tag, so `make_encoders` needs no per-event dict. The engine builds one per fill.
# Nothing mutates an event after decide returns it (msgspec.structs.replace makes changed copies).
# Build them by keyword: an event has up to 21 fields, and a positional call that swaps two ints
# would still type-check. (msgspec's kw_only would put the base fields after the class's own, and
# field order is wire order.) `type` is the wire name of the event, as `type` is a command's.


class Event(msgspec.Struct, gc=False, tag_field="type"):
    type: ClassVar[str] = ""
    market_id: str
    cmd_seq: int  # JB_CMD sequence of the command that caused this event
    ts: int  # that command's JetStream timestamp, ns since the epoch


class MarketCreated(Event, tag="market_created"):
    type: ClassVar[str] = "market_created"
    kind: MarketKind
    base: str
    quote: str
    tick_size: int
    lot_size: int
    min_qty: int
    max_qty: int
    min_price: int
    max_price: int
    band_bps: int  # 0: no dynamic band around the last trade
    runners: list[list[str]]  # [[runner_id, label], ...]; [] for pairs
    # Optional (on the wire only when not the default, so every market before issue 13 keeps its bytes):
    book_type: str = "multi_runner"  # odds: "two_runner" matches through the implied price (PROTOCOL 11.1)


class RunnerAdded(Event, tag="runner_added"):
    type: ClassVar[str] = "runner_added"
    runner_id: str
    label: str


class MarketStateChanged(Event, tag="market_state_changed"):
    type: ClassVar[str] = "market_state_changed"
    state: MarketState
    phase: Phase
    previous_state: MarketState
    previous_phase: Phase
    cause: str  # the command type that caused it


class RiskLimitsSet(Event, tag="risk_limits_set"):
    type: ClassVar[str] = "risk_limits_set"
    account_id: str
    max_order_qty: int | None
    max_open_orders: int | None
    max_open_exposure: int | None


class OrderAccepted(Event, tag="order_accepted"):
    type: ClassVar[str] = "order_accepted"
    order_id: int
    account_id: str
    client_order_id: str
    side: str
    price: int | None  # the limit price; a market order's protection price, or None
    qty: int
    tif: str
    resting_qty: int  # what rests on the book once this command's fills (which follow) are done
    runner: str | None
    order_type: str
    stp: str
    persistence: str


class OrderAmended(Event, tag="order_amended"):
    type: ClassVar[str] = "order_amended"
    order_id: int
    account_id: str
    client_order_id: str
    side: str
    old_price: int
    old_qty: int  # open qty before the amend
    price: int
    qty: int  # open qty after the amend, before any fills it causes
    priority: str  # "kept" | "lost"
    resting_qty: int  # what rests once the fills that follow are done
    runner: str | None


class Fill(Event, tag="fill", omit_defaults=True):
    type: ClassVar[str] = "fill"
    trade_id: int
    price: int
    qty: int
    maker_order_id: int
    taker_order_id: int
    maker_account: str
    taker_account: str
    taker_side: str
    maker_client_order_id: str
    taker_client_order_id: str
    maker_remaining: int  # open qty of the maker order after this fill
    taker_remaining: int  # open qty of the taker order after this fill
    runner: str | None  # the taker's runner (and the maker's, unless implied)
    # Optional: only an implied fill (two_runner markets) carries these, so a direct fill keeps its bytes.
    # `qty` is then the taker's stake and `price` the maker's odds on the maker's runner.
    implied: bool = False
    maker_runner: str | None = None  # the other runner, whose same side the maker was on
    maker_qty: int = 0  # what the maker's order gave up (whole stake units)
    maker_stake: int = 0  # the maker's stake in the bet, hundredths of a stake unit (= the taker's win)
    taker_stake: int = 0  # the taker's stake in the bet, hundredths (= the maker's win)


class OrderCancelled(Event, tag="order_cancelled"):
    type: ClassVar[str] = "order_cancelled"
    order_id: int
    account_id: str
    client_order_id: str
    side: str
    price: int | None
    cancelled_qty: int  # the open qty that left the book (or never reached it)
    reason: str  # "user" | "self_trade" | "unfilled"
    runner: str | None
    was_resting: bool  # False for the unfilled rest of a taker, which never reached the book


class OrdersCancelled(Event, tag="orders_cancelled"):
    """Many orders at once (cancel_all, close, void, going in play, a compact cancel_orders' run), chunked to fit
    one atomic batch."""

    type: ClassVar[str] = "orders_cancelled"
    reason: str  # "cancel_all" | "market_closed" | "market_voided" | "lapsed" | "user" (compact cancel_orders)
    account_id: str | None  # the account of a cancel_all or cancel_orders; None for market-wide cancels
    orders: list[list[Any]]  # [[order_id, account_id, client_order_id, side, price, cancelled_qty, runner], ...]


class OrdersAccepted(Event, tag="orders_accepted"):
    """A compact batch's run of orders that were accepted and rest untouched (v1.3, PROTOCOL 8.13).

    The same facts as one order_accepted per row, in one message: the message,
    not the bytes, is what a batch pays for on the way through JetStream.
    `accepted_orders` gives the equivalent order_accepted events; evolve and
    every consumer fold it through them.
    """

    type: ClassVar[str] = "orders_accepted"
    account_id: str
    # [[order_id, client_order_id, side, price, qty, tif, runner, order_type, stp, persistence], ...]: an
    # order_accepted's fields but account_id (the event's) and resting_qty (= qty: nothing traded).
    orders: list[list[Any]]


# An orders_accepted row's columns, in order: an order_accepted's fields less account_id and resting_qty.
ACCEPTED_ROW: Final = (
    "order_id", "client_order_id", "side", "price", "qty", "tif", "runner", "order_type", "stp", "persistence",
)  # fmt: skip


def accepted_row(e: OrderAccepted) -> list[Any]:
    """The orders_accepted row of an order that rests untouched (resting_qty == qty)."""
    return [e.order_id, e.client_order_id, e.side, e.price, e.qty, e.tif, e.runner, e.order_type, e.stp, e.persistence]


def accepted_orders(e: OrdersAccepted) -> list[OrderAccepted]:
    """The order_accepted events an orders_accepted stands for, in row order.

    A row that is not a list of ACCEPTED_ROW's ten columns raises ValueError (a
    forged event): readers turn that into CorruptLog, as for any event that
    does not fold.
    """
    out = []
    for row in e.orders:
        if type(row) is not list or len(row) != 10:
            raise ValueError(f"orders_accepted row {row!r:.80}: not a list of 10")
        order_id, coid, side, price, qty, tif, runner, order_type, stp, persistence = row
        out.append(
            OrderAccepted(
                market_id=e.market_id, cmd_seq=e.cmd_seq, ts=e.ts, order_id=order_id, account_id=e.account_id,
                client_order_id=coid, side=side, price=price, qty=qty, tif=tif, resting_qty=qty, runner=runner,
                order_type=order_type, stp=stp, persistence=persistence,
            )
        )  # fmt: skip
    return out


def cancelled_row(e: OrderCancelled) -> list[Any]:
    """The orders_cancelled row of a resting order's cancel."""
    return [e.order_id, e.account_id, e.client_order_id, e.side, e.price, e.cancelled_qty, e.runner]


def cancelled_orders(e: OrdersCancelled) -> list[OrderCancelled]:
    """The order_cancelled events an orders_cancelled stands for (each order was resting), in row order.

    For a compact cancel_orders' run (reason "user") these are exactly the
    events the cancels would have had one by one. ValueError for a row that is
    not a list of seven (a forged event).
    """
    out = []
    for row in e.orders:
        if type(row) is not list or len(row) != 7:
            raise ValueError(f"orders_cancelled row {row!r:.80}: not a list of 7")
        order_id, account_id, coid, side, price, qty, runner = row
        out.append(
            OrderCancelled(
                market_id=e.market_id, cmd_seq=e.cmd_seq, ts=e.ts, order_id=order_id, account_id=account_id,
                client_order_id=coid, side=side, price=price, cancelled_qty=qty, reason=e.reason, runner=runner,
                was_resting=True,
            )
        )  # fmt: skip
    return out


def expand(events: list[Event]) -> list[Event]:
    """Events with each orders_accepted, and each orders_cancelled of reason "user" (a compact cancel_orders'
    run), replaced by the single-order events it stands for: a compact batch's events become exactly the
    events of the same batch without compact. Every other event stays as it is."""
    out: list[Event] = []
    for e in events:
        if type(e) is OrdersAccepted:
            out += accepted_orders(e)
        elif type(e) is OrdersCancelled and e.reason == "user":
            out += cancelled_orders(e)
        else:
            out.append(e)
    return out


class MarketSettled(Event, tag="market_settled"):
    type: ClassVar[str] = "market_settled"
    winner: str | None  # odds markets
    price: int | None  # pair markets: the settlement price
    pnl: list[list[Any]]  # [[account_id, realised pnl], ...] by account id


class Rejected(Event, tag="rejected"):
    type: ClassVar[str] = "rejected"
    reason: Reason
    detail: str
    account_id: str | None = None
    command_type: str | None = None
    client_order_id: str | None = None
    order_id: int | None = None
    # Optional: only a batch's instruction carries it (its 0-based place in `instructions`), so a single
    # command's reject keeps its bytes.
    index: int | None = None


# Checkpoints are the engine's, not a market's: they go out under this reserved market token.
ENGINE_MARKET: Final = "_engine"


class Checkpoint(Event, tag="checkpoint"):
    """Every N events the engine states its hash, so any follower can detect divergence where it happens."""

    type: ClassVar[str] = "checkpoint"
    covers_seq: int  # the JB_EVT sequence of the last event the hash covers (the one before this checkpoint)
    state_hash: str  # engine.core.state_hash of the state right after event `covers_seq`


EVENT_TYPES: Final[dict[str, type[Event]]] = {
    cls.type: cls
    for cls in (
        MarketCreated, RunnerAdded, MarketStateChanged, RiskLimitsSet, OrderAccepted, OrderAmended, Fill,
        OrderCancelled, OrdersCancelled, MarketSettled, Rejected, Checkpoint, OrdersAccepted,
    )
}  # fmt: skip
_FIELDS: Final[dict[type[Event], tuple[str, ...]]] = {cls: cls.__struct_fields__ for cls in EVENT_TYPES.values()}
# Fields added after events were first logged, as one trailing group per class: the group goes on the
# wire only when its first field differs from its default (absent means every default), so an event
# that does not use them packs to the bytes it always did and re-deciding an old log gives old bytes.
_OPTIONAL: Final[dict[type[Event], dict[str, Any]]] = {
    MarketCreated: {"book_type": "multi_runner"},
    Fill: {"implied": False, "maker_runner": None, "maker_qty": 0, "maker_stake": 0, "taker_stake": 0},
    Rejected: {"index": None},
}


def to_wire(event: Event) -> dict[str, Any]:
    body: dict[str, Any] = {"type": event.type}
    optional = _OPTIONAL.get(type(event))
    skip = optional is not None and all(getattr(event, name) == d for name, d in list(optional.items())[:1])
    for name in _FIELDS[type(event)]:
        if not (skip and optional is not None and name in optional):
            body[name] = getattr(event, name)
    return body


def encode(event: Event) -> bytes:
    return msgpack.packb(to_wire(event), use_bin_type=True)  # type: ignore[no-any-return]


def _encoder_source(cls: type[Event]) -> str:
    optional = _OPTIONAL.get(cls, {})
    required = [name for name in _FIELDS[cls] if name not in optional]
    items = ", ".join([f"'type': {cls.type!r}", *(f"{name!r}: e.{name}" for name in required)])
    if not optional:
        return f"lambda e: pack({{{items}}})"
    # The optional fields trail the required ones (to_wire's order); one test on the first picks the
    # common case (none set) so a direct fill pays one comparison.
    first = next(iter(optional))
    rest = ", ".join(f"{name!r}: e.{name}" for name in optional)
    return f"lambda e: pack({{{items}}} if e.{first} == {optional[first]!r} else {{{items}, {rest}}})"


def make_encoders() -> dict[type[Event], Callable[[Event], bytes]]:
    """Per event class, an `encode` that gives the same bytes several times as fast, for one thread's use.

    msgspec packs an event Struct in C as the map `to_wire` builds: the `type`
    tag first, then the fields in declaration order, with the same
    smallest-width int, str, array and map forms msgpack uses (the encoder
    tests compare every event class, and the edge widths). The optional trailing
    groups are where the two could differ: a fill is packed by msgspec (Fill
    has omit_defaults, and always 16 or more entries, so both write a map16
    header) only when its whole group is at the defaults; an implied fill (whose
    group goes out whole, defaults included) and a market_created (one per
    market; msgspec would write a map16 header where msgpack writes a fixmap)
    go through the generated dict encoder, as before, and so does a reject
    (its optional batch `index`). Those share one Packer,
    which is not thread-safe, so each user (the engine) makes its own.
    """
    pack = msgpack.Packer(use_bin_type=True).pack
    slow: dict[type[Event], Callable[[Event], bytes]] = {
        cls: eval(_encoder_source(cls), {"pack": pack})  # source built from our own field names
        for cls in EVENT_TYPES.values()
    }
    fast = msgspec.msgpack.Encoder().encode
    encoders: dict[type[Event], Callable[[Event], bytes]] = {cls: fast for cls in EVENT_TYPES.values()}
    slow_fill = slow[Fill]

    def encode_fill(e: Event) -> bytes:
        assert isinstance(e, Fill)
        if e.implied is False and e.maker_runner is None and not (e.maker_qty or e.maker_stake or e.taker_stake):
            return fast(e)
        return slow_fill(e)

    encoders[Fill] = encode_fill
    encoders[MarketCreated] = slow[MarketCreated]
    # A reject's optional `index` (a batch instruction's) must be absent, not nil, on a single command's
    # reject, and the other None fields present: no msgspec option says that, so a single command's reject
    # is packed as _RejectedOne (the same fields in the same order, without `index`) and a batch
    # instruction's keeps the dict encoder. (A cancel of a filled order is a reject: 1 command in 10 of
    # the peer bench's flow.)
    slow_rejected = slow[Rejected]

    def encode_rejected(e: Event) -> bytes:
        assert isinstance(e, Rejected)
        if e.index is None:
            return fast(
                _RejectedOne(
                    e.market_id, e.cmd_seq, e.ts, e.reason, e.detail, e.account_id, e.command_type,
                    e.client_order_id, e.order_id,
                )
            )  # fmt: skip
        return slow_rejected(e)

    encoders[Rejected] = encode_rejected
    return encoders


class _RejectedOne(msgspec.Struct, gc=False, tag_field="type", tag="rejected"):
    """The wire form of a single command's reject (Rejected without its batch `index`), for msgspec to pack."""

    market_id: str
    cmd_seq: int
    ts: int
    reason: str
    detail: str
    account_id: str | None
    command_type: str | None
    client_order_id: str | None
    order_id: int | None


class UnknownEvent(ValueError):
    """A JB_EVT payload this version cannot read: a newer writer, or not ours."""


def from_wire(body: dict[str, Any]) -> Event:
    cls = EVENT_TYPES.get(body.get("type", ""))
    if cls is None:
        raise UnknownEvent(f"unknown event type {body.get('type')!r}")
    return cls(**{name: body[name] for name in _FIELDS[cls] if name in body})


def decode(data: bytes) -> Event:
    return from_wire(msgpack.unpackb(data, raw=False))
