"""A trader's own events (JB_ACCT) and the public tape (JB_TAPE), from a position and live.

nats-py's ordered consumer creates its consumer with `$JS.API.CONSUMER.CREATE.
<stream>` and the filter only in the request body, and no permission can look
into a body: a user allowed that subject could read every account's events.
So this reader names its consumer and sends the filter in the subject too,
`$JS.API.CONSUMER.CREATE.JB_ACCT.<name>.jb.acct.<account>.>`, a form the
server checks against the body's filter and permissions can bind to one
account. Otherwise it behaves like an ordered consumer: ephemeral (memory, one
replica, removed when idle), no acks, flow control, heartbeats; a missed
delivery, a foreign one or silence makes it create a fresh consumer at the
next sequence it needs, so it never skips or repeats a message.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Final

import msgpack
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from events.model import Event, decode
from events.stream_readers import RawMsg, harden
from protocol.errors import TRANSIENT
from protocol.subjects import ACCT_STREAM, HDR_EVT_SEQ, TAPE_STREAM, acct_filter, tape_filter

log = logging.getLogger("jetbook.private")

HDR_LAST_CONSUMER: Final = "Nats-Last-Consumer"  # on a heartbeat: the last consumer sequence sent
HDR_STALLED: Final = "Nats-Consumer-Stalled"  # on a heartbeat: the flow-control reply the server still waits for


class FilteredReader:
    """Messages of `stream` matching `filter_subject`, from `start_seq` (a sequence of that stream), in order."""

    def __init__(self, nc: Any, stream: str, filter_subject: str, start_seq: int = 1, heartbeat: float = 2.0) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.stream = stream
        self.filter_subject = filter_subject
        self.heartbeat = heartbeat
        self.restarts = 0
        self.dropped = 0
        self._next = max(start_seq, 1)  # the next stream sequence we may accept
        self._dseq = 1  # the next consumer sequence we expect from the current consumer
        self._name = ""
        self._sub: Any = None
        self._buf: deque[RawMsg] = deque()
        self._arrived = asyncio.Event()
        self._heard = 0.0  # loop time of the last delivery or heartbeat
        self._pending = -1  # messages left after the last one delivered; -1: unknown
        self._restart_due = False

    async def start(self) -> FilteredReader:
        harden(self.nc)  # only the fan-out writes JB_ACCT, but a reader never trusts a stored subject's bytes
        await self._create()
        return self

    async def _create(self) -> None:
        await self._unsubscribe()
        self._name = f"jb_{secrets.token_hex(8)}"
        self._dseq = 1
        self._restart_due = False
        inbox = self.nc.new_inbox()  # under the connection's inbox prefix, which permissions can make per user
        self._sub = await self.nc.subscribe(inbox, cb=self._on_msg)
        config = ConsumerConfig(
            name=self._name,  # with filter_subject: nats-py asks CONSUMER.CREATE.<stream>.<name>.<filter>
            filter_subject=self.filter_subject,
            deliver_subject=inbox,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self._next,
            ack_policy=AckPolicy.NONE,
            max_deliver=1,
            flow_control=True,
            idle_heartbeat=self.heartbeat,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=max(10.0, self.heartbeat * 5),
        )
        info = await self.js.add_consumer(self.stream, config)
        if not self._buf:
            self._pending = int(info.num_pending or 0)
        self._heard = asyncio.get_running_loop().time()

    async def _on_msg(self, msg: Any) -> None:
        self._heard = asyncio.get_running_loop().time()
        reply = msg.reply or ""
        if not reply.startswith("$JS.ACK."):
            await self._on_status(msg)
            return
        t = reply.split(".")
        off = 0 if len(t) == 9 else 2 if len(t) in (11, 12) else -1
        if off < 0 or t[2 + off] != self.stream or t[3 + off] != self._name:
            self._drop(msg, "foreign")
            return
        seq, dseq = int(t[5 + off]), int(t[6 + off])
        if dseq != self._dseq:
            self._drop(msg, f"consumer sequence {dseq}, expected {self._dseq}")
            self._restart_due = True
            self._arrived.set()
            return
        self._dseq += 1
        if seq < self._next:
            self._drop(msg, "repeated")
            return
        self._next = seq + 1
        self._pending = int(t[8 + off])
        self._buf.append(RawMsg(seq, int(t[7 + off]), msg.subject, msg.data, self._pending, msg.headers))
        self._arrived.set()

    async def _on_status(self, msg: Any) -> None:
        headers = msg.headers or {}
        answer = msg.reply or headers.get(HDR_STALLED, "")  # a flow-control request, or a stalled one
        if answer:
            await self.nc.publish(answer)
        last = headers.get(HDR_LAST_CONSUMER)
        if last is not None and int(last) != self._dseq - 1 and msg.subject == self._inbox():
            self._restart_due = True  # the server sent more than we got: missed at the tail
            self._arrived.set()

    def _inbox(self) -> str:
        return str(self._sub.subject) if self._sub is not None else ""

    def _drop(self, msg: Any, why: str) -> None:
        self.dropped += 1
        if self.dropped <= 10:
            log.warning("%s reader dropped a delivery (%s): %s %s", self.stream, why, msg.subject, msg.reply)

    @property
    def at_end(self) -> bool:
        """Nothing buffered and nothing left in the stream for this filter (as of the last delivery)."""
        return not self._buf and self._pending == 0

    async def next_batch(self, max_msgs: int, timeout: float) -> list[RawMsg]:
        """Up to max_msgs messages, waiting at most `timeout` seconds for the first one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._buf:
            if self._restart_due or loop.time() - self._heard > self.heartbeat * 3:
                await self._restart()
            left = deadline - loop.time()
            if left <= 0:
                return []
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), min(left, self.heartbeat))
            except TimeoutError:
                pass
        return [self._buf.popleft() for _ in range(min(max_msgs, len(self._buf)))]

    async def _restart(self) -> None:
        self.restarts += 1
        log.info("%s reader: reading %s again from %d", self.stream, self.filter_subject, self._next)
        try:
            await self._create()
        except TRANSIENT as err:  # reconnecting: try again at the next call
            log.warning("%s reader cannot create its consumer yet (%s)", self.stream, err)
            self._heard = asyncio.get_running_loop().time()
            self._restart_due = True

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:
                pass  # the connection may be closed; the consumer goes away when idle

    async def stop(self) -> None:
        await self._unsubscribe()

    async def __aenter__(self) -> FilteredReader:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _read(reader: FilteredReader, follow: bool) -> AsyncIterator[RawMsg]:
    async with reader:
        while True:
            if not follow and reader.at_end:
                return
            for m in await reader.next_batch(1000, timeout=0.5):
                yield m


async def account_events(
    nc: Any, account_id: str, *, market_id: str | None = None, from_seq: int = 1, follow: bool = False,
    heartbeat: float = 2.0,
) -> AsyncIterator[tuple[int, int, Event]]:  # fmt: skip
    """(JB_ACCT sequence, JB_EVT sequence, event) for one account; without `follow`, up to the end as it is now.

    Resume from a position by passing the last JB_ACCT sequence seen + 1 as `from_seq`.
    """
    reader = FilteredReader(nc, ACCT_STREAM, acct_filter(account_id, market_id), from_seq, heartbeat)
    async for m in _read(reader, follow):
        yield m.seq, int((m.headers or {}).get(HDR_EVT_SEQ, 0)), decode(m.data)


async def tape(
    nc: Any, *, market_id: str | None = None, from_seq: int = 1, follow: bool = False, heartbeat: float = 2.0
) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """(JB_TAPE sequence, trade) for one market or all: the public trades, without accounts or order ids."""
    reader = FilteredReader(nc, TAPE_STREAM, tape_filter(market_id), from_seq, heartbeat)
    async for m in _read(reader, follow):
        yield m.seq, msgpack.unpackb(m.data, raw=False)
