"""The transport floor: the engine's and the projection's I/O with no matching and no SQLite.

Two stand-ins run as subprocesses, like the roles they replace:

  python -m jetbook.bench.floor engine --nats-url URL --events FILE [--max-batch 1000] [--inflight 1]
  python -m jetbook.bench.floor reader --nats-url URL

The null engine reads JB_CMD in order with the engine's own reader
(events/reader.py, batches of up to --max-batch), looks each command's events
up by its Nats-Msg-Id in FILE (the encoded events the core made of that
command when the flow was generated: the same number of messages, of the same
sizes, on the same jb.wal.<market>.<kind> subjects) and publishes them to
JB_EVT as ADR-50 atomic batches exactly as engine/service.py does: at most
1000 messages, one command's events never split, Nats-Expected-Last-Sequence
on the first message, core publishes then a request for the commit. The null
reader follows JB_EVT with the same reader as the projection and drops what it
gets. So the floor is what the pipeline costs when decide, evolve, encode and
SQLite cost nothing: the limit the engine is measured against.

--inflight K > 1 lets K commits be outstanding at once (each batch's expected
sequence is known in advance, so the fence still holds). The engine commits one
batch at a time today; the option is here for when it does not.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import sys
from pathlib import Path
from typing import Any

import msgpack
from nats.nuid import NUID

from engine.core import MAX_EVENTS_PER_COMMAND
from engine.service import batch_frames
from events.reader import StreamReader
from protocol.errors import JetbookError, parse_puback
from protocol.subjects import (
    CMD_STREAM,
    EVT_STREAM,
    HDR_BATCH_COMMIT,
    HDR_BATCH_ID,
    HDR_BATCH_SEQ,
    HDR_EXPECTED_LAST_SEQ,
    HDR_MSG_ID,
)

log = logging.getLogger("jetbook.bench.floor")

Payloads = list[tuple[str, bytes]]


def batch_headers(batch_id: str, i: int, n: int, expected: int) -> dict[str, str]:
    """The headers of message i (1-based) of an atomic batch of n, as engine/service.py sets them."""
    headers = {HDR_BATCH_ID: batch_id, HDR_BATCH_SEQ: str(i)}
    if i == 1:
        headers[HDR_EXPECTED_LAST_SEQ] = str(expected)
    if i == n:
        headers[HDR_BATCH_COMMIT] = "1"
    return headers


class AtomicWriter:
    """Appends batches of payloads to JB_EVT as fenced atomic batches, up to `inflight` commits outstanding."""

    def __init__(self, nc: Any, expected: int = 0, *, inflight: int = 1, timeout: float = 5.0) -> None:
        self.nc = nc
        self.expected = expected  # JB_EVT last seq once every batch sent so far is stored
        self.inflight = max(1, inflight)
        self.timeout = timeout
        self.batches = 0
        self._nuid = NUID()
        self._inbox = ""
        self._sub: Any = None
        self._waiting: collections.deque[tuple[asyncio.Future[Any], int]] = collections.deque()
        self._futures: dict[str, asyncio.Future[Any]] = {}

    async def write(self, payloads: Payloads) -> None:
        n = len(payloads)
        batch_id = self._nuid.next().decode()
        expected, self.expected = self.expected, self.expected + n
        self.batches += 1
        send_raw = getattr(self.nc, "_send_command", None)
        if n > 1 and send_raw is not None:  # as engine/service.py sends them: one buffer of frames
            await send_raw(batch_frames(batch_id, expected, payloads[:-1]))
        else:
            for i, (subject, data) in enumerate(payloads[:-1], 1):
                await self.nc.publish(subject, data, headers=batch_headers(batch_id, i, n, expected))
        subject, data = payloads[-1]
        headers = batch_headers(batch_id, n, n, expected)
        if self.inflight == 1:  # what the engine does: request, wait for the PubAck
            reply = await self.nc.request(subject, data, timeout=self.timeout, headers=headers)
            self._check(reply.data, self.expected)
            return
        if self._sub is None:
            self._inbox = self.nc.new_inbox()
            self._sub = await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)
        token = self._nuid.next().decode()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[token] = future
        # a plain publish keeps the commits in the order of the batches on the wire, as the fence needs
        await self.nc.publish(subject, data, reply=f"{self._inbox}.{token}", headers=headers)
        self._waiting.append((future, self.expected))
        while len(self._waiting) >= self.inflight:
            await self._wait_oldest()

    async def _on_reply(self, msg: Any) -> None:
        future = self._futures.pop(msg.subject.rpartition(".")[2], None)
        if future is not None and not future.done():
            future.set_result(msg.data)

    async def _wait_oldest(self) -> None:
        future, want = self._waiting.popleft()
        self._check(await asyncio.wait_for(future, self.timeout), want)

    @staticmethod
    def _check(raw: bytes, want: int) -> None:
        ack = parse_puback(raw)
        if int(ack["seq"]) != want:
            raise JetbookError(f"batch stored at {ack['seq']}, expected {want}")

    async def drain(self) -> None:
        while self._waiting:
            await self._wait_oldest()


def group(per_command: list[Payloads], limit: int = MAX_EVENTS_PER_COMMAND) -> list[Payloads]:
    """One read batch's events as atomic batches: at most `limit` messages, never splitting a command's events."""
    out: list[Payloads] = []
    pending: Payloads = []
    for events in per_command:
        if len(pending) + len(events) > limit:
            out.append(pending)
            pending = []
        pending.extend(events)
    if pending:
        out.append(pending)
    return out


def write_events_file(path: Path, events_by_msg_id: dict[str, Payloads]) -> None:
    path.write_bytes(msgpack.packb({k: [list(p) for p in v] for k, v in events_by_msg_id.items()}))


async def null_engine(url: str, events_file: Path, stop: asyncio.Event, max_batch: int, inflight: int) -> None:
    from jetbook.wiring import close_quietly, connect

    table: dict[str, list[list[Any]]] = msgpack.unpackb(events_file.read_bytes(), raw=False)
    nc = await connect(url, "jetbook-bench-null-engine")
    writer = AtomicWriter(nc, 0, inflight=inflight)
    commands = 0
    try:
        async with StreamReader(nc.jetstream(), CMD_STREAM, 1) as reader:
            while not stop.is_set():
                batch = await reader.next_batch(max_batch, timeout=0.25)
                if not batch:
                    await writer.drain()  # idle: surface a refused commit now, not at exit
                    continue
                per_command: list[Payloads] = []
                for m in batch:
                    msg_id = (m.headers or {}).get(HDR_MSG_ID, "")
                    events = table.get(msg_id)
                    if events is None:
                        raise JetbookError(f"JB_CMD seq {m.seq}: no events for Nats-Msg-Id {msg_id!r}")
                    per_command.append([(s, d) for s, d in events])
                for payloads in group(per_command):
                    await writer.write(payloads)
                commands += len(batch)
            await writer.drain()
    finally:
        log.info("null engine: %d commands, %d events in %d atomic batches", commands, writer.expected, writer.batches)
        await close_quietly(nc)


async def null_reader(url: str, stop: asyncio.Event) -> None:
    from jetbook.wiring import close_quietly, connect

    nc = await connect(url, "jetbook-bench-null-reader")
    got = 0
    try:
        async with StreamReader(nc.jetstream(), EVT_STREAM, 1) as reader:
            while not stop.is_set():
                got += len(await reader.next_batch(5000, timeout=0.25))
    finally:
        log.info("null reader: %d events", got)
        await close_quietly(nc)


def main(argv: list[str] | None = None) -> int:
    from jetbook.wiring import run_until_signal, setup_logging

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("role", choices=("engine", "reader"))
    ap.add_argument("--nats-url", required=True)
    ap.add_argument("--events", type=Path, help="msgpack file: Nats-Msg-Id -> [[subject, payload], ...]")
    ap.add_argument("--max-batch", type=int, default=1000)
    ap.add_argument("--inflight", type=int, default=1)
    args = ap.parse_args(argv)
    setup_logging("INFO")
    if args.role == "engine":
        if args.events is None:
            ap.error("the null engine needs --events")
        run_until_signal(lambda stop: null_engine(args.nats_url, args.events, stop, args.max_batch, args.inflight))
    else:
        run_until_signal(lambda stop: null_reader(args.nats_url, stop))
    return 0


if __name__ == "__main__":
    sys.exit(main())
