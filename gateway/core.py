"""What the HTTP routes and the WebSocket endpoints share: one NATS connection, the log's tail, commands, queries.

The gateway holds no state of its own that matters. Reads go to the query service (`jb.qry.<name>`, so the
gateway needs no read model file and can run on another machine); commands go to JB_CMD like any client's;
and one reader follows JB_EVT from its end, so that a command's events reach the request that sent it, and a
WebSocket learns that its market changed. A gateway restarted loses nothing but its open sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import nats.errors
import nats.js.errors

from commands.client import CommandClient, MsgIdCollision
from commands.model import SPECS, Invalid, parse
from events.model import ENGINE_MARKET, Event, Rejected, decode, to_wire
from events.stream_readers import ResumableReader, last_seq
from events.watch import past_events
from protocol.barrier import barrier
from protocol.errors import TRANSIENT
from protocol.shards import cmd_stream_name, evt_stream_name, partition
from protocol.subjects import ALL_MARKETS, CMD_STREAM, EVT_STREAM, HDR_BATCH_COMMIT, cmd_subject, ctl_subject, is_id

log = logging.getLogger("jetbook.gateway")

QRY_PREFIX: Final = "jb.qry"
LEASE_SUBJECT: Final = "$KV.JB_LEASE.engine"  # engine/lease.py: bucket JB_LEASE, key `engine`
LEASE_STREAM: Final = "KV_JB_LEASE"
DEFAULT_TIMEOUT_S: Final = 5.0
MAX_TIMEOUT_S: Final = 30.0
RECENT_COMMANDS: Final = 50_000  # commands whose events the tail keeps, for requests that come for them late
QUERY_ERROR_STATUS: Final = {
    "timeout": 504, "unavailable": 503, "unknown_query": 404, "not_found": 404, "too_large": 413, "busy": 429,
}  # fmt: skip
MAX_BODY_BYTES: Final = 64 * 1024  # a protocol command is a few hundred bytes; anything bigger is refused


class GatewayError(Exception):
    """A refusal with a machine-readable reason and the HTTP status it maps to (a WebSocket says the reason)."""

    def __init__(self, status: int, reason: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail, self.extra = status, reason, detail, extra

    def body(self) -> dict[str, Any]:
        return {"error": self.reason, "detail": self.detail, **self.extra}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one command did: its JB_CMD sequence and the events it caused, in log order."""

    cmd_seq: int
    events: list[dict[str, Any]]
    duplicate: bool  # the Idempotency-Key was seen before: these are the first request's events

    @property
    def rejected(self) -> dict[str, Any] | None:
        return rejection(self.events)


def rejection(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The reject that refused a command as a whole, if one did.

    A batch (place_orders...) whose instructions are partly refused is not a
    refused command: those rejects carry an `index` and sit among the other
    instructions' events. It is refused when a reject has no index (the whole
    command: too many instructions, an unknown market) or when every
    instruction was (all_or_none); then the first failure's reject.
    """
    rejects = [e for e in events if e["type"] == Rejected.type]
    if not rejects:
        return None
    whole = next((e for e in rejects if e.get("index") is None), None)
    if whole is not None:
        return whole
    if len(rejects) < len(events):
        return None
    return next((e for e in rejects if not str(e.get("detail", "")).startswith("all_or_none:")), rejects[0])


def is_control(command_type: str) -> bool:
    spec = SPECS.get(command_type)
    return spec is not None and spec.family == "ctl"


def command_subject(market_id: str, account_id: str | None, command_type: str) -> str:
    """Where a command goes: control commands on jb.ctl.<market>, trading ones on jb.cmd.<market>.<account>."""
    if is_control(command_type):
        return ctl_subject(market_id)
    if account_id is None:
        raise GatewayError(422, "invalid_field", f"{command_type} needs an account_id")
    return cmd_subject(market_id, account_id)


def msg_id_for(account: str, key: str) -> str:
    """An Idempotency-Key as a Nats-Msg-Id, scoped to the account so two accounts' keys never meet."""
    return "gw-" + hashlib.sha256(f"{account}\0{key}".encode()).hexdigest()[:48]


class EventTail:
    """JB_EVT (or one shard's JB_EVT_k) from its end at start: each command's events, the last sequence, and who
    changed when. Command and event sequences are the shard's own, so a sharded gateway has one tail per shard."""

    def __init__(self, nc: Any, stream: str = EVT_STREAM) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.stream = stream
        self.position = 0  # the last JB_EVT sequence read
        self.done_upto = 0  # every command <= this has all its events here (or before `first_cmd`)
        self.first_cmd = 1  # the first command whose events this tail reads itself; older ones are looked up
        self.by_cmd: OrderedDict[int, list[tuple[int, Event]]] = OrderedDict()
        self.market_seq: dict[str, int] = {}  # market -> JB_EVT sequence of its last event seen
        self.listeners: list[Callable[[int, Event], None]] = []  # called for every event, in log order
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reader = ResumableReader(nc, stream)

    async def start(self) -> None:
        self.position = await last_seq(self.js, self.stream)
        if self.position:
            # The last stored event's command is complete (a command's events commit in one batch).
            self.done_upto = decode((await self.js.get_msg(self.stream, self.position, direct=True)).data).cmd_seq
        self.first_cmd = self.done_upto + 1
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._reader.stop()

    async def _run(self) -> None:
        while True:
            try:
                msgs = await self._reader.next_batch(self.position + 1, 10_000, timeout=1.0)
            except TRANSIENT as err:
                log.warning("reading %s: %s; again", self.stream, err)
                await asyncio.sleep(0.5)
                continue
            for m in msgs:
                if m.seq <= self.position:
                    continue
                try:
                    event = decode(m.data)
                except Exception as err:  # a message the gateway cannot read is skipped, never fatal
                    log.error("%s %d: undecodable (%s)", self.stream, m.seq, err)
                    self.position = m.seq
                    continue
                self._fold(m.seq, event, bool(m.headers and HDR_BATCH_COMMIT in m.headers))
            if msgs:
                changed, self._changed = self._changed, asyncio.Event()
                changed.set()

    def _fold(self, seq: int, event: Event, commits: bool) -> None:
        self.position = seq
        self.by_cmd.setdefault(event.cmd_seq, []).append((seq, event))
        while len(self.by_cmd) > RECENT_COMMANDS:
            self.by_cmd.popitem(last=False)
        self.done_upto = max(self.done_upto, event.cmd_seq - (0 if commits else 1))
        if event.market_id != ENGINE_MARKET:
            self.market_seq[event.market_id] = seq
        for listener in list(self.listeners):
            try:
                listener(seq, event)
            except Exception:  # one broken listener (a closed socket) must not stop the tail
                log.exception("event listener failed")

    async def changed(self, timeout: float) -> bool:
        """Wait until the tail reads more events; False after `timeout` with none."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def events_of(self, cmd_seq: int, timeout: float) -> list[Event]:
        """The events of command `cmd_seq`, waiting for the engine to decide it; TimeoutError past `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while cmd_seq > self.done_upto:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"no events for command {cmd_seq} within {timeout:g}s (is the engine running?)")
            await self.changed(min(left, 1.0))
        got = self.by_cmd.get(cmd_seq)
        if cmd_seq < self.first_cmd or (got is None and self.by_cmd and cmd_seq < next(iter(self.by_cmd))):
            return await past_events(self.js, cmd_seq, self.stream)  # decided before this gateway started, or long ago
        return [e for _, e in got or []]


class Gateway:
    """The gateway's one NATS connection and what every route does with it."""

    def __init__(self, nc: Any, shards: int = 1) -> None:
        """`shards`: the venue's (protocol.streams.venue_shards); one tail per shard's event stream."""
        self.nc = nc
        self.js = nc.jetstream()
        self.client = CommandClient(self.js)
        self.shards = shards
        self.streams = [(cmd_stream_name(k, shards), evt_stream_name(k, shards)) for k in range(shards)]
        self.tails = [EventTail(nc, evt) for _, evt in self.streams]
        self.started = time.monotonic()

    @property
    def tail(self) -> EventTail:
        """JB_EVT's tail (a sharded venue: shard 0's; `tail_of` gives a market's)."""
        return self.tails[0]

    def tail_of(self, market_id: str) -> EventTail:
        """The tail of the shard that decides `market_id` (`_all`: the shard its commands land in first)."""
        return self.tails[partition(market_id, self.shards)]

    def listen(self, listener: Callable[[int, Event], None]) -> None:
        for tail in self.tails:
            tail.listeners.append(listener)

    def unlisten(self, listener: Callable[[int, Event], None]) -> None:
        for tail in self.tails:
            with contextlib.suppress(ValueError):
                tail.listeners.remove(listener)

    async def changed(self, timeout: float) -> bool:
        """Wait until any shard's tail reads more events; False after `timeout` with none."""
        if self.shards == 1:
            return await self.tail.changed(timeout)
        waits = [asyncio.create_task(t.changed(timeout)) for t in self.tails]
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            return any(task.result() for task in done)
        finally:
            for task in waits:
                task.cancel()

    async def start(self) -> None:
        for tail in self.tails:
            await tail.start()
        await barrier(self.nc)

    async def stop(self) -> None:
        for tail in self.tails:
            await tail.stop()

    # --- reads ---------------------------------------------------------------------------------------------

    async def query(self, name: str, body: dict[str, Any], timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """Ask the query service; its answer ({"at_seq", "result"}) or a GatewayError with its reason."""
        asked = body.get("timeout_ms")
        wait = min(asked / 1000 if isinstance(asked, int) and asked > 0 else timeout, MAX_TIMEOUT_S)
        try:
            msg = await self.nc.request(f"{QRY_PREFIX}.{name}", msgpack.packb(body), timeout=wait + 1.0)
        except nats.errors.NoRespondersError:
            raise GatewayError(503, "unavailable", "no query service is running") from None
        except (nats.errors.TimeoutError, TimeoutError):
            raise GatewayError(
                504, "timeout", f"the query service did not answer {name} within {wait + 1:g}s"
            ) from None
        try:
            answer = msgpack.unpackb(msg.data)
        except Exception:
            raise GatewayError(502, "bad_gateway", "the query service's answer is not msgpack") from None
        if not isinstance(answer, dict):
            raise GatewayError(502, "bad_gateway", "the query service's answer is not a map")
        if "error" in answer:
            error = str(answer.pop("error"))
            detail = str(answer.pop("detail", error))
            status = QUERY_ERROR_STATUS.get(error, 422)
            raise GatewayError(status, error, detail, **answer)
        return answer

    async def evt_last_seq(self) -> int:
        return await last_seq(self.js, EVT_STREAM)

    async def cmd_last_seq(self) -> int:
        return await last_seq(self.js, CMD_STREAM)

    async def evt_last_seqs(self) -> dict[str, int]:
        """Every shard's event stream's last sequence ({"JB_EVT": n} for one shard)."""
        return {evt: await last_seq(self.js, evt) for _, evt in self.streams}

    async def lease_holders(self) -> dict[str, dict[str, Any] | None]:
        """Each shard's engine lease ("engine", or "engine-<k>" with shards): its holder, None when nobody."""
        if self.shards == 1:
            return {"engine": await self.lease_holder()}
        return {f"engine-{k}": await self.lease_holder(f"engine-{k}") for k in range(self.shards)}

    async def lease_holder(self, key: str = "engine") -> dict[str, Any] | None:
        """The engine that holds the writer lease `key`, as its record says; None when nobody does.

        Judged by the record's age on the server's clock against this machine's: good enough to say "an engine
        is there" on a status line; the engines themselves never compare wall clocks (engine/lease.py).
        """
        try:
            # Not a direct get: nats-py creates KV buckets without allow_direct, so only the stream leader answers.
            msg = await self.js.get_msg(LEASE_STREAM, subject=f"{LEASE_SUBJECT.rsplit('.', 1)[0]}.{key}")
        except (nats.js.errors.Error, *TRANSIENT):
            return None
        if not msg.data or (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE") or msg.time is None:
            return None
        try:
            record = json.loads(msg.data)
            ttl_s = int(record.get("ttl_ms", 1000)) / 1000
        except (ValueError, TypeError, AttributeError):
            return None
        age = time.time() - msg.time.timestamp()
        if age > 3 * ttl_s:
            return None  # not renewed for three TTLs: nobody holds it now
        return {"holder": record.get("holder"), "host": record.get("host"), "age_s": round(age, 3)}

    # --- commands ------------------------------------------------------------------------------------------

    async def command(
        self,
        market_id: str,
        account_id: str | None,
        body: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        wait: bool = True,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> Outcome:
        """Check, publish and (with `wait`) collect the events of one protocol command.

        The command is checked here by the engine's own parser, so a bad one is refused with exactly the
        reason the engine would give, without a trip through the log. The engine checks it again.
        """
        ctype = body.get("type")
        if not isinstance(ctype, str) or ctype not in SPECS:
            raise GatewayError(422, "unknown_command", f"unknown command type {str(ctype)[:64]!r}")
        if not is_id(market_id) or (market_id == ALL_MARKETS and ctype != "cancel_all"):
            raise GatewayError(422, "invalid_market_id", f"market_id {market_id[:80]!r}")
        if account_id is not None and not is_id(account_id):
            raise GatewayError(422, "invalid_field", f"account_id {account_id[:80]!r}")
        subject = command_subject(market_id, account_id, ctype)
        try:
            data = bytes(msgpack.packb(body, use_bin_type=True))
        except (TypeError, ValueError, OverflowError) as err:
            raise GatewayError(422, "invalid_field", f"not encodable: {err}") from None
        if len(data) > MAX_BODY_BYTES:
            raise GatewayError(413, "too_large", f"a command is at most {MAX_BODY_BYTES} bytes")
        parsed = parse(subject, data)
        if isinstance(parsed, Invalid):
            raise GatewayError(422, parsed.reason, parsed.detail)
        msg_id = msg_id_for(account_id or f"ctl:{market_id}", idempotency_key) if idempotency_key else None
        try:
            cmd_seq = await self.client.send(subject, data, msg_id)
        except MsgIdCollision as err:
            raise GatewayError(409, "idempotency_key_reused", str(err)) from None
        except nats.errors.NoRespondersError:
            raise GatewayError(503, "unavailable", "JB_CMD does not answer (is the server up?)") from None
        except TRANSIENT as err:
            raise GatewayError(503, "unavailable", f"publish to JB_CMD failed: {err!r}") from None
        duplicate = self.client.last_was_duplicate
        if not wait:
            return Outcome(cmd_seq, [], duplicate)
        try:
            events = await self.tail_of(market_id).events_of(cmd_seq, timeout)
        except TimeoutError as err:
            raise GatewayError(504, "timeout", str(err), cmd_seq=cmd_seq) from None
        return Outcome(cmd_seq, [to_wire(e) for e in events], duplicate)
