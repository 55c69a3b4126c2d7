"""Read a stream in order from any sequence, in batches of whatever has arrived.

Built on an ordered consumer: ephemeral, no acks, flow-controlled, and reset by
the client at the right sequence after a gap or a server restart. Readers keep
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
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from nats.js.api import ConsumerConfig, DeliverPolicy

log = logging.getLogger("jetbook.reader")

HIGH_WATER = 50_000  # buffered messages before delivery is paused (flow control does the rest)


@dataclass(frozen=True, slots=True)
class RawMsg:
    seq: int  # stream sequence
    ts: int  # JetStream timestamp, ns since the epoch
    subject: str
    data: bytes
    pending: int  # messages left in the stream after this one (for this filter)
    headers: dict[str, str] | None = None


def ack_metadata(reply: str) -> tuple[str, int, int, int]:
    """(stream, stream seq, timestamp ns, pending) from a `$JS.ACK...` reply subject, v1 or v2 (with domain)."""
    tokens = reply.split(".")
    if tokens[:2] != ["$JS", "ACK"] or len(tokens) not in (9, 11, 12):
        raise ValueError(f"not a JetStream delivery: {reply[:100]!r}")
    off = 0 if len(tokens) == 9 else 2
    return tokens[2 + off], int(tokens[5 + off]), int(tokens[7 + off]), int(tokens[8 + off])


class StreamReader:
    def __init__(self, js: Any, stream: str, start_seq: int = 1, filter_subject: str = "") -> None:
        self.js = js
        self.stream = stream
        self.start_seq = max(start_seq, 1)
        self.filter_subject = filter_subject
        self.contiguous = not filter_subject  # an unfiltered read of a gap-free stream sees every sequence
        self.dropped = 0  # deliveries refused: foreign, repeated or out of order
        self._next = self.start_seq  # the next sequence this reader will accept
        self._restarting: asyncio.Task[None] | None = None  # held: the loop keeps only weak references
        self._buf: deque[RawMsg] = deque()
        self._arrived = asyncio.Event()
        self._drained = asyncio.Event()
        self._sub: Any = None

    async def start(self) -> StreamReader:
        self.start_seq = self._next
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

    @property
    def inbox(self) -> str:
        """The subject deliveries arrive on (tests aim foreign consumers at it)."""
        return str(self._sub.subject) if self._sub is not None else ""

    async def _on_msg(self, msg: Any) -> None:
        try:
            stream, seq, ts, pending = ack_metadata(msg.reply or "")
        except ValueError:
            stream, seq, ts, pending = "", 0, 0, 0
        if stream != self.stream or seq < self._next:
            self._drop(msg, "foreign or repeated")
            return
        if self.contiguous and seq != self._next:
            self._drop(msg, f"gap: expected {self._next}")
            if self._restarting is None:
                self._restarting = asyncio.get_running_loop().create_task(self._restart())
            return
        self._next = seq + 1
        self._buf.append(RawMsg(seq, ts, msg.subject, msg.data, pending, msg.headers))
        self._arrived.set()
        while len(self._buf) >= HIGH_WATER:
            self._drained.clear()
            await self._drained.wait()

    def _drop(self, msg: Any, why: str) -> None:
        self.dropped += 1
        if self.dropped <= 10 or self.dropped % 1000 == 0:
            log.warning("%s reader dropped a delivery (%s): %s %s", self.stream, why, msg.subject, msg.reply)

    async def _restart(self) -> None:
        """Read again from the next sequence we need, on a fresh consumer."""
        try:
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
                return []
        buf = self._buf
        out = [buf.popleft() for _ in range(min(max_msgs, len(buf)))]
        self._drained.set()
        return out

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:
                pass  # the connection may already be closed; the ephemeral consumer expires by itself

    async def stop(self) -> None:
        await self._unsubscribe()

    async def __aenter__(self) -> StreamReader:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def last_seq(js: Any, stream: str) -> int:
    info = await js.stream_info(stream)
    return int(info.state.last_seq)


async def caught_up(reader: StreamReader, last_seen: int) -> bool:
    """True when the consumer has nothing more to deliver beyond `last_seen` right now."""
    info = await reader._sub.consumer_info()
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
