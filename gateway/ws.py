"""The gateway's WebSockets: `/ws` streams a market's snapshots and trades, `/ws_ctl` also takes commands.

Frames are JSON text, one object each, with a `type` (docs/WEBSOCKET.md). The meanings follow the live-server
reference's `/ws` and `/ws_ctl`: a snapshot on connect and whenever the market changes (at most every
`interval_ms`), `ack` then `order_response` per command, a `status` every second, `no_ack=1` for throughput.

Memory stays bounded whatever a client does. Each connection has one writer and an outbox with four lanes:
replies to the client's own frames (bounded; when full the reader stops reading, so a client that floods
us and does not read waits on its own TCP window), trades (bounded; the oldest is dropped and the next trade
says how many were), and one slot each for the latest snapshot and status (a newer one replaces an unsent one:
a slow reader gets fewer, fresher snapshots, never a backlog). A new snapshot is not even asked for until the
last one was written, so a slow client costs no queries either.

Snapshots are shared. Every connection on the same (market, depth, runner) that needs the state at (or after)
the same JB_EVT position gets the one answer of one `snapshot` query, encoded once: a thousand viewers of a busy
market cost the query service one request per change and interval, not a thousand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import weakref
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Final

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from commands.model import SPECS
from events.model import Event, Fill, to_wire
from gateway.auth import Auth, Principal
from gateway.core import DEFAULT_TIMEOUT_S, Gateway, GatewayError, is_control, rejection
from gateway.metrics import COMMAND_ROUND_TRIP, WS_CLIENTS, WS_FRAMES
from protocol.subjects import is_id

log = logging.getLogger("jetbook.gateway")

router = APIRouter()

DEFAULT_INTERVAL_MS: Final = 200
MIN_INTERVAL_MS: Final = 50  # faster than this is a benchmark, not a screen; clamped, not refused
MAX_INTERVAL_MS: Final = 60_000
DEFAULT_DEPTH: Final = 10
MAX_DEPTH: Final = 1000  # the snapshot query's own bound
MAX_FRAME_BYTES: Final = 64 * 1024  # a command frame is a few hundred bytes; the JB_CMD message limit
# uvicorn's own cap (ws_max_size): past it the socket is closed with 1009 before the gateway sees the frame;
# under it, a frame over MAX_FRAME_BYTES gets an `error` frame and the socket stays open.
WS_MAX_SIZE: Final = 2 * MAX_FRAME_BYTES
MAX_CORRELATION_CHARS: Final = 128
MAX_REPLIES: Final = 1024  # frames answering the client's own, waiting to be written
MAX_TRADES: Final = 1000  # trade frames waiting to be written; past it the oldest are dropped
MAX_IN_FLIGHT: Final = 256  # commands of one connection waiting for their events
STATUS_EVERY_S: Final = 1.0
RETRY_AFTER_S: Final = 1.0  # a snapshot that failed for a transient reason is asked again after this
SNAPSHOT_CACHE: Final = 1024  # (market, depth, runner) answers kept for sharing
CLOSE_POLICY: Final = 1008  # RFC 6455 policy violation: no or a bad API key
CLOSE_BAD_REQUEST: Final = 4400  # the private range (4000-4999): the URL's parameters are unusable
WS_TYPES: Final = ("list_markets", "subscribe", "orders")  # frames that are not protocol commands
FRAME_KEYS: Final = ("correlation_id", "idempotency_key")  # frame fields that never go into a command


def dumps(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class FrameError(Exception):
    """A client frame that cannot be acted on; answered with an `error` frame, the connection stays."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True, slots=True)
class Subscription:
    market_id: str | None
    depth: int
    runner: str | None


# --- parameters and keys ----------------------------------------------------------------------------------


def _int_param(params: Any, name: str, default: int, low: int, high: int, *, clamp: bool = False) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise FrameError("invalid_field", f"{name}: not an integer") from None
    if clamp:
        return min(max(value, low), high)
    if not low <= value <= high:
        raise FrameError("invalid_field", f"{name}: out of range {low}..{high}")
    return value


def _id_param(params: Any, name: str) -> str | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if not is_id(raw):
        raise FrameError("invalid_field", f"{name}: not an id ([A-Za-z0-9_-]{{1,64}})")
    return str(raw)


def api_key(ws: WebSocket) -> str | None:
    """The caller's key: `?api_key=` (a browser cannot set headers on a WebSocket), `X-API-Key`, or `Authorization`."""
    key = ws.query_params.get("api_key") or ws.headers.get("x-api-key")
    if key:
        return key
    auth = ws.headers.get("authorization")
    if not auth:
        return None
    scheme, _, rest = auth.strip().partition(" ")
    return rest.strip() if scheme.lower() == "bearer" else auth.strip()


def redact(event: dict[str, Any], principal: Principal) -> dict[str, Any]:
    """A trader sees its own side of a fill, not who was on the other side (the accounts are private)."""
    if principal.role == "operator" or event.get("type") != Fill.type:
        return event
    out = dict(event)
    for side in ("maker", "taker"):
        if out.get(f"{side}_account") != principal.account:
            out[f"{side}_account"] = None
            out[f"{side}_client_order_id"] = None
    return out


def trade_frame(seq: int, event: Fill) -> dict[str, Any]:
    """A fill as the public tape shows it: no accounts, no client order ids.

    An implied fill adds `implied` and the maker's runner (its `price` is the odds there); a direct one has
    no such keys, as in the event itself, so the frames of every other market are what they were.
    """
    frame = {
        "type": "trade", "market_id": event.market_id, "seq": seq, "cmd_seq": event.cmd_seq,
        "trade_id": event.trade_id, "runner": event.runner, "price": event.price, "qty": event.qty,
        "taker_side": event.taker_side, "ts": event.ts,
    }  # fmt: skip
    if event.implied:
        frame |= {"implied": True, "maker_runner": event.maker_runner}
    return frame


# --- the outbox ---------------------------------------------------------------------------------------------


class Outbox:
    """What one connection has to write, by lane; see the module's docstring for the bounds."""

    def __init__(self) -> None:
        self.replies: deque[str] = deque()
        self.trades: deque[str] = deque()
        self.trades_dropped = 0  # dropped since the last trade frame written
        self.snapshot: str | None = None
        self.status: str | None = None
        self._ready = asyncio.Event()
        self._room = asyncio.Event()  # set while replies has room
        self._room.set()
        self._snapshot_taken = asyncio.Event()
        self._snapshot_taken.set()

    async def reply(self, frame: str) -> None:
        while len(self.replies) >= MAX_REPLIES:
            self._room.clear()
            await self._room.wait()
        self.replies.append(frame)
        self._ready.set()

    def reply_nowait(self, frame: str) -> None:
        """For frames nobody waits to send (a failed snapshot's error): dropped when the lane is full."""
        if len(self.replies) < MAX_REPLIES:
            self.replies.append(frame)
            self._ready.set()

    def trade(self, frame: str) -> None:
        if len(self.trades) >= MAX_TRADES:
            self.trades.popleft()
            self.trades_dropped += 1
        self.trades.append(frame)
        self._ready.set()

    def put_snapshot(self, frame: str) -> None:
        self.snapshot = frame
        self._snapshot_taken.clear()
        self._ready.set()

    def put_status(self, frame: str) -> None:
        self.status = frame
        self._ready.set()

    async def snapshot_taken(self) -> None:
        await self._snapshot_taken.wait()

    async def next(self) -> tuple[str, str]:
        """The next frame to write and its type: replies first, then trades, the snapshot, the status."""
        while True:
            if self.replies:
                frame = self.replies.popleft()
                self._room.set()
                return frame, "reply"
            if self.trades:
                frame = self.trades.popleft()
                if self.trades_dropped:
                    frame = frame[:-1] + f',"dropped":{self.trades_dropped}}}'
                    self.trades_dropped = 0
                return frame, "trade"
            if self.snapshot is not None:
                frame, self.snapshot = self.snapshot, None
                self._snapshot_taken.set()
                return frame, "snapshot"
            if self.status is not None:
                frame, self.status = self.status, None
                return frame, "status"
            self._ready.clear()
            await self._ready.wait()


# --- what every connection of one gateway shares -----------------------------------------------------------


@dataclass(slots=True)
class _Cached:
    min_seq: int
    task: asyncio.Task[str]


class Hub:
    """One gateway's sessions: trades fanned out from one tail listener, shared snapshots, the status."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.sessions: set[Session] = set()
        self.by_market: dict[str, set[Session]] = {}
        self.cache: OrderedDict[tuple[str, int, str | None], _Cached] = OrderedDict()
        self._dirty: set[str] = set()
        self._kicker: asyncio.Task[None] | None = None
        self._status: tuple[float, str] | None = None
        self._status_lock = asyncio.Lock()

    def join(self, session: Session) -> None:
        self.sessions.add(session)
        if self._kicker is None:
            self.gateway.listen(self._on_event)
            self._kicker = asyncio.create_task(self._kick_changed())

    def leave(self, session: Session) -> None:
        self.sessions.discard(session)
        self.move(session, None)
        if not self.sessions and self._kicker is not None:
            self.gateway.unlisten(self._on_event)
            self._kicker.cancel()
            self._kicker = None

    def move(self, session: Session, market_id: str | None) -> None:
        old = session.sub.market_id
        if old is not None and old in self.by_market:
            self.by_market[old].discard(session)
            if not self.by_market[old]:
                del self.by_market[old]
        if market_id is not None:
            self.by_market.setdefault(market_id, set()).add(session)

    def _on_event(self, seq: int, event: Event) -> None:
        """Called by the tail for every event, in log order: cheap, no awaits."""
        watchers = self.by_market.get(event.market_id)
        if not watchers:
            return
        self._dirty.add(event.market_id)
        if isinstance(event, Fill):
            frame = dumps(trade_frame(seq, event))
            for session in watchers:
                session.outbox.trade(frame)

    async def _kick_changed(self) -> None:
        """Once per batch the tail reads, wake the sessions whose market changed (not once per event)."""
        while True:
            await self.gateway.changed(5.0)
            dirty, self._dirty = self._dirty, set()
            for market_id in dirty:
                for session in self.by_market.get(market_id, ()):
                    session.kick.set()

    async def snapshot(self, sub: Subscription, min_seq: int) -> str:
        """The snapshot frame of `sub` at JB_EVT `min_seq` or later; shared with every session that asks for it."""
        assert sub.market_id is not None
        key = (sub.market_id, sub.depth, sub.runner)
        cached = self.cache.get(key)
        stale = cached is not None and cached.task.done() and (cached.task.cancelled() or cached.task.exception())
        if cached is None or cached.min_seq < min_seq or stale:
            cached = _Cached(min_seq, asyncio.create_task(self._fetch(sub, min_seq)))
            cached.task.add_done_callback(_retrieve)
            self.cache[key] = cached
            while len(self.cache) > SNAPSHOT_CACHE:
                self.cache.popitem(last=False)
        self.cache.move_to_end(key)
        return await asyncio.shield(cached.task)

    async def _fetch(self, sub: Subscription, min_seq: int) -> str:
        body: dict[str, Any] = {"market_id": sub.market_id, "depth": sub.depth, "min_seq": min_seq}
        if sub.runner is not None:
            body["runner"] = sub.runner
        answer = await self.gateway.query("snapshot", body)
        result = answer.get("result") or {}
        return dumps({
            "type": "snapshot", "market_id": sub.market_id, "at_seq": answer.get("at_seq"), "depth": sub.depth,
            "runner": sub.runner, "market": result.get("market"), "ladders": result.get("ladders", []),
        })  # fmt: skip

    async def status(self) -> str:
        """The status frame, made at most once a second for all sessions (three requests, not three per client)."""
        async with self._status_lock:
            now = time.monotonic()
            if self._status is not None and now - self._status[0] < STATUS_EVERY_S * 0.9:
                return self._status[1]
            gw = self.gateway
            frame: dict[str, Any] = {"type": "status", "evt_seq": gw.tail.position, "markets": None,
                                     "projection_seq": None, "lease": None, "clients": len(self.sessions)}  # fmt: skip
            with contextlib.suppress(Exception):  # NATS hiccup: the tail's position stands in
                frame["evt_seq"] = await gw.evt_last_seq()
            if gw.shards > 1:  # each shard numbers its own events: its positions, by stream
                frame["evt_seq"], frame["evt_seqs"], frame["projection_at"] = None, None, None
                with contextlib.suppress(Exception):
                    frame["evt_seqs"] = await gw.evt_last_seqs()
            with contextlib.suppress(GatewayError):
                answer = await gw.query("markets", {"timeout_ms": 1000}, timeout=1.0)
                frame["markets"] = len(answer.get("result") or [])
                frame["projection_seq"] = answer.get("at_seq")
                if gw.shards > 1:
                    frame["projection_at"] = answer.get("at")
            frame["lease"] = await gw.lease_holder()
            if gw.shards > 1:  # each shard's engine holds its own lease, engine-<k>
                frame["leases"] = await gw.lease_holders()
            text = dumps(frame)
            self._status = (time.monotonic(), text)
            return text


def _retrieve(task: asyncio.Task[str]) -> None:
    """A shared fetch's failure is read by its waiters; this keeps asyncio from reporting it as lost."""
    if not task.cancelled():
        task.exception()


_hubs: weakref.WeakKeyDictionary[Gateway, Hub] = weakref.WeakKeyDictionary()


def hub_of(gateway: Gateway) -> Hub:
    hub = _hubs.get(gateway)
    if hub is None:
        hub = _hubs[gateway] = Hub(gateway)
    return hub


# --- one connection ----------------------------------------------------------------------------------------


class Session:
    def __init__(
        self,
        ws: WebSocket,
        endpoint: str,
        gateway: Gateway,
        principal: Principal,
        sub: Subscription,
        interval_s: float,
        *,
        control: bool,
        no_ack: bool = False,
    ) -> None:
        self.ws, self.endpoint, self.gateway, self.principal = ws, endpoint, gateway, principal
        self.sub, self.interval_s, self.control, self.no_ack = sub, interval_s, control, no_ack
        self.hub = hub_of(gateway)
        self.outbox = Outbox()
        self.kick = asyncio.Event()
        self.generation = 0  # bumped by each subscribe, so a re-subscribe always gets a fresh snapshot
        self.in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.tasks: set[asyncio.Task[None]] = set()
        self.frames = {kind: WS_FRAMES.labels(endpoint, kind) for kind in ("snapshot", "trade", "status")}

    async def run(self) -> None:
        self.hub.join(self)
        self.hub.move(self, self.sub.market_id)
        background = [asyncio.create_task(self._write()), asyncio.create_task(self._pump())]
        if self.control:
            background.append(asyncio.create_task(self._status()))
        try:
            reader = asyncio.create_task(self._read())
            done, _ = await asyncio.wait([reader, *background], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() and not isinstance(task.exception(), WebSocketDisconnect):
                    log.warning("websocket %s: %r", self.endpoint, task.exception())
            reader.cancel()
        finally:
            self.hub.leave(self)
            await _cancel_all([*background, *self.tasks])

    # --- writing ---

    async def _write(self) -> None:
        while True:
            frame, lane = await self.outbox.next()
            await self.ws.send_text(frame)
            if lane == "reply":
                kind = frame[9 : frame.index('"', 9)] if frame.startswith('{"type":"') else "reply"
                WS_FRAMES.labels(self.endpoint, kind).inc()
            else:
                self.frames[lane].inc()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.outbox.reply(dumps(frame))

    async def error(self, reason: str, detail: str, correlation_id: Any = None, **extra: Any) -> None:
        frame: dict[str, Any] = {"type": "error", "error": reason, "detail": detail}
        if correlation_id is not None:
            frame["correlation_id"] = correlation_id
        await self.send({**frame, **extra})

    # --- snapshots ---

    async def _pump(self) -> None:
        """A snapshot on connect (and subscribe), then one per change of the market, at most one per interval."""
        loop = asyncio.get_running_loop()
        answered: tuple[int, int] | None = None  # (generation, market seq) the last snapshot answered
        last_at = -math.inf
        last_error = ""
        while True:
            self.kick.clear()
            sub = self.sub
            if sub.market_id is None or answered == (self.generation, self._market_seq(sub)):
                await self.kick.wait()
                continue
            delay = last_at + self.interval_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing: at most one snapshot per interval
            await self.outbox.snapshot_taken()  # the client has not read the last one yet: ask for nothing
            asked_at = loop.time()  # the next interval counts from here, so the query's time does not add to it
            sub, generation = self.sub, self.generation
            if sub.market_id is None:
                continue
            seq = self._market_seq(sub)
            try:
                frame = await self.hub.snapshot(sub, seq)
            except GatewayError as err:
                if sub == self.sub and err.reason != last_error:
                    self.outbox.reply_nowait(dumps({"type": "error", **err.body(), "market_id": sub.market_id}))
                last_error = err.reason
                if err.reason == "not_found":  # no such market (yet): the next change of it will tell
                    answered = (generation, seq)
                else:
                    await asyncio.sleep(RETRY_AFTER_S)
                continue
            last_error = ""
            if generation != self.generation:
                continue  # subscribed elsewhere meanwhile
            self.outbox.put_snapshot(frame)
            answered, last_at = (generation, seq), asked_at

    def _market_seq(self, sub: Subscription) -> int:
        market = sub.market_id or ""
        return self.gateway.tail_of(market).market_seq.get(market, 0)

    async def _status(self) -> None:
        while True:
            self.outbox.put_status(await self.hub.status())
            await asyncio.sleep(STATUS_EVERY_S)  # a period, not a wait for an outcome

    # --- reading ---

    async def _read(self) -> None:
        while True:
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            text = msg.get("text")
            if text is None:
                await self.error("malformed", "binary frames are not accepted: send a JSON object as text")
                continue
            if not self.control:
                await self.error("read_only", "/ws takes no frames; commands go to /ws_ctl")
                continue
            try:
                frame = self._parse(text)
            except FrameError as err:
                await self.error(err.reason, err.detail)
                continue
            cid = frame.get("correlation_id")
            if cid is not None and (
                isinstance(cid, bool)
                or not isinstance(cid, str | int)
                or (isinstance(cid, str) and len(cid) > MAX_CORRELATION_CHARS)
            ):
                await self.error("invalid_field", f"correlation_id: a string of at most {MAX_CORRELATION_CHARS}"
                                 " characters or an integer")  # fmt: skip
                continue
            await self.in_flight.acquire()
            task = asyncio.create_task(self._handle(frame, cid))
            self.tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.in_flight.release()

    @staticmethod
    def _parse(text: str) -> dict[str, Any]:
        if len(text) > MAX_FRAME_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_FRAME_BYTES:
            raise FrameError("too_large", f"a frame is at most {MAX_FRAME_BYTES} bytes")
        try:
            frame = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as err:
            raise FrameError("malformed", f"not JSON: {str(err)[:120]}") from None
        if not isinstance(frame, dict):
            raise FrameError("malformed", f"a frame is a JSON object, not {type(frame).__name__}")
        return frame

    async def _handle(self, frame: dict[str, Any], cid: Any) -> None:
        ctype = frame.get("type")
        try:
            if ctype == "list_markets":
                await self._list_markets(frame, cid)
            elif ctype == "subscribe":
                await self._subscribe(frame, cid)
            elif ctype == "orders":
                await self._orders(frame, cid)
            elif isinstance(ctype, str) and ctype in SPECS:
                await self._command(frame, cid, ctype)
            else:
                raise FrameError("unknown_type", f"unknown frame type {str(ctype)[:64]!r}")
        except FrameError as err:
            await self.error(err.reason, err.detail, cid)
        except GatewayError as err:
            await self.send({"type": "error", **({"correlation_id": cid} if cid is not None else {}), **err.body()})
        except WebSocketDisconnect:
            raise
        except Exception as err:  # a bug here must not close the socket or hide the reason
            log.exception("ws_ctl frame %s", str(ctype)[:64])
            await self.error("internal", type(err).__name__, cid)

    # --- the frames ---

    def _market_of(self, frame: dict[str, Any]) -> str:
        market_id = frame.get("market_id", self.sub.market_id)
        if not isinstance(market_id, str):
            raise FrameError("invalid_field", "market_id: missing (and no subscribed market) or not a string")
        return market_id

    def _account_of(self, frame: dict[str, Any]) -> str | None:
        account = frame.get("account_id", self.principal.account)
        if account is not None and not isinstance(account, str):
            raise FrameError("invalid_field", "account_id: not a string")
        return account

    async def _list_markets(self, frame: dict[str, Any], cid: Any) -> None:
        _only(frame, "type", "correlation_id")
        answer = await self.gateway.query("markets", {})
        await self.send({"type": "market_list", "correlation_id": cid, "at_seq": answer.get("at_seq"),
                         "markets": answer.get("result") or []})  # fmt: skip

    async def _subscribe(self, frame: dict[str, Any], cid: Any) -> None:
        _only(frame, "type", "correlation_id", "market_id", "depth", "runner")
        market_id, depth, runner = frame.get("market_id"), frame.get("depth", self.sub.depth), frame.get("runner")
        if not is_id(market_id):
            raise FrameError("invalid_field", "market_id: not an id ([A-Za-z0-9_-]{1,64})")
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
            raise FrameError("invalid_field", f"depth: an integer 1..{MAX_DEPTH}")
        if runner is not None and not is_id(runner):
            raise FrameError("invalid_field", "runner: not an id ([A-Za-z0-9_-]{1,64})")
        self.hub.move(self, market_id)
        self.sub = Subscription(market_id, depth, runner)
        self.generation += 1
        await self.send({"type": "subscribed", "correlation_id": cid, "market_id": market_id, "depth": depth,
                         "runner": runner})  # fmt: skip
        self.kick.set()

    async def _orders(self, frame: dict[str, Any], cid: Any) -> None:
        """The account's orders (open by default), as fresh as the subscribed market's last change."""
        _only(frame, "type", "correlation_id", "market_id", "account_id", "status", "limit")
        account = self._account_of(frame)
        if not self.principal.may_act_for(account) and not (account is None and self.principal.may_control):
            raise FrameError("forbidden", f"this key may not read the orders of {str(account)[:64]!r}")
        body: dict[str, Any] = {"status": frame.get("status", "open")}
        market_id = frame.get("market_id", self.sub.market_id)
        if market_id is not None:
            body["market_id"] = market_id
            if isinstance(market_id, str):
                body["min_seq"] = self.gateway.tail_of(market_id).market_seq.get(market_id, 0)
        if account is not None:
            body["account_id"] = account
        if "limit" in frame:
            body["limit"] = frame["limit"]
        answer = await self.gateway.query("orders", body)
        orders = answer.get("result") or []
        await self.send({"type": "orders", "correlation_id": cid, "at_seq": answer.get("at_seq"),
                         "market_id": market_id, "account_id": account, "orders": orders})  # fmt: skip

    async def _command(self, frame: dict[str, Any], cid: Any, ctype: str) -> None:
        market_id = self._market_of(frame)
        control = is_control(ctype)
        account = None if control else self._account_of(frame)
        if control and not self.principal.may_control:
            raise FrameError("forbidden", f"{ctype} is a control command: operators only")
        if not control and not self.principal.may_act_for(account):
            raise FrameError("forbidden", f"this key may not act for {str(account)[:64]!r}")
        key = frame.get("idempotency_key")
        if key is not None and not (isinstance(key, str) and 1 <= len(key) <= 128):
            raise FrameError("invalid_field", "idempotency_key: a string of 1..128 characters")
        body = {k: v for k, v in frame.items() if k not in FRAME_KEYS}
        if control:
            if ctype != "create_market":
                body.pop("market_id", None)  # the subject says it; the other control commands take no echo
            if ctype != "set_risk_limits":
                body.pop("account_id", None)
        elif account is not None:
            body["account_id"] = account
        gw = self.gateway
        started = time.perf_counter()
        outcome = await gw.command(market_id, account, body, idempotency_key=key, wait=False)
        if self.no_ack:
            return
        await self.send({"type": "ack", "correlation_id": cid, "cmd_seq": outcome.cmd_seq,
                         "duplicate": outcome.duplicate})  # fmt: skip
        try:
            events = await gw.tail_of(market_id).events_of(outcome.cmd_seq, DEFAULT_TIMEOUT_S)
        except TimeoutError as err:
            raise GatewayError(504, "timeout", str(err), cmd_seq=outcome.cmd_seq) from None
        COMMAND_ROUND_TRIP.labels(via="ws").observe(time.perf_counter() - started)
        wire = [redact(to_wire(e), self.principal) for e in events]
        rejected = rejection(wire)
        await self.send({
            "type": "order_response", "correlation_id": cid, "cmd_seq": outcome.cmd_seq, "events": wire,
            "rejected": None if rejected is None else {"reason": rejected["reason"], "detail": rejected["detail"]},
        })  # fmt: skip


def _only(frame: dict[str, Any], *allowed: str) -> None:
    extra = sorted(k for k in frame if k not in allowed)
    if extra:
        raise FrameError("invalid_field", f"unknown field {extra[0][:64]!r}")


# --- the endpoints -----------------------------------------------------------------------------------------


async def _open(ws: WebSocket, endpoint: str) -> tuple[Gateway, Principal] | None:
    """Accept and identify the caller; None (the socket closed 1008) for a missing or bad key."""
    await ws.accept()
    auth: Auth = ws.app.state.auth
    principal = auth.identify(api_key(ws))
    if principal is None:
        await ws.send_text(dumps({"type": "error", "error": "unauthorized", "detail": "a valid API key is needed"}))
        await ws.close(CLOSE_POLICY, "unauthorized")
        return None
    return ws.app.state.gateway, principal


async def _serve(ws: WebSocket, endpoint: str, *, control: bool) -> None:
    opened = await _open(ws, endpoint)
    if opened is None:
        return
    gateway, principal = opened
    params = ws.query_params
    try:
        market_id = _id_param(params, "market_id")
        if market_id is None and not control:
            raise FrameError("invalid_field", "market_id: required on /ws")
        depth = _int_param(params, "depth", DEFAULT_DEPTH, 1, MAX_DEPTH)
        runner = _id_param(params, "runner")
        interval = _int_param(params, "interval_ms", DEFAULT_INTERVAL_MS, MIN_INTERVAL_MS, MAX_INTERVAL_MS, clamp=True)
        no_ack = params.get("no_ack", "0") not in ("0", "", "false")
    except FrameError as err:
        await ws.send_text(dumps({"type": "error", "error": err.reason, "detail": err.detail}))
        await ws.close(CLOSE_BAD_REQUEST, err.reason)
        return
    gauge = WS_CLIENTS.labels(endpoint)
    gauge.inc()
    try:
        session = Session(ws, endpoint, gateway, principal, Subscription(market_id, depth, runner), interval / 1000,
                          control=control, no_ack=no_ack)  # fmt: skip
        await session.run()
    except WebSocketDisconnect:
        pass
    finally:
        gauge.dec()
        if ws.application_state != WebSocketState.DISCONNECTED and ws.client_state != WebSocketState.DISCONNECTED:
            with contextlib.suppress(Exception):
                await ws.close()


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel a session's tasks and wait for them, cancelling again while any is left: nats-py swallows a
    cancellation inside a publish that waits for room in its flush queue, and a task that carries on would hold
    uvicorn's shutdown (which waits for every connection) until it ends by itself."""
    pending = {t for t in tasks if not t.done()}
    for _ in range(100):  # ten seconds at most; a task that is still running after that is left to the loop
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: the session already logged what ended it


@router.websocket("/ws")
async def ws_read(ws: WebSocket) -> None:
    """Read-only: snapshots of one market and its trades."""
    await _serve(ws, "/ws", control=False)


@router.websocket("/ws_ctl")
async def ws_ctl(ws: WebSocket) -> None:
    """Snapshots and trades, plus commands, queries and a status every second."""
    await _serve(ws, "/ws_ctl", control=True)
