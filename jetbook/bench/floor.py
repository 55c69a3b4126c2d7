"""The transport floor: the engine's and the projection's I/O with no matching and no SQLite.

Two stand-ins run as subprocesses, like the roles they replace:

  python -m jetbook.bench.floor engine --nats-url URL --events FILE [--max-batch 1000] [--inflight 1]
  python -m jetbook.bench.floor reader --nats-url URL

The null engine reads JB_CMD in order with the engine's own reader
(events/stream_readers.py, batches of up to --max-batch), looks each command's
events up by its Nats-Msg-Id in FILE (the encoded events the core made of that
command when the flow was generated: the same number of messages, of the same
sizes, on the same jb.wal.<market>.<kind> subjects) and commits them to JB_EVT
with the engine's own writer (engine/commit.py `CommitPipeline`): ADR-50 atomic
batches of at most 1000 messages, one command's events never split,
Nats-Expected-Last-Sequence on the first message, the first messages as one
buffer of frames then a request for the commit, up to --inflight commits
outstanding and settled in order, drained when JB_CMD goes quiet. The null
reader follows JB_EVT with the same reader as the projection and drops what it
gets. So the floor is what the pipeline costs when decide, evolve, encode and
SQLite cost nothing: the limit the engine is measured against.

--inflight K is the pipeline's commits in flight; the engine's default is
engine.commit.DEFAULT_INFLIGHT, `jetbook bench` gives the floor its own
`floor_inflight`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import msgpack

from engine.commit import CommitPipeline, Payloads
from engine.core import MAX_EVENTS_PER_COMMAND
from events.stream_readers import StreamReader
from protocol.errors import JetbookError
from protocol.subjects import CMD_STREAM, EVT_STREAM, HDR_MSG_ID

log = logging.getLogger("jetbook.bench.floor")


class AtomicWriter(CommitPipeline):
    """The engine's commit pipeline with nothing in front of it: no lease to hold, no state to keep in step."""

    def __init__(self, nc: Any, expected: int = 0, *, inflight: int = 1, timeout: float = 5.0) -> None:
        super().__init__(nc, last_seq=expected, inflight=inflight, timeout=timeout)

    async def write(self, payloads: Payloads) -> None:
        await self.send(payloads)

    @property
    def expected(self) -> int:
        """JB_EVT's last sequence once every batch sent so far is stored."""
        return self.end_seq


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
                await writer.ready()  # as the engine does: a free commit slot before the next read
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
