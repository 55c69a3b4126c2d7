"""The commit pipeline: encoded events into JB_EVT as fenced ADR-50 atomic batches, several in flight.

A *commit* is one atomic batch landing in JB_EVT. The engine (engine/service.py)
hands a batch of encoded events (WAL subject, bytes) to `CommitPipeline.send`;
the benchmark's null engine (jetbook/bench/floor.py) does the same, so the
floor measures this writer and not a copy of it.

- A batch is at most 1000 messages (the server's limit); the caller never
  splits one command's events across two.
- The first message carries `Nats-Expected-Last-Sequence`: if anyone else
  wrote to JB_EVT since we last did, the broker refuses the whole batch
  (`Fenced`), and the caller has lost the log.
- Up to `inflight` commits wait at once. Each batch's fence is the end of the
  one before it, committed yet or not, so the fence holds for all of them: if
  one fails, every later one is refused too. They are settled in order, and
  `last_seq` only moves when a commit is confirmed.
- A batch of one event, with nothing else in flight, is a plain publish with
  the same fence and `Nats-Batch-Commit: 1` (and `Jb-Write-Id` where a batch
  has `Nats-Batch-Id`): one message is atomic by itself, and nats-server stores
  a fenced publish in ~0.3 ms where it commits an atomic batch, however small,
  in ~3 ms (docs/PERFORMANCE.md). A quiet venue's commands are mostly one event
  each, so this is the latency of one order at a time. With a batch in flight
  the write stays a batch: the server applies a batch's commit after the
  messages that follow it on the connection may have been checked, and a
  plain publish could then meet a fence that has not moved yet.
- A commit that times out is ambiguous: the stream tail says whether the batch
  landed (`_landed`) before it is sent again, one batch at a time, so a
  command's events are never written twice. Retries back off (50 ms doubling
  to 2 s) and give way to a stop request (`Stopping`).
- Before every send the caller's `hold` hook runs: the engine's checks that
  its lease is still good (on its monotonic clock), so that nothing is
  published once another engine may hold the lease.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from nats.nuid import NUID

from events.stream_readers import last_seq as stream_last_seq
from protocol.errors import TRANSIENT, Fenced, JetbookError, parse_puback
from protocol.subjects import (
    EVT_STREAM,
    HDR_BATCH_COMMIT,
    HDR_BATCH_ID,
    HDR_BATCH_SEQ,
    HDR_EXPECTED_LAST_SEQ,
    HDR_WRITE_ID,
)

log = logging.getLogger("jetbook.engine")

Payloads = list[tuple[str, bytes]]  # encoded events: (WAL subject, bytes), in log order

BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0
# Atomic batches whose commit may be in flight at once. Each one's expected last sequence is
# the previous one's end, so the broker's fence holds for all of them: if one fails, every later
# one is refused too, and the pipeline settles them in order (see CommitPipeline._unwind).
# One, by measurement (docs/PERFORMANCE.md "Latency stages (issue 14)"): nats-server commits a
# stream's atomic batches one after another at a fixed cost each (~2 ms idle, more under load),
# so a second batch in flight only waits on the server instead of in the engine, and the commands
# that arrive meanwhile make more, smaller batches, each paying that cost. With one in flight they
# wait in the engine and join the next batch; deciding still overlaps the commit.
DEFAULT_INFLIGHT = 1


class Stopping(JetbookError):
    """Asked to stop while a batch could not be committed; the next start resumes from the log."""


def batch_frames(batch_id: str, expected: int, payloads: Payloads) -> bytes:
    """HPUB frames for the first messages of an atomic batch (everything but the commit), in one buffer.

    The same bytes nats-py's publish would write for each message with these
    headers. The server checks `Nats-Expected-Last-Sequence` when the batch
    commits (tested), so these frames may even precede the previous batch's
    commit on the wire; the commits themselves go out in order.
    """
    head = f"NATS/1.0\r\n{HDR_BATCH_ID}: {batch_id}\r\n{HDR_BATCH_SEQ}: ".encode()
    frames = []
    for i, (subject, data) in enumerate(payloads, 1):
        fence = f"{HDR_EXPECTED_LAST_SEQ}: {expected}\r\n" if i == 1 else ""
        hdr = head + f"{i}\r\n{fence}\r\n".encode()
        frames.append(b"HPUB %s %d %d\r\n%s%s\r\n" % (subject.encode(), len(hdr), len(hdr) + len(data), hdr, data))
    return b"".join(frames)


@dataclass(slots=True)
class _Batch:
    """An atomic batch whose commit request is out: its fence, its messages, and the pending reply."""

    batch_id: str
    expected: int  # Nats-Expected-Last-Sequence of its first message
    payloads: Payloads
    reply: asyncio.Task[Any]


async def _no_hold() -> None:
    return None


def _timed(on_commit: Callable[[float], None], sent: float, reply: asyncio.Future[Any]) -> None:
    """When a commit's reply arrives: its time, if it is an answer (a timeout or a cancel is not a commit time)."""
    if not reply.cancelled() and reply.exception() is None:
        on_commit(time.monotonic() - sent)


class CommitPipeline:
    """Appends batches of encoded events to JB_EVT, each one commit, up to `inflight` commits outstanding.

    `last_seq` is the JB_EVT sequence up to which the log is known to hold
    what was sent (and `last_payload` the bytes stored there); set it with
    `reset` when the caller's state is the log up to a sequence (a recovery,
    a takeover). A fence refusal (`Fenced`), an ack at an unexpected sequence
    (`JetbookError`), the hook's own error and `Stopping` propagate from
    `send` and `drain`; batches still in flight are then forgotten
    (`abandon`): the log decides what landed.
    """

    def __init__(
        self,
        nc: Any,
        *,
        js: Any = None,
        last_seq: int = 0,
        inflight: int = DEFAULT_INFLIGHT,
        timeout: float = 5.0,
        hold: Callable[[], Awaitable[None]] = _no_hold,
        stop: asyncio.Event | None = None,
        stream: str = EVT_STREAM,
        on_commit: Callable[[float], None] | None = None,
    ) -> None:
        self.nc = nc
        self.on_commit = on_commit  # called with each atomic batch's send-to-PubAck seconds (engine/metrics.py)
        self.stream = stream  # the event stream the batches land in (an application's own; JB_EVT by default)
        self.js = js if js is not None else nc.jetstream()
        self.inflight = max(1, inflight)  # atomic batches committing at once
        self.timeout = timeout  # seconds to wait for a commit's PubAck before it is ambiguous
        self.hold = hold  # awaited before every send: returns only while the caller may write
        self.stop = stop if stop is not None else asyncio.Event()  # set: retries give up with Stopping
        self.last_seq = last_seq  # JB_EVT sequence of the newest event known to be stored
        self.last_payload = b""  # the payload at last_seq, when known (b"" otherwise)
        self.events = 0  # events committed (confirmed)
        self.batches = 0  # atomic batches sent (a re-send counts again)
        self.retries = 0  # back-offs: ambiguous commits, an unreadable tail, the caller's `back_off`
        self._inflight: collections.deque[_Batch] = collections.deque()
        self._nuid = NUID()

    @property
    def in_flight(self) -> int:
        """Batches whose commit is not settled yet."""
        return len(self._inflight)

    @property
    def end_seq(self) -> int:
        """Where JB_EVT ends once every batch in flight has landed."""
        last = self._inflight[-1] if self._inflight else None
        return last.expected + len(last.payloads) if last is not None else self.last_seq

    def reset(self, last_seq: int, last_payload: bytes = b"") -> None:
        """The log is known to end at `last_seq` (holding `last_payload` there); nothing may be in flight."""
        self.abandon()
        self.last_seq = last_seq
        self.last_payload = last_payload

    async def send(self, payloads: Payloads) -> None:
        """Start committing encoded events (WAL subject, bytes) to JB_EVT as one atomic batch.

        At most `inflight` commits wait at once.

        The batch's fence is the end of the one before it, whether that one is
        committed yet or not. `drain` waits for all of them; `last_seq` only
        moves when a commit is confirmed.
        """
        while len(self._inflight) >= self.inflight:
            await self._settle_oldest()
        await self.hold()
        expected = self.end_seq
        batch_id = self._nuid.next().decode()
        reply = await self._start_batch(batch_id, expected, payloads)
        self._inflight.append(_Batch(batch_id, expected, payloads, reply))

    async def ready(self) -> None:
        """Wait until a batch can be sent without waiting: fewer than `inflight` commits outstanding.

        A caller that waits here *before* it reads and decides its next batch,
        rather than in `send` after deciding it, lets the commands that arrive
        during the commit join that batch, and sends it the moment it is
        decided: a command then waits for at most the commit in progress, not
        for that one and then the one queued behind it.
        """
        while len(self._inflight) >= self.inflight:
            await self._settle_oldest()

    async def drain(self) -> None:
        """Wait until every batch in flight is committed (or the failure that stops us is known)."""
        while self._inflight:
            await self._settle_oldest()

    def abandon(self) -> None:
        """Forget batches in flight (stopping, or stepping down): the log decides what landed."""
        for b in self._inflight:
            b.reply.cancel()
        self._inflight.clear()

    async def back_off(self, delay: float) -> float:
        """Wait `delay` unless asked to stop (then `Stopping`); the next delay."""
        self.retries += 1
        try:
            await asyncio.wait_for(self.stop.wait(), delay)
        except TimeoutError:
            return min(delay * 2, BACKOFF_MAX_S)
        raise Stopping("stop requested while retrying")

    def _confirmed(self, expected: int, payloads: Payloads) -> None:
        self.last_seq = expected + len(payloads)
        self.events += len(payloads)
        self.last_payload = payloads[-1][1]

    async def _settle_oldest(self) -> None:
        b = self._inflight[0]
        try:
            ack = parse_puback((await b.reply).data)
        except TRANSIENT as err:
            log.warning("commit of batch %s is ambiguous (%s); reading the stream tail", b.batch_id, err)
            await self._unwind()
            return
        except BaseException:
            self.abandon()
            raise
        if int(ack["seq"]) != b.expected + len(b.payloads):
            self.abandon()
            raise JetbookError(f"batch stored at {ack['seq']}, expected {b.expected + len(b.payloads)}")
        self._inflight.popleft()
        self._confirmed(b.expected, b.payloads)

    async def _unwind(self) -> None:
        """The oldest batch in flight has an ambiguous commit; the ones after it were fenced on its end.

        Wait for every later reply, then learn from the stream tail which
        prefix of the batches landed (a batch can only land after the one
        before it), and commit the rest again, one by one, each with the same
        ambiguity check. Never writes a command's events twice.
        """
        batches = list(self._inflight)
        self._inflight.clear()
        await asyncio.gather(*(b.reply for b in batches[1:]), return_exceptions=True)
        for i, b in enumerate(batches):
            if not await self._landed(b.batch_id, b.expected, len(b.payloads)):
                for rest in batches[i:]:
                    await self._commit_serial(rest.payloads)
                return
            self._confirmed(b.expected, b.payloads)

    async def _commit_serial(self, payloads: Payloads) -> None:
        """Append one batch and wait for its commit, retrying ambiguous commits (nothing else in flight)."""
        expected = self.last_seq
        delay = BACKOFF_FIRST_S
        while True:
            await self.hold()
            batch_id = self._nuid.next().decode()
            try:
                ack = parse_puback((await (await self._start_batch(batch_id, expected, payloads))).data)
            except TRANSIENT as err:
                log.warning("commit of batch %s is ambiguous (%s); reading the stream tail", batch_id, err)
                if await self._landed(batch_id, expected, len(payloads)):
                    break
                delay = await self.back_off(delay)
                continue
            if int(ack["seq"]) != expected + len(payloads):
                raise JetbookError(f"batch stored at {ack['seq']}, expected {expected + len(payloads)}")
            break
        self._confirmed(expected, payloads)

    async def _start_batch(self, batch_id: str, expected: int, payloads: Payloads) -> asyncio.Task[Any]:
        """Publish a batch's messages; the commit's reply (the PubAck) arrives on the returned task.

        All but the commit message go out as one buffer of HPUB frames: nats-py's publish costs
        about 10 µs of Python per message (a header dict encoded, three buffer appends, a flush
        check), which was a quarter of the engine's time. The commit goes through `request`,
        behind them on the same connection, so the server sees the same frames in the same order.
        """
        n = len(payloads)
        if not n:
            raise AssertionError("empty batch")
        self.batches += 1
        send_raw = getattr(self.nc, "_send_command", None)  # nats-py's write buffer; fall back if it moves
        if n > 1 and send_raw is not None:
            await send_raw(batch_frames(batch_id, expected, payloads[:-1]))
        else:
            for i, (subject, data) in enumerate(payloads[:-1], 1):
                headers = {HDR_BATCH_ID: batch_id, HDR_BATCH_SEQ: str(i)}
                if i == 1:
                    headers[HDR_EXPECTED_LAST_SEQ] = str(expected)
                await self.nc.publish(subject, data, headers=headers)
        subject, data = payloads[-1]
        if n == 1 and not self._inflight:
            headers = {HDR_WRITE_ID: batch_id, HDR_BATCH_COMMIT: "1", HDR_EXPECTED_LAST_SEQ: str(expected)}
        else:
            headers = {HDR_BATCH_ID: batch_id, HDR_BATCH_SEQ: str(n), HDR_BATCH_COMMIT: "1"}
            if n == 1:
                headers[HDR_EXPECTED_LAST_SEQ] = str(expected)
        reply: asyncio.Task[Any] = asyncio.ensure_future(
            self.nc.request(subject, data, timeout=self.timeout, headers=headers)
        )
        if self.on_commit is not None:
            reply.add_done_callback(partial(_timed, self.on_commit, time.monotonic()))
        return reply

    async def _landed(self, batch_id: str, expected: int, n: int) -> bool:
        """After an ambiguous commit: True if our batch is in JB_EVT, False if nothing was written after `expected`.

        The batch landed iff the log reaches its end and the message there is
        ours (batches after it may have landed too). If the server applies the
        lost commit only after we read an unchanged tail, our retry carries the
        same expected sequence and is refused by the fence: the engine steps
        down and rebuilds from the log, which holds the batch once. A slow
        commit costs a resync, never a duplicate.
        """
        delay = BACKOFF_FIRST_S
        while True:
            try:
                tail = await stream_last_seq(self.js, self.stream)
                if tail == expected:
                    return False
                if tail >= expected + n:
                    msg = await self.js.get_msg(self.stream, expected + n)
                    headers = msg.headers or {}
                    if batch_id in (headers.get(HDR_BATCH_ID), headers.get(HDR_WRITE_ID)):
                        return True
                raise Fenced(400, 10071, f"{self.stream} moved from {expected} to {tail} under another writer")
            except TRANSIENT as err:
                log.warning("stream tail not readable yet (%s); retrying", err)
                delay = await self.back_off(delay)
