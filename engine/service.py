"""The engine shell: JB_CMD in, JB_EVT out, the pure core in between.

Start-up folds `evolve` over all of JB_EVT; the newest event names the last
command already applied (`cmd_seq`), and reading JB_CMD resumes right after
it. Each batch of commands is decided, and its events are published as ADR-50
atomic batches of at most 1000 messages, never splitting one command's events.
The first message carries `Nats-Expected-Last-Sequence`: if anyone else wrote
to JB_EVT since we last did, the broker refuses the whole batch and this
engine stops (`Fenced`) instead of forking the log.

A commit that times out is ambiguous: the engine reads the stream tail to learn
whether its batch landed before it tries again, so a command's events are never
written twice. Retries back off (50 ms doubling to 2 s) and give way to a stop
request: the engine then exits with its state ahead of the log, which is
harmless, because the next start rebuilds the state from the log.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import nats.errors
from nats.nuid import NUID

from commands.subjects import (
    CMD_STREAM,
    EVT_STREAM,
    HDR_BATCH_COMMIT,
    HDR_BATCH_ID,
    HDR_BATCH_SEQ,
    HDR_EXPECTED_LAST_SEQ,
    wal_subject,
)
from engine.core import MAX_EVENTS_PER_COMMAND, Engine, state_hash
from events.model import Event, decode, encode
from events.reader import StreamReader, last_seq
from events.streams import ensure_streams
from jetbook.errors import CorruptLog, Fenced, JetbookError, parse_puback

log = logging.getLogger("jetbook.engine")

BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0


class Stopping(JetbookError):
    """Asked to stop while a batch could not be committed; the next start resumes from the log."""


_TRANSIENT = (asyncio.TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError,
              nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError)  # fmt: skip


class EngineService:
    def __init__(self, nc: Any, *, max_batch: int = 1000, commit_timeout: float = 5.0, replicas: int = 1) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.engine = Engine()
        self.max_batch = max_batch
        self.commit_timeout = commit_timeout
        self.replicas = replicas
        self.last_evt_seq = 0  # JB_EVT sequence of the newest event we know is stored
        self.commands_done = 0
        self.events_written = 0
        self.commit_retries = 0
        self.stop = asyncio.Event()
        self.cmd_reader: StreamReader | None = None
        self._nuid = NUID()

    async def recover(self) -> None:
        """Fold every event in JB_EVT into a fresh state."""
        target = await last_seq(self.js, EVT_STREAM)
        self.engine = Engine()
        if target:
            async with StreamReader(self.js, EVT_STREAM, 1) as reader:
                seq = 0
                while seq < target:
                    for m in await reader.next_batch(10_000, timeout=30):
                        try:
                            event = decode(m.data)
                        except Exception as err:
                            raise CorruptLog(m.seq, m.subject, err) from err
                        self.engine.apply(event)
                        seq = m.seq
        self.last_evt_seq = target
        log.info(
            "recovered %d events; resuming at command %d; state %s",
            target, self.engine.state.last_cmd_seq + 1, state_hash(self.engine.state)[:16],
        )  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        self.stop = stop
        await ensure_streams(self.js, self.replicas)
        await self.recover()
        async with StreamReader(self.js, CMD_STREAM, self.engine.state.last_cmd_seq + 1) as reader:
            self.cmd_reader = reader
            while not stop.is_set():
                batch = await reader.next_batch(self.max_batch, timeout=0.25)
                if batch:
                    try:
                        await self.process(batch)
                    except Stopping:
                        log.warning("stopped with an uncommitted batch; the next start resumes from the log")
                        return

    async def _back_off(self, delay: float) -> float:
        """Wait `delay` unless asked to stop; the next delay."""
        self.commit_retries += 1
        try:
            await asyncio.wait_for(self.stop.wait(), delay)
        except TimeoutError:
            return min(delay * 2, BACKOFF_MAX_S)
        raise Stopping("stop requested while retrying a commit")

    async def process(self, batch: list[Any]) -> None:
        pending: list[Event] = []
        for m in batch:
            events = self.engine.handle(m.seq, m.ts, m.subject, m.data)
            if len(pending) + len(events) > MAX_EVENTS_PER_COMMAND:
                await self.publish(pending)
                pending = []
            pending.extend(events)
            self.commands_done += 1
        if pending:
            await self.publish(pending)

    async def publish(self, events: list[Event]) -> None:
        """Append events to JB_EVT as one atomic batch, exactly once."""
        payloads = [(wal_subject(e.market_id, e.TYPE), encode(e)) for e in events]
        expected = self.last_evt_seq
        delay = BACKOFF_FIRST_S
        while True:
            batch_id = self._nuid.next().decode()
            try:
                ack = await self._send_batch(batch_id, expected, payloads)
            except _TRANSIENT as err:
                log.warning("commit of batch %s is ambiguous (%s); reading the stream tail", batch_id, err)
                if await self._landed(batch_id, expected, len(payloads)):
                    break
                delay = await self._back_off(delay)
                continue
            if int(ack["seq"]) != expected + len(payloads):
                raise JetbookError(f"batch stored at {ack['seq']}, expected {expected + len(payloads)}")
            break
        self.last_evt_seq = expected + len(payloads)
        self.events_written += len(payloads)

    async def _send_batch(self, batch_id: str, expected: int, payloads: list[tuple[str, bytes]]) -> dict[str, Any]:
        n = len(payloads)
        for i, (subject, data) in enumerate(payloads, 1):
            headers = {HDR_BATCH_ID: batch_id, HDR_BATCH_SEQ: str(i)}
            if i == 1:
                headers[HDR_EXPECTED_LAST_SEQ] = str(expected)
            if i < n:
                await self.nc.publish(subject, data, headers=headers)
            else:
                headers[HDR_BATCH_COMMIT] = "1"
                reply = await self.nc.request(subject, data, timeout=self.commit_timeout, headers=headers)
                return parse_puback(reply.data)
        raise AssertionError("empty batch")

    async def _landed(self, batch_id: str, expected: int, n: int) -> bool:
        """After an ambiguous commit: True if our batch is in JB_EVT, False if nothing was written.

        If the server applies the lost commit only after we read an unchanged
        tail, our retry carries the same expected sequence and is refused by the
        fence: the engine stops and restarts from the log, which holds the batch
        once. A slow commit costs a restart, never a duplicate.
        """
        delay = BACKOFF_FIRST_S
        while True:
            try:
                tail = await last_seq(self.js, EVT_STREAM)
                if tail == expected:
                    return False
                if tail == expected + n:
                    msg = await self.js.get_msg(EVT_STREAM, tail)
                    if (msg.headers or {}).get(HDR_BATCH_ID) == batch_id:
                        return True
                raise Fenced(400, 10071, f"JB_EVT moved from {expected} to {tail} under another writer")
            except _TRANSIENT as err:
                log.warning("stream tail not readable yet (%s); retrying", err)
                delay = await self._back_off(delay)
