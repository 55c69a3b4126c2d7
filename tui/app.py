"""`jetbook tui`: a terminal trading screen over the gateway's `/ws_ctl` (docs/TUI.md).

The screen is a client like any other: one `Connection` (tui/client.py) carries the user's frames and brings
snapshots, trades, `orders`, `status` and command answers back; the engine pane reads every role's `/metrics`
(tui/metrics.py); the bots (tui/bots.py) trade through connections of their own.

What the screen knows lives in `Model`, which only `apply(frame)` changes: the app feeds it the connection's frames,
and a test (or the snapshot test) can feed it fixed frames with no network at all. Rendering is separate and
throttled: frames only mark panes dirty, and a timer redraws the dirty ones at most `refresh_s` apart, so a busy
market costs a few redraws a second, not one per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Input, Static

from protocol.odds import odds_step
from tui.client import Connection
from tui.metrics import EngineView, Metrics, default_sources, seconds

Frame = dict[str, Any]

DEFAULT_URL: Final = "ws://127.0.0.1:3000/ws_ctl?depth=10"
REFRESH_S: Final = 0.2  # redraw at most 5 times a second
METRICS_EVERY_S: Final = 1.0
MARKETS_EVERY_S: Final = 5.0  # list the markets again even without a hint that they changed
ORDERS_EVERY_S: Final = 1.0  # own orders refreshed at most this often while the market changes
TAPE: Final = 200
LOG: Final = 50
SIZES: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
SOCCER_RUNNERS: Final = (("HOME", "Home"), ("DRAW", "Draw"), ("AWAY", "Away"))
TENNIS_RUNNERS: Final = (("P1", "Player 1"), ("P2", "Player 2"))  # a two_runner book: implied matching
KEY_NAMES: Final = {
    "question_mark": "?", "plus": "+", "equals_sign": "=", "minus": "-", "up": "↑", "down": "↓", "left": "←",
    "right": "→", "pageup": "PgUp", "pagedown": "PgDn", "left_square_bracket": "[", "right_square_bracket": "]",
}  # fmt: skip
LIFECYCLE: Final = {
    "suspend": ("set_market_state", {"state": "suspended"}),
    "resume": ("set_market_state", {"state": "open"}),
    "await_live": ("await_live", {}),
    "go_live": ("go_live", {}),
    "close": ("close_market", {}),
    "void": ("void_market", {}),
}


# --- prices ---------------------------------------------------------------------------------------------------
# The odds ladder's steps are the protocol's (protocol/odds.py odds_step): the cursor moves on the engine's grid.


def step_price(market: Frame, price: int, n: int) -> int:
    """`price` moved `n` steps of the market's grid (ticks, or the odds ladder), within its price bounds."""
    lo, hi = int(market.get("min_price") or 1), int(market.get("max_price") or 10**9)
    if market.get("kind") == "odds":
        for _ in range(abs(n)):
            price = odds_step(price, n > 0)
    else:
        tick = int(market.get("tick_size") or 1)
        price = (price // tick + n) * tick
    return min(max(price, lo), hi)


def show_price(market: Frame | None, price: int | None) -> str:
    if price is None:
        return "—"
    if market is not None and market.get("kind") == "odds":
        return f"{price / 100:.2f}"
    return str(price)


# --- what the screen knows ------------------------------------------------------------------------------------


@dataclass
class Model:
    """Everything the panes show, changed only by `apply` (frames) and the user's own choices."""

    account: str = "me"
    depth: int = 10
    markets: dict[str, Frame] = field(default_factory=dict)
    market_id: str | None = None
    runner: str | None = None
    snapshot: Frame | None = None
    trades: deque[Frame] = field(default_factory=lambda: deque(maxlen=TAPE))
    orders: list[Frame] = field(default_factory=list)
    selected_order: int = 0
    status: Frame | None = None
    log: deque[str] = field(default_factory=lambda: deque(maxlen=LOG))
    cursor: int | None = None
    size: int = 10
    want_market: str | None = None  # created by us: select it when it appears
    dirty: set[str] = field(default_factory=set)
    wants_markets: bool = False  # the market list is stale: ask again
    wants_orders: bool = False  # the own-orders list is stale
    frames: int = 0

    # --- reading ---

    @property
    def market(self) -> Frame | None:
        if self.snapshot is not None and self.snapshot.get("market_id") == self.market_id:
            m = self.snapshot.get("market")
            if isinstance(m, dict):
                return m
        return self.markets.get(self.market_id or "")

    def runners(self) -> list[tuple[str, str]]:
        m = self.market
        if m is None or m.get("kind") != "odds":
            return []
        runners = [(r["runner_id"], r.get("label") or r["runner_id"]) for r in m.get("runners") or []]
        # The read model orders runners added together by id (AWAY, DRAW, HOME): put the preset's back in its order.
        preset = [r for r, _ in SOCCER_RUNNERS]
        if sorted(r for r, _ in runners) == sorted(preset):
            runners.sort(key=lambda r: preset.index(r[0]))
        return runners

    def ladder(self) -> Frame | None:
        """The selected book of the snapshot: the pair's one, or the selected runner's."""
        if self.snapshot is None or self.snapshot.get("market_id") != self.market_id:
            return None
        for lad in self.snapshot.get("ladders") or []:
            if self.runner is None or lad.get("runner") in (self.runner, ""):
                return dict(lad)
        return None

    def sides(self) -> tuple[str, str]:
        """(the `b` key's side, the `s` key's side): buy/sell, or back/lay."""
        m = self.market
        return ("back", "lay") if m is not None and m.get("kind") == "odds" else ("buy", "sell")

    def centre(self) -> int | None:
        """Where the cursor goes: the best price the `b` key would take, else the other side's, else the last."""
        m = self.market
        if m is None:
            return None
        lad = self.ladder() or {}
        odds = m.get("kind") == "odds"
        take, other = (lad.get("bids"), lad.get("asks")) if odds else (lad.get("asks"), lad.get("bids"))
        for levels in (take, other):
            if levels:
                return int(levels[0]["price"])
        if m.get("last_price") is not None and not odds:
            return int(m["last_price"])
        if odds:
            return 300
        return step_price(m, 1000 * int(m.get("tick_size") or 1), 0)

    # --- frames ---

    def apply(self, frame: Frame) -> None:
        self.frames += 1
        ftype = frame.get("type")
        if ftype == "snapshot":
            if frame.get("market_id") != self.market_id:
                return
            self.snapshot = frame
            m = frame.get("market")
            if isinstance(m, dict):
                self.markets[m["market_id"]] = m
            if self.runner is None and self.runners():
                self.runner = self.runners()[0][0]
            if self.cursor is None:
                self.cursor = self.centre()
            self.dirty |= {"ladder", "markets", "status"}
        elif ftype == "trade":
            if frame.get("market_id") == self.market_id:
                self.trades.appendleft(frame)
                self.dirty.add("tape")
        elif ftype == "status":
            self.status = frame
            n = frame.get("markets")
            if isinstance(n, int) and n != len(self.markets):
                self.wants_markets = True
            self.dirty.add("status")
        elif ftype == "market_list":
            self.markets = {m["market_id"]: m for m in frame.get("markets") or []}
            if self.want_market in self.markets:
                self.select_market(self.want_market)
                self.want_market = None
            elif self.market_id is None and self.markets:
                self.select_market(sorted(self.markets)[0])
            self.dirty |= {"markets", "status"}
        elif ftype == "orders":
            if frame.get("account_id") == self.account and frame.get("market_id") == self.market_id:
                self.orders = list(frame.get("orders") or [])
                self.selected_order = min(self.selected_order, max(len(self.orders) - 1, 0))
                self.dirty.add("orders")
        elif ftype == "order_response":
            cid = str(frame.get("correlation_id") or "")
            if cid.startswith("ui:"):
                self.note(_describe(frame))
                self.wants_orders = True
                if any(e.get("type") in ("market_created", "market_state_changed") for e in frame.get("events") or []):
                    self.wants_markets = True
        elif ftype == "error":
            cid = str(frame.get("correlation_id") or "")
            if not cid.startswith("bot-"):
                self.note(f"error {frame.get('error')}: {str(frame.get('detail'))[:100]}")

    def note(self, text: str) -> None:
        self.log.appendleft(text)
        self.dirty.add("log")

    # --- choices ---

    def select_market(self, market_id: str | None) -> bool:
        """True when the selection changed (the caller subscribes)."""
        if market_id == self.market_id:
            return False
        self.market_id = market_id
        self.snapshot = None
        self.runner = None
        self.cursor = None
        self.trades.clear()
        self.orders = []
        self.selected_order = 0
        runners = self.runners()
        if runners:
            self.runner = runners[0][0]
        self.cursor = self.centre()
        self.wants_orders = True
        self.dirty |= {"markets", "ladder", "tape", "orders", "status"}
        return True

    def cycle_market(self, n: int) -> bool:
        ids = sorted(self.markets)
        if not ids:
            return False
        i = ids.index(self.market_id) if self.market_id in ids else -n
        return self.select_market(ids[(i + n) % len(ids)])

    def cycle_runner(self, n: int) -> None:
        runners = [r for r, _ in self.runners()]
        if not runners:
            return
        i = runners.index(self.runner) if self.runner in runners else -n
        self.runner = runners[(i + n) % len(runners)]
        self.cursor = self.centre()
        self.dirty |= {"ladder", "markets", "tape"}

    def move_cursor(self, n: int) -> None:
        m = self.market
        if m is None:
            return
        self.cursor = step_price(m, self.cursor if self.cursor is not None else (self.centre() or 1), n)
        self.dirty.add("ladder")

    def change_size(self, up: bool) -> None:
        bigger = [s for s in SIZES if s > self.size]
        smaller = [s for s in SIZES if s < self.size]
        self.size = (bigger[0] if bigger else self.size) if up else (smaller[-1] if smaller else self.size)
        self.dirty.add("status")

    def selected(self) -> Frame | None:
        if not self.orders:
            return None
        return self.orders[min(self.selected_order, len(self.orders) - 1)]


def _describe(frame: Frame) -> str:
    """One line for the log: what the command did."""
    rejected = frame.get("rejected")
    events = frame.get("events") or []
    if rejected:
        kind = events[0].get("command_type", "command") if events else "command"
        return f"#{frame.get('cmd_seq')} {kind} rejected: {rejected.get('reason')} ({rejected.get('detail')})"
    parts: list[str] = []
    fills = [e for e in events if e.get("type") == "fill"]
    for e in events:
        t = e.get("type")
        if t == "order_accepted":
            parts.append(f"{e['side']} {e['qty']} @ {e['price']} accepted (order {e['order_id']})")
        elif t == "orders_accepted":  # a compact batch's run: orders resting untouched
            parts.append(f"{len(e.get('orders') or [])} orders accepted")
        elif t == "order_cancelled":
            parts.append(f"order {e['order_id']} cancelled ({e.get('reason')})")
        elif t == "orders_cancelled":
            parts.append(f"{len(e.get('orders') or [])} orders cancelled ({e.get('reason')})")
        elif t == "market_created":
            parts.append(f"market {e['market_id']} created")
        elif t == "market_state_changed":
            parts.append(f"{e['market_id']} {e['state']}/{e['phase']}")
        elif t == "market_settled":
            parts.append(f"{e['market_id']} settled (winner {e.get('winner')}, price {e.get('price')})")
        elif t == "order_amended":
            parts.append(f"order {e['order_id']} amended")
    if fills:
        parts.append(f"{len(fills)} fill(s), {sum(f['qty'] for f in fills)} traded")
    return f"#{frame.get('cmd_seq')} " + ("; ".join(parts) or "done")


# --- rendering (pure: Model in, renderable out) ---------------------------------------------------------------


def _levels(lad: Frame | None) -> tuple[Any, ...]:
    if not lad:
        return ()
    return tuple(
        (lv["price"], lv["qty"], lv["orders"], lv.get("implied_qty"))
        for side in ("bids", "asks")
        for lv in lad.get(side) or []
    )


def markets_key(model: Model) -> tuple[Any, ...]:
    """What the markets pane shows, to skip redrawing it when a snapshot changed nothing of it."""
    ms = tuple(
        (k, m.get("state"), m.get("phase"), m.get("last_price"), m.get("volume")) for k, m in model.markets.items()
    )
    tops: tuple[Any, ...] = ()
    if model.snapshot is not None:
        tops = tuple(
            (lad.get("runner"), (lad.get("bids") or [{}])[0].get("price"), (lad.get("asks") or [{}])[0].get("price"))
            for lad in model.snapshot.get("ladders") or []
        )
    return ms, model.market_id, model.runner, tops


def ladder_key(model: Model) -> tuple[Any, ...]:
    mine = tuple((o.get("runner"), o.get("price"), o.get("open_qty")) for o in model.orders)
    m = model.market or {}
    return model.market_id, model.runner, model.cursor, m.get("kind"), _levels(model.ladder()), mine


def render_markets(model: Model) -> Table:
    t = Table(box=None, expand=True, padding=(0, 1), header_style="bold")
    for col in ("", "market", "kind", "state", "phase", "last", "vol"):
        t.add_column(col, no_wrap=True)
    for mid in sorted(model.markets):
        m = model.markets[mid]
        sel = mid == model.market_id
        state = str(m.get("state"))
        colour = {"open": "green", "suspended": "yellow", "halted": "red", "closed": "magenta"}.get(state, "dim")
        t.add_row(
            "▶" if sel else "", Text(mid, style="bold" if sel else ""), str(m.get("kind")), Text(state, style=colour),
            str(m.get("phase")), show_price(m, m.get("last_price")), str(m.get("volume", 0)),
        )  # fmt: skip
    if not model.markets:
        t.add_row("", Text("no markets: n = soccer, t = tennis, N = pair", style="dim"), "", "", "", "", "")
    runners = model.runners()
    if runners and model.snapshot is not None:
        books = {lad.get("runner"): lad for lad in model.snapshot.get("ladders") or []}
        t.add_row("", "", "", "", "", "", "")
        t.add_row("", Text("runner", style="bold"), "", Text("bid", style="bold"), Text("ask", style="bold"), "", "")
        for rid, label in runners:
            lad = books.get(rid) or {}
            bid = (lad.get("bids") or [{}])[0].get("price")
            ask = (lad.get("asks") or [{}])[0].get("price")
            sel = rid == model.runner
            t.add_row(
                "▷" if sel else "", Text(label, style="bold" if sel else ""), rid,
                show_price(model.market, bid), show_price(model.market, ask), "", "",
            )  # fmt: skip
    return t


IMPLIED_MARK: Final = "~"
IMPLIED_STYLE: Final = "italic dim"


def level_cell(lv: Frame | None, *, right: bool) -> Text:
    """`qty (orders)` of the direct orders, and in a two_runner market `~n` (dim, italic) for the implied units.

    The implied part is kept apart because it is not an order here: it is the other runner's, shown at the
    quoting rule's tick, and what a taker gets there is decided at the exact implied price.
    """
    cell = Text()
    if lv is None:
        return cell
    direct = f"{lv['qty']} ({lv['orders']})" if lv.get("qty") else ""
    implied = f"{IMPLIED_MARK}{lv['implied_qty']}" if lv.get("implied_qty") else ""
    parts = [(direct, ""), (implied, IMPLIED_STYLE)]
    if right:
        parts.reverse()  # the bid column is right-aligned: the implied part on the outside, away from the price
    for i, (text, style) in enumerate(p for p in parts if p[0]):
        cell.append((" " if i else "") + text, style=style)
    return cell


def render_ladder(model: Model, rows: int = 40) -> Table | Text:
    m = model.market
    if m is None:
        return Text("no market selected", style="dim")
    lad = model.ladder() or {"bids": [], "asks": [], "bid_side": model.sides()[0], "ask_side": model.sides()[1]}
    bids = {int(lv["price"]): lv for lv in lad.get("bids") or []}
    asks = {int(lv["price"]): lv for lv in lad.get("asks") or []}
    mine: dict[int, int] = {}
    for o in model.orders:
        if o.get("price") is not None and (model.runner is None or o.get("runner") in (model.runner, "")):
            mine[int(o["price"])] = mine.get(int(o["price"]), 0) + int(o.get("open_qty") or 0)
    prices = set(bids) | set(asks)
    if model.cursor is not None:
        prices.add(model.cursor)
    title = m["market_id"] + (
        f" · {dict(model.runners()).get(model.runner or '', model.runner)}" if model.runner else ""
    )
    if m.get("book_type") == "two_runner":
        title += f" · {IMPLIED_MARK}n = implied from the other runner"
    t = Table(box=None, expand=True, padding=(0, 1), header_style="bold", title=title, title_style="bold")
    t.add_column("mine", justify="right", no_wrap=True)
    t.add_column(f"{lad.get('bid_side')} (bid)", justify="right", no_wrap=True, style="cyan")
    t.add_column("price", justify="center", no_wrap=True)
    t.add_column(f"{lad.get('ask_side')} (ask)", justify="left", no_wrap=True, style="magenta")
    best_bid = max(bids) if bids else None
    best_ask = min(asks) if asks else None
    shown = sorted(prices, reverse=True)
    if len(shown) > rows:  # the pane is shorter than the book: a window of it around the cursor
        i = shown.index(model.cursor) if model.cursor in shown else 0
        start = min(max(i - rows // 2, 0), len(shown) - rows)
        shown = shown[start : start + rows]
    for p in shown:
        cur = p == model.cursor
        style = "reverse" if cur else ("bold" if p in (best_bid, best_ask) else "")
        t.add_row(
            str(mine[p]) if p in mine else "",
            level_cell(bids.get(p), right=True),
            Text(("▶ " if cur else "") + show_price(m, p), style=style),
            level_cell(asks.get(p), right=False),
        )
    if not prices:
        t.add_row("", "", Text("empty book", style="dim"), "")
    return t


def render_tape(model: Model, rows: int = 40) -> Table:
    t = Table(box=None, expand=True, padding=(0, 1), header_style="bold")
    for col in ("time (UTC)", "runner", "taker", "price", "qty"):
        t.add_column(col, no_wrap=True, justify="right" if col in ("price", "qty") else "left")
    m = model.market
    for tr in list(model.trades)[:rows]:
        ts = int(tr.get("ts") or 0)
        clock = time.strftime("%H:%M:%S", time.gmtime(ts / 1e9)) + f".{(ts // 1_000_000) % 1000:03d}"
        side = str(tr.get("taker_side"))
        colour = "cyan" if side in ("buy", "lay") else "magenta"
        runner = Text(str(tr.get("runner") or ""))
        if tr.get("implied"):  # the price is the maker's odds on its own runner: say which
            runner.append(f" {IMPLIED_MARK}{tr.get('maker_runner')}", style=IMPLIED_STYLE)
        t.add_row(clock, runner, Text(side, style=colour), show_price(m, tr.get("price")), str(tr.get("qty")))
    if not model.trades:
        t.add_row(Text("no trades yet", style="dim"), "", "", "", "")
    return t


def render_orders(model: Model) -> Table:
    t = Table(box=None, expand=True, padding=(0, 1), header_style="bold")
    for col in ("", "id", "runner", "side", "price", "open/qty", "status"):
        t.add_column(col, no_wrap=True)
    sel = model.selected()
    for o in model.orders[:30]:
        t.add_row(
            "▶" if o is sel else "", str(o.get("order_id")), str(o.get("runner") or ""), str(o.get("side")),
            show_price(model.market, o.get("price")), f"{o.get('open_qty')}/{o.get('qty')}",
            str(o.get("status")).replace("partially_filled", "partial"),
        )  # fmt: skip
    if not model.orders:
        t.add_row("", Text("none", style="dim"), "", "", "", "", "")
    return t


def render_bots(bots: list[Any] | None) -> Table | Text:
    if bots is None:
        return Text("bots unavailable", style="dim")
    t = Table(box=None, expand=True, padding=(0, 1), header_style="bold")
    for col in ("bot", "on", "sent", "trades", "rej", "P&L"):
        t.add_column(col, no_wrap=True, justify="left" if col in ("bot", "on") else "right")
    for b in bots:
        t.add_row(b.name, Text("on" if b.running else "off", style="green" if b.running else "dim"),
                  str(b.sent), str(b.trades), str(b.rejects), "—" if b.pnl is None else str(b.pnl))  # fmt: skip
    if not bots:
        t.add_row(Text("no bots", style="dim"), "", "", "", "", "")
    return t


def render_engine(view: EngineView) -> Group:
    t = Table(box=None, expand=True, padding=(0, 1), header_style="bold")
    for col in ("stage", "p50", "p99", "n/window"):
        t.add_column(col, no_wrap=True, justify="left" if col == "stage" else "right")

    def rate(v: float | None) -> str:
        return "—" if v is None else f"{v:,.0f}/s"

    t.add_row(Text("events", style="bold"), rate(view.events_per_s), "", "")
    t.add_row(Text("commands", style="bold"), rate(view.commands_per_s), "", "")
    for s in view.stages:
        t.add_row(s.name, seconds(s.p50), seconds(s.p99), f"{s.count:.0f}")
    srcs = Text("/metrics: ", style="dim")
    for src in view.sources:
        ok = src.up is True
        srcs.append(src.name, style="green" if ok else ("dim" if src.up is None else "red"))
        srcs.append(" " if src.up is not False else " (unavailable) ", style="red")
    return Group(t, srcs)


# --- screens ----------------------------------------------------------------------------------------------------


class HelpScreen(ModalScreen[None]):
    """Every key, from the app's own bindings (so the list cannot drift from what the keys do)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark", "dismiss", "close")]

    def __init__(self, rows: list[tuple[str, str]]) -> None:
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        t = Table(box=None, padding=(0, 2), title="keys (Esc closes)", title_style="bold")
        t.add_column("key", style="bold cyan", no_wrap=True)
        t.add_column("does")
        for key, what in self.rows:
            t.add_row(key, what)
        yield Static(t, id="help")

    def action_dismiss(self, result: None = None) -> None:  # type: ignore[override]
        self.dismiss(None)


class AccountScreen(ModalScreen[str | None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]

    def __init__(self, current: str) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="account-box"):
            yield Static("trade as account (Enter to switch, Esc to keep):")
            yield Input(value=self.current, id="account-input")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


# --- the app ----------------------------------------------------------------------------------------------------


@dataclass
class Options:
    url: str = DEFAULT_URL
    depth: int | None = None
    no_ack: bool = False
    high_throughput: bool = False
    account: str = "me"
    api_key: str | None = None
    metrics: list[str] = field(default_factory=list)
    mm: int = 2
    noise: int = 3
    informed: int = 1
    bots_start: bool = False  # trade at once (any of the --bots flags given), else start with `B`
    seed: int = 1
    connect: bool = True  # False: no network (the snapshot test feeds frames itself)
    refresh_s: float = REFRESH_S
    metrics_every_s: float = METRICS_EVERY_S


def ws_url(opts: Options) -> str:
    """The /ws_ctl URL with --depth, --no-ack and --api-key folded into its query."""
    parts = urlsplit(opts.url)
    query = dict(parse_qsl(parts.query))
    if opts.depth is not None:
        query["depth"] = str(opts.depth)
    if opts.no_ack:
        query["no_ack"] = "1"
    if opts.api_key:
        query["api_key"] = opts.api_key
    query.pop("market_id", None)  # the screen subscribes to the market the user selects
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/ws_ctl", urlencode(query), ""))


def http_base(url: str) -> str:
    """http(s)://host:port of a ws(s):// URL: /risk and /metrics live on the same port."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


def depth_of(url: str) -> int:
    with contextlib.suppress(ValueError):
        return int(dict(parse_qsl(urlsplit(url).query)).get("depth", "10"))
    return 10


class TradingApp(App[None]):
    """The trading screen. `fleet` is injected (or made from the options); `clock` is frozen by the snapshot test."""

    CSS_PATH = "app.tcss"
    TITLE = "jetbook"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "keys"),
        Binding("b", "place('b')", "buy/back"),
        Binding("s,l", "place('s')", "sell/lay"),
        Binding("plus,equals_sign", "size(1)", "size+", show=False),
        Binding("minus", "size(-1)", "size-", show=False),
        Binding("up", "cursor(1)", "price up", show=False),
        Binding("down", "cursor(-1)", "price down", show=False),
        Binding("pageup", "cursor(10)", "price +10", show=False),
        Binding("pagedown", "cursor(-10)", "price -10", show=False),
        Binding("c", "centre", "centre cursor", show=False),
        Binding("m", "market(1)", "next market"),
        Binding("M", "market(-1)", "prev market", show=False),
        Binding("right", "runner(1)", "next runner", show=False),
        Binding("left", "runner(-1)", "prev runner", show=False),
        Binding("right_square_bracket", "order(1)", "next order", show=False),
        Binding("left_square_bracket", "order(-1)", "prev order", show=False),
        Binding("x", "cancel", "cancel order"),
        Binding("X", "cancel_all", "cancel all"),
        Binding("a", "account", "account", show=False),
        Binding("B", "bots(None)", "bots on/off"),
        Binding("1", "bots('mm')", "market makers on/off", show=False),
        Binding("2", "bots('noise')", "noise traders on/off", show=False),
        Binding("3", "bots('informed')", "informed traders on/off", show=False),
        Binding("n", "create('soccer')", "new soccer", show=False),
        Binding("t", "create('tennis')", "new tennis (two runners, implied)", show=False),
        Binding("N", "create('pair')", "new pair", show=False),
        Binding("p", "lifecycle('suspend')", "suspend", show=False),
        Binding("o", "lifecycle('resume')", "resume", show=False),
        Binding("w", "lifecycle('await_live')", "await live", show=False),
        Binding("g", "lifecycle('go_live')", "go live", show=False),
        Binding("C", "lifecycle('close')", "close market", show=False),
        Binding("W", "settle", "settle: winner = selected runner (pair: price = cursor)", show=False),
        Binding("V", "lifecycle('void')", "void market", show=False),
        Binding("q", "quit", "quit"),
    ]

    def __init__(
        self, opts: Options | None = None, *, fleet: Any = None, clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        super().__init__()
        self.opts = opts = opts or Options()
        self.clock = clock
        self.url = ws_url(opts)
        self.http = http_base(self.url)
        self.model = Model(account=opts.account, depth=opts.depth or depth_of(opts.url))
        self.metrics = Metrics(default_sources(self.http, opts.metrics))
        self.conn = Connection(self.url, on_frame=self.on_frame, high_throughput=opts.high_throughput, name="tui")
        self.fleet = fleet if fleet is not None else self._make_fleet()
        self.run_tag = _base36(int(wall() * 1000))  # client order ids unique across runs of the screen
        self._n = 0
        self._created: set[str] = set()
        self._tasks: list[asyncio.Task[Any]] = []
        self._fleet_task: asyncio.Task[None] | None = None
        self._fleet_stop = asyncio.Event()
        self._was_connected = False
        self._markets_at = -1e9
        self._orders_at = -1e9
        self.renders = 0
        self._bots_sig: tuple[Any, ...] = ()
        self._status_text = ""
        self._keys: dict[str, Any] = {}

    def _make_fleet(self) -> Any:
        try:
            from tui.bots import Fleet
        except ImportError:
            return None
        o = self.opts
        fleet = Fleet(self.http, mm=o.mm, noise=o.noise, informed=o.informed, seed=o.seed, no_ack=o.no_ack,
                      high_throughput=o.high_throughput, api_key=o.api_key)  # fmt: skip
        if not o.bots_start:
            fleet.pause()
        return fleet

    # --- layout ---

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        with Grid(id="panes"):
            yield Static(id="markets", classes="pane")
            yield Static(id="ladder", classes="pane")
            yield Static(id="tape", classes="pane")
            yield Static(id="orders", classes="pane")
            yield Static(id="bots", classes="pane")
            yield Static(id="engine", classes="pane")
        with Horizontal(id="control"):
            for bid, label in (
                ("create-soccer", "+Soccer n"), ("create-tennis", "+Tennis t"), ("create-pair", "+Pair N"),
                ("suspend", "Suspend p"), ("resume", "Resume o"), ("await_live", "Await live w"),
                ("go_live", "Go live g"), ("close", "Close C"), ("settle", "Settle W"), ("void", "Void V"),
            ):  # fmt: skip
                yield Button(label, id=bid, compact=True)
        yield Static(id="log")
        yield Footer()

    def on_mount(self) -> None:
        titles = {"markets": "markets", "ladder": "ladder", "tape": "trade tape", "orders": "my orders",
                  "bots": "bots", "engine": "engine (10 s window)"}  # fmt: skip
        for wid, title in titles.items():
            self.query_one(f"#{wid}", Static).border_title = title
        self.query_one("#control").border_title = "control"
        self.model.dirty |= {"markets", "ladder", "tape", "orders", "bots", "engine", "status", "log"}
        self.refresh_panes()
        self.call_after_refresh(self.relayout)  # the ladder and the tape fit their panes once those have a size
        self.set_interval(self.opts.refresh_s, self.tick)
        if self.opts.connect:
            self._tasks.append(asyncio.create_task(self.conn.run()))
            self._tasks.append(asyncio.create_task(self._scrape_loop()))
            if self.opts.bots_start and self.fleet is not None:
                self._start_fleet()

    def relayout(self) -> None:
        self.model.dirty |= {"ladder", "tape"}
        self.refresh_panes()

    def on_resize(self) -> None:
        self.call_after_refresh(self.relayout)

    async def on_unmount(self) -> None:
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop the connection, the scrapes and the bots; idempotent."""
        self._fleet_stop.set()
        await self.conn.stop()
        tasks = [*self._tasks, *([self._fleet_task] if self._fleet_task else [])]
        self._tasks, self._fleet_task = [], None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        await self.metrics.close()

    async def _scrape_loop(self) -> None:
        while True:
            await self.metrics.scrape(self.clock())
            self.model.dirty.add("engine")
            await asyncio.sleep(self.opts.metrics_every_s)  # a polling period, not a wait for an outcome

    def _start_fleet(self) -> None:
        if self._fleet_task is None and self.fleet is not None:
            self._fleet_task = asyncio.create_task(self.fleet.run(self._fleet_stop))

    # --- frames and the clock ---

    def on_frame(self, frame: Frame) -> None:
        """Every frame of the screen's connection (and what the snapshot test feeds)."""
        self.model.apply(frame)

    def tick(self) -> None:
        """Every refresh: ask for what is stale, then redraw what changed."""
        model, now = self.model, self.clock()
        connected = self.conn.state == "connected"
        if connected and not self._was_connected:  # (re)connected: everything may have changed meanwhile
            model.wants_markets = model.wants_orders = True
            model.note(f"connected ({self.conn.reconnects} reconnects)")
        if connected != self._was_connected:
            model.dirty.add("status")
        self._was_connected = connected
        if self.opts.connect and connected:
            if model.wants_markets or now - self._markets_at >= MARKETS_EVERY_S:
                model.wants_markets = False
                self._markets_at = now
                self.conn.send_user({"type": "list_markets", "correlation_id": self._cid()})
            sub = self.conn.subscription
            if model.market_id is not None and (sub is None or sub.get("market_id") != model.market_id):
                self.conn.subscribe(model.market_id, model.depth)
            changed = "ladder" in model.dirty and now - self._orders_at >= ORDERS_EVERY_S
            if model.market_id is not None and (model.wants_orders or changed):
                model.wants_orders = False
                self._orders_at = now
                self.conn.send_user({"type": "orders", "correlation_id": self._cid(), "market_id": model.market_id,
                                     "account_id": model.account})  # fmt: skip
        if self.conn.state != "connected":
            model.dirty.add("status")
        if self.fleet is not None:
            sig = tuple((b.running, b.sent, b.trades, b.rejects, b.pnl) for b in self.fleet.bots)
            if sig != self._bots_sig:
                self._bots_sig = sig
                model.dirty.add("bots")
        self.refresh_panes()

    def refresh_panes(self) -> None:
        model = self.model
        dirty, model.dirty = model.dirty, set()
        if not dirty:
            return
        self.renders += 1
        if "markets" in dirty:
            self._update("markets", markets_key(model), lambda: render_markets(model))
        if "ladder" in dirty:
            rows = max(self.query_one("#ladder", Static).content_size.height - 2, 1)  # the title and the header
            self._update("ladder", (ladder_key(model), rows), lambda: render_ladder(model, rows))
        if "tape" in dirty:
            rows = max(self.query_one("#tape", Static).content_size.height - 1, 1)
            first = model.trades[0].get("seq") if model.trades else None
            self._update("tape", (model.market_id, first, len(model.trades), rows), lambda: render_tape(model, rows))
        if "orders" in dirty or "ladder" in dirty:
            key = (
                model.account,
                model.selected_order,
                model.market_id,
                tuple((o.get("order_id"), o.get("price"), o.get("open_qty"), o.get("status")) for o in model.orders),
            )
            self.query_one("#orders", Static).border_title = f"open orders of {model.account}"
            self._update("orders", key, lambda: render_orders(model))  # fmt: skip
        if "bots" in dirty:
            self.query_one("#bots", Static).update(render_bots(None if self.fleet is None else self.fleet.bots))
        if "engine" in dirty:
            self.query_one("#engine", Static).update(render_engine(self.metrics.current))
        if "status" in dirty:
            line = self.status_line()
            if line.plain != self._status_text:  # redrawn only when its words change
                self._status_text = line.plain
                self.query_one("#status", Static).update(line)
        if "log" in dirty:
            self.query_one("#log", Static).update(Text("\n".join(list(model.log)[:3]) or "? lists the keys"))

    def _update(self, pane: str, key: Any, render: Callable[[], Any]) -> None:
        """Redraw a pane only when what it shows changed: a snapshot often changes one pane, not all of them."""
        if self._keys.get(pane) != key:
            self._keys[pane] = key
            self.query_one(f"#{pane}", Static).update(render())

    def status_line(self) -> Text:
        model, conn = self.model, self.conn
        t = Text()
        if not self.opts.connect:
            t.append("● offline ", style="bold yellow")
        elif conn.state == "connected":
            t.append("● connected ", style="bold green")
        elif conn.state == "down":
            t.append("✖ DOWN: reconnecting ", style="bold white on red")
            t.append(f"({conn.detail}) ", style="red")
        else:
            t.append("… connecting ", style="bold yellow")
        t.append(self.url.split("?", 1)[0] + "  ", style="dim")
        t.append(f"account {model.account}  size {model.size}  ", style="bold")
        m = model.market
        if m is not None:
            t.append(f"{m['market_id']} {m.get('state')}/{m.get('phase')}  ")
            t.append(f"cursor {show_price(m, model.cursor)}  ")
        st = model.status
        if st is not None:
            t.append(f"evt {st.get('evt_seq')} read model {st.get('projection_seq')} clients {st.get('clients')}",
                     style="dim")  # fmt: skip
        if conn.reconnects:
            t.append(f"  reconnects {conn.reconnects}", style="dim")
        return t

    # --- sending ---

    def _cid(self) -> str:
        self._n += 1
        return f"ui:{self._n}"

    def send(self, frame: Frame) -> None:
        self.conn.send_user({"correlation_id": self._cid(), **frame})

    def _need_market(self) -> Frame | None:
        m = self.model.market
        if m is None:
            self.model.note("no market selected (n: create the soccer preset)")
        return m

    # --- actions ---

    @classmethod
    def keys_help(cls) -> list[tuple[str, str]]:
        """(keys, what they do) for every binding: the help screen's rows and docs/TUI.md's table."""
        rows = []
        for b in cls.BINDINGS:
            if isinstance(b, Binding):
                keys = " ".join(KEY_NAMES.get(k, k) for k in b.key.split(","))
                rows.append((keys, b.description))
        rows.append(("mouse", "click a control button"))
        return rows

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.keys_help()))

    def action_place(self, which: str) -> None:
        m = self._need_market()
        model = self.model
        if m is None or model.cursor is None:
            return
        side = model.sides()[0 if which == "b" else 1]
        self._n += 1
        frame: Frame = {"type": "place_order", "market_id": m["market_id"], "account_id": model.account,
                        "client_order_id": f"ui-{self.run_tag}-{self._n}", "side": side, "price": model.cursor,
                        "qty": model.size}  # fmt: skip
        if m.get("kind") == "odds":
            frame["runner"] = model.runner
        self.send(frame)
        model.note(f"sent {side} {model.size} @ {show_price(m, model.cursor)} as {model.account}")

    def action_size(self, n: int) -> None:
        self.model.change_size(n > 0)
        self.refresh_panes()

    def action_cursor(self, n: int) -> None:
        self.model.move_cursor(n)
        self.refresh_panes()

    def action_centre(self) -> None:
        self.model.cursor = self.model.centre()
        self.model.dirty.add("ladder")
        self.refresh_panes()

    def action_market(self, n: int) -> None:
        if self.model.cycle_market(n):
            self._subscribe()

    def _subscribe(self) -> None:
        if self.model.market_id is not None and self.opts.connect and self.conn.state == "connected":
            self.conn.subscribe(self.model.market_id, self.model.depth)  # else the next tick does
        self.refresh_panes()

    def action_runner(self, n: int) -> None:
        self.model.cycle_runner(n)
        self.refresh_panes()

    def action_order(self, n: int) -> None:
        model = self.model
        if model.orders:
            model.selected_order = (model.selected_order + n) % len(model.orders)
            model.dirty.add("orders")
            self.refresh_panes()

    def action_cancel(self) -> None:
        o = self.model.selected()
        if o is None:
            self.model.note("no order selected")
            return
        self.send({"type": "cancel_order", "market_id": o["market_id"], "account_id": self.model.account,
                   "order_id": o["order_id"]})  # fmt: skip
        self.model.note(f"cancel order {o['order_id']}")

    def action_cancel_all(self) -> None:
        m = self._need_market()
        if m is not None:
            self.send({"type": "cancel_all", "market_id": m["market_id"], "account_id": self.model.account})
            self.model.note(f"cancel all of {self.model.account}'s orders in {m['market_id']}")

    def action_account(self) -> None:
        def chosen(account: str | None) -> None:
            if account and account != self.model.account:
                self.model.account = account
                self.model.orders = []
                self.model.wants_orders = True
                self.model.dirty |= {"orders", "status", "ladder"}
                self.model.note(f"trading as {account}")

        self.push_screen(AccountScreen(self.model.account), chosen)

    def action_bots(self, kind: str | None) -> None:
        fleet = self.fleet
        if fleet is None:
            self.model.note("bots unavailable")
            return
        mine = [b for b in fleet.bots if kind in (None, b.kind)]
        if not mine:
            self.model.note(f"no {kind or ''} bots (see --mm-bots, --noise-bots, --informed-bots)")
            return
        if any(b.running for b in mine) and self._fleet_task is not None:
            dropped = fleet.pause(kind)
            self.model.note(f"paused {kind or 'all'} bots ({dropped} queued frames dropped)")
        else:
            fleet.start(kind)
            self._start_fleet()
            self.model.note(f"started {kind or 'all'} bots")
        self.model.dirty.add("bots")
        self.refresh_panes()

    def action_create(self, kind: str) -> None:
        prefix = kind.upper()
        n = 1
        while f"{prefix}-{n}" in self.model.markets or f"{prefix}-{n}" in self._created:
            n += 1
        mid = f"{prefix}-{n}"
        self._created.add(mid)
        frame: Frame = {"type": "create_market", "market_id": mid}
        if kind in ("soccer", "tennis"):
            runners = SOCCER_RUNNERS if kind == "soccer" else TENNIS_RUNNERS
            frame |= {
                "kind": "odds",
                "quote": "GBP",
                "runners": [{"runner_id": r, "label": label} for r, label in runners],
            }
            if kind == "tennis":
                frame["book_type"] = "two_runner"
        else:
            frame |= {"kind": "pair", "base": "BTC", "quote": "USD", "tick_size": 1}
        self.model.want_market = mid
        self.send(frame)
        self.model.note(f"create {mid}")

    def action_lifecycle(self, what: str) -> None:
        m = self._need_market()
        if m is None:
            return
        ctype, fields = LIFECYCLE[what]
        self.send({"type": ctype, "market_id": m["market_id"], **fields})
        self.model.note(f"{what.replace('_', ' ')} {m['market_id']}")

    def action_settle(self) -> None:
        m = self._need_market()
        if m is None:
            return
        frame: Frame = {"type": "settle_market", "market_id": m["market_id"]}
        if m.get("kind") == "odds":
            frame["winner"] = self.model.runner
        else:
            frame["price"] = self.model.cursor
        self.send(frame)
        self.model.note(f"settle {m['market_id']}: " + (f"winner {self.model.runner}" if m.get("kind") == "odds"
                                                          else f"price {self.model.cursor}"))  # fmt: skip

    def on_button_pressed(self, event: Button.Pressed) -> None:
        bid = event.button.id or ""
        if bid.startswith("create-"):
            self.action_create(bid.removeprefix("create-"))
        elif bid == "settle":
            self.action_settle()
        elif bid in LIFECYCLE:
            self.action_lifecycle(bid)
        self.refresh_panes()


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out
