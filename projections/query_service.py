"""The query service: request/reply on `jb.qry.<name>`, answered from the projection's read model.

It registers with nats-py's `nats.micro` framework (service `jetbook-query`,
one endpoint per query, queue group `jb-qry`), so `nats micro ls/info/stats`
show it, and any number of instances share the requests. The wire protocol is
in docs/QUERIES.md: msgpack by default, JSON when the request's Content-Type
is application/json, and every answer says the JB_EVT sequence it reflects
(`at_seq`).

Consistency. `weak` reads the replica as it is. `min_seq: N` first waits
until the replica has folded JB_EVT sequence N. `strong` is the ReadIndex
technique: read JB_CMD's last sequence C when the request arrives; wait until
JB_EVT's last message belongs to a command >= C (the engine commits each
command's events in one atomic batch and never splits a command across two,
so the last message of JB_EVT belonging to command >= C means every event of
C is stored); that message's JB_EVT sequence is the target; then wait until
the replica reaches it. Every wait has a deadline; past it the answer is a
`timeout` error that gives the replica's position and the one asked for, never
stale data.

Waiting is polling, on purpose: the replica's position is one indexed read of
projection_position (a few microseconds), done by one shared poller every
POLL_S only while someone waits; JB_EVT's tail is one direct get, done by one
shared poller only while a strong read needs a newer command than any seen.
A notification would need the projection worker to announce its commits (it
is another process, and another helper's file); the poll costs at most POLL_S
of latency.

Handlers run in nats-py's per-subscription callback, which handles one message
at a time; so a request that has to wait is answered from its own task, and a
slow strong read never holds up the weak ones behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import nats.errors
from nats.micro.request import Request
from nats.micro.service import ServiceConfig

from events.model import decode
from projections import queries
from projections.metrics import QueryMetrics
from protocol.barrier import barrier
from protocol.micro import SERVICE_VERSION, GuardedService
from protocol.shards import check_shards, cmd_stream_name, evt_stream_name, partition
from protocol.subjects import EVT_PREFIX, EVT_STREAM, QUERY_SERVICE, is_id

log = logging.getLogger("jetbook.query")

QRY_PREFIX = "jb.qry"  # a query's subject: jb.qry.<name>
SERVICE_NAME = QUERY_SERVICE
QUEUE_GROUP = "jb-qry"

JSON = "application/json"
MSGPACK = "application/msgpack"

DEFAULT_TIMEOUT_MS = 5_000
MAX_TIMEOUT_MS = 60_000
MAX_REQUEST_BYTES = 64 * 1024
MAX_LIMIT = 10_000  # rows in one answer (fills, orders, completed_orders)
DEFAULT_LIMIT = 1_000
MAX_DEPTH = 1_000  # ladder levels a side
DEFAULT_DEPTH = 10
MAX_WAITING = 10_000  # requests waiting on a position at once; past it, `busy`
POLL_S = 0.002  # how often the shared pollers look while someone waits
INT64_MAX = 2**63 - 1

STATUSES = ("open", "partially_filled", "filled", "cancelled")

# error code -> the micro status code put in the Nats-Service-Error-Code header
ERROR_CODES = {
    "bad_request": "400",  # the body is not msgpack/JSON, or not a map
    "too_large": "413",  # the request, or the answer, is too big
    "unknown_query": "404",
    "invalid": "400",  # a field is missing, unknown, of the wrong type or out of range
    "not_found": "404",  # no such market or order
    "timeout": "408",  # the replica did not reach the position asked for in time
    "busy": "429",
    "unavailable": "503",  # no read model yet, or JetStream did not answer
    "internal": "500",
}


class QueryError(Exception):
    """An error answer: a machine-readable code, a human detail, and positions when they are known."""

    def __init__(self, code: str, detail: str, **extra: Any) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail, self.extra = code, detail, extra

    def answer(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, **self.extra}


# --- fields ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    """One request field: its kind (id, int, status, consistency), whether it is required, its default and range."""

    kind: str
    required: bool = False
    default: Any = None
    lo: int = 0
    hi: int = INT64_MAX


def _check(name: str, spec: Field, value: Any) -> Any:
    if spec.kind == "id":
        if type(value) is not str:
            raise QueryError("invalid", f"{name}: expected a string")
        if not is_id(value):
            raise QueryError("invalid", f"{name}: expected 1-64 characters of A-Z a-z 0-9 _ -")
        return value
    if spec.kind == "int":
        if type(value) is not int:
            raise QueryError("invalid", f"{name}: expected an integer")
        if not spec.lo <= value <= spec.hi:
            raise QueryError("invalid", f"{name}: {value} is outside {spec.lo}..{spec.hi}")
        return value
    if spec.kind == "consistency":
        if value not in ("weak", "strong"):
            raise QueryError("invalid", f"{name}: expected 'weak' or 'strong'")
        return value
    # status: "open" (open or partially filled), "all", one status, or a list of statuses
    if value == "all":
        return None
    if value == "open":
        return queries.OPEN
    if type(value) is str and value in STATUSES:
        return (value,)
    if type(value) is list and value and len(value) <= len(STATUSES) and all(v in STATUSES for v in value):
        return tuple(sorted(set(value)))
    raise QueryError("invalid", f"{name}: expected 'open', 'all', one of {list(STATUSES)}, or a list of them")


COMMON = {
    "consistency": Field("consistency", default="weak"),
    "min_seq": Field("int", default=0),
    "timeout_ms": Field("int", default=DEFAULT_TIMEOUT_MS, lo=1, hi=MAX_TIMEOUT_MS),
}
MARKET = Field("id", required=True)
ID = Field("id")
DEPTH = Field("int", default=DEFAULT_DEPTH, lo=1, hi=MAX_DEPTH)


def _limit(default: int) -> Field:
    return Field("int", default=default, lo=1, hi=MAX_LIMIT)


# --- the queries ----------------------------------------------------------------------------------


Read = Callable[[sqlite3.Connection, dict[str, Any]], Any]


def _market(con: sqlite3.Connection, market_id: str) -> queries.Market:
    m = queries.market(con, market_id)
    if m is None:
        raise QueryError("not_found", f"no market {market_id}")
    return m


def _top_of_book(con: sqlite3.Connection, a: dict[str, Any]) -> Any:
    m = _market(con, a["market_id"])
    return {"market_id": m["market_id"], "kind": m["kind"], "books": queries.book(con, m["market_id"], a["depth"],
                                                                                  a["runner"])}  # fmt: skip


def _snapshot(con: sqlite3.Connection, a: dict[str, Any]) -> Any:
    _market(con, a["market_id"])
    return queries.snapshot(con, a["market_id"], a["depth"], a["runner"])


def _fills(con: sqlite3.Connection, a: dict[str, Any]) -> Any:
    return queries.fills(con, a["market_id"], account_id=a["account_id"], from_seq=a["from_seq"], limit=a["limit"])


def _order_count(con: sqlite3.Connection, a: dict[str, Any]) -> Any:
    return queries.order_count(con, a["market_id"], account_id=a["account_id"], status=a["status"])


def _orders(con: sqlite3.Connection, a: dict[str, Any]) -> Any:
    return queries.orders(con, a["market_id"], account_id=a["account_id"], status=a["status"], limit=a["limit"])


def _order(con: sqlite3.Connection, a: dict[str, Any]) -> Any:
    if a["order_id"] is None and (a["client_order_id"] is None or a["account_id"] is None):
        raise QueryError("invalid", "order: give order_id, or client_order_id and account_id")
    found = queries.order(
        con, a["market_id"], order_id=a["order_id"], account_id=a["account_id"], client_order_id=a["client_order_id"]
    )
    if found is None:
        raise QueryError("not_found", f"no such order in {a['market_id']}")
    return found


def _completed_orders(con: sqlite3.Connection, a: dict[str, Any]) -> Any:
    return queries.completed_orders(con, a["market_id"], a["account_id"], a["limit"])


def _risk(con: sqlite3.Connection, a: dict[str, Any]) -> Any:
    _market(con, a["market_id"])
    return {
        "accounts": queries.risk(con, a["market_id"], a["account_id"]),
        "positions": queries.positions(con, a["market_id"], a["account_id"]),
    }


def _markets(con: sqlite3.Connection, a: dict[str, Any]) -> Any:
    return queries.markets(con)


@dataclass(frozen=True, slots=True)
class Query:
    fields: dict[str, Field]
    read: Read
    about: str


QUERIES: dict[str, Query] = {
    "top_of_book": Query({"market_id": MARKET, "depth": DEPTH, "runner": ID}, _top_of_book,
                         "the ladder of each book, depth levels a side"),
    "snapshot": Query({"market_id": MARKET, "depth": DEPTH, "runner": ID}, _snapshot,
                      "a market: state, phase, runners, last trade, a ladder per book"),
    "fills": Query({"market_id": MARKET, "account_id": ID, "from_seq": Field("int", default=0),
                    "limit": _limit(DEFAULT_LIMIT)}, _fills, "trades from a JB_EVT sequence on, oldest first"),
    "order_count": Query({"market_id": ID, "account_id": ID, "status": Field("status", default="open")},
                         _order_count, "how many orders (open by default)"),
    "orders": Query({"market_id": ID, "account_id": ID, "status": Field("status", default="open"),
                     "limit": _limit(DEFAULT_LIMIT)}, _orders, "orders (open by default), by market and id"),
    "order": Query({"market_id": MARKET, "order_id": Field("int", lo=1), "account_id": ID, "client_order_id": ID},
                   _order, "one order, by id or by account and client_order_id"),
    "completed_orders": Query({"market_id": MARKET, "account_id": ID, "limit": _limit(100)}, _completed_orders,
                              "filled and cancelled orders, most recent first"),
    "risk": Query({"market_id": MARKET, "account_id": ID}, _risk,
                  "per account: position, open exposure, realised P&L, P&L if each runner wins"),
    "markets": Query({}, _markets, "every market"),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Parsed:
    args: dict[str, Any]
    consistency: str
    min_seq: int
    timeout_ms: int


def parse(name: str, data: bytes, as_json: bool) -> Parsed:
    """A request body as the query's arguments; QueryError for anything that is not exactly what it takes."""
    query = QUERIES.get(name)
    if query is None:
        raise QueryError("unknown_query", f"no query {name!r}; known: {sorted(QUERIES)}")
    if len(data) > MAX_REQUEST_BYTES:
        raise QueryError("too_large", f"a request is at most {MAX_REQUEST_BYTES} bytes")
    body: Any = {}
    if data.strip():
        try:
            body = json.loads(data) if as_json else msgpack.unpackb(data, raw=False)
        except Exception as err:  # any failure to decode: a bad request, never a crash
            raise QueryError("bad_request", f"not {'JSON' if as_json else 'msgpack'}: {type(err).__name__}") from None
    if body is None:
        body = {}
    if type(body) is not dict:
        raise QueryError("bad_request", "the request must be a map of fields")
    specs = {**query.fields, **COMMON}
    unknown = sorted(repr(k) for k in body if k not in specs)
    if unknown:
        raise QueryError("invalid", f"unknown field(s) {', '.join(unknown)[:200]}; {name} takes {sorted(specs)}")
    out: dict[str, Any] = {}
    for key, spec in specs.items():
        value = body.get(key)
        if value is None:
            if spec.required:
                raise QueryError("invalid", f"{key}: required")
            out[key] = _check(key, spec, spec.default) if spec.kind == "status" else spec.default
        else:
            out[key] = _check(key, spec, value)
    return Parsed({k: out[k] for k in query.fields}, out["consistency"], out["min_seq"], out["timeout_ms"])


def read(
    con: sqlite3.Connection, name: str, args: dict[str, Any], stream: str | None = EVT_STREAM
) -> tuple[int | None, dict[str, int], Any]:
    """The answer and the positions it reflects, from one read transaction (a not_found carries them too).

    `stream`: whose position is `at_seq` (the market's shard; JB_EVT for one shard); None: no single one, a
    sharded venue's query without a market, which `at` ({stream: seq}, every shard) describes alone.
    """
    with queries.reading(con):
        at = queries.stream_positions(con)
        seq = at.get(stream, 0) if stream is not None else None
        try:
            return seq, at, QUERIES[name].read(con, args)
        except QueryError as err:
            err.extra.setdefault("at_seq", seq)
            raise


# --- the replica ----------------------------------------------------------------------------------


def _inode(path: Path) -> int:
    try:
        return os.stat(path).st_ino  # follows the symlink `replay rebuild` puts there
    except FileNotFoundError:
        return 0


class Replica:
    """The read model, read-only; reopened when the path names another file (a rebuild swapped one in)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.con: sqlite3.Connection | None = None
        self.inode = 0
        self.reopened = 0

    def connection(self) -> sqlite3.Connection:
        inode = _inode(self.path)
        if self.con is not None and inode == self.inode:
            return self.con
        self.close()
        if not inode:
            raise QueryError("unavailable", f"no read model at {self.path} yet (is the projection running?)")
        con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
        try:
            queries.position(con)
        except sqlite3.Error as err:
            con.close()
            raise QueryError("unavailable", f"the read model at {self.path} is not ready ({err})") from None
        if self.inode:
            self.reopened += 1
            log.info("read model %s was replaced (a rebuild); reopened", self.path)
        self.con, self.inode = con, inode
        return con

    def position(self, stream: str = EVT_STREAM) -> int:
        """The last sequence of `stream` (JB_EVT, or a shard's JB_EVT_k) the replica has committed; 0 while none."""
        return self.positions().get(stream, 0)

    def positions(self) -> dict[str, int]:
        """{stream: last sequence committed}: one entry for a one-shard model, one per shard stream else."""
        try:
            return queries.stream_positions(self.connection())
        except (QueryError, sqlite3.Error):
            return {}

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None


# --- waiting for positions ------------------------------------------------------------------------


class _Waiters:
    """Futures waiting for a number to reach a target, woken by one poller that runs only while someone waits."""

    def __init__(self, current: Callable[[], Any], what: str) -> None:
        self.current = current  # sync or async: the number now
        self.what = what
        self.waiting: list[tuple[int, asyncio.Future[int]]] = []
        self.poller: asyncio.Task[None] | None = None

    async def value(self) -> int:
        got = self.current()
        if asyncio.iscoroutine(got):
            got = await got
        return int(got)

    async def reach(self, target: int, timeout: float) -> int:
        """The number once it is >= target; TimeoutError after `timeout` seconds."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        entry = (target, fut)
        self.waiting.append(entry)
        if self.poller is None or self.poller.done():
            self.poller = asyncio.create_task(self._poll())
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        finally:
            with contextlib.suppress(ValueError):
                self.waiting.remove(entry)

    async def _poll(self) -> None:
        while self.waiting:
            try:
                now = await self.value()
            except Exception as err:  # a poll that fails is tried again; each waiter has its own deadline
                log.debug("poll of %s failed: %s", self.what, err)
                now = -1
            for target, fut in list(self.waiting):
                if now >= target and not fut.done():
                    fut.set_result(now)
            await asyncio.sleep(POLL_S)

    def stop(self) -> None:
        if self.poller is not None:
            self.poller.cancel()


@dataclass(slots=True)
class _Endpoint:
    """What micro's own stats miss for answers sent from a task: their time and their errors."""

    name: str
    requests: int = 0
    errors: int = 0


class QueryService:
    """One instance of the query service: a NATS connection, a replica, and the micro service on top."""

    def __init__(
        self,
        nc: Any,
        db_path: Path | str,
        *,
        name: str = SERVICE_NAME,
        metrics: QueryMetrics | None = None,
        shards: int = 1,
    ) -> None:
        """`shards`: the venue's (protocol.streams.venue_shards); each shard's positions are waited for alone."""
        check_shards(shards)
        self.nc = nc
        self.replica = Replica(db_path)
        self.name = name
        self.shards = shards
        self.streams = [(cmd_stream_name(k, shards), evt_stream_name(k, shards)) for k in range(shards)]
        self.service: GuardedService | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.answered = 0  # answers sent by this instance (tests see who answered)
        self.metrics = metrics if metrics is not None else QueryMetrics([*QUERIES, "unknown"])
        # per shard: (JB_EVT_k sequence, its command) of a message seen as JB_EVT_k's last
        self.evt_tails = [(0, 0)] * shards
        self._replica_waiters = {
            evt: _Waiters(partial(self.replica.position, evt), f"replica {evt}") for _, evt in self.streams
        }
        self._evt_waiters = [_Waiters(partial(self._evt_command, k), evt) for k, (_, evt) in enumerate(self.streams)]

    @property
    def evt_tail(self) -> tuple[int, int]:
        """Shard 0's (one shard: JB_EVT's) last message seen: its sequence and command."""
        return self.evt_tails[0]

    def _stream_of(self, args: dict[str, Any]) -> str | None:
        """The event stream whose position an answer is at: the market's shard's; None for no market of N."""
        if self.shards == 1:
            return EVT_STREAM
        market = args.get("market_id")
        return None if market is None else self.streams[partition(market, self.shards)][1]

    async def start(self) -> None:
        self.service = GuardedService(self.nc, ServiceConfig(
            name=self.name, version=SERVICE_VERSION, queue_group=QUEUE_GROUP,
            description="jetbook queries over the read model (docs/QUERIES.md)",
            metadata={"read_model": str(self.replica.path)},
        ))  # fmt: skip
        self.service.own_inbox = True  # `jetbook query` asks as the same user; no consumer delivers there
        await self.service.start()
        for query, spec in QUERIES.items():
            await self.service.add_endpoint(
                name=query, subject=f"{QRY_PREFIX}.{query}", handler=partial(self._handle, query),
                metadata={"about": spec.about, "fields": ",".join(spec.fields)},
            )  # fmt: skip
        # Any other name under jb.qry: its own queue group, so it also sees the known names, and stays silent on them.
        await self.service.add_endpoint(
            name="unknown", subject=f"{QRY_PREFIX}.>", handler=self._unknown, queue_group=f"{QUEUE_GROUP}-unknown",
            metadata={"about": "answers unknown_query for a name that is not a query"},
        )  # fmt: skip
        await barrier(self.nc)  # the endpoints answer once start() returns
        log.info("query service %s on %s.>, read model %s", self.service.id, QRY_PREFIX, self.replica.path)

    async def stop(self) -> None:
        if self.service is not None:
            # Bounded: with the server gone, nats.micro's stop waits on requests that cannot be answered.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.service.stop(), 2.0)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for waiters in [*self._replica_waiters.values(), *self._evt_waiters]:
            waiters.stop()
        self.replica.close()

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    # --- one request ---

    def _may_answer(self, req: Request) -> bool:
        return self.service is not None and self.service._may_answer(req._msg.reply or "")

    async def _handle(self, name: str, req: Request) -> None:
        if not self._may_answer(req):
            return  # an answer there could land on a subject this user may write (protocol/micro.py)
        as_json = (req.headers or {}).get("Content-Type", "").split(";")[0].strip().lower() == JSON
        start = time.perf_counter_ns()
        try:
            parsed = parse(name, req.data, as_json)
        except QueryError as err:
            await self._send(req, name, err.answer(), as_json, error=err.code, start=start)
            return
        stream = self._stream_of(parsed.args)
        waits = parsed.consistency == "strong" or (
            parsed.min_seq > 0 and (stream is None or parsed.min_seq > self.replica.position(stream))
        )
        if not waits:
            await self._answer(req, name, parsed, as_json, start, inline=True)
            return
        if len(self.tasks) >= MAX_WAITING:
            busy = QueryError("busy", f"{MAX_WAITING} requests are already waiting; retry", at_seq=self._pos(stream))
            await self._send(req, name, busy.answer(), as_json, error=busy.code, start=start)
            return
        task = asyncio.create_task(self._answer(req, name, parsed, as_json, start, inline=False))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _unknown(self, req: Request) -> None:
        if not self._may_answer(req):
            return
        start = time.perf_counter_ns()
        name = req.subject[len(QRY_PREFIX) + 1 :]
        if name in QUERIES:
            return  # its own endpoint answers it
        as_json = (req.headers or {}).get("Content-Type", "").split(";")[0].strip().lower() == JSON
        err = QueryError("unknown_query", f"no query {name[:80]!r}; known: {sorted(QUERIES)}")
        await self._send(req, "unknown", err.answer(), as_json, error=err.code, start=start)

    def _pos(self, stream: str | None = EVT_STREAM) -> int | None:
        return self.replica.position(stream) if stream is not None else None

    async def _answer(
        self, req: Request, name: str, parsed: Parsed, as_json: bool, start: int, *, inline: bool
    ) -> None:
        code = ""
        try:
            deadline = asyncio.get_running_loop().time() + parsed.timeout_ms / 1000
            stream = self._stream_of(parsed.args)
            if parsed.min_seq and stream is None:
                raise QueryError(
                    "invalid", f"min_seq: this venue has {self.shards} shards, each numbering its own events;"
                    " min_seq needs a market_id (its shard's sequence), or ask with consistency strong",
                )  # fmt: skip
            # Which shards to wait for: the market's alone, or every shard for a query without a market.
            shards = range(self.shards) if stream is None else [self._shard(stream)]
            targets = {self.streams[k][1]: 0 for k in shards}
            if stream is not None:
                targets[stream] = parsed.min_seq
            if parsed.consistency == "strong":
                # Every shard's JB_CMD_k tail at the request's arrival, read together.
                indexes = await asyncio.gather(*(self._read_index(k, deadline) for k in shards))
                for k, index in zip(shards, indexes, strict=True):
                    evt = self.streams[k][1]
                    targets[evt] = max(targets[evt], index)
            while True:
                for evt, target in targets.items():
                    if target:
                        await self._replica_reaches(evt, target, deadline)
                at_seq, at, value = read(self.replica.connection(), name, parsed.args, stream)
                # a rebuild may have swapped in a file behind the target: wait again
                if all(at.get(evt, 0) >= target for evt, target in targets.items()):
                    break
            answer: dict[str, Any] = {"at_seq": at_seq, "result": value}
            if self.shards > 1:
                answer["at"] = at
        except QueryError as err:
            answer, code = err.answer(), err.code
        except Exception as err:  # never a crash, never silence: the asker gets a reason
            log.exception("query %s failed", name)
            answer, code = QueryError("internal", f"{type(err).__name__}: {err}"[:300]).answer(), "internal"
        await self._send(req, name, answer, as_json, error=code, start=start)
        if not inline:
            self._account(name, time.perf_counter_ns() - start)

    def _shard(self, evt: str) -> int:
        return next(k for k, (_, e) in enumerate(self.streams) if e == evt)

    async def _read_index(self, shard: int, deadline: float) -> int:
        """The JB_EVT(_k) sequence that holds the events of every command JB_CMD(_k) holds now (0: it is empty).

        Shard k's engine decides JB_CMD_k alone into JB_EVT_k, so each shard's index is read and reached alone.
        """
        loop = asyncio.get_running_loop()
        cmd_stream, evt_stream = self.streams[shard]
        cmd = await self._cmd_last(cmd_stream, evt_stream, max(deadline - loop.time(), 0.001))
        if cmd == 0 or self.evt_tails[shard][1] >= cmd:
            return self.evt_tails[shard][0] if cmd else 0
        try:
            await self._evt_waiters[shard].reach(cmd, max(deadline - loop.time(), 0))
        except TimeoutError:
            raise QueryError(
                "timeout",
                f"the events of command {cmd} ({cmd_stream}'s last when the query arrived) were not in"
                f" {evt_stream} in time",
                at_seq=self._pos(evt_stream), wanted_cmd_seq=cmd, evt_seq=self.evt_tails[shard][0],
                **({"stream": evt_stream} if self.shards > 1 else {}),
            ) from None  # fmt: skip
        return self.evt_tails[shard][0]

    async def _cmd_last(self, stream: str, evt: str, timeout: float) -> int:
        try:
            msg = await self.nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=timeout)
            info = json.loads(msg.data)
        except (nats.errors.TimeoutError, TimeoutError):
            raise QueryError(
                "timeout", f"{stream} did not say its last sequence in time", at_seq=self._pos(evt)
            ) from None
        except (nats.errors.Error, ValueError) as err:
            raise QueryError("unavailable", f"{stream}: {type(err).__name__}", at_seq=self._pos(evt)) from None
        if "error" in info:
            raise QueryError("unavailable", f"{stream}: {info['error'].get('description', '')}", at_seq=self._pos(evt))
        return int(info["state"]["last_seq"])

    async def _evt_command(self, shard: int) -> int:
        """Direct get of JB_EVT(_k)'s last message: remember its sequence and command; the command."""
        evt = self.streams[shard][1]
        msg = await self.nc.request(
            f"$JS.API.DIRECT.GET.{evt}", json.dumps({"last_by_subj": f"{EVT_PREFIX}.>"}).encode(), timeout=1.0
        )
        headers = msg.headers or {}
        if not msg.data and headers.get("Status") == "404":
            return 0  # nothing in the stream yet
        seq = int(headers["Nats-Sequence"])
        if seq > self.evt_tails[shard][0]:
            self.evt_tails[shard] = (seq, decode(msg.data).cmd_seq)
        return self.evt_tails[shard][1]

    async def _replica_reaches(self, evt: str, target: int, deadline: float) -> None:
        if self.replica.position(evt) >= target:
            return
        try:
            await self._replica_waiters[evt].reach(target, max(deadline - asyncio.get_running_loop().time(), 0))
        except TimeoutError:
            pos = self._pos(evt)
            raise QueryError(
                "timeout",
                f"the replica is at {evt} {pos}, the query asked for {target}",
                at_seq=pos,
                wanted_seq=target,
                **({"stream": evt} if self.shards > 1 else {}),
            ) from None

    async def _send(
        self, req: Request, name: str, answer: dict[str, Any], as_json: bool, *, error: str = "", start: int = 0
    ) -> None:
        headers = {"Content-Type": JSON if as_json else MSGPACK}
        data = _encode(answer, as_json)
        if len(data) > self.nc.max_payload:
            error = "too_large"
            answer = QueryError(
                "too_large", f"the answer is {len(data)} bytes, over the {self.nc.max_payload} a message may carry;"
                " ask for fewer rows (limit, depth)", at_seq=answer.get("at_seq"),
            ).answer()  # fmt: skip
            data = _encode(answer, as_json)
        if error:
            headers["Nats-Service-Error-Code"] = ERROR_CODES.get(error, "500")
            headers["Nats-Service-Error"] = " ".join(str(answer.get("detail", error)).split())[:200]
            self._account(name, 0, error=True)
        self.metrics.answered(name, error, (time.perf_counter_ns() - start) / 1e9 if start else None)
        try:
            await req.respond(data, headers=headers)
            self.answered += 1
        except ValueError:
            pass  # published without a reply subject: nobody to answer
        except nats.errors.Error as err:
            log.warning("query %s: could not answer: %s", name, err)

    def _account(self, name: str, elapsed_ns: int, *, error: bool = False) -> None:
        """Add to micro's endpoint stats what it cannot see (time spent in a task, error answers)."""
        if self.service is None:
            return
        for ep in getattr(self.service, "_endpoints", []):
            if getattr(ep, "_name", None) != name:
                continue
            with contextlib.suppress(AttributeError, TypeError, ZeroDivisionError):
                if error:
                    ep._num_errors += 1
                if elapsed_ns:
                    ep._processing_time += elapsed_ns
                    ep._average_processing_time = int(ep._processing_time / max(ep._num_requests, 1))
            return


def _encode(answer: dict[str, Any], as_json: bool) -> bytes:
    if as_json:
        return json.dumps(answer, separators=(",", ":")).encode()
    return bytes(msgpack.packb(answer, use_bin_type=True))
