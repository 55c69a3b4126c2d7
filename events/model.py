"""Event types: the facts in JB_EVT.

Field order is wire order. `encode` walks the fields in declaration order, so
the same event always packs to the same bytes; that is what the determinism
check in `replay/` compares.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Final

import msgpack


@dataclass(frozen=True, slots=True)
class Event:
    TYPE: ClassVar[str] = ""
    market_id: str
    cmd_seq: int  # JB_CMD sequence of the command that caused this event
    ts: int  # that command's JetStream timestamp, ns since the epoch


@dataclass(frozen=True, slots=True)
class MarketCreated(Event):
    TYPE: ClassVar[str] = "market_created"
    base: str
    quote: str


@dataclass(frozen=True, slots=True)
class OrderAccepted(Event):
    TYPE: ClassVar[str] = "order_accepted"
    order_id: int
    account_id: str
    client_order_id: str
    side: str
    price: int
    qty: int
    tif: str
    resting_qty: int  # what rests on the book once this command's fills (which follow) are done


@dataclass(frozen=True, slots=True)
class Fill(Event):
    TYPE: ClassVar[str] = "fill"
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


@dataclass(frozen=True, slots=True)
class OrderCancelled(Event):
    TYPE: ClassVar[str] = "order_cancelled"
    order_id: int
    account_id: str
    client_order_id: str
    side: str
    price: int
    cancelled_qty: int  # the open qty that left the book
    reason: str  # "user" for a cancel_order


@dataclass(frozen=True, slots=True)
class Rejected(Event):
    TYPE: ClassVar[str] = "rejected"
    reason: str
    detail: str
    account_id: str | None = None
    command_type: str | None = None
    client_order_id: str | None = None
    order_id: int | None = None


# Checkpoints are the engine's, not a market's: they go out under this reserved market token.
ENGINE_MARKET: Final = "_engine"


@dataclass(frozen=True, slots=True)
class Checkpoint(Event):
    """Every N events the engine states its hash, so any follower can detect divergence where it happens."""

    TYPE: ClassVar[str] = "checkpoint"
    covers_seq: int  # the JB_EVT sequence of the last event the hash covers (the one before this checkpoint)
    state_hash: str  # engine.core.state_hash of the state right after event `covers_seq`


EVENT_TYPES: Final[dict[str, type[Event]]] = {
    cls.TYPE: cls for cls in (MarketCreated, OrderAccepted, Fill, OrderCancelled, Rejected, Checkpoint)
}
_FIELDS: Final[dict[type[Event], tuple[str, ...]]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in EVENT_TYPES.values()
}


def to_wire(event: Event) -> dict[str, Any]:
    body: dict[str, Any] = {"type": event.TYPE}
    for name in _FIELDS[type(event)]:
        body[name] = getattr(event, name)
    return body


def encode(event: Event) -> bytes:
    return msgpack.packb(to_wire(event), use_bin_type=True)  # type: ignore[no-any-return]


class UnknownEvent(ValueError):
    """A JB_EVT payload this version cannot read: a newer writer, or not ours."""


def from_wire(body: dict[str, Any]) -> Event:
    cls = EVENT_TYPES.get(body.get("type", ""))
    if cls is None:
        raise UnknownEvent(f"unknown event type {body.get('type')!r}")
    return cls(**{name: body[name] for name in _FIELDS[cls] if name in body})


def decode(data: bytes) -> Event:
    return from_wire(msgpack.unpackb(data, raw=False))
