"""The determinism check: re-decide every command of JB_CMD through a fresh core and compare with JB_EVT.

JB_EVT must equal, byte for byte and in order, the events a fresh
`engine.core.Engine` makes of JB_CMD (with the same checkpoint interval, since
checkpoint events are part of the log). Both streams are read in bulk
(events.stream_readers.BulkReader) and compared one event at a time, so the first
divergence is reported exactly where it is, with both payloads.

With `from_seq` = N, the engine's state is first folded from JB_EVT up to just
before the first event of command N (checking every checkpoint on the way, so
a fold that disagrees with the log is reported too), and re-deciding starts at
command N.

Where the two may legitimately differ: at the end. The tails are read once, at
the start, JB_EVT's first: a command whose events are not in JB_EVT yet, when
nothing after it is either, has simply not been decided (the engine is behind
or stopped); those commands are counted as pending, not reported as a
divergence. Anything else is: an event that differs, an event JB_EVT has that
re-deciding does not produce (past the last command, say), or a command's
events that stop half-way.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from engine.exchange import APP as EXCHANGE
from engine.exchange import shard_app
from events.logged import decode_logged
from events.stream_readers import Chunk, read_range, subject_text
from events.stream_readers import last_seq as stream_last_seq
from framework.app import App
from protocol.errors import CorruptLog

# Re-deciding a command takes ~20 µs and both streams arrive on one connection, whose read loop parses
# 32 KiB a turn: a turn every 16 commands keeps reading well ahead of re-deciding.
YIELD_EVERY = 16


@dataclass(frozen=True, slots=True)
class Divergence:
    kind: str  # "differs" | "extra" (only in JB_EVT) | "missing" (only re-decided) | "checkpoint" (while folding)
    evt_seq: int  # the JB_EVT sequence where it shows (for "missing": where the event should be)
    cmd_seq: int | None  # the command being re-decided, if any
    logged: bytes | None  # JB_EVT's payload
    redecided: bytes | None  # what re-deciding gives
    detail: str = ""


@dataclass(frozen=True, slots=True)
class VerifyResult:
    divergence: Divergence | None
    events: int  # events compared (and digested)
    commands: int  # commands re-decided
    first_seq: int  # JB_EVT sequence of the first event compared
    folded: int  # events folded before comparing (with from_seq)
    pending: int  # commands in JB_CMD not decided yet (no events in JB_EVT, nor any after them)
    digest: str  # sha256 over the compared events, each as a 4-byte big-endian length and its bytes
    checkpoint_every: int
    evt_stream: str = "JB_EVT"  # the application's streams (framework/app.py), for `describe`
    cmd_stream: str = "JB_CMD"

    @property
    def identical(self) -> bool:
        return self.divergence is None


class _Cursor:
    """One message at a time over a stream of chunks."""

    def __init__(self, chunks: AsyncIterator[Chunk]) -> None:
        self._chunks = chunks
        self._chunk: Chunk | None = None
        self._i = 0

    async def peek(self) -> tuple[int, bytes] | None:
        while self._chunk is None or self._i >= len(self._chunk):
            try:
                self._chunk = await anext(self._chunks)
            except StopAsyncIteration:
                return None
            self._i = 0
        return self._chunk.seqs[self._i], self._chunk.data[self._i]

    async def take(self) -> tuple[int, bytes] | None:
        item = await self.peek()
        if item is not None:
            self._i += 1
        return item

    async def close(self) -> None:
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def verify(
    js: Any,
    from_seq: int = 1,
    *,
    checkpoint_every: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    app: App = EXCHANGE,
) -> VerifyResult:
    """Re-decide JB_CMD from command `from_seq` and compare with JB_EVT; see the module docstring.

    `app` names the streams and the decider (framework/app.py); `checkpoint_every` defaults to the decider's.
    """
    decider = app.decider
    evt_stream, cmd_stream = app.streams.evt, app.streams.cmd
    if checkpoint_every is None:
        checkpoint_every = decider.checkpoint_every
    evt_tail = await stream_last_seq(js, evt_stream)  # first: every event there is of a command in JB_CMD now
    cmd_tail = await stream_last_seq(js, cmd_stream)
    from_seq = max(from_seq, 1)
    engine = decider.core(checkpoint_every=checkpoint_every)
    encode = decider.encode
    events = _Cursor(aiter(read_range(js, evt_stream, 1, evt_tail)))
    commands = _commands(js, cmd_stream, from_seq, cmd_tail)
    digest = hashlib.sha256()
    every = checkpoint_every
    compared = folded = decided = 0
    first_seq = 0

    def result(divergence: Divergence | None, pending: int = 0) -> VerifyResult:
        return VerifyResult(
            divergence, compared, decided, first_seq, folded, pending, digest.hexdigest(), every,
            evt_stream, cmd_stream,
        )  # fmt: skip

    try:
        # Fold the log up to the first event of command from_seq.
        while from_seq > 1 and (item := await events.peek()) is not None:
            seq, data = item
            # A cursor keeps no subjects.
            event = decode_logged(seq, "", data, decode=decider.decode, unknown=decider.unknown_event)
            if event.cmd_seq >= from_seq:
                break
            await events.take()
            try:
                engine.apply(event, verify=True)
            except decider.diverged as err:
                return result(Divergence("checkpoint", seq, event.cmd_seq, data, None, str(err)))
            except Exception as err:  # a fill of an order never accepted, ...
                raise CorruptLog(seq, "", f"does not apply ({type(err).__name__}: {err})") from err
            folded += 1
        async for cmd_seq, ts, subject, body in commands:
            produced = engine.handle(cmd_seq, ts, subject, body)
            decided += 1
            if decided % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a turn for the connection's read loop (events.stream_readers.BulkReader)
            for i, event in enumerate(produced):
                expected = encode(event)
                item = await events.take()
                if item is None:
                    if i == 0:  # JB_EVT ends before this command: it and all after it are not decided yet
                        return result(None, pending=cmd_tail - cmd_seq + 1)
                    return result(Divergence("missing", evt_tail + 1, cmd_seq, None, expected,
                                             f"{evt_stream} ends in the middle of this command's events"))  # fmt: skip
                seq, data = item
                if not first_seq:
                    first_seq = seq
                if data != expected:
                    return result(Divergence("differs", seq, cmd_seq, data, expected))
                digest.update(len(data).to_bytes(4, "big"))
                digest.update(data)
                compared += 1
            if on_progress is not None and decided % 10_000 == 0:
                on_progress(compared + folded, evt_tail)
        item = await events.take()
        if item is not None:
            seq, data = item
            return result(Divergence("extra", seq, None, data, None, f"{evt_stream} has events no command produces"))
        return result(None)
    finally:
        await events.close()
        await commands.aclose()


async def verify_shards(
    js: Any,
    shards: int,
    *,
    only: int | None = None,
    from_seq: int = 1,
    checkpoint_every: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[VerifyResult]:
    """`verify` of each shard's log on its own: JB_CMD_k re-decided by shard k's core against JB_EVT_k.

    Each shard's engine decides from its own stream alone, so each log is proved alone; the shards share
    nothing a comparison across them could catch. `only`: that shard (and `from_seq` is its JB_CMD_k's).
    """
    if from_seq > 1 and shards > 1 and only is None:
        raise ValueError("--from-seq is one command stream's sequence: with shards, name the shard (--shard)")
    which = range(shards) if only is None else [only]
    return [
        await verify(js, from_seq, checkpoint_every=checkpoint_every, on_progress=on_progress,
                     app=shard_app(k, shards))
        for k in which
    ]  # fmt: skip


async def _commands(js: Any, stream: str, start: int, end: int) -> AsyncGenerator[tuple[int, int, str, bytes], None]:
    async for chunk in read_range(js, stream, start, end):
        for seq, ts, subject, data in zip(chunk.seqs, chunk.ts, chunk.subjects, chunk.data, strict=True):
            yield seq, ts, subject_text(subject), data


def readable(payload: bytes | None) -> str:
    """An event payload as one line of JSON (bytes that are not msgpack as hex)."""
    if payload is None:
        return "(nothing)"
    try:
        body = msgpack.unpackb(payload, raw=False)
    except Exception:
        return f"(not msgpack) {payload.hex()}"
    return json.dumps(body, default=lambda v: v.hex() if isinstance(v, bytes) else repr(v))


def describe_shards(results: list[VerifyResult]) -> list[str]:
    """What `jetbook replay verify` prints for a sharded venue: each shard's verdict under its stream's name."""
    lines: list[str] = []
    for result in results:
        verdict, *rest = describe(result)
        lines += [f"{result.evt_stream}: {verdict}", *(f"  {line}" for line in rest)]
    same = sum(r.identical for r in results)
    lines.append(f"{same} of {len(results)} shards identical")
    return lines


def describe(result: VerifyResult) -> list[str]:
    """What `jetbook replay verify` prints."""
    d = result.divergence
    evt, cmd = result.evt_stream, result.cmd_stream
    if d is None:
        where = f"from {evt} seq {result.first_seq}" if result.folded else "from the start"
        lines = [
            "identical",
            f"events: {result.events} ({where}; {result.commands} commands re-decided,"
            f" checkpoint every {result.checkpoint_every})",
            f"sha256: {result.digest}",
        ]
        if result.folded:
            lines.append(f"folded first: {result.folded} events (checkpoints among them verified)")
        if result.pending:
            lines.append(f"pending: {result.pending} commands at the end of {cmd} have no events yet (not decided)")
        return lines
    title = {
        "differs": f"{evt} differs from re-deciding",
        "extra": f"{evt} has an event that re-deciding does not produce",
        "missing": f"re-deciding produces an event that {evt} lacks",
        "checkpoint": f"a checkpoint in {evt} disagrees with the state folded from the events before it",
    }[d.kind]
    lines = [f"DIVERGED at {evt} seq {d.evt_seq}: {title}"]
    if d.cmd_seq is not None:
        lines.append(f"  command:     {cmd} seq {d.cmd_seq}")
    if d.detail:
        lines.append(f"  detail:      {d.detail}")
    lines.append(f"  {evt + ':':<12} {readable(d.logged)}")
    if d.kind != "checkpoint":
        lines.append(f"  re-decided:  {readable(d.redecided)}")
    lines.append(f"  identical before it: {result.events} events")
    return lines
