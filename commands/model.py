"""Command types and the one function that turns raw JB_CMD bytes into a command.

`parse` is pure and total: any subject and any bytes give either a `Parsed`
command or an `Invalid` with a machine-readable reason. It runs inside the
deterministic path (re-deciding JB_CMD must give the same events byte for
byte), so every `detail` it writes is `<field>: <code>` from a fixed set of
codes, never a library's message.

Validation is written out by hand from one table per command rather than
through pydantic: parsing was 42% of the core's time with pydantic models, and
this is the hot path of every order. Each field is checked in table order, so
the reason for a command with several bad fields is always the same one. The
table is also what clients are checked against before they publish (the CLI
runs `parse` on what it is about to send), so there is one definition of a
valid command.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Final, Literal

import msgpack
import msgspec

from protocol.reasons import Reason
from protocol.subjects import ALL_MARKETS, CMD_PREFIX, CTL_PREFIX, UNROUTABLE_MARKET, is_id
from protocol.vocab import (
    BOOK_TYPES,
    MARKET_KINDS,
    ORDER_TYPES,
    PERSISTENCE,
    SETTABLE_STATES,
    SIDES,
    STP_MODES,
    TIFS,
    BookType,
    MarketKind,
    OrderType,
    Persistence,
    SettableState,
    Side,
    Stp,
    Tif,
)

SCHEMA_VERSION: Final = 1
# Prices and quantities stay well inside SQLite's signed 64-bit integers even
# when multiplied (notional = price * qty < 2**63).
MAX_PRICE: Final = 10**9
MAX_QTY: Final = 10**9
MAX_LIMIT: Final = 2**62  # risk limits
MAX_RUNNERS: Final = 64
# Every amount the engine stores or publishes (cash, positions, P&L, exposure) stays within a signed
# 64-bit integer: the read model keeps them as SQLite INTEGERs and msgpack packs at most 64 bits.
MAX_AMOUNT: Final = 2**63 - 1
# Venue resources (docs/PROTOCOL.md "Limits"): each has a reject reason when a command would pass it.
MAX_MARKETS: Final = 10_000  # markets ever created on the venue (settled and voided ones stay in the state)
MAX_OPEN_ORDERS: Final = 10_000  # resting orders per account per market
# Instructions in one batch command (place_orders, cancel_orders, replace_orders); more is refused whole.
MAX_INSTRUCTIONS: Final = 200
# How deep `show` looks into a value before it gives up and names only its type.
_SHOW_DEPTH: Final = 16


# --- the commands -------------------------------------------------------------------------------
# Slotted, not frozen (frozen dataclasses cost ~2 µs each to build); nothing mutates a command.


@dataclass(slots=True)
class CreateMarket:
    type: ClassVar[str] = "create_market"
    market_id: str
    quote: str
    base: str = ""
    kind: MarketKind = "pair"
    tick_size: int = 1
    lot_size: int = 1
    min_qty: int | None = None  # default: lot_size
    max_qty: int = MAX_QTY
    min_price: int | None = None  # default: 1 for pairs, 101 (odds 1.01) for odds
    max_price: int | None = None  # default: MAX_PRICE for pairs, 100000 (odds 1000) for odds
    band_bps: int = 0
    runners: list[list[str]] | None = None  # odds: [[runner_id, label], ...]
    book_type: BookType = "multi_runner"  # odds: "two_runner" adds implied matching (exactly two runners)


@dataclass(slots=True)
class AddRunner:
    type: ClassVar[str] = "add_runner"
    runner_id: str
    label: str


@dataclass(slots=True)
class SetMarketState:
    type: ClassVar[str] = "set_market_state"
    state: SettableState


@dataclass(slots=True)
class AwaitLive:
    type: ClassVar[str] = "await_live"


@dataclass(slots=True)
class GoLive:
    type: ClassVar[str] = "go_live"


@dataclass(slots=True)
class CloseMarket:
    type: ClassVar[str] = "close_market"


@dataclass(slots=True)
class SettleMarket:
    type: ClassVar[str] = "settle_market"
    winner: str | None = None
    price: int | None = None


@dataclass(slots=True)
class VoidMarket:
    type: ClassVar[str] = "void_market"


@dataclass(slots=True)
class SetRiskLimits:
    type: ClassVar[str] = "set_risk_limits"
    account_id: str
    max_order_qty: int | None = None
    max_open_orders: int | None = None
    max_open_exposure: int | None = None


@dataclass(slots=True)
class PlaceOrder:
    type: ClassVar[str] = "place_order"
    client_order_id: str
    side: Side
    qty: int
    price: int | None = None
    order_type: OrderType = "limit"
    protection_price: int | None = None
    tif: Tif | None = None  # parse resolves it: "gtc" for limit orders, "ioc" for market orders
    stp: Stp = "cancel_resting"
    persistence: Persistence = "lapse"
    runner: str | None = None
    market_id: str | None = None
    account_id: str | None = None


@dataclass(slots=True)
class CancelOrder:
    type: ClassVar[str] = "cancel_order"
    order_id: int | None = None
    client_order_id: str | None = None
    market_id: str | None = None
    account_id: str | None = None


@dataclass(slots=True)
class AmendOrder:
    type: ClassVar[str] = "amend_order"
    order_id: int | None = None
    client_order_id: str | None = None
    qty: int | None = None  # the new open quantity
    price: int | None = None
    market_id: str | None = None
    account_id: str | None = None


@dataclass(slots=True)
class CancelAll:
    type: ClassVar[str] = "cancel_all"
    side: str | None = None
    runner: str | None = None
    market_id: str | None = None
    account_id: str | None = None


@dataclass(slots=True)
class PlaceOrders:
    """Up to MAX_INSTRUCTIONS place_orders decided in order, as one command: one cmd_seq, one atomic batch.

    An instruction that failed parse stays in the list as its Invalid, so it is
    rejected at its place (with its index) and the others still go on.
    """

    type: ClassVar[str] = "place_orders"
    instructions: list[PlaceOrder | Invalid]
    all_or_none: bool = False
    market_id: str | None = None
    account_id: str | None = None
    # v1.3: report each run of orders that rest untouched as one orders_accepted (PROTOCOL 6.14). Last, so
    # the positional fields before it keep their places; on the wire only when true.
    compact: bool = False


@dataclass(slots=True)
class CancelOrders:
    type: ClassVar[str] = "cancel_orders"
    instructions: list[CancelOrder | Invalid]
    market_id: str | None = None
    account_id: str | None = None
    compact: bool = False  # v1.3: each run of successful cancels as one orders_cancelled (PROTOCOL 6.14)


@dataclass(slots=True)
class ReplaceOrders:
    type: ClassVar[str] = "replace_orders"
    instructions: list[AmendOrder | Invalid]
    market_id: str | None = None
    account_id: str | None = None


Command = (
    CreateMarket | AddRunner | SetMarketState | AwaitLive | GoLive | CloseMarket | SettleMarket | VoidMarket
    | SetRiskLimits | PlaceOrder | CancelOrder | AmendOrder | CancelAll | PlaceOrders | CancelOrders | ReplaceOrders
)  # fmt: skip
Batch = PlaceOrders | CancelOrders | ReplaceOrders


@dataclass(slots=True)
class Parsed:
    market_id: str
    account_id: str | None  # None for control commands
    command: Command


@dataclass(slots=True)
class Invalid:
    market_id: str
    account_id: str | None
    reason: Reason
    detail: str
    command_type: str | None = None
    client_order_id: str | None = None


# --- field checks ---------------------------------------------------------------------------------
# A check returns None when the value is good, else the detail code.


def _shallow(value: Any, depth: int) -> bool:
    """True if no container in value nests deeper than depth (an iterative walk: it cannot recurse)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if type(v) is list or type(v) is tuple:
            if d >= depth:
                return False
            stack.extend((x, d + 1) for x in v)
        elif type(v) is dict:
            if d >= depth:
                return False
            for k, x in v.items():
                stack.append((k, d + 1))
                stack.append((x, d + 1))
    return True


def show(value: Any, limit: int) -> str:
    """str(value)[:limit] for a reject's detail, total for anything msgpack can decode.

    str() recurses, so a value nested ~1000 deep (msgpack allows up to 1023)
    raised RecursionError here and took the engine down. Values up to
    _SHOW_DEPTH deep render exactly as str() did, so existing logs re-decide to
    the same bytes; deeper ones (and anything whose str() fails) become
    `<list>`-style type names. Deterministic: it depends only on the value.
    """
    try:
        if _shallow(value, _SHOW_DEPTH):
            return str(value)[:limit]
    except Exception:  # e.g. a str() that raises: never let a detail stop the engine
        pass
    return f"<{type(value).__name__}>"[:limit]


def _int_in(lo: int, hi: int) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if type(v) is not int:
            return "not_int"
        return None if lo <= v <= hi else "out_of_range"

    return check


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    allowed = frozenset(choices)

    def check(v: Any) -> str | None:
        if type(v) is not str:
            return "not_str"
        return None if v in allowed else "unknown"

    return check


def _text(lo: int, hi: int) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if type(v) is not str:
            return "not_str"
        return None if lo <= len(v) <= hi else "out_of_range"

    return check


def _id(v: Any) -> str | None:
    if type(v) is not str:
        return "not_str"
    return None if is_id(v) else "out_of_range"


def _runners(v: Any) -> str | None:
    if type(v) is not list or not 1 <= len(v) <= MAX_RUNNERS:
        return "out_of_range"
    seen: set[str] = set()
    for r in v:
        if type(r) is not dict or set(r) != {"runner_id", "label"}:
            return "not_runner"
        if _id(r["runner_id"]) or _text(1, 64)(r["label"]) or r["runner_id"] in seen:
            return "not_runner"
        seen.add(r["runner_id"])
    return None


def _list(v: Any) -> str | None:
    return None if type(v) is list else "not_list"


def _bool(v: Any) -> str | None:
    return None if type(v) is bool else "not_bool"


@dataclass(frozen=True, slots=True)
class F:
    """One field of a command: its check, whether it is required, and the reject reason when it is bad."""

    name: str
    check: Callable[[Any], str | None]
    reason: Reason = "invalid_field"
    required: bool = False
    nullable: bool = False  # an explicit nil means "absent"


_PRICE = _int_in(1, MAX_PRICE)
_QTY = _int_in(1, MAX_QTY)
_LIMIT = _int_in(0, MAX_LIMIT)
_ECHOES = (F("market_id", _id, "invalid_market_id", nullable=True), F("account_id", _id, nullable=True))


@dataclass(frozen=True, slots=True)
class Spec:
    cls: type[Any]
    family: str  # "cmd" | "ctl"
    fields: tuple[F, ...]
    strict: bool = True  # unknown fields are refused (create_market ignores them, as in v1)
    names: frozenset[str] = field(default=frozenset())


def _spec(cls: type[Any], family: str, fields: tuple[F, ...], strict: bool = True) -> Spec:
    return Spec(cls, family, fields, strict, frozenset(f.name for f in fields) | {"type", "v"})


SPECS: Final[dict[str, Spec]] = {
    s.cls.type: s
    for s in (
        _spec(CreateMarket, "ctl", (
            F("market_id", _id, "invalid_market_id", required=True),
            F("kind", _one_of(*MARKET_KINDS)),
            F("base", _text(1, 32)),
            F("quote", _text(1, 32), required=True),
            F("tick_size", _int_in(1, MAX_PRICE)),
            F("lot_size", _int_in(1, MAX_QTY)),
            F("min_qty", _QTY),
            F("max_qty", _QTY),
            F("min_price", _PRICE),
            F("max_price", _PRICE),
            F("band_bps", _int_in(0, 10_000)),
            F("runners", _runners),
            F("book_type", _one_of(*BOOK_TYPES)),
        ), strict=False),
        _spec(AddRunner, "ctl", (F("runner_id", _id, required=True), F("label", _text(1, 64), required=True))),
        _spec(SetMarketState, "ctl", (F("state", _one_of(*SETTABLE_STATES), required=True),)),
        _spec(AwaitLive, "ctl", ()),
        _spec(GoLive, "ctl", ()),
        _spec(CloseMarket, "ctl", ()),
        _spec(SettleMarket, "ctl", (F("winner", _id, nullable=True), F("price", _PRICE, nullable=True))),
        _spec(VoidMarket, "ctl", ()),
        _spec(SetRiskLimits, "ctl", (
            F("account_id", _id, required=True),
            F("max_order_qty", _LIMIT, nullable=True),
            F("max_open_orders", _LIMIT, nullable=True),
            F("max_open_exposure", _LIMIT, nullable=True),
        )),
        _spec(PlaceOrder, "cmd", (
            F("client_order_id", _id, required=True),
            F("side", _one_of(*SIDES), "invalid_side", required=True),
            F("qty", _QTY, "invalid_qty", required=True),
            F("order_type", _one_of(*ORDER_TYPES)),
            F("price", _PRICE, "invalid_price"),
            F("protection_price", _PRICE, "invalid_price"),
            F("tif", _one_of(*TIFS), "invalid_tif"),
            F("stp", _one_of(*STP_MODES)),
            F("persistence", _one_of(*PERSISTENCE)),
            F("runner", _id),
            *_ECHOES,
        )),
        _spec(CancelOrder, "cmd", (
            F("order_id", _int_in(1, 2**63 - 1), nullable=True),
            F("client_order_id", _id, nullable=True),
            *_ECHOES,
        )),
        _spec(AmendOrder, "cmd", (
            F("order_id", _int_in(1, 2**63 - 1), nullable=True),
            F("client_order_id", _id, nullable=True),
            F("qty", _QTY, "invalid_qty", nullable=True),
            F("price", _PRICE, "invalid_price", nullable=True),
            *_ECHOES,
        )),
        _spec(CancelAll, "cmd", (
            F("side", _one_of(*SIDES), "invalid_side", nullable=True),
            F("runner", _id, nullable=True),
            *_ECHOES,
        )),
        _spec(PlaceOrders, "cmd", (
            F("instructions", _list, required=True), F("all_or_none", _bool, nullable=True), *_ECHOES,
            F("compact", _bool, nullable=True),
        )),
        _spec(CancelOrders, "cmd", (
            F("instructions", _list, required=True), *_ECHOES, F("compact", _bool, nullable=True),
        )),
        _spec(ReplaceOrders, "cmd", (F("instructions", _list, required=True), *_ECHOES)),
    )
}  # fmt: skip


_SUBJECTS: dict[str, tuple[str, str | None, str | None] | Invalid] = {}
_SUBJECTS_MAX: Final = 65_536


def _split_subject(subject: str) -> tuple[str, str | None, str | None] | Invalid:
    """(family, market, account), remembered: a handful of market x account subjects carry most orders."""
    where = _SUBJECTS.get(subject)
    if where is None:
        if len(_SUBJECTS) >= _SUBJECTS_MAX:
            _SUBJECTS.clear()
        where = _SUBJECTS[subject] = _split_subject_once(subject)
    return where


def _split_subject_once(subject: str) -> tuple[str, str | None, str | None] | Invalid:
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


def _fields(spec: Spec, body: dict[str, Any]) -> dict[str, Any] | tuple[Reason, str]:
    """The validated keyword arguments, or (reason, detail) for the first bad field.

    Fields are checked in table order; a rule about how a field relates to the
    ones before it (a market order has no price) runs at that field's place.
    """
    if spec.strict:
        for key in body:
            if key not in spec.names:
                return "unknown_field", f"{show(key, 64)}: unknown"
    out: dict[str, Any] = {}
    rules = _RULES.get(spec.cls)
    for f in spec.fields:
        if f.name in body:
            v = body[f.name]
            if v is None:
                if not f.nullable:
                    return f.reason, f"{f.name}: not_allowed"
            else:
                code = f.check(v)
                if code is not None:
                    return f.reason, f"{f.name}: {code}"
                out[f.name] = v
        elif f.required:
            return "missing_field", f"{f.name}: missing"
        if rules is not None:
            rule = rules.get(f.name)
            if rule is not None:
                broken = rule(out)
                if broken is not None:
                    return broken
    return out


def _price_rule(kw: dict[str, Any]) -> tuple[Reason, str] | None:
    if kw.get("order_type", "limit") == "market":
        return ("invalid_price", "price: not_allowed") if "price" in kw else None
    return None if "price" in kw else ("missing_field", "price: missing")


def _protection_rule(kw: dict[str, Any]) -> tuple[Reason, str] | None:
    if "protection_price" in kw and kw.get("order_type", "limit") != "market":
        return "invalid_field", "protection_price: not_allowed"
    return None


def _tif_rule(kw: dict[str, Any]) -> tuple[Reason, str] | None:
    if kw.get("order_type", "limit") == "market":
        if kw.setdefault("tif", "ioc") not in ("ioc", "fok"):
            return "invalid_tif", "tif: not_allowed"
    else:
        kw.setdefault("tif", "gtc")
    return None


def _instructions_rule(kw: dict[str, Any]) -> tuple[Reason, str] | None:
    n = len(kw["instructions"])
    if n > MAX_INSTRUCTIONS:
        return "too_many_instructions", f"instructions: {n} > {MAX_INSTRUCTIONS}"
    return None if n else ("invalid_field", "instructions: out_of_range")


_RULES: Final[dict[type[Any], dict[str, Callable[[dict[str, Any]], tuple[Reason, str] | None]]]] = {
    PlaceOrder: {"price": _price_rule, "protection_price": _protection_rule, "tif": _tif_rule},
    PlaceOrders: {"instructions": _instructions_rule},
    CancelOrders: {"instructions": _instructions_rule},
    ReplaceOrders: {"instructions": _instructions_rule},
}
# A batch command's class -> the single command each of its instructions is.
BATCH_OF: Final[dict[type[Any], type[Any]]] = {
    PlaceOrders: PlaceOrder,
    CancelOrders: CancelOrder,
    ReplaceOrders: AmendOrder,
}


_FAST_PLACE: Final = frozenset(("type", "v", "client_order_id", "side", "price", "qty", "tif"))
_FAST_CANCEL: Final = frozenset(("type", "v", "client_order_id", "order_id"))
# Canonical side strings: msgpack makes a new str per message, and every resting order keeps its side.
_SIDES: Final[dict[str, Side]] = {s: s for s in SIDES}
_TIFS: Final[dict[str, Tif]] = {t: t for t in TIFS}
_CANON: Final = {c: c for c in (*SIDES, *TIFS, *STP_MODES, *PERSISTENCE, "limit", "market")}


def _fast(ctype: str, body: dict[str, Any], coid: str | None) -> Command | None:
    """The command, if it has the everyday shape and every field is good; None sends it the long way.

    This only ever accepts what the table accepts, and builds the same command,
    so it cannot change an outcome; anything unusual (a bad field, an optional
    one) is left to the table, which also names the reason.
    """
    if ctype == "place_order":
        if not body.keys() <= _FAST_PLACE or coid is None:
            return None
        side, price, qty, tif = body.get("side"), body.get("price"), body.get("qty"), body.get("tif", "gtc")
        if (
            type(side) is str and (side := _SIDES.get(side)) is not None
            and type(price) is int and 1 <= price <= MAX_PRICE
            and type(qty) is int and 1 <= qty <= MAX_QTY
            and type(tif) is str and (tif := _TIFS.get(tif)) is not None
        ):  # fmt: skip
            return PlaceOrder(coid, side, qty, price, "limit", None, tif)
        return None
    if ctype == "cancel_order":
        if not body.keys() <= _FAST_CANCEL:
            return None
        order_id = body.get("order_id")
        if order_id is None:
            return CancelOrder(None, coid) if coid is not None else None
        if type(order_id) is int and 1 <= order_id < 2**63 and ("client_order_id" not in body or coid is not None):
            return CancelOrder(order_id, coid)
    return None


# The everyday place_order and cancel_order, decoded and type-checked by msgspec in C straight from
# the bytes. Each shape is narrower than the table: fields absent or exactly typed and in range
# (an explicit nil, a bool for an int, an unknown field, a bad tif all fail here), so whatever it
# accepts the table accepts too, as the same command; anything it refuses takes the long way,
# which names the reason. (Both decoders keep the last of repeated keys.)
_Price = Annotated[int, msgspec.Meta(ge=1, le=MAX_PRICE)]
_Qty = Annotated[int, msgspec.Meta(ge=1, le=MAX_QTY)]


class _Place(msgspec.Struct, tag_field="type", tag="place_order", forbid_unknown_fields=True, gc=False):
    client_order_id: str
    side: Literal["buy", "sell", "back", "lay"]
    qty: _Qty
    price: _Price | msgspec.UnsetType = msgspec.UNSET
    order_type: Literal["limit", "market"] = "limit"
    tif: Literal["gtc", "ioc", "fok", "post_only"] | msgspec.UnsetType = msgspec.UNSET
    v: Literal[1] = 1


class _Cancel(msgspec.Struct, tag_field="type", tag="cancel_order", forbid_unknown_fields=True, gc=False):
    order_id: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)] | msgspec.UnsetType = msgspec.UNSET
    client_order_id: str | msgspec.UnsetType = msgspec.UNSET
    v: Literal[1] = 1


_decode_fast = msgspec.msgpack.Decoder(_Place | _Cancel).decode
_UNSET: Final = msgspec.UNSET


def _fast_bytes(data: bytes) -> Command | None:
    """The command if the bytes are one of the two everyday shapes and every field is good, else None."""
    try:
        body = _decode_fast(data)
    except Exception:  # msgspec.DecodeError / ValidationError: not the everyday shape
        return None
    if type(body) is _Place:
        coid = body.client_order_id
        if not is_id(coid):
            return None
        price, tif = body.price, body.tif
        if body.order_type == "limit":
            if price is _UNSET:
                return None
            return PlaceOrder(
                coid, _SIDES[body.side], body.qty, price, "limit", None, "gtc" if tif is _UNSET else _TIFS[tif]
            )
        if price is not _UNSET or tif == "gtc" or tif == "post_only":
            return None
        return PlaceOrder(
            coid, _SIDES[body.side], body.qty, None, "market", None, "ioc" if tif is _UNSET else _TIFS[tif]
        )
    assert type(body) is _Cancel
    cancel_coid = body.client_order_id
    if cancel_coid is _UNSET:
        return None if body.order_id is _UNSET else CancelOrder(body.order_id, None)
    if not is_id(cancel_coid):
        return None
    return CancelOrder(None if body.order_id is _UNSET else body.order_id, cancel_coid)


def parse(subject: str, data: bytes) -> Parsed | Invalid:
    where = _split_subject(subject)
    if isinstance(where, Invalid):
        return where
    family, market, account = where
    assert market is not None
    if family == "cmd" and market != ALL_MARKETS:
        command = _fast_bytes(data)
        if command is not None:
            return Parsed(market, account, command)
    try:
        body: Any = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # any undecodable bytes, whatever msgpack raises
        return Invalid(market, account, "malformed", f"not msgpack: {type(exc).__name__}")
    if type(body) is not dict:
        return Invalid(market, account, "malformed", f"payload is {type(body).__name__}, not a map")

    raw_coid = body.get("client_order_id")
    coid = raw_coid if is_id(raw_coid) else None
    ctype = body.get("type")
    if ctype is None:
        return Invalid(market, account, "missing_field", "type: missing", None, coid)
    spec = SPECS.get(ctype) if type(ctype) is str else None
    if spec is None:
        return Invalid(market, account, "unknown_type", f"type {show(ctype, 64)!r}", None, coid)
    if family != spec.family:
        return Invalid(market, account, "wrong_subject", f"{ctype} goes on jb.{spec.family}", ctype, coid)
    version = body.get("v", SCHEMA_VERSION)
    if type(version) is not int or version != SCHEMA_VERSION:
        return Invalid(market, account, "unsupported_version", f"v: {show(version, 16)}", ctype, coid)
    if family == "cmd" and market != ALL_MARKETS:
        fast = _fast(ctype, body, coid)
        if fast is not None:
            return Parsed(market, account, fast)
    kw = _fields(spec, body)
    if type(kw) is tuple:
        return Invalid(market, account, kw[0], kw[1], ctype, coid)
    assert isinstance(kw, dict)
    if spec.cls is PlaceOrder:
        for name in ("side", "tif", "stp", "persistence", "order_type"):
            if name in kw:
                kw[name] = _CANON[kw[name]]
    elif spec.cls in (CancelOrder, AmendOrder) and "order_id" not in kw and "client_order_id" not in kw:
        return Invalid(market, account, "missing_field", "order_id: missing", ctype, coid)
    if spec.cls is AmendOrder and "qty" not in kw and "price" not in kw:
        return Invalid(market, account, "missing_field", "qty: missing", ctype, coid)
    if spec.cls is CreateMarket:
        if kw["market_id"] != market:
            return Invalid(market, None, "market_mismatch", "market_id: mismatch", ctype)
        if "runners" in kw:
            kw["runners"] = [[r["runner_id"], r["label"]] for r in kw["runners"]]
        return Parsed(market, None, CreateMarket(**kw))
    if family == "cmd":
        if kw.get("market_id", market) != market:
            return Invalid(market, account, "market_mismatch", "market_id: mismatch", ctype, coid)
        if kw.get("account_id", account) != account:
            return Invalid(market, account, "account_mismatch", "account_id: mismatch", ctype, coid)
        if market == ALL_MARKETS and spec.cls is not CancelAll:
            return Invalid(market, account, "unknown_market", f"{ctype} needs one market", ctype, coid)
    if spec.cls in BATCH_OF:
        one = SPECS[BATCH_OF[spec.cls].type]
        kw["instructions"] = [_instruction(one, market, account, ctype, body) for body in kw["instructions"]]
    return Parsed(market, account, spec.cls(**kw))


def _instruction(spec: Spec, market: str, account: str | None, ctype: str, body: Any) -> Any:
    """One instruction of a batch, checked by its single command's table and rules, or its Invalid.

    The same checks in the same order as `parse` makes for the single command,
    so an instruction is valid exactly when the command it stands for would be.
    An instruction has no `type` or `v` of its own: the batch's apply.
    """
    if type(body) is not dict:
        return Invalid(market, account, "malformed", f"instruction: {type(body).__name__}, not a map", ctype)
    raw_coid = body.get("client_order_id")
    coid = raw_coid if is_id(raw_coid) else None
    for name in ("type", "v"):
        if name in body:
            return Invalid(market, account, "unknown_field", f"{name}: unknown", ctype, coid)
    kw = _fields(spec, body)
    if type(kw) is tuple:
        return Invalid(market, account, kw[0], kw[1], ctype, coid)
    assert isinstance(kw, dict)
    if spec.cls is PlaceOrder:
        for name in ("side", "tif", "stp", "persistence", "order_type"):
            if name in kw:
                kw[name] = _CANON[kw[name]]
    elif "order_id" not in kw and "client_order_id" not in kw:
        return Invalid(market, account, "missing_field", "order_id: missing", ctype, coid)
    if spec.cls is AmendOrder and "qty" not in kw and "price" not in kw:
        return Invalid(market, account, "missing_field", "qty: missing", ctype, coid)
    if kw.get("market_id", market) != market:
        return Invalid(market, account, "market_mismatch", "market_id: mismatch", ctype, coid)
    if kw.get("account_id", account) != account:
        return Invalid(market, account, "account_mismatch", "account_id: mismatch", ctype, coid)
    return spec.cls(**kw)


_DEFAULTS: Final[dict[type[Any], dict[str, Any]]] = {
    s.cls: {f.name: f.default for f in dataclasses.fields(s.cls)} for s in SPECS.values()
}


def to_body(command: Command) -> dict[str, Any]:
    """The wire map of a command, as any client would send it: absent (None) fields left out."""
    body: dict[str, Any] = {"type": command.type}
    defaults = _DEFAULTS[type(command)]
    for f in SPECS[command.type].fields:
        v = getattr(command, f.name)
        if v is not None and v != defaults.get(f.name):
            body[f.name] = v
    if isinstance(command, CreateMarket) and command.runners is not None:
        body["runners"] = [{"runner_id": r, "label": label} for r, label in command.runners]
    if isinstance(command, PlaceOrders | CancelOrders | ReplaceOrders):
        body["instructions"] = [_instruction_body(i) for i in command.instructions]
    return body


def _instruction_body(instruction: Any) -> dict[str, Any]:
    if isinstance(instruction, Invalid):
        raise ValueError(f"an invalid instruction cannot be sent: {instruction.reason}")
    body = to_body(instruction)
    del body["type"]
    return body


def encode(command: Command) -> bytes:
    return msgpack.packb(to_body(command), use_bin_type=True)  # type: ignore[no-any-return]
