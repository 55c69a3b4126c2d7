"""A naive reference exchange, written from the v1.1 core spec (issue 3) and nothing else.

It exists to be obviously right, not fast: every open order of a market sits in
one flat list, every match walk filters and sorts that list afresh, every
exposure is recomputed from the open orders, and every reject is an exception
raised at the point the spec lists the check. It shares no code with the core
(`engine/`, `commands/`, `events/`), so a mistake in one is not copied into the
other, and it speaks the wire form: it takes the decoded command map and gives
the events as plain dicts whose key order is the events' wire order.

Where the spec leaves room, the reading chosen here is the one in the comments
marked "Reading:" and the test report lists them.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Final, TypeGuard

MAX_PRICE: Final = 10**9
MAX_QTY: Final = 10**9
MAX_LIMIT: Final = 2**62
CHUNK: Final = 500
MAX_EVENTS: Final = 999  # MAX_EVENTS_PER_COMMAND - 1: room for a checkpoint in the same batch
MAX_RUNNERS: Final = 64

ODDS_LADDER: Final = (
    (101, 200, 1),
    (200, 300, 2),
    (300, 400, 5),
    (400, 600, 10),
    (600, 1000, 20),
    (1000, 2000, 50),
    (2000, 3000, 100),
    (3000, 5000, 200),
    (5000, 10000, 500),
    (10000, 100000, 1000),
)

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

CONTROL: Final = (
    "create_market",
    "add_runner",
    "set_market_state",
    "await_live",
    "go_live",
    "close_market",
    "settle_market",
    "void_market",
    "set_risk_limits",
)
TRADING: Final = (
    "place_order", "amend_order", "cancel_order", "cancel_all", "place_orders", "cancel_orders", "replace_orders",
)  # fmt: skip
MAX_INSTRUCTIONS: Final = 200
BATCH_OF: Final = {"place_orders": "place_order", "cancel_orders": "cancel_order", "replace_orders": "amend_order"}

BID_LIKE: Final = ("buy", "lay")  # rest below the ask-like side; take asks/backs at or under their price
ASK_LIKE: Final = ("sell", "back")
OPPOSITE: Final = {"buy": "sell", "sell": "buy", "back": "lay", "lay": "back"}


def is_id(value: object) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def is_int(value: object) -> TypeGuard[int]:
    return type(value) is int


def on_ladder(price: int) -> bool:
    if price < 101 or price > 100000:
        return False
    if price == 100000:
        return True
    for lo, hi, step in ODDS_LADDER:
        if lo <= price < hi:
            return (price - lo) % step == 0
    return False


def ladder() -> list[int]:
    """Every price on the odds ladder, ascending."""
    return [p for p in range(101, 100001) if on_ladder(p)]


def exposure(kind: str, side: str, price: int, qty: int) -> int:
    if kind == "pair":
        return price * qty
    if side == "back":
        return qty * 100
    return qty * (price - 100)


def chunks(items: list[Any]) -> list[list[Any]]:
    return [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]


def normalize(value: Any) -> Any:
    """Tuples and lists pack to the same msgpack array; compare them as lists."""
    if isinstance(value, tuple | list):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    return value


def comparable(event: dict[str, Any]) -> list[tuple[str, Any]]:
    """An event as (key, value) pairs in wire order, without the free-text `detail` of a reject."""
    return [(k, normalize(v)) for k, v in event.items() if not (event.get("type") == "rejected" and k == "detail")]


class Reject(Exception):
    def __init__(self, reason: str, order_id: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.order_id = order_id


@dataclass
class RefOrder:
    order_id: int
    account: str
    coid: str
    side: str
    price: int | None  # None: a market order without protection (never rests)
    qty: int  # open quantity
    runner: str | None
    tif: str
    order_type: str
    stp: str
    persistence: str
    arrival: int = 0  # global counter, set each time the order (re-)enters a level
    entered: int = 0  # the seq of the command that last put it in its level


def price_of(o: RefOrder) -> int:
    """The price of an order that rests or trades (only an unprotected market order has none, and it never rests)."""
    assert o.price is not None
    return o.price


@dataclass
class RefMarket:
    market_id: str
    kind: str
    base: str
    quote: str
    tick_size: int
    lot_size: int
    min_qty: int
    max_qty: int
    min_price: int
    max_price: int
    band_bps: int
    runners: list[list[str]]
    book_type: str = "multi_runner"
    state: str = "open"
    phase: str = "pre"
    open_orders: list[RefOrder] = field(default_factory=list)  # every resting order, any runner, any order
    every_order: dict[int, RefOrder] = field(default_factory=dict)  # every accepted order, open or not
    coids: dict[tuple[str, str], int] = field(default_factory=dict)
    next_order_id: int = 1
    next_trade_id: int = 1
    last_trade: dict[str | None, int] = field(default_factory=dict)  # per book (runner; None for pair)
    limits: dict[str, tuple[int | None, int | None, int | None]] = field(default_factory=dict)
    # positions: pair account -> [net_qty, cash]; odds (account, runner) -> [win, lose]
    pair_pos: dict[str, list[int]] = field(default_factory=dict)
    odds_pos: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    traded: set[str] = field(default_factory=set)

    def runner_ids(self) -> list[str]:
        return [r[0] for r in self.runners]

    def book(self, runner: str | None) -> list[RefOrder]:
        return [o for o in self.open_orders if o.runner == runner]

    def open_exposure(self, account: str) -> int:
        return sum(exposure(self.kind, o.side, price_of(o), o.qty) for o in self.open_orders if o.account == account)

    def open_count(self, account: str) -> int:
        return sum(1 for o in self.open_orders if o.account == account)

    def depth(self, runner: str | None, side: str) -> list[tuple[int, int]]:
        levels: dict[int, int] = {}
        for o in self.book(runner):
            if o.side == side:
                assert o.price is not None
                levels[o.price] = levels.get(o.price, 0) + o.qty
        return sorted(levels.items(), reverse=side in BID_LIKE)


def _crosses(taker_side: str, limit: int | None, maker_price: int) -> bool:
    if limit is None:
        return True
    if taker_side in BID_LIKE:
        return maker_price <= limit
    return maker_price >= limit


def effective(taker_runner: str | None, o: RefOrder) -> Fraction:
    """What a resting order is worth to an incoming order on taker_runner: its odds, or the implied odds."""
    if o.runner == taker_runner:
        return Fraction(price_of(o))
    return Fraction(100 * price_of(o), price_of(o) - 100)  # o / (o - 1), in odds x 100


def _makers(market: RefMarket, runner: str | None, taker_side: str, limit: int | None) -> list[RefOrder]:
    """The resting orders an incoming order may take, in priority order (best price, then arrival)."""
    if market.book_type == "two_runner":
        # Reading (issue 13): every candidate of both books with its effective price, then one sort.
        cands = [
            o for o in market.open_orders
            if (o.runner == runner and o.side == OPPOSITE[taker_side]) or (o.runner != runner and o.side == taker_side)
        ]  # fmt: skip
        if limit is not None:
            cands = [
                o for o in cands
                if (effective(runner, o) >= limit if taker_side == "back" else effective(runner, o) <= limit)
            ]  # fmt: skip
        sign = -1 if taker_side == "back" else 1
        # Reading (issue 14): orders that entered with one command (a batch) tie on time across the two books;
        # the taker's own runner's go first, then each book in its own order.
        return sorted(cands, key=lambda o: (sign * effective(runner, o), o.entered, o.runner != runner, o.arrival))
    side = OPPOSITE[taker_side]
    cands = [o for o in market.book(runner) if o.side == side and _crosses(taker_side, limit, price_of(o))]
    if taker_side in BID_LIKE:
        return sorted(cands, key=lambda o: (o.price, o.arrival))
    return sorted(cands, key=lambda o: (-price_of(o), o.arrival))


def _best_opposite_crosses(market: RefMarket, runner: str | None, side: str, price: int) -> bool:
    return bool(_makers(market, runner, side, price))


@dataclass
class Plan:
    steps: list[tuple[str, RefOrder, int]]  # ("fill", maker, qty) | ("cancel", maker, open qty)
    filled: int
    stopped: bool  # stp cancel_newest / cancel_both stopped the walk
    implied: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # step -> maker qty, stakes


def implied_take(maker: RefOrder, remaining: int) -> tuple[int, int, int, int]:
    """(taker qty, maker qty, maker stake, taker stake) from the stated rule, with exact fractions.

    The stakes (hundredths) stand as 100 : (P - 100). The maker's whole order if the taker has room for
    its converted stake; else all the taker has left, the maker's stake rounded its way.
    """
    w = price_of(maker) - 100
    taker_needs = Fraction(maker.qty * w, 100)  # the taker stake (units) that the maker's whole order meets
    if taker_needs <= remaining:
        return math.ceil(taker_needs), maker.qty, 100 * maker.qty, maker.qty * w
    exact = Fraction(100 * 100 * remaining, w)
    maker_stake = math.floor(exact) if maker.side == "back" else math.ceil(exact)
    return remaining, math.ceil(Fraction(maker_stake, 100)), maker_stake, 100 * remaining


def _plan(
    market: RefMarket, runner: str | None, account: str, side: str, limit: int | None, qty: int, stp: str
) -> Plan:
    steps: list[tuple[str, RefOrder, int]] = []
    implied: dict[int, tuple[int, int, int]] = {}
    remaining = qty
    for maker in _makers(market, runner, side, limit):
        if remaining == 0:
            break
        if maker.account == account:
            if stp == "cancel_resting":
                steps.append(("cancel", maker, maker.qty))
                continue
            if stp == "cancel_both":
                steps.append(("cancel", maker, maker.qty))
            return Plan(steps, qty - remaining, True, implied)
        if maker.runner != runner:
            taker_q, maker_q, maker_stake, taker_stake = implied_take(maker, remaining)
            implied[len(steps)] = (maker_q, maker_stake, taker_stake)
            steps.append(("fill", maker, taker_q))
            remaining -= taker_q
            continue
        take = min(maker.qty, remaining)
        steps.append(("fill", maker, take))
        remaining -= take
    return Plan(steps, qty - remaining, False, implied)


class ReferenceExchange:
    def __init__(self) -> None:
        self.markets: dict[str, RefMarket] = {}
        self.arrival = 0

    # --- the one entry point ------------------------------------------------------------------

    def handle(self, seq: int, ts: int, subject: str, body: Any) -> list[dict[str, Any]]:
        tokens = subject.split(".")
        if len(tokens) == 4 and tokens[:2] == ["jb", "cmd"] and is_id(tokens[2]) and is_id(tokens[3]):
            family, market_id, account = "cmd", tokens[2], tokens[3]
        elif len(tokens) == 3 and tokens[:2] == ["jb", "ctl"] and is_id(tokens[2]):
            family, market_id, account = "ctl", tokens[2], None
        else:
            raise NotImplementedError("the reference only models routable subjects")
        self.seq, self.ts, self.market_id, self.account = seq, ts, market_id, account
        if not isinstance(body, dict):
            return [self._rejected("malformed", None, None)]
        coid_echo = body.get("client_order_id") if is_id(body.get("client_order_id")) else None
        ctype = body.get("type")
        if ctype is None:
            return [self._rejected("missing_field", None, coid_echo)]
        if not isinstance(ctype, str) or ctype not in CONTROL + TRADING:
            return [self._rejected("unknown_type", None, coid_echo)]
        if (ctype in CONTROL) != (family == "ctl"):
            return [self._rejected("wrong_subject", ctype, coid_echo)]
        body = dict(body)
        version = body.pop("v", 1)
        if not is_int(version) or version != 1:
            return [self._rejected("unsupported_version", ctype, coid_echo)]
        try:
            cmd = getattr(self, f"_parse_{ctype}")(body)
        except Reject as r:
            return [self._rejected(r.reason, ctype, coid_echo)]
        decide_coid = cmd.get("client_order_id")
        try:
            return getattr(self, f"_do_{ctype}")(cmd)  # type: ignore[no-any-return]
        except Reject as r:
            return [self._rejected(r.reason, ctype, decide_coid, r.order_id)]

    # --- events -------------------------------------------------------------------------------

    def _ev(self, etype: str, market_id: str, /, **fields: Any) -> dict[str, Any]:
        return {"type": etype, "market_id": market_id, "cmd_seq": self.seq, "ts": self.ts, **fields}

    def _rejected(
        self, reason: str, ctype: str | None, coid: str | None, order_id: int | None = None, index: int | None = None
    ) -> dict[str, Any]:
        e = self._ev(
            "rejected",
            self.market_id,
            reason=reason,
            detail="",
            account_id=self.account,
            command_type=ctype,
            client_order_id=coid,
            order_id=order_id,
        )
        if index is not None:
            e["index"] = index
        return e

    def _state_changed(self, m: RefMarket, state: str, phase: str, cause: str) -> dict[str, Any]:
        e = self._ev(
            "market_state_changed",
            m.market_id,
            state=state,
            phase=phase,
            previous_state=m.state,
            previous_phase=m.phase,
            cause=cause,
        )
        m.state, m.phase = state, phase
        return e

    def _mass_cancel(
        self, m: RefMarket, orders: list[RefOrder], reason: str, account: str | None
    ) -> list[dict[str, Any]]:
        """orders_cancelled chunks for these orders (ascending order_id), taking them off the book."""
        orders = sorted(orders, key=lambda o: o.order_id)
        entries = [[o.order_id, o.account, o.coid, o.side, o.price, o.qty, o.runner] for o in orders]
        for o in orders:
            m.open_orders.remove(o)
        return [
            self._ev("orders_cancelled", m.market_id, reason=reason, account_id=account, orders=c)
            for c in chunks(entries)
        ]

    def _cancelled(self, m: RefMarket, o: RefOrder, qty: int, reason: str, was_resting: bool) -> dict[str, Any]:
        return self._ev(
            "order_cancelled",
            m.market_id,
            order_id=o.order_id,
            account_id=o.account,
            client_order_id=o.coid,
            side=o.side,
            price=o.price,
            cancelled_qty=qty,
            reason=reason,
            runner=o.runner,
            was_resting=was_resting,
        )

    # --- parsing (market-independent) ---------------------------------------------------------

    @staticmethod
    def _echo_ids(body: dict[str, Any], out: dict[str, Any]) -> None:
        mid = body.get("market_id")
        if mid is not None and not is_id(mid):
            raise Reject("invalid_market_id")
        aid = body.get("account_id")
        if aid is not None and not is_id(aid):
            raise Reject("invalid_field")
        out["_market_id"], out["_account_id"] = mid, aid

    def _check_echo(self, cmd: dict[str, Any]) -> None:
        if cmd["_market_id"] is not None and cmd["_market_id"] != self.market_id:
            raise Reject("market_mismatch")
        if cmd["_account_id"] is not None and cmd["_account_id"] != self.account:
            raise Reject("account_mismatch")

    @staticmethod
    def _unknown(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
        for key in body:
            if key not in allowed:
                raise Reject("unknown_field")

    def _parse_create_market(self, b: dict[str, Any]) -> dict[str, Any]:
        def opt_int(name: str, default: int, lo: int, hi: int) -> int:
            v = b.get(name, default)
            if not is_int(v) or not lo <= v <= hi:
                raise Reject("invalid_field")
            return int(v)

        def text(name: str, required: bool, max_len: int) -> str:
            if name not in b:
                if required:
                    raise Reject("missing_field")
                return ""
            v = b[name]
            if not isinstance(v, str) or not 1 <= len(v) <= max_len:
                raise Reject("invalid_field")
            return v

        if "market_id" not in b:
            raise Reject("missing_field")
        if not is_id(b["market_id"]):
            raise Reject("invalid_market_id")
        kind = b.get("kind", "pair")
        if kind not in ("pair", "odds"):
            raise Reject("invalid_field")
        odds = kind == "odds"
        base = text("base", not odds, 32)
        quote = text("quote", True, 32)
        tick = opt_int("tick_size", 1, 1, 1 if odds else MAX_PRICE)
        lot = opt_int("lot_size", 1, 1, MAX_QTY)
        min_qty = opt_int("min_qty", lot, 1, MAX_QTY)
        max_qty = opt_int("max_qty", MAX_QTY, 1, MAX_QTY)
        min_price = opt_int("min_price", 101 if odds else tick, 1, MAX_PRICE)
        max_price = opt_int("max_price", 100000 if odds else MAX_PRICE - MAX_PRICE % tick, 1, MAX_PRICE)
        band = opt_int("band_bps", 0, 0, 10000)
        runners: list[list[str]] = []
        if odds:
            if "runners" not in b:
                raise Reject("missing_field")
            rs = b["runners"]
            if not isinstance(rs, list) or not 1 <= len(rs) <= MAX_RUNNERS:
                raise Reject("invalid_field")
            for r in rs:
                if not isinstance(r, dict) or not is_id(r.get("runner_id")):
                    raise Reject("invalid_field")
                label = r.get("label")
                if not isinstance(label, str) or not 1 <= len(label) <= 64:
                    raise Reject("invalid_field")
                runners.append([r["runner_id"], label])
            if len({r[0] for r in runners}) != len(runners):
                raise Reject("invalid_field")
        elif "runners" in b:
            raise Reject("invalid_field")
        book_type = b.get("book_type", "multi_runner")
        if book_type not in ("multi_runner", "two_runner"):
            raise Reject("invalid_field")
        if b["market_id"] != self.market_id:
            raise Reject("market_mismatch")
        return {
            "market_id": b["market_id"], "kind": kind, "base": base, "quote": quote, "tick_size": tick,
            "lot_size": lot, "min_qty": min_qty, "max_qty": max_qty, "min_price": min_price,
            "max_price": max_price, "band_bps": band, "runners": runners, "book_type": book_type,
        }  # fmt: skip

    # Reading: unknown fields are refused on every command but create_market (the spec names the rule for the
    # trading commands and the create_market exception; the new control commands follow the trading rule).

    def _parse_add_runner(self, b: dict[str, Any]) -> dict[str, Any]:
        self._unknown(b, ("type", "runner_id", "label"))
        if "runner_id" not in b:
            raise Reject("missing_field")
        if not is_id(b["runner_id"]):
            raise Reject("invalid_field")
        if "label" not in b:
            raise Reject("missing_field")
        if not isinstance(b["label"], str) or not 1 <= len(b["label"]) <= 64:
            raise Reject("invalid_field")
        return {"runner_id": b["runner_id"], "label": b["label"]}

    def _parse_set_market_state(self, b: dict[str, Any]) -> dict[str, Any]:
        self._unknown(b, ("type", "state"))
        if "state" not in b:
            raise Reject("missing_field")
        if b["state"] not in ("open", "suspended", "halted"):
            raise Reject("invalid_field")
        return {"state": b["state"]}

    def _parse_await_live(self, b: dict[str, Any]) -> dict[str, Any]:
        self._unknown(b, ("type",))
        return {}

    _parse_go_live = _parse_await_live
    _parse_close_market = _parse_await_live
    _parse_void_market = _parse_await_live

    def _parse_settle_market(self, b: dict[str, Any]) -> dict[str, Any]:
        """Malformed values are refused before the market is looked up; which of price/winner the market's kind
        needs is checked after (spec §2, order of checks)."""
        self._unknown(b, ("type", "price", "winner"))
        price = b.get("price")
        # Reading: §2 names only missing_field / invalid_field / unknown_runner for settle_market, so a bad
        # settlement price is invalid_field (not place's invalid_price).
        if price is not None and (not is_int(price) or not 1 <= price <= MAX_PRICE):
            raise Reject("invalid_field")
        winner = b.get("winner")
        if winner is not None and not is_id(winner):
            raise Reject("invalid_field")
        return {"price": price, "winner": winner}

    def _parse_set_risk_limits(self, b: dict[str, Any]) -> dict[str, Any]:
        self._unknown(b, ("type", "account_id", "max_order_qty", "max_open_orders", "max_open_exposure"))
        if "account_id" not in b:
            raise Reject("missing_field")
        if not is_id(b["account_id"]):
            raise Reject("invalid_field")
        out: dict[str, Any] = {"account_id": b["account_id"]}
        for name in ("max_order_qty", "max_open_orders", "max_open_exposure"):
            v = b.get(name)
            if v is not None and (not is_int(v) or not 0 <= v <= MAX_LIMIT):
                raise Reject("invalid_field")
            out[name] = v
        return out

    _PLACE_FIELDS: Final = (
        "type", "client_order_id", "side", "qty", "order_type", "price", "protection_price", "tif", "stp",
        "persistence", "runner", "market_id", "account_id",
    )  # fmt: skip

    def _parse_place_order(self, b: dict[str, Any]) -> dict[str, Any]:
        self._unknown(b, self._PLACE_FIELDS)
        if "client_order_id" not in b:
            raise Reject("missing_field")
        if not is_id(b["client_order_id"]):
            raise Reject("invalid_field")
        if "side" not in b:
            raise Reject("missing_field")
        if b["side"] not in ("buy", "sell", "back", "lay") or not isinstance(b["side"], str):
            raise Reject("invalid_side")
        if "qty" not in b:
            raise Reject("missing_field")
        if not is_int(b["qty"]) or not 1 <= b["qty"] <= MAX_QTY:
            raise Reject("invalid_qty")
        order_type = b.get("order_type", "limit")
        if order_type not in ("limit", "market"):
            raise Reject("invalid_field")
        market = order_type == "market"
        if market:
            if "price" in b:
                raise Reject("invalid_price")
            price = None
        else:
            if "price" not in b:
                raise Reject("missing_field")
            price = b["price"]
            if not is_int(price) or not 1 <= price <= MAX_PRICE:
                raise Reject("invalid_price")
        protection = b.get("protection_price")
        if "protection_price" in b:
            if not market:
                raise Reject("invalid_field")
            if not is_int(protection) or not 1 <= protection <= MAX_PRICE:
                raise Reject("invalid_price")
        tif = b.get("tif", "ioc" if market else "gtc")
        if tif not in (("ioc", "fok") if market else ("gtc", "ioc", "fok", "post_only")):
            raise Reject("invalid_tif")
        stp = b.get("stp", "cancel_resting")
        if stp not in ("cancel_resting", "cancel_newest", "cancel_both"):
            raise Reject("invalid_field")
        persistence = b.get("persistence", "lapse")
        if persistence not in ("lapse", "persist"):
            raise Reject("invalid_field")
        runner = b.get("runner")
        if "runner" in b and not is_id(runner):
            raise Reject("invalid_field")
        out = {
            "client_order_id": b["client_order_id"], "side": b["side"], "qty": b["qty"], "order_type": order_type,
            "price": price, "protection_price": protection, "tif": tif, "stp": stp, "persistence": persistence,
            "runner": runner,
        }  # fmt: skip
        self._echo_ids(b, out)
        self._check_echo(out)
        return out

    def _parse_ref(self, b: dict[str, Any], out: dict[str, Any]) -> None:
        oid = b.get("order_id")
        if oid is not None and (not is_int(oid) or oid < 1):
            raise Reject("invalid_field")
        coid = b.get("client_order_id")
        if coid is not None and not is_id(coid):
            raise Reject("invalid_field")
        out["order_id"], out["client_order_id"] = oid, coid

    # Reading: unknown fields first on every command, as spec §3 orders them for place_order (v1 checked them
    # last; the spec does not say which order amend/cancel/cancel_all follow).

    def _parse_cancel_order(self, b: dict[str, Any]) -> dict[str, Any]:
        self._unknown(b, ("type", "order_id", "client_order_id", "market_id", "account_id"))
        out: dict[str, Any] = {}
        self._parse_ref(b, out)
        self._echo_ids(b, out)
        self._check_echo(out)
        if out["order_id"] is None and out["client_order_id"] is None:
            raise Reject("missing_field")
        return out

    def _parse_amend_order(self, b: dict[str, Any]) -> dict[str, Any]:
        self._unknown(b, ("type", "order_id", "client_order_id", "qty", "price", "market_id", "account_id"))
        out: dict[str, Any] = {}
        self._parse_ref(b, out)
        qty, price = b.get("qty"), b.get("price")
        if qty is not None and (not is_int(qty) or not 1 <= qty <= MAX_QTY):
            raise Reject("invalid_qty")
        if price is not None and (not is_int(price) or not 1 <= price <= MAX_PRICE):
            raise Reject("invalid_price")
        out["qty"], out["price"] = qty, price
        self._echo_ids(b, out)
        self._check_echo(out)
        if out["order_id"] is None and out["client_order_id"] is None:
            raise Reject("missing_field")
        if qty is None and price is None:
            raise Reject("missing_field")
        return out

    def _parse_cancel_all(self, b: dict[str, Any]) -> dict[str, Any]:
        self._unknown(b, ("type", "side", "runner", "market_id", "account_id"))
        side = b.get("side")
        if side is not None and side not in ("buy", "sell", "back", "lay"):
            raise Reject("invalid_side")
        runner = b.get("runner")
        if runner is not None and not is_id(runner):
            raise Reject("invalid_field")
        out: dict[str, Any] = {"side": side, "runner": runner}
        self._echo_ids(b, out)
        self._check_echo(out)
        return out

    def _parse_batch(self, b: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
        self._unknown(b, ("type", "instructions", *allowed, "market_id", "account_id"))
        if "instructions" not in b:
            raise Reject("missing_field")
        instructions = b["instructions"]
        if not isinstance(instructions, list):
            raise Reject("invalid_field")
        if len(instructions) > MAX_INSTRUCTIONS:
            raise Reject("too_many_instructions")
        if not instructions:
            raise Reject("invalid_field")
        out: dict[str, Any] = {"instructions": instructions, "all_or_none": False, "compact": False}
        if "all_or_none" in allowed and b.get("all_or_none") is not None:
            if not isinstance(b["all_or_none"], bool):
                raise Reject("invalid_field")
            out["all_or_none"] = b["all_or_none"]
        self._echo_ids(b, out)
        if "compact" in allowed and b.get("compact") is not None:  # v1.3, after the echoes (table order)
            if not isinstance(b["compact"], bool):
                raise Reject("invalid_field")
            out["compact"] = b["compact"]
        self._check_echo(out)
        return out

    def _parse_place_orders(self, b: dict[str, Any]) -> dict[str, Any]:
        return self._parse_batch(b, ("all_or_none", "compact"))

    def _parse_cancel_orders(self, b: dict[str, Any]) -> dict[str, Any]:
        return self._parse_batch(b, ("compact",))

    def _parse_replace_orders(self, b: dict[str, Any]) -> dict[str, Any]:
        return self._parse_batch(b, ())

    # --- batches: the instructions one by one, as if each were its own command ------------------

    def _do_batch(self, ctype: str, c: dict[str, Any]) -> list[dict[str, Any]]:
        """Reading (issue 14): an instruction is its single command without `type`, decided in order; a failure
        is that instruction's reject (with its index) and the rest go on, unless all_or_none, which refuses every
        instruction with the first failure's reason and leaves nothing behind. The batch shares one atomic batch:
        an instruction whose events leave too few slots for one event per later instruction is too_many_fills."""
        self._market()
        single = BATCH_OF[ctype]
        items = c["instructions"]
        out: list[dict[str, Any]] = []
        per: list[list[dict[str, Any]]] = []  # each instruction's events, for compact
        before = copy.deepcopy((self.markets, self.arrival))
        for i, item in enumerate(items):
            coid = item.get("client_order_id") if isinstance(item, dict) else None
            coid = coid if is_id(coid) else None
            try:
                if not isinstance(item, dict):
                    raise Reject("malformed")
                if "type" in item or "v" in item:
                    raise Reject("unknown_field")
                cmd = getattr(self, f"_parse_{single}")(dict(item))
            except Reject as r:
                events = [self._rejected(r.reason, ctype, coid, None, i)]
            else:
                coid = cmd.get("client_order_id")
                undo = copy.deepcopy((self.markets, self.arrival))
                try:
                    events = getattr(self, f"_do_{single}")(cmd)
                    if len(out) + len(events) + len(items) - 1 - i > MAX_EVENTS:
                        self.markets, self.arrival = undo
                        raise Reject("too_many_fills")
                except Reject as r:
                    events = [self._rejected(r.reason, ctype, coid, r.order_id, i)]
            if events[0]["type"] == "rejected" and c["all_or_none"]:
                self.markets, self.arrival = before
                return [
                    dict(events[0])
                    if j == i
                    else self._rejected(events[0]["reason"], ctype, self._coid(items[j]), None, j)
                    for j in range(len(items))
                ]
            out += events
            per.append(events)
        return self._compact(ctype, per) if c["compact"] else out

    def _compact(self, ctype: str, per: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """Reading (v1.3): with compact, a run of instructions each of whose events is one order_accepted with
        nothing traded (resting_qty == qty; place_orders) or one order_cancelled (cancel_orders) is one
        orders_accepted / orders_cancelled (reason user, the batch's account) in place of those events."""
        out: list[dict[str, Any]] = []
        run: dict[str, Any] | None = None
        for events in per:
            e = events[0]
            alone = len(events) == 1
            if alone and ctype == "place_orders" and e["type"] == "order_accepted" and e["resting_qty"] == e["qty"]:
                row = [e[k] for k in ("order_id", "client_order_id", "side", "price", "qty", "tif", "runner",
                                      "order_type", "stp", "persistence")]  # fmt: skip
                kind, extra = "orders_accepted", {}
            elif alone and ctype == "cancel_orders" and e["type"] == "order_cancelled":
                row = [e[k] for k in ("order_id", "account_id", "client_order_id", "side", "price", "cancelled_qty",
                                      "runner")]  # fmt: skip
                kind, extra = "orders_cancelled", {"reason": "user"}
            else:
                run = None
                out += events
                continue
            if run is None:
                run = {"type": kind, "market_id": e["market_id"], "cmd_seq": e["cmd_seq"], "ts": e["ts"], **extra,
                       "account_id": e["account_id"], "orders": []}  # fmt: skip
                out.append(run)
            run["orders"].append(row)
        return out

    @staticmethod
    def _coid(item: Any) -> str | None:
        coid = item.get("client_order_id") if isinstance(item, dict) else None
        return coid if is_id(coid) else None

    def _do_place_orders(self, c: dict[str, Any]) -> list[dict[str, Any]]:
        return self._do_batch("place_orders", c)

    def _do_cancel_orders(self, c: dict[str, Any]) -> list[dict[str, Any]]:
        return self._do_batch("cancel_orders", c)

    def _do_replace_orders(self, c: dict[str, Any]) -> list[dict[str, Any]]:
        return self._do_batch("replace_orders", c)

    # --- control commands ---------------------------------------------------------------------

    def _market(self) -> RefMarket:
        m = self.markets.get(self.market_id)
        if m is None:
            raise Reject("unknown_market")
        return m

    def _do_create_market(self, c: dict[str, Any]) -> list[dict[str, Any]]:
        mid = c["market_id"]
        if mid in self.markets:
            raise Reject("market_exists")
        if mid.startswith("_"):
            raise Reject("invalid_market_id")
        if c["min_price"] > c["max_price"] or c["min_qty"] > c["max_qty"]:
            raise Reject("invalid_field")
        if c["kind"] == "pair":
            if c["min_price"] % c["tick_size"] or c["max_price"] % c["tick_size"]:
                raise Reject("invalid_field")
        elif not (on_ladder(c["min_price"]) and on_ladder(c["max_price"])):
            raise Reject("invalid_field")
        if c["book_type"] == "two_runner" and (c["kind"] != "odds" or len(c["runners"]) != 2):
            raise Reject("invalid_field")
        if c["kind"] == "pair" and c["book_type"] != "multi_runner":
            raise Reject("invalid_field")
        self.markets[mid] = RefMarket(**c)
        fields = {k: v for k, v in c.items() if k != "market_id"}
        fields["runners"] = [list(r) for r in c["runners"]]
        if c["book_type"] == "multi_runner":
            del fields["book_type"]  # on the wire only when not the default
        return [self._ev("market_created", mid, **fields)]

    def _do_add_runner(self, c: dict[str, Any]) -> list[dict[str, Any]]:
        m = self._market()
        if m.kind != "odds":
            raise Reject("not_odds_market")
        if m.state in ("closed", "settled", "voided"):
            raise Reject("market_closed")
        if m.book_type == "two_runner":
            raise Reject("runners_fixed")
        if c["runner_id"] in m.runner_ids():
            raise Reject("runner_exists")
        if len(m.runners) >= MAX_RUNNERS:
            raise Reject("too_many_runners")
        m.runners.append([c["runner_id"], c["label"]])
        return [self._ev("runner_added", m.market_id, runner_id=c["runner_id"], label=c["label"])]

    def _do_set_market_state(self, c: dict[str, Any]) -> list[dict[str, Any]]:
        m = self._market()
        if m.state not in ("open", "suspended", "halted") or c["state"] == m.state:
            raise Reject("illegal_transition")
        return [self._state_changed(m, c["state"], m.phase, "set_market_state")]

    def _do_await_live(self, c: dict[str, Any]) -> list[dict[str, Any]]:
        m = self._market()
        if m.phase != "pre" or m.state not in ("open", "suspended"):
            raise Reject("illegal_transition")
        return [self._state_changed(m, "suspended", "pre", "await_live")]

    def _do_go_live(self, c: dict[str, Any]) -> list[dict[str, Any]]:
        m = self._market()
        if m.phase != "pre" or m.state not in ("open", "suspended"):
            raise Reject("illegal_transition")
        lapsing = [o for o in m.open_orders if o.persistence == "lapse"]
        out = self._mass_cancel(m, lapsing, "lapsed", None)
        out.append(self._state_changed(m, "open", "in_play", "go_live"))
        return out

    def _do_close_market(self, c: dict[str, Any]) -> list[dict[str, Any]]:
        m = self._market()
        if m.state not in ("open", "suspended", "halted"):
            raise Reject("illegal_transition")
        out = self._mass_cancel(m, list(m.open_orders), "market_closed", None)
        out.append(self._state_changed(m, "closed", m.phase, "close_market"))
        return out

    def _do_void_market(self, c: dict[str, Any]) -> list[dict[str, Any]]:
        m = self._market()
        if m.state not in ("open", "suspended", "halted", "closed"):
            raise Reject("illegal_transition")
        out = self._mass_cancel(m, list(m.open_orders), "market_voided", None)
        out.append(self._state_changed(m, "voided", m.phase, "void_market"))
        return out

    def _do_settle_market(self, c: dict[str, Any]) -> list[dict[str, Any]]:
        m = self._market()
        if m.kind == "pair":
            if c["price"] is None:
                raise Reject("missing_field")
            if c["winner"] is not None:
                raise Reject("invalid_field")
        else:
            if c["winner"] is None:
                raise Reject("missing_field")
            if c["price"] is not None:
                raise Reject("invalid_field")
            if c["winner"] not in m.runner_ids():
                raise Reject("unknown_runner")
        if m.state != "closed":
            raise Reject("illegal_transition")
        pnl: list[list[Any]] = []
        settle_price = int(c["price"] or 0)  # pair markets; odds settle by winner
        for account in sorted(m.traded):
            if m.kind == "pair":
                net, cash = m.pair_pos.get(account, [0, 0])
                pnl.append([account, cash + net * settle_price])
            else:
                total = 0
                for (acct, runner), (win, lose) in m.odds_pos.items():
                    if acct == account:
                        total += win if runner == c["winner"] else lose
                pnl.append([account, total])
        out = [self._state_changed(m, "settled", m.phase, "settle_market")]
        for part in chunks(pnl) or [[]]:
            out.append(self._ev("market_settled", m.market_id, winner=c["winner"], price=c["price"], pnl=part))
        return out

    def _do_set_risk_limits(self, c: dict[str, Any]) -> list[dict[str, Any]]:
        m = self._market()
        if m.state in ("settled", "voided"):
            raise Reject("market_closed")
        limits = (c["max_order_qty"], c["max_open_orders"], c["max_open_exposure"])
        m.limits[c["account_id"]] = limits
        return [
            self._ev(
                "risk_limits_set",
                m.market_id,
                account_id=c["account_id"],
                max_order_qty=limits[0],
                max_open_orders=limits[1],
                max_open_exposure=limits[2],
            )
        ]

    # --- trading ------------------------------------------------------------------------------

    def _check_price(self, m: RefMarket, runner: str | None, price: int) -> None:
        """Spec §3 place step 5 (also amend's new price)."""
        if m.kind == "pair":
            if price % m.tick_size:
                raise Reject("off_tick")
        elif not on_ladder(price):
            raise Reject("off_tick")
        if price < m.min_price or price > m.max_price:
            raise Reject("price_out_of_range")
        last = m.last_trade.get(runner)
        if m.band_bps > 0 and last is not None and abs(price - last) * 10000 > m.band_bps * last:
            raise Reject("outside_price_band")

    def _check_qty(self, m: RefMarket, qty: int) -> None:
        if qty % m.lot_size:
            raise Reject("off_lot")
        if qty < m.min_qty:
            raise Reject("qty_below_min")
        if qty > m.max_qty:
            raise Reject("qty_above_max")

    def _limits(self, m: RefMarket, account: str) -> tuple[int | None, int | None, int | None]:
        return m.limits.get(account, (None, None, None))

    def _execute(self, m: RefMarket, taker: RefOrder, plan: Plan, qty: int) -> tuple[list[dict[str, Any]], int]:
        """Apply a plan for `taker` (not on the book) with `qty` open: fills and self-trade cancels.

        Returns the events and the taker's remainder."""
        out: list[dict[str, Any]] = []
        remaining = qty
        for step, (kind, maker, n) in enumerate(plan.steps):
            if kind == "cancel":
                out.append(self._cancelled(m, maker, maker.qty, "self_trade", True))
                m.open_orders.remove(maker)
                continue
            if step in plan.implied:
                maker_q, maker_stake, taker_stake = plan.implied[step]
                remaining -= n
                maker.qty -= maker_q
                out.append(
                    self._ev(
                        "fill", m.market_id, trade_id=m.next_trade_id, price=maker.price, qty=n,
                        maker_order_id=maker.order_id, taker_order_id=taker.order_id, maker_account=maker.account,
                        taker_account=taker.account, taker_side=taker.side, maker_client_order_id=maker.coid,
                        taker_client_order_id=taker.coid, maker_remaining=maker.qty, taker_remaining=remaining,
                        runner=taker.runner, implied=True, maker_runner=maker.runner, maker_qty=maker_q,
                        maker_stake=maker_stake, taker_stake=taker_stake,
                    )
                )  # fmt: skip
                m.next_trade_id += 1
                m.last_trade[maker.runner] = price_of(maker)
                # The bet: the taker's runner wins -> the maker pays its stake; else the taker pays its own.
                sign = 1 if taker.side == "back" else -1
                assert taker.runner is not None and maker.runner is not None
                for who, r, win, lose in (
                    (taker.account, taker.runner, maker_stake, taker_stake),
                    (maker.account, maker.runner, taker_stake, maker_stake),
                ):
                    m.traded.add(who)
                    pos = m.odds_pos.setdefault((who, r), [0, 0])
                    pos[0] += sign * win
                    pos[1] -= sign * lose
                if maker.qty == 0:
                    m.open_orders.remove(maker)
                continue
            remaining -= n
            maker.qty -= n
            out.append(
                self._ev(
                    "fill", m.market_id, trade_id=m.next_trade_id, price=maker.price, qty=n,
                    maker_order_id=maker.order_id, taker_order_id=taker.order_id, maker_account=maker.account,
                    taker_account=taker.account, taker_side=taker.side, maker_client_order_id=maker.coid,
                    taker_client_order_id=taker.coid, maker_remaining=maker.qty, taker_remaining=remaining,
                    runner=taker.runner,
                )
            )  # fmt: skip
            m.next_trade_id += 1
            assert maker.price is not None
            m.last_trade[taker.runner] = maker.price
            self._position(m, maker, n, maker.price)
            self._position(m, taker, n, maker.price)
            if maker.qty == 0:
                m.open_orders.remove(maker)
        return out, remaining

    @staticmethod
    def _position(m: RefMarket, o: RefOrder, qty: int, price: int) -> None:
        m.traded.add(o.account)
        if m.kind == "pair":
            pos = m.pair_pos.setdefault(o.account, [0, 0])
            sign = 1 if o.side == "buy" else -1
            pos[0] += sign * qty
            pos[1] -= sign * price * qty
        else:
            assert o.runner is not None
            pos = m.odds_pos.setdefault((o.account, o.runner), [0, 0])
            sign = 1 if o.side == "back" else -1
            pos[0] += sign * qty * (price - 100)
            pos[1] -= sign * qty * 100

    def _rest(self, m: RefMarket, o: RefOrder) -> None:
        self.arrival += 1
        o.arrival = self.arrival
        o.entered = self.seq
        m.open_orders.append(o)

    def _do_place_order(self, c: dict[str, Any]) -> list[dict[str, Any]]:
        m = self._market()
        account = self.account
        assert account is not None
        if m.state != "open":
            raise Reject("market_not_open")
        runner = c["runner"]
        if m.kind == "odds":
            if runner is None:
                raise Reject("missing_field")
            if runner not in m.runner_ids():
                raise Reject("unknown_runner")
        elif runner is not None:
            raise Reject("unknown_runner")
        if c["side"] not in (("buy", "sell") if m.kind == "pair" else ("back", "lay")):
            raise Reject("invalid_side")
        limit = c["price"] if c["order_type"] == "limit" else c["protection_price"]
        if limit is not None:
            self._check_price(m, runner, limit)
        qty = c["qty"]
        self._check_qty(m, qty)
        if (account, c["client_order_id"]) in m.coids:
            raise Reject("duplicate_client_order_id")
        max_qty, max_orders, max_exposure = self._limits(m, account)
        if max_qty is not None and qty > max_qty:
            raise Reject("max_order_qty_exceeded")
        side, tif = c["side"], c["tif"]
        if tif == "post_only" and _best_opposite_crosses(m, runner, side, limit):
            raise Reject("post_only_would_take")
        plan = _plan(m, runner, account, side, limit, qty, c["stp"])
        if tif == "fok" and plan.filled < qty:
            raise Reject("fok_not_filled")
        remainder = qty - plan.filled
        rests = not plan.stopped and tif in ("gtc", "post_only") and remainder > 0
        taker_cancel = remainder > 0 and not rests
        if 1 + len(plan.steps) + int(taker_cancel) > MAX_EVENTS:
            raise Reject("too_many_fills")
        if max_exposure is not None:
            if limit is not None:
                order_exposure = exposure(m.kind, side, limit, qty)
            else:
                order_exposure = sum(
                    plan.implied[i][1]
                    if i in plan.implied and side == "lay"
                    else exposure(m.kind, side, price_of(mk), n)
                    for i, (k, mk, n) in enumerate(plan.steps)
                    if k == "fill"
                )
            if m.open_exposure(account) + order_exposure > max_exposure:
                raise Reject("max_open_exposure_exceeded")
        if max_orders is not None and rests and m.open_count(account) + 1 > max_orders:
            raise Reject("max_open_orders_exceeded")

        taker = RefOrder(
            m.next_order_id, account, c["client_order_id"], side, limit, qty, runner, tif, c["order_type"],
            c["stp"], c["persistence"],
        )  # fmt: skip
        m.next_order_id += 1
        m.coids[(account, taker.coid)] = taker.order_id
        m.every_order[taker.order_id] = taker
        out = [
            self._ev(
                "order_accepted", m.market_id, order_id=taker.order_id, account_id=account,
                client_order_id=taker.coid, side=side, price=limit, qty=qty, tif=tif,
                resting_qty=remainder if rests else 0, runner=runner, order_type=c["order_type"], stp=c["stp"],
                persistence=c["persistence"],
            )
        ]  # fmt: skip
        events, remaining = self._execute(m, taker, plan, qty)
        out += events
        assert remaining == remainder
        taker.qty = remaining
        if rests:
            self._rest(m, taker)
        elif remaining > 0:
            out.append(self._cancelled(m, taker, remaining, "self_trade" if plan.stopped else "unfilled", False))
            taker.qty = 0
        return out

    def _lookup(self, m: RefMarket, c: dict[str, Any]) -> RefOrder:
        """cancel_order's lookup rules, kept from v1."""
        order_id = c["order_id"]
        if order_id is None:
            order_id = m.coids.get((self.account, c["client_order_id"]))  # type: ignore[arg-type]
            if order_id is None:
                raise Reject("unknown_order")
        order = next((o for o in m.open_orders if o.order_id == order_id), None)
        if order is None:
            raise Reject("order_not_open" if order_id < m.next_order_id else "unknown_order", order_id)
        if order.account != self.account:
            raise Reject("not_order_owner", order_id)
        if c["client_order_id"] is not None and c["client_order_id"] != order.coid:
            raise Reject("unknown_order", order_id)
        return order

    def _do_cancel_order(self, c: dict[str, Any]) -> list[dict[str, Any]]:
        m = self.markets.get(self.market_id)
        if m is None:
            raise Reject("unknown_market", c["order_id"])
        # Reading: the market-state rejects echo the order_id as sent, like unknown_market.
        if m.state == "halted":
            raise Reject("market_halted", c["order_id"])
        if m.state in ("closed", "settled", "voided"):
            raise Reject("market_closed", c["order_id"])
        o = self._lookup(m, c)
        m.open_orders.remove(o)
        return [self._cancelled(m, o, o.qty, "user", True)]

    def _do_amend_order(self, c: dict[str, Any]) -> list[dict[str, Any]]:
        m = self.markets.get(self.market_id)
        if m is None:
            raise Reject("unknown_market", c["order_id"])
        if m.state != "open":
            raise Reject("market_not_open", c["order_id"])
        o = self._lookup(m, c)
        oid = o.order_id  # Reading: rejects after the lookup echo the order they are about.
        assert o.price is not None
        new_price = c["price"] if c["price"] is not None else o.price
        new_qty = c["qty"] if c["qty"] is not None else o.qty
        try:
            if new_price != o.price:
                self._check_price(m, o.runner, new_price)
            if c["qty"] is not None:
                self._check_qty(m, new_qty)
            if new_price == o.price and new_qty == o.qty:
                raise Reject("no_change")
            max_qty, _, max_exposure = self._limits(m, o.account)
            # Reading: "new qty" is the effective one (absent = unchanged), as for no_change.
            if max_qty is not None and new_qty > max_qty:
                raise Reject("max_order_qty_exceeded")
            lost = new_price != o.price or new_qty > o.qty
            plan = Plan([], 0, False)
            if lost:
                if new_price != o.price and o.tif == "post_only":
                    if _best_opposite_crosses(m, o.runner, o.side, new_price):
                        raise Reject("post_only_would_take")
                plan = _plan(m, o.runner, o.account, o.side, new_price, new_qty, o.stp)
                remainder = new_qty - plan.filled
                if 1 + len(plan.steps) + int(plan.stopped and remainder > 0) > MAX_EVENTS:
                    raise Reject("too_many_fills")
            # Reading: the exposure check applies to every amend (the spec does not scope it to lost priority).
            if max_exposure is not None:
                after = (
                    m.open_exposure(o.account)
                    - exposure(m.kind, o.side, o.price, o.qty)
                    + exposure(m.kind, o.side, new_price, new_qty)
                )
                if after > max_exposure:
                    raise Reject("max_open_exposure_exceeded")
        except Reject as r:
            raise Reject(r.reason, oid) from None

        old_price, old_qty = o.price, o.qty
        if not lost:
            o.qty = new_qty
            return [
                self._amended(m, o, old_price, old_qty, new_price, new_qty, "kept", new_qty),
            ]
        m.open_orders.remove(o)
        remainder = new_qty - plan.filled
        rests = not plan.stopped and remainder > 0  # only gtc / post_only orders rest, so they may rest again
        out = [self._amended(m, o, old_price, old_qty, new_price, new_qty, "lost", remainder if rests else 0)]
        o.price = new_price
        events, remaining = self._execute(m, o, plan, new_qty)
        out += events
        o.qty = remaining
        if rests:
            self._rest(m, o)
        elif remaining > 0:
            # Reading (spec §6): the amended order left its level with the order_amended event, so its own
            # self-trade remainder is a taker's, was_resting False.
            out.append(self._cancelled(m, o, remaining, "self_trade", False))
            o.qty = 0
        return out

    def _amended(
        self, m: RefMarket, o: RefOrder, old_price: int, old_qty: int, price: int, qty: int, priority: str, resting: int
    ) -> dict[str, Any]:
        return self._ev(
            "order_amended", m.market_id, order_id=o.order_id, account_id=o.account, client_order_id=o.coid,
            side=o.side, old_price=old_price, old_qty=old_qty, price=price, qty=qty, priority=priority,
            resting_qty=resting, runner=o.runner,
        )  # fmt: skip

    def _do_cancel_all(self, c: dict[str, Any]) -> list[dict[str, Any]]:
        account = self.account
        if self.market_id == "_all":
            targets = [
                self.markets[mid]
                for mid in sorted(self.markets)
                if self.markets[mid].state not in ("halted", "closed", "settled", "voided")
            ]
        else:
            m = self._market()
            if m.state == "halted":
                raise Reject("market_halted")
            if m.state in ("closed", "settled", "voided"):
                raise Reject("market_closed")
            targets = [m]
        out: list[dict[str, Any]] = []
        for m in targets:
            mine = [
                o
                for o in m.open_orders
                if o.account == account
                and (c["side"] is None or o.side == c["side"])
                and (c["runner"] is None or o.runner == c["runner"])
            ]
            out += self._mass_cancel(m, mine, "cancel_all", account)
        if not out:
            out.append(self._ev("orders_cancelled", self.market_id, reason="cancel_all", account_id=account, orders=[]))
        return out
