"""Command models and the one function that turns raw JB_CMD bytes into a command.

`parse` is pure and total: any subject and any bytes give either a `Parsed`
command or an `Invalid` with a machine-readable reason. It runs inside the
deterministic path (re-deciding JB_CMD must give the same events byte for
byte), so the `detail` it writes is built from stable error codes, never from a
library's human-readable message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgpack
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from commands.subjects import CMD_PREFIX, CTL_PREFIX, UNROUTABLE_MARKET, is_id

SCHEMA_VERSION: Final = 1
# Prices and quantities stay well inside SQLite's signed 64-bit integers even
# when multiplied (notional = price * qty < 2**63).
MAX_PRICE: Final = 10**9
MAX_QTY: Final = 10**9

Id = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Side = Literal["buy", "sell"]


class _Command(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")


class CreateMarket(_Command):
    """Control command on jb.ctl.<market_id>. Extra fields are accepted and ignored."""

    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")
    type: Literal["create_market"] = "create_market"
    market_id: Id
    base: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    quote: Annotated[str, StringConstraints(min_length=1, max_length=32)]


class PlaceOrder(_Command):
    type: Literal["place_order"] = "place_order"
    client_order_id: Id
    side: Side
    price: Annotated[int, Field(gt=0, le=MAX_PRICE)]
    qty: Annotated[int, Field(gt=0, le=MAX_QTY)]
    tif: Literal["gtc"] = "gtc"
    market_id: Id | None = None
    account_id: Id | None = None


class CancelOrder(_Command):
    type: Literal["cancel_order"] = "cancel_order"
    order_id: Annotated[int, Field(gt=0)] | None = None
    client_order_id: Id | None = None
    market_id: Id | None = None
    account_id: Id | None = None


Command = CreateMarket | PlaceOrder | CancelOrder

# type -> (model, subject family it must arrive on)
COMMANDS: Final[dict[str, tuple[type[_Command], str]]] = {
    "create_market": (CreateMarket, "ctl"),
    "place_order": (PlaceOrder, "cmd"),
    "cancel_order": (CancelOrder, "cmd"),
}

# Field-specific reasons; any other bad field is `invalid_field`.
_FIELD_REASONS: Final = {
    "price": "invalid_price",
    "qty": "invalid_qty",
    "side": "invalid_side",
    "tif": "unsupported_tif",
    "market_id": "invalid_market_id",
}


@dataclass(frozen=True, slots=True)
class Parsed:
    market_id: str
    account_id: str | None  # None for control commands
    command: Command


@dataclass(frozen=True, slots=True)
class Invalid:
    market_id: str
    account_id: str | None
    reason: str
    detail: str
    command_type: str | None = None
    client_order_id: str | None = None


def _split_subject(subject: str) -> tuple[str, str | None, str | None] | Invalid:
    """(family, market, account) from a JB_CMD subject, or why it is unusable."""
    tokens = subject.split(".")
    market = tokens[2] if len(tokens) > 2 and is_id(tokens[2]) else None
    prefix = ".".join(tokens[:2])
    if prefix == CMD_PREFIX and len(tokens) == 4 and market and is_id(tokens[3]):
        return "cmd", market, tokens[3]
    if prefix == CTL_PREFIX and len(tokens) == 3 and market:
        return "ctl", market, None
    account = tokens[3] if prefix == CMD_PREFIX and len(tokens) == 4 and is_id(tokens[3]) else None
    return Invalid(market or UNROUTABLE_MARKET, account, "invalid_subject", f"subject {subject[:200]!r}")


def _reject_from_validation(
    err: ValidationError, market: str, account: str | None, ctype: str, coid: str | None
) -> Invalid:
    first = err.errors(include_url=False)[0]
    loc = first["loc"]
    field = str(loc[0]) if loc else ""
    kind = first["type"]
    if kind == "missing":
        reason = "missing_field"
    elif kind == "extra_forbidden":
        reason = "unknown_field"
    else:
        reason = _FIELD_REASONS.get(field, "invalid_field")
    return Invalid(market, account, reason, f"{field}: {kind}", ctype, coid)


def parse(subject: str, data: bytes) -> Parsed | Invalid:
    where = _split_subject(subject)
    if isinstance(where, Invalid):
        return where
    family, market, account = where
    assert market is not None
    try:
        body: Any = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # any undecodable bytes, whatever msgpack raises
        return Invalid(market, account, "malformed", f"not msgpack: {type(exc).__name__}")
    if not isinstance(body, dict):
        return Invalid(market, account, "malformed", f"payload is {type(body).__name__}, not a map")

    raw_coid = body.get("client_order_id")
    coid = raw_coid if is_id(raw_coid) else None
    ctype = body.get("type")
    if ctype is None:
        return Invalid(market, account, "missing_field", "type: missing", None, coid)
    entry = COMMANDS.get(ctype) if isinstance(ctype, str) else None
    if entry is None:
        return Invalid(market, account, "unknown_type", f"type {str(ctype)[:64]!r}", None, coid)
    model, wanted_family = entry
    if family != wanted_family:
        return Invalid(market, account, "wrong_subject", f"{ctype} goes on jb.{wanted_family}", ctype, coid)
    version = body.pop("v", SCHEMA_VERSION)
    if type(version) is not int or version != SCHEMA_VERSION:
        return Invalid(market, account, "unsupported_version", f"v: {str(version)[:16]}", ctype, coid)
    try:
        command: Any = model.model_validate(body)
    except ValidationError as err:
        return _reject_from_validation(err, market, account, ctype, coid)

    if isinstance(command, CreateMarket):
        if command.market_id != market:
            return Invalid(market, None, "market_mismatch", "market_id differs from subject", ctype)
        return Parsed(market, None, command)
    if command.market_id is not None and command.market_id != market:
        return Invalid(market, account, "market_mismatch", "market_id differs from subject", ctype, coid)
    if command.account_id is not None and command.account_id != account:
        return Invalid(market, account, "account_mismatch", "account_id differs from subject", ctype, coid)
    if isinstance(command, CancelOrder) and command.order_id is None and command.client_order_id is None:
        return Invalid(market, account, "missing_field", "order_id: missing", ctype, coid)
    return Parsed(market, account, command)


def encode(command: Command) -> bytes:
    """The wire form of a command, as any client would send it."""
    return msgpack.packb(command.model_dump(exclude_none=True), use_bin_type=True)  # type: ignore[no-any-return]
