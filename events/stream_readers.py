"""Readers of jetbook's streams, JB_CMD and JB_EVT alike: in order from any sequence, in batches.

Three readers, one defence. `StreamReader` follows a stream live, in batches
of whatever has arrived; `ResumableReader` is one that starts again from the
caller's position after a reconnect (the engine reads JB_CMD with it, the
standby, the projections and the fan-out read JB_EVT); `BulkReader` reads a
known range as fast as nats-py allows (recovery, rebuild, verify, time travel).
What a stored event must be (decoding it, its command order) is
events/logged.py's business, not a reader's.

`StreamReader` is built on an ordered consumer: ephemeral, no acks,
flow-controlled, and reset by the client at the right sequence after a gap or
a server restart. Readers keep
their own position (the engine in JB_EVT, a projection in its SQLite file), so
no durable consumer holds a second copy of it that could disagree.

The stream sequence and the nanosecond timestamp come from the delivery's
reply subject, which carries both as exact integers.

A reader trusts only deliveries that name its own stream and come in order.
The server delivers a consumer's messages to whatever subject its creator
chose, so anyone allowed to create a consumer can push messages into another
reader's inbox; and nats-py's ordered consumer updates its own position from
such a message if its consumer sequence happens to match. So: a delivery from
another stream, or at or before the last accepted sequence, is dropped; an
unfiltered reader (JB_CMD and JB_EVT have no gaps: they deny delete and purge)
also refuses a jump forward and reads again from where it really is.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from protocol.errors import TRANSIENT

log = logging.getLogger("jetbook.reader")
monotonic = time.monotonic

HIGH_WATER = 50_000  # buffered messages before delivery is paused (flow control does the rest)
HEARTBEAT_S = 2.0  # a live reader's consumer sends an idle heartbeat this often (raw path)
STALL_S = 3 * HEARTBEAT_S  # nothing heard for this long: the consumer is gone, make a new one
INACTIVE_S = 30.0  # the server removes a live reader's consumer this long after its interest went


class RawMsg:
    """One stored message as a reader delivers it. Its headers are parsed only when asked for (`headers`): most
    readers never look at them, and parsing them was a third of a live reader's cost per message."""

    __slots__ = ("_headers", "_raw_headers", "data", "pending", "received", "seq", "subject", "ts")

    def __init__(
        self, seq: int, ts: int, subject: str, data: bytes, pending: int, headers: dict[str, str] | None = None,
        received: float = 0.0, raw_headers: bytes | None = None,
    ) -> None:  # fmt: skip
        self.seq = seq  # stream sequence
        self.ts = ts  # JetStream timestamp, ns since the epoch
        self.subject = subject
        self.data = data
        self.pending = pending  # messages left in the stream after this one (for this filter)
        self.received = received  # time.monotonic() when the reader took the delivery (0.0: not a live delivery)
        self._headers = headers
        self._raw_headers = raw_headers  # the header block as received, until `headers` parses it

    @property
    def headers(self) -> dict[str, str] | None:
        if self._raw_headers is not None:
            self._headers = _header_lines(self._raw_headers) or None
            self._raw_headers = None
        return self._headers

    def __repr__(self) -> str:
        return f"RawMsg(seq={self.seq}, ts={self.ts}, subject={self.subject!r}, data={self.data!r})"


def ack_metadata(reply: str) -> tuple[str, int, int, int]:
    """(stream, stream seq, timestamp ns, pending) from a `$JS.ACK...` reply subject, v1 or v2 (with domain)."""
    tokens = reply.split(".")
    if tokens[:2] != ["$JS", "ACK"] or len(tokens) not in (9, 11, 12):
        raise ValueError(f"not a JetStream delivery: {reply[:100]!r}")
    off = 0 if len(tokens) == 9 else 2
    return tokens[2 + off], int(tokens[5 + off]), int(tokens[7 + off]), int(tokens[8 + off])


class StreamReader:
    """Follows a stream live from `start_seq`: batches of whatever has arrived, in order, each message once.

    Two ways to be delivered, one defence. Where nats-py has the raw dispatch
    hook (see "bulk reads" below), the reader takes its deliveries straight
    from the connection's parser, as BulkReader does, on an ephemeral push
    consumer of its own (flow control, idle heartbeats, no acks), and builds
    one RawMsg per message with nothing else: about a fifth of the client CPU
    of nats-py's ordered consumer, which makes a Msg, parses its headers,
    queues it and runs a coroutine for every message. It recovers as the
    ordered consumer does: a gap (a forward jump, or a heartbeat naming a
    delivery it never saw) or a silence longer than STALL_S (the consumer is
    gone: a server restart) re-creates the consumer at the next sequence it
    needs. Without the hook it *is* nats-py's ordered consumer.
    """

    def __init__(self, js: Any, stream: str, start_seq: int = 1, filter_subject: str = "") -> None:
        self.js = js
        self.stream = stream
        self.start_seq = max(start_seq, 1)
        self.filter_subject = filter_subject
        self.contiguous = not filter_subject  # an unfiltered read of a gap-free stream sees every sequence
        self.dropped = 0  # deliveries refused: foreign, repeated or out of order
        self.restarts = 0  # consumers re-created after a gap or a stall
        self._next = self.start_seq  # the next sequence this reader will accept
        self._restarting: asyncio.Task[None] | None = None  # held: the loop keeps only weak references
        self._buf: deque[RawMsg] = deque()
        self._arrived = asyncio.Event()
        self._drained = asyncio.Event()
        self._sub: Any = None
        self._nc: Any = getattr(js, "_nc", None)
        self._routes: dict[int, RawRoute] | None = None  # set: the raw path is in use
        self._sid: int | None = None
        self._consumer = ""  # the raw path's consumer name
        self._stream_b = stream.encode()
        self._heard = 0.0  # monotonic time of the last delivery, heartbeat or flow-control request (raw path)
        self._fc_waiting: list[bytes] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> StreamReader:
        self.start_seq = self._next
        nc = self._nc
        if nc is not None:
            harden(nc)  # before the first delivery: a stored subject or header nats-py cannot decode
            self._routes = _raw_routes(nc)
        if self._routes is not None:
            await self._subscribe_raw()
            return self
        self._sub = await self.js.subscribe(
            self.filter_subject,
            stream=self.stream,
            ordered_consumer=True,
            cb=self._on_msg,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            config=ConsumerConfig(opt_start_seq=self.start_seq),
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )
        return self

    async def _subscribe_raw(self) -> None:
        assert self._nc is not None and self._routes is not None
        inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(inbox)
        self._sid = self._sub._id
        self._routes[self._sid] = self._on_raw
        self._heard = monotonic()
        config = ConsumerConfig(
            deliver_subject=inbox,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self._next,
            ack_policy=AckPolicy.NONE,
            flow_control=True,
            idle_heartbeat=HEARTBEAT_S,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=INACTIVE_S,
            filter_subject=self.filter_subject or None,
        )
        try:
            info = await self.js.add_consumer(self.stream, config)
        except BaseException:
            await self._unsubscribe()
            raise
        self._consumer = str(info.name)

    @property
    def inbox(self) -> str:
        """The subject deliveries arrive on (tests aim foreign consumers at it)."""
        return str(self._sub.subject) if self._sub is not None else ""

    async def consumer_info(self) -> Any:
        if self._routes is not None:
            return await self.js.consumer_info(self.stream, self._consumer)
        return await self._sub.consumer_info()

    def _accept(self, stream: str | bytes, seq: int, ts: int, pending: int, subject: str, data: bytes,
                headers: dict[str, str] | None, raw_headers: bytes | None = None) -> bool:  # fmt: skip
        """Buffer one delivery if it is this stream's next message; False if it was dropped."""
        if (stream != self.stream and stream != self._stream_b) or seq < self._next:
            self._drop(subject, "foreign or repeated")
            return False
        if self.contiguous and seq != self._next:
            self._drop(subject, f"gap: expected {self._next}")
            self._restart_soon()
            return False
        self._next = seq + 1
        self._buf.append(RawMsg(seq, ts, subject, data, pending, headers, monotonic(), raw_headers))
        self._arrived.set()
        return True

    def _on_raw(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        """A frame for our inbox, straight from the connection's parser (see `_raw_routes`)."""
        self._heard = monotonic()
        if not reply.startswith(b"$JS.ACK."):
            self._on_status(reply, headers)
            return
        t = reply.split(b".")
        n = len(t)
        off = 0 if n == 9 else 2 if n in (11, 12) else -1
        try:
            if off < 0:
                raise ValueError(n)
            seq, ts, pending = int(t[5 + off]), int(t[7 + off]), int(t[8 + off])
        except ValueError:
            self._drop(subject_text(subject), "not a JetStream delivery")
            return
        self._accept(t[2 + off], seq, ts, pending, subject_text(subject), data, None, headers)

    def _on_status(self, reply: bytes, headers: bytes | None) -> None:
        """A flow-control request (answered once the buffer is below HIGH_WATER) or an idle heartbeat."""
        if not headers:
            return
        if headers.startswith(_STATUS_FLOW_CONTROL) and reply:
            self._fc_waiting.append(reply)
        elif _STALLED in headers:  # a heartbeat saying the server waits for a flow-control reply
            line = headers[headers.index(_STALLED) + len(_STALLED) :].split(b"\r\n", 1)[0].strip()
            if line:
                self._fc_waiting.append(line)
        elif self.contiguous and _LAST_STREAM in headers:  # a heartbeat: the consumer's last delivery
            line = headers[headers.index(_LAST_STREAM) + len(_LAST_STREAM) :].split(b"\r\n", 1)[0].strip()
            if line.isdigit() and int(line) >= self._next:  # it delivered something we never saw
                self._drop("", f"heartbeat names {int(line)}, expected {self._next}")
                self._restart_soon()
        self._answer_flow_control()

    def _answer_flow_control(self) -> None:
        if self._fc_waiting and len(self._buf) < HIGH_WATER and self._nc is not None:
            loop = asyncio.get_running_loop()
            for fc in self._fc_waiting:
                task = loop.create_task(self._nc.publish(fc.decode()))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            self._fc_waiting.clear()

    async def _on_msg(self, msg: Any) -> None:
        """A delivery as nats-py hands it over (the ordered consumer, without the raw hook)."""
        try:
            stream, seq, ts, pending = ack_metadata(msg.reply or "")
        except ValueError:
            stream, seq, ts, pending = "", 0, 0, 0
        if not self._accept(stream, seq, ts, pending, msg.subject, msg.data, msg.headers):
            return
        while len(self._buf) >= HIGH_WATER and self._routes is None:
            self._drained.clear()
            await self._drained.wait()

    def _drop(self, subject: str, why: str) -> None:
        self.dropped += 1
        if self.dropped <= 10 or self.dropped % 1000 == 0:
            log.warning("%s reader dropped a delivery (%s): %s", self.stream, why, subject)

    def _restart_soon(self) -> None:
        if self._restarting is None:
            self._restarting = asyncio.get_running_loop().create_task(self._restart())

    async def _restart(self) -> None:
        """Read again from the next sequence we need, on a fresh consumer."""
        try:
            self.restarts += 1
            await self._unsubscribe()
            await self.start()
        finally:
            self._restarting = None

    async def next_batch(self, max_msgs: int, timeout: float | None = None) -> list[RawMsg]:
        """Up to max_msgs messages, waiting at most `timeout` seconds for the first one."""
        if not self._buf:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except TimeoutError:
                # Checked after a wait, when the connection has had the loop to read: a busy caller is not a stall.
                if self._routes is not None and self._restarting is None and monotonic() - self._heard > STALL_S:
                    log.warning("%s reader: nothing heard for %.0fs; reading again from %d", self.stream, STALL_S,
                                self._next)  # fmt: skip
                    self._restart_soon()
                return []
        buf = self._buf
        out = [buf.popleft() for _ in range(min(max_msgs, len(buf)))]
        self._drained.set()
        if self._fc_waiting:
            self._answer_flow_control()
        return out

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if self._routes is not None and self._sid is not None:
            self._routes.pop(self._sid, None)
        self._sid = None
        self._fc_waiting.clear()
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:
                pass  # the connection may already be closed; the ephemeral consumer expires by itself

    async def stop(self) -> None:
        await self._unsubscribe()
        for task in list(self._tasks):
            task.cancel()

    async def __aenter__(self) -> StreamReader:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def last_seq(js: Any, stream: str) -> int:
    info = await js.stream_info(stream)
    return int(info.state.last_seq)


async def caught_up(reader: StreamReader, last_seen: int) -> bool:
    """True when the consumer has nothing more to deliver beyond `last_seen` right now."""
    info = await reader.consumer_info()
    delivered = int(info.delivered.stream_seq or 0)
    return int(info.num_pending or 0) == 0 and (delivered <= last_seen or delivered < reader.start_seq)


async def batches(reader: StreamReader, follow: bool = False, max_msgs: int = 10_000) -> AsyncIterator[list[RawMsg]]:
    """Batches from the reader's start; without `follow`, up to the stream's end as it is now."""
    last_seen = 0
    while True:
        batch = await reader.next_batch(max_msgs, timeout=0.2)
        if batch:
            yield batch
            last_seen = batch[-1].seq
        if follow:
            continue
        if batch and batch[-1].pending == 0:
            return
        if not batch and await caught_up(reader, last_seen):
            return


async def read_to_end(reader: StreamReader, max_msgs: int = 10_000) -> list[list[RawMsg]]:
    """Every message from the reader's start up to the stream's end as it is now, in batches."""
    return [batch async for batch in batches(reader, max_msgs=max_msgs)]


# --- bulk reads -----------------------------------------------------------------------------------
#
# nats-py turns every delivery into a Msg, parses its headers, queues it and wakes a task for it: about
# 12 µs of Python per message, which caps any reader near 70k messages/s before it does any work of its
# own. A bulk read of a known range (a rebuild, a verify, time travel) needs none of that, so BulkReader
# takes its deliveries straight from the connection's protocol parser: one route per subscription id,
# installed once per connection in front of nats-py's own dispatch (`Client._process_msg`, which the
# parser calls with the raw subject, reply, payload and header bytes). Anything not routed goes on to
# nats-py unchanged. If a nats-py release renames that hook, BulkReader falls back to StreamReader.


@dataclass(slots=True)
class Chunk:
    """Consecutive messages of one stream, as parallel lists (no object per message)."""

    seqs: list[int]
    ts: list[int]  # JetStream timestamps, ns
    subjects: list[bytes]
    data: list[bytes]

    def __len__(self) -> int:
        return len(self.seqs)

    def msgs(self) -> list[RawMsg]:
        return [
            RawMsg(seq, ts, subject_text(subject), data, 0)
            for seq, ts, subject, data in zip(self.seqs, self.ts, self.subjects, self.data, strict=True)
        ]


RawRoute = Any  # Callable[[bytes, bytes, bytes, bytes | None], None]: subject, reply, payload, headers
_ROUTES_ATTR = "_jetbook_raw_routes"
_HARDENED_ATTR = "_jetbook_hardened"


def subject_text(subject: bytes) -> str:
    """A subject as text; bytes that are not UTF-8 become lone surrogates (`surrogateescape`), never an error.

    The server takes any bytes but space, tab, CR and LF in a subject token, so
    JB_CMD and JB_EVT can hold subjects that are not UTF-8. The escape keeps
    them distinct and reversible (`subject.encode(errors="surrogateescape")`).
    """
    return subject.decode("utf-8", "surrogateescape")


def _header_lines(raw: bytes) -> dict[str, str]:
    """`Name: value` lines in any bytes: names that are not ASCII tokens are skipped, values decoded leniently."""
    out: dict[str, str] = {}
    for line in raw.split(b"\r\n")[1:]:  # the first line is `NATS/1.0[ status]`
        name, sep, value = line.partition(b":")
        key = name.strip().decode("ascii", "replace")
        if sep and key and "\ufffd" not in key and not any(c.isspace() for c in key):
            out[key] = value.strip().decode("utf-8", "replace")
    return out or {}


def harden(nc: Any) -> None:
    """Make this connection survive any subject, reply or header bytes a stored message can carry.

    nats-py decodes a delivery's subject and reply as strict UTF-8
    (`Client._build_message`), and its header status line too; a failure
    there is raised in its read loop, which then stops reading for good (the
    connection stays up, so nothing reconnects until pings time out). Its
    parser's regular expressions also split the control line on any ASCII
    whitespace, where the server splits on space and tab only, so a subject
    holding a vertical tab is a protocol error and a reconnect that meets the
    same message again. This installs, once per connection: subjects decoded
    with `subject_text`, headers that fall back to a lenient parse, and the
    parser front below, which cuts every MSG/HMSG frame itself.
    """
    if getattr(nc, _HARDENED_ATTR, False):
        return
    setattr(nc, _HARDENED_ATTR, True)
    build = getattr(nc, "_build_message", None)
    msg_class = getattr(nc, "msg_class", None)
    if build is not None and msg_class is not None:

        def build_message(sid: int, subject: bytes, reply: bytes, data: bytes, headers: Any) -> Any:
            return msg_class(
                subject=subject_text(subject), reply=subject_text(reply), data=data, headers=headers,
                _client=nc, _sid=sid,
            )  # fmt: skip

        nc._build_message = build_message
    process_headers = getattr(nc, "_process_headers", None)
    if process_headers is not None and asyncio.iscoroutinefunction(process_headers):

        async def headers_or_lenient(headers: bytes | None) -> dict[str, str] | None:
            try:
                parsed: dict[str, str] | None = await process_headers(headers)
                return parsed
            except Exception:
                return _header_lines(headers or b"") or None

        nc._process_headers = headers_or_lenient
    _raw_routes(nc)


def _raw_routes(nc: Any) -> dict[int, RawRoute] | None:
    """The per-connection table of raw routes, installing the hooks on first use; None if this nats-py has none.

    Two hooks, both in front of nats-py's own code and handing on everything
    that is not routed: `Client._process_msg` (what the protocol parser calls
    per message), and the parser itself, whose per-message regular
    expressions and buffer shifting cost more than the rest of a bulk read.
    """
    routes: dict[int, RawRoute] | None = getattr(nc, _ROUTES_ATTR, None)
    if routes is not None:
        return routes
    original = getattr(nc, "_process_msg", None)
    parser: Any = getattr(nc, "_ps", None)
    if original is None or not asyncio.iscoroutinefunction(original):
        return None
    table: dict[int, RawRoute] = {}

    async def process_msg(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        route = table.get(sid)
        if route is None:
            await original(sid, subject, reply, data, headers)
        else:
            route(subject, reply, data, headers)

    nc._process_msg = process_msg
    if _fast_parse_possible(parser):
        parser.parse = _fast_parse(parser, parser.parse, table, process_msg)
    setattr(nc, _ROUTES_ATTR, table)
    return table


def _fast_parse_possible(parser: Any) -> bool:
    try:
        from nats.protocol import parser as nats_parser
    except ImportError:
        return False
    return (
        isinstance(getattr(parser, "buf", None), bytearray)
        and getattr(parser, "state", None) == getattr(nats_parser, "AWAITING_CONTROL_LINE", object())
        and asyncio.iscoroutinefunction(getattr(parser, "parse", None))
    )


_ARG_SPLIT = re.compile(rb"[ \t]+")  # the server's own separators: a subject may hold any other byte


def _fast_parse(parser: Any, parse: Any, table: dict[int, RawRoute], process_msg: Any) -> Any:
    """A parser front: every complete MSG/HMSG frame is cut out of the buffer here.

    Routed subscriptions get theirs directly; other frames go to
    `process_msg` (nats-py's dispatch) with the same arguments its parser
    would give, but split on space and tab only, as the server writes them.
    Everything else (PING, INFO, +OK, -ERR) is handed to nats-py's parser one
    complete protocol unit at a time, so its own buffer is empty whenever this
    front runs; an incomplete tail is left in that buffer, where a reconnect's
    `reset()` clears it as before.
    """
    from nats.protocol.parser import AWAITING_CONTROL_LINE

    async def fast(data: bytes = b"") -> None:
        if parser.state != AWAITING_CONTROL_LINE:
            await parse(data)  # in the middle of a payload it has the control line for
            return
        if parser.buf:
            data = bytes(parser.buf) + data
            parser.buf.clear()
        pos, n = 0, len(data)
        while pos < n:
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                break
            if data.startswith(b"HMSG ", pos) or data.startswith(b"MSG ", pos):
                parts = _ARG_SPLIT.split(data[pos:eol].strip(b" \t"))
                headed = parts[0] == b"HMSG"
                short = 5 if headed else 4  # [H]MSG subject sid [reply] [header length] total length
                if len(parts) not in (short, short + 1) or not all(
                    p.isdigit() for p in parts[2:3] + parts[-2 if headed else -1 :]
                ):
                    await parse(data[pos:])  # not a frame this front understands: nats-py decides
                    return
                has_reply = len(parts) == short + 1
                total = int(parts[-1])
                end = eol + 2 + total + 2
                if end > n:
                    break
                sid = int(parts[2])
                hlen = int(parts[-2]) if headed else 0
                body = eol + 2
                args = (
                    parts[1],
                    parts[3] if has_reply else b"",
                    data[body + hlen : body + total],
                    data[body : body + hlen] if hlen else None,
                )
                route = table.get(sid)
                if route is None:
                    await process_msg(sid, *args)
                else:
                    route(*args)
                pos = end
            else:
                await parse(data[pos : eol + 2])
                pos = eol + 2
        if pos < n:
            parser.buf.extend(data[pos:] if pos else data)

    return fast


_STATUS_FLOW_CONTROL = b"NATS/1.0 100 FlowControl"
_STALLED = b"Nats-Consumer-Stalled:"
_LAST_STREAM = b"Nats-Last-Stream:"


class BulkReader:
    """Every message of `stream` from `start` to `end` (inclusive), in order, in chunks, as fast as nats-py allows.

    A push consumer with flow control, like the ordered consumer StreamReader
    uses (ephemeral, no acks, memory-backed, gone when we unsubscribe), so it
    needs no permission beyond what a projection already has. The same
    defence as StreamReader: only deliveries of this reader's stream at exactly
    the next sequence are taken (a stream sequence names one stored message,
    whichever consumer delivers it); anything else is dropped, and a jump
    forward or a stall (no delivery for `stall_s`) re-creates the consumer at
    the next sequence. Backpressure: a flow-control request is
    answered only once fewer than `high_water` messages wait to be taken.

    The consumer must give the event loop a turn often (every few
    milliseconds of work): deliveries are read from the socket only then, and
    the server grows a consumer's flow-control window up to the connection's
    max pending (64 MiB), past which it drops the connection as a slow
    consumer. Every chunk handed over gives it one turn (see replay/verify.py
    for a consumer that needs more).
    """

    def __init__(
        self,
        js: Any,
        stream: str,
        start: int,
        end: int,
        *,
        chunk: int = 10_000,
        high_water: int = 50_000,
        stall_s: float = 10.0,
    ) -> None:
        self.js = js
        self.nc = getattr(js, "_nc", None)
        self.stream = stream
        self.start = max(start, 1)
        self.end = end
        self.chunk = chunk
        self.high_water = high_water
        self.stall_s = stall_s
        self.dropped = 0
        self.restarts = 0
        self._stream_b = stream.encode()
        self._next = self.start
        self._sid: int | None = None
        self._sub: Any = None
        self._routes: dict[int, RawRoute] | None = None
        self._fallback: StreamReader | None = None
        self._wake = asyncio.Event()
        self._gap = False
        self._fc_waiting: list[str] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._new_chunk()

    def _new_chunk(self) -> None:
        self._seqs: list[int] = []
        self._ts: list[int] = []
        self._subjects: list[bytes] = []
        self._data: list[bytes] = []

    @property
    def fast(self) -> bool:
        return self._fallback is None

    async def __aenter__(self) -> BulkReader:
        if self.end < self.start:
            return self
        self._routes = _raw_routes(self.nc) if self.nc is not None else None
        if self._routes is None:
            log.warning("nats-py has no raw dispatch hook; bulk reads use the ordered consumer (slower)")
            self._fallback = await StreamReader(self.js, self.stream, self.start).start()
            return self
        await self._subscribe()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._unsubscribe()
        if self._fallback is not None:
            await self._fallback.stop()
        for task in list(self._tasks):
            task.cancel()

    async def _subscribe(self) -> None:
        assert self.nc is not None and self._routes is not None
        inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(inbox)
        self._sid = self._sub._id
        self._routes[self._sid] = self._on_raw
        self._gap = False
        config = ConsumerConfig(
            deliver_subject=inbox,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self._next,
            ack_policy=AckPolicy.NONE,
            flow_control=True,
            idle_heartbeat=self.stall_s / 2,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=60.0,
        )
        await self.js.add_consumer(self.stream, config)

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if self._routes is not None and self._sid is not None:
            self._routes.pop(self._sid, None)
        self._sid = None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:
                pass  # the connection may be closed; the ephemeral consumer goes away without interest

    def _on_raw(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        if not reply.startswith(b"$JS.ACK."):
            self._on_status(reply, headers)
            return
        t = reply.split(b".")
        off = 0 if len(t) == 9 else 2 if len(t) in (11, 12) else -1
        if off < 0 or t[2 + off] != self._stream_b:
            self.dropped += 1
            return
        seq = int(t[5 + off])
        if seq != self._next:
            self.dropped += 1
            if seq > self._next:
                self._gap = True
                self._wake.set()
            return
        self._next = seq + 1
        self._seqs.append(seq)
        self._ts.append(int(t[7 + off]))
        self._subjects.append(subject)
        self._data.append(data)
        if len(self._seqs) >= self.chunk or seq >= self.end:
            self._wake.set()

    def _on_status(self, reply: bytes, headers: bytes | None) -> None:
        fc = ""
        if headers and headers.startswith(_STATUS_FLOW_CONTROL) and reply:
            fc = reply.decode()
        elif headers and _STALLED in headers:  # a heartbeat saying the server waits for a flow-control reply
            line = headers[headers.index(_STALLED) + len(_STALLED) :].split(b"\r\n", 1)[0]
            fc = line.strip().decode()
        if fc:
            self._fc_waiting.append(fc)
            self._answer_flow_control()
        self._wake.set()

    def _answer_flow_control(self) -> None:
        if self._fc_waiting and len(self._seqs) < self.high_water and self.nc is not None:
            for fc in self._fc_waiting:
                task = asyncio.get_running_loop().create_task(self.nc.publish(fc))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            self._fc_waiting.clear()

    def _take(self) -> Chunk:
        out = Chunk(self._seqs, self._ts, self._subjects, self._data)
        self._new_chunk()
        self._answer_flow_control()
        return out

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[Chunk]:
        if self.end < self.start:
            return
        if self._fallback is not None:
            async for chunk in self._fallback_chunks(self._fallback):
                yield chunk
            return
        loop = asyncio.get_running_loop()
        last_progress = loop.time()
        while True:
            done = self._next > self.end
            if self._seqs and (done or len(self._seqs) >= self.chunk):
                chunk = self._take()
                if chunk.seqs[-1] > self.end:  # never more than asked for
                    keep = self.end - chunk.seqs[0] + 1
                    for part in (chunk.seqs, chunk.ts, chunk.subjects, chunk.data):
                        del part[keep:]
                # Let the loop run once before handing over: a generator that yields without awaiting
                # never gives the connection's read loop a turn, and a consumer that folds chunk after
                # chunk would leave the socket unread until the server drops us as a slow consumer.
                await asyncio.sleep(0)
                yield chunk
                last_progress = loop.time()
                continue
            if done:
                return
            if self._gap or loop.time() - last_progress > self.stall_s:
                log.warning("%s bulk read: %s at %d; reading again from there", self.stream,
                            "gap" if self._gap else "stalled", self._next)  # fmt: skip
                self.restarts += 1
                await self._unsubscribe()
                await self._subscribe()
                last_progress = loop.time()
                continue
            self._wake.clear()
            before = len(self._seqs)
            try:
                await asyncio.wait_for(self._wake.wait(), 0.05 if self._seqs else self.stall_s / 4)
            except TimeoutError:
                pass
            if len(self._seqs) != before:
                last_progress = loop.time()
            if self._seqs and len(self._seqs) == before:
                # a quiet moment with something buffered: hand it over rather than wait for a full chunk
                yield self._take()
                last_progress = loop.time()

    async def _fallback_chunks(self, reader: StreamReader) -> AsyncIterator[Chunk]:
        while reader._next <= self.end:
            msgs = [m for m in await reader.next_batch(self.chunk, timeout=self.stall_s) if m.seq <= self.end]
            if msgs:
                yield Chunk([m.seq for m in msgs], [m.ts for m in msgs],
                            [m.subject.encode() for m in msgs], [m.data for m in msgs])  # fmt: skip


async def read_range(js: Any, stream: str, start: int, end: int, **options: Any) -> AsyncIterator[Chunk]:
    """Chunks of `stream` from `start` to `end`, inclusive (nothing if end < start)."""
    async with BulkReader(js, stream, start, end, **options) as reader:
        async for chunk in reader:
            yield chunk


class ResumableReader:
    """A stream reader that starts again from the caller's position after the client reconnects.

    After a server restart the server-side ordered consumer is gone, and
    nats-py notices only when two idle heartbeats (10 s) are missing. The
    engine knows its position exactly, so it reads again from there at once.
    """

    def __init__(self, nc: Any, stream: str) -> None:
        self.nc = nc
        self.stream = stream
        self.reader: StreamReader | None = None
        self._reconnects = -1

    def _count(self) -> int:
        stats = getattr(self.nc, "stats", None)
        return int(stats.get("reconnects", 0)) if isinstance(stats, dict) else 0

    async def next_batch(self, position: int, max_msgs: int, timeout: float) -> list[RawMsg]:
        if self.reader is None or self._count() != self._reconnects:
            if self.reader is not None:
                log.info("reconnected: reading %s again from %d", self.stream, position)
            await self.stop()
            self._reconnects = self._count()
            reader = StreamReader(self.nc.jetstream(), self.stream, position)
            try:
                self.reader = await reader.start()
            except TRANSIENT as err:
                log.warning("cannot read %s yet (%s); retrying", self.stream, err)
                await asyncio.sleep(min(timeout, 0.25))  # back off; the caller asks again
                return []
        return await self.reader.next_batch(max_msgs, timeout=timeout)

    async def stop(self) -> None:
        reader, self.reader = self.reader, None
        if reader is not None:
            await reader.stop()
