"""The engine shell: JB_CMD in, JB_EVT out, the pure core in between.

Start-up loads the newest valid snapshot (engine/snapshots.py) and folds only
the tail of JB_EVT after it, checking every `checkpoint` event on the way
(a state that disagrees with the log stops the engine, `LogDiverged`). The
newest event names the last command already applied (`cmd_seq`), and reading
JB_CMD resumes right after it.

With a lease (engine/lease.py; `jetbook engine` always has one) an engine is
either **active** or a **hot standby**. A standby follows JB_EVT as events are
stored, folding them into its own state; when the lease is free or its holder
stops renewing it, the standby takes it, reads the JB_EVT tail, folds up to
it, and only then decides commands. An active engine checks on a monotonic
clock that its lease is still good before every publish; when it is not, or
when the broker's fence refuses a batch (someone else wrote), it has lost:
it drops its state (which may be ahead of the log), rebuilds it from snapshot
and log, and becomes a standby. That is a step down, not a crash loop.

Each batch of commands is decided, and its events are committed to JB_EVT by
the commit pipeline (engine/commit.py): ADR-50 atomic batches of at most 1000
messages, never splitting one command's events, fenced with
`Nats-Expected-Last-Sequence` (if anyone else wrote to JB_EVT since we last
did, the broker refuses the whole batch), several in flight, an ambiguous
commit resolved from the stream tail so that a command's events are never
written twice. Before every batch is sent the pipeline asks this service
whether the lease is still good (`_hold`).

The active engine also writes a snapshot every `snapshot_every` events, at a
batch boundary (so the state is exactly the log up to a sequence), forking a
child to serialise it so matching does not wait.

Nothing here is about the exchange: the service runs for an application
(`app`, framework/app.py), whose decider gives the core that decides and folds,
the codec, the state hash and snapshots, and whose `Streams` name the two
streams, the snapshot bucket and the lease. JB_CMD and JB_EVT above are the
exchange's (`engine.exchange.APP`, the default); examples/ledger is another.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from commands.model import SPECS
from engine.commit import BACKOFF_FIRST_S, DEFAULT_INFLIGHT, CommitPipeline, Stopping
from engine.exchange import APP as EXCHANGE
from engine.lease import Lease
from engine.metrics import EngineMetrics
from engine.snapshots import Captured, SnapshotStore, Tag, finish_capture, start_capture
from events.logged import check_cmd_seq, check_resume, decode_logged
from events.stream_readers import BulkReader, RawMsg, ResumableReader, StreamReader, last_seq
from framework.app import App, Core
from framework.streams import ensure_app_streams
from protocol.errors import TRANSIENT, CorruptLog, Fenced, JetbookError

log = logging.getLogger("jetbook.engine")

DEFAULT_SNAPSHOT_EVERY = 100_000
FOLD_BATCH = 10_000
FREEZE_EVERY = 10_000  # events between gc.freeze() calls
IDLE_SNAPSHOT_AFTER = 10_000  # an idle engine snapshots once its tail is this long


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic collection while a batch is folded or decided, or a state built: a collection in the middle of a
    state hash (a checkpoint) traverses the tree the hash is building, again and again. It runs between batches."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class LeaseLost(JetbookError):
    """This engine's lease lapsed or was taken: it must not write, and its state may be ahead of the log."""


class LogDiverged(JetbookError):
    """The state folded from JB_EVT disagrees with a checkpoint in JB_EVT."""

    def __init__(self, seq: int, cause: Exception, stream: str = "JB_EVT") -> None:
        super().__init__(
            f"{stream} {seq}: {cause}. The log was not produced by this core (or the state is corrupt); "
            "refusing to go on. Compare with `jetbook replay verify`."
        )
        self.seq = seq


class CheckpointCadence(JetbookError):
    """The log's checkpoints are not where this engine's checkpoint interval would put them."""


def _text(subject: str | bytes) -> str:
    return subject.decode(errors="replace") if isinstance(subject, bytes) else subject


class _Cadence:
    """Checks, while folding, that a checkpoint follows exactly the commands where `Engine.handle` puts one.

    The core emits a checkpoint after the command whose events make the
    event count cross a multiple of N. The log's bytes depend on N, so an
    engine started with another N than the log was written with would append
    checkpoints that a re-decide with any single N cannot reproduce. The fold
    finds out at the first command where the two disagree.
    """

    __slots__ = ("cmd", "covers", "end", "every", "seen", "start")

    def __init__(self, every: int, covers: Callable[[Any], int | None]) -> None:
        self.every = every
        self.covers = covers  # the sequence a checkpoint event covers; None for any other event
        self.cmd = -1  # the command whose events are being folded; -1 at a command boundary
        self.start = 0  # event count before its first event
        self.end = 0  # event count after its last non-checkpoint event
        self.seen = False  # its checkpoint was folded

    def before(self, event: Any, count: int) -> None:
        """Called with the event count before `event` is folded."""
        if event.cmd_seq != self.cmd:
            self.close()
            self.cmd, self.start, self.end, self.seen = event.cmd_seq, count, count, False
        covers = self.covers(event)
        if covers is not None:
            due = count // self.every > self.start // self.every
            if self.seen or not due or covers != count:
                raise CheckpointCadence(
                    f"JB_EVT {count + 1} is a checkpoint covering {covers} where an engine with "
                    f"--checkpoint-every {self.every} would put none; start the engine with the interval the "
                    "log was written with"
                )
            self.seen = True
        elif self.seen:
            raise CheckpointCadence(f"JB_EVT {count + 1}: an event of command {event.cmd_seq} after its checkpoint")
        else:
            self.end = count + 1

    def close(self) -> None:
        """At a command boundary: the command just folded must have had a checkpoint if it crossed a multiple."""
        if self.cmd >= 0 and not self.seen and self.end // self.every > self.start // self.every:
            raise CheckpointCadence(
                f"command {self.cmd} took the log from {self.start} to {self.end} events without a checkpoint; "
                f"an engine with --checkpoint-every {self.every} would have written one. Start the engine with "
                "the interval the log was written with"
            )
        self.cmd = -1


class EngineService:
    def __init__(
        self,
        nc: Any,
        *,
        max_batch: int = 1000,
        commit_timeout: float = 5.0,
        replicas: int = 1,
        checkpoint_every: int | None = None,
        snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
        snapshot_keep: int = 3,
        fork_snapshots: bool = True,
        load_snapshots: bool = True,
        lease: Lease | None = None,
        inflight: int = DEFAULT_INFLIGHT,
        app: App = EXCHANGE,
        metrics: EngineMetrics | None = None,
    ) -> None:
        """`app` is the application this engine decides for (framework/app.py); checkpoint_every defaults to its
        decider's interval. `metrics` counts always (per batch, engine/metrics.py); serving them is the role's."""
        self.app = app
        self.decider = app.decider
        self.streams = app.streams
        if checkpoint_every is None:
            checkpoint_every = self.decider.checkpoint_every
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        self.nc = nc
        self.js = nc.jetstream()
        self.checkpoint_every = checkpoint_every
        self.engine: Core = self.decider.core(checkpoint_every=checkpoint_every)
        self.max_batch = max_batch
        self.commit_timeout = commit_timeout
        self.replicas = replicas
        self.snapshot_every = snapshot_every  # 0: never write snapshots (still load them)
        self.snapshot_keep = snapshot_keep
        self.fork_snapshots = fork_snapshots
        self.load_snapshots = load_snapshots  # False: always replay JB_EVT from the start (benchmarks, audits)
        self.lease = lease
        self.role = "starting"  # then "standby" / "active" (with a lease), "active" (without)
        if metrics is None:
            metrics = EngineMetrics(command_types=SPECS if app.decider.name == EXCHANGE.decider.name else None)
        self.metrics = metrics
        metrics.attach(self)
        # JB_EVT out: atomic batches, fenced, `inflight` at once, each sent only while `_hold` says the lease is ours.
        self.commits = CommitPipeline(
            nc, js=self.js, inflight=inflight, timeout=commit_timeout, hold=self._hold, stream=self.streams.evt,
            on_commit=metrics.committed,
        )  # fmt: skip
        self.commands_done = 0
        self.takeovers = 0
        self.step_downs = 0
        self.recovered_from: Tag | None = None  # the snapshot the last recovery started from
        self.recovery_folded = 0  # events the last recovery folded after it
        self.recovery_s = 0.0
        self.snapshot_seq = 0  # the newest snapshot we wrote or loaded covers this JB_EVT sequence
        self.snapshots_written = 0
        self.last_capture: Captured | None = None
        self.snapshots: SnapshotStore | None = None
        self.cmd_reader: StreamReader | None = None
        self._cadence = _Cadence(checkpoint_every, self.decider.checkpoint_covers)
        self._last_folded = b""  # payload of the newest event folded into the state (b"": none, or not known)
        self._snapshot_task: asyncio.Task[None] | None = None
        self._frozen_at = 0  # event count at the last gc.freeze()
        self.taken_at = 0.0  # time.monotonic() when the run loop took the batch it is deciding from its reader

    @property
    def stop(self) -> asyncio.Event:
        """Set: stop deciding; retries (commits, reads of a tail) give up with `Stopping`."""
        return self.commits.stop

    @stop.setter
    def stop(self, event: asyncio.Event) -> None:
        self.commits.stop = event

    @property
    def last_evt_seq(self) -> int:
        """JB_EVT sequence of the newest event we know is stored (state and log agree up to it at a batch boundary)."""
        return self.commits.last_seq

    @property
    def known_stored(self) -> int:
        """last_evt_seq as the status and /metrics report it. A standby (or an engine recovering) has read every
        event it folded from the log, so all of them are stored; the active one knows what its commits acknowledged
        (the commit pipeline's count moves only there)."""
        return self.last_evt_seq if self.role == "active" else self.engine.state.event_count

    @property
    def _last_event(self) -> bytes:
        """The payload of JB_EVT[last_evt_seq], to tie a snapshot to this log (b"" when not known)."""
        return self.commits.last_payload

    @property
    def events_written(self) -> int:
        return self.commits.events

    @property
    def commit_retries(self) -> int:
        """Back-offs: ambiguous commits, and reads of a stream's tail that JetStream did not answer."""
        return self.commits.retries

    @property
    def inflight(self) -> int:
        return self.commits.inflight

    # --- recovery ---------------------------------------------------------------------------------

    async def _open_snapshots(self) -> SnapshotStore:
        if self.snapshots is None:
            store = SnapshotStore(
                self.js, keep=self.snapshot_keep, bucket=self.streams.snapshot_bucket, decider=self.decider
            )
            self.snapshots = await store.open(self.replicas)
        return self.snapshots

    async def _event_at(self, seq: int) -> bytes:
        msg = await self.js.get_msg(self.streams.evt, seq)
        return bytes(msg.data or b"")

    async def recover(self) -> None:
        """State = the newest valid snapshot + the tail of JB_EVT after it (or every event, without one)."""
        with _gc_paused():
            await self._recover()
        self._freeze()

    def _freeze(self) -> None:
        """Move every object alive now out of the cyclic collector's sight (`gc.freeze`).

        The state is millions of long-lived objects without reference cycles;
        reference counting frees them when they go. Left to the cyclic
        collector, they are traversed by every full collection, and a state
        hash (a checkpoint, a snapshot), which allocates a tree as large as the
        state, triggers many: measured 2.5x slower hashes, 4x slower restores.
        Freezing costs nothing (it splices lists); a cycle that is alive when
        frozen is never collected, which for this engine is a few bytes.
        """
        gc.freeze()
        self._frozen_at = self.engine.state.event_count

    def _maybe_freeze(self) -> None:
        if self.engine.state.event_count - self._frozen_at >= FREEZE_EVERY:
            self._freeze()

    async def _recover(self) -> None:
        t0 = time.perf_counter()
        target = await last_seq(self.js, self.streams.evt)
        self.engine = self.decider.core(checkpoint_every=self.checkpoint_every)
        self._cadence = _Cadence(self.checkpoint_every, self.decider.checkpoint_covers)
        self._last_folded = b""
        self.recovered_from = None
        if target and self.load_snapshots:
            store = await self._open_snapshots()
            loaded = await store.load(target, self._event_at)
            if loaded is not None:
                state, tag = loaded
                self.engine = self.decider.core(state, checkpoint_every=self.checkpoint_every)
                self.recovered_from = tag
                self.snapshot_seq = max(self.snapshot_seq, tag.seq)
                self._last_folded = await self._event_at(tag.seq)
            elif await store.tags():
                log.warning("no usable snapshot: replaying %s from the start", self.streams.evt)
        start = self.engine.state.event_count + 1
        if target >= start:
            # A known range: read it without nats-py's per-message objects (events/stream_readers.py BulkReader).
            async with BulkReader(self.js, self.streams.evt, start, target, chunk=FOLD_BATCH) as reader:
                async for chunk in reader:
                    for seq, subject, data in zip(chunk.seqs, chunk.subjects, chunk.data, strict=True):
                        self._fold_one(seq, data, subject)
        self._cadence.close()
        await self._check_resume()
        self.commits.reset(target, self._last_folded)
        self.recovery_folded = max(target - start + 1, 0)
        self.recovery_s = time.perf_counter() - t0
        source = f"snapshot {self.recovered_from.name}" if self.recovered_from else f"the start of {self.streams.evt}"
        log.info(
            "recovered %d events in %.2fs (from %s, %d events folded); resuming at command %d",
            target, self.recovery_s, source, self.recovery_folded, self.engine.state.last_cmd_seq + 1,
        )  # fmt: skip

    def _fold(self, m: RawMsg) -> None:
        self._fold_one(m.seq, m.data, m.subject)

    def _fold_one(self, seq: int, data: bytes, subject: str | bytes) -> None:
        """One stored event into the state, checking sequence, checkpoint cadence and checkpoint hashes."""
        state = self.engine.state
        if seq != state.event_count + 1:
            raise JetbookError(f"{self.streams.evt} {seq} arrived while the state is at {state.event_count}")
        text = _text(subject)
        decider = self.decider
        event = decode_logged(
            seq, text, data, unknown_is_newer=True, decode=decider.decode, unknown=decider.unknown_event
        )
        check_cmd_seq(seq, text, state.last_cmd_seq if state.event_count else 0, event.cmd_seq)
        self._cadence.before(event, state.event_count)
        try:
            self.engine.apply(event, verify=True)
        except decider.diverged as err:
            raise LogDiverged(seq, err, self.streams.evt) from err
        except Exception as err:  # e.g. a fill of an order the state has never seen
            raise CorruptLog(
                seq, _text(subject), f"does not apply to the state before it ({type(err).__name__}: {err})"
            ) from err
        self._last_folded = data

    async def _check_resume(self) -> None:
        """Before deciding: the newest folded event names no command beyond JB_CMD's end (CorruptLog)."""
        cmd_tail = await self._retry(lambda: last_seq(self.js, self.streams.cmd))
        check_resume(self.engine.state.event_count, self.engine.state.last_cmd_seq, cmd_tail)

    # --- roles --------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self.stop = stop
        await ensure_app_streams(self.js, self.app, self.replicas)
        sampler = asyncio.create_task(self.metrics.sample_backlog(lambda: last_seq(self.js, self.streams.cmd), stop))
        try:
            await self._run(stop)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler

    async def _run(self, stop: asyncio.Event) -> None:
        await self.recover()
        if self.lease is None:
            await self._lead(stop)
            await self._finish_snapshot()
            return
        lease = self.lease
        beat: asyncio.Task[None] | None = None
        try:
            # Inside the try: a stop while the lease thread is still connecting closes it too (the loop's
            # shutdown waits for the executor thread that runs start).
            await asyncio.get_running_loop().run_in_executor(None, lease.start)
            beat = asyncio.create_task(self._beat(lease))
            while not stop.is_set():
                if not await self._follow(lease, stop):
                    break
                try:
                    await self._lead(stop)
                except (LeaseLost, Fenced) as err:
                    self.step_downs += 1
                    log.warning("stepping down to standby: %s", err)
                    self.role = "standby"
                    await self.recover()  # our state may hold events the log refused
        finally:
            if beat is not None:
                beat.cancel()
            await self._finish_snapshot()
            await lease.close(release=True)

    @staticmethod
    async def _beat(lease: Lease) -> None:
        while True:
            lease.beat()
            await asyncio.sleep(0.25)

    async def _follow(self, lease: Lease, stop: asyncio.Event) -> bool:
        """Hot standby: fold JB_EVT as it is stored until the lease is ours, then up to the tail. False if stopped."""
        self.role = "standby"
        lease.want_lease()
        log.info("standby: following %s from %d until the lease is ours", self.streams.evt,
                 self.engine.state.event_count + 1)  # fmt: skip
        reader = ResumableReader(self.nc, self.streams.evt)
        try:
            while not stop.is_set():
                if lease.failure is not None:
                    raise JetbookError(f"the lease thread stopped: {lease.failure!r}")
                if lease.held():
                    tail = await self._retry(lambda: last_seq(self.js, self.streams.evt))
                    while self.engine.state.event_count < tail and not stop.is_set():
                        batch = await reader.next_batch(self.engine.state.event_count + 1, FOLD_BATCH, 1.0)
                        with _gc_paused():
                            for m in batch:
                                self._fold(m)
                        self._maybe_freeze()
                    self._cadence.close()
                    await self._check_resume()
                    return not stop.is_set()
                batch = await reader.next_batch(self.engine.state.event_count + 1, FOLD_BATCH, 0.1)
                with _gc_paused():
                    for m in batch:
                        self._fold(m)
                self._maybe_freeze()
        finally:
            await reader.stop()
        return False

    async def _lead(self, stop: asyncio.Event) -> None:
        """Decide commands from the one after the last applied, until stopped (or the lease is lost)."""
        self.role = "active"
        self.commits.reset(self.engine.state.event_count, self._last_folded)
        if self.lease is not None:
            self.takeovers += 1
        log.info("active: deciding from command %d (%s at %d)", self.engine.state.last_cmd_seq + 1, self.streams.evt,
                 self.last_evt_seq)  # fmt: skip
        reader = ResumableReader(self.nc, self.streams.cmd)
        try:
            while not stop.is_set():
                if self.lease is not None and self.lease.lost:
                    if self.lease.failure is not None:
                        raise JetbookError(f"the lease thread stopped: {self.lease.failure!r}")
                    raise LeaseLost(self.lease.lost_reason or "the lease could not be renewed")
                try:
                    await self.commits.ready()  # first a free commit slot, then the commands that came meanwhile
                except Stopping:
                    log.warning("stopped with an uncommitted batch; the next start resumes from the log")
                    return
                batch = await reader.next_batch(self.engine.state.last_cmd_seq + 1, self.max_batch, 0.25)
                self.taken_at = time.monotonic()
                self.cmd_reader = reader.reader
                try:
                    if batch:
                        with _gc_paused():  # collections run between batches, not inside a checkpoint's hash
                            await self.decide_and_send(batch)
                    # Commits stay in flight while commands keep coming; they are settled when the
                    # engine goes idle, and before a snapshot (which must match the log exactly).
                    if self.commits.in_flight and (not batch or self._snapshot_due()):
                        await self.drain()
                except Stopping:
                    log.warning("stopped with an uncommitted batch; the next start resumes from the log")
                    return
                self._maybe_freeze()
                self._maybe_snapshot(idle=not batch)
            try:
                await self.drain()
            except Stopping:
                pass
        finally:
            self.commits.abandon()
            await reader.stop()

    async def _retry(self, call: Any) -> Any:
        delay = BACKOFF_FIRST_S
        while True:
            try:
                return await call()
            except TRANSIENT as err:
                log.warning("JetStream not answering (%s); retrying", err)
                delay = await self.commits.back_off(delay)

    # --- snapshots ----------------------------------------------------------------------------------

    def _maybe_snapshot(self, idle: bool = False) -> None:
        """At a batch boundary (state == log up to last_evt_seq): start a snapshot if one is due.

        One is due when the log has crossed a multiple of `snapshot_every` since
        the newest snapshot. With the default intervals (snapshot and checkpoint
        every 100,000 events) the batch that crosses it also holds the core's
        checkpoint, so the snapshot lands just after the checkpoint and a
        recovery's tail has no checkpoint hash to verify (which costs as much
        as serialising the state). An idle engine also snapshots once the tail
        since the newest snapshot is IDLE_SNAPSHOT_AFTER events long, so that
        a restart after a quiet spell folds next to nothing.
        """
        state = self.engine.state
        every = self.snapshot_every
        due = state.event_count // every > self.snapshot_seq // every if every > 0 else False
        # Idle (no command for a read timeout) with a long enough tail: snapshot now, when it costs nobody.
        idle_due = idle and every > 0 and state.event_count - self.snapshot_seq >= min(IDLE_SNAPSHOT_AFTER, every)
        if (
            not (due or idle_due)
            or self._snapshot_task is not None
            or state.event_count != self.last_evt_seq
            or not self._last_event
        ):
            return
        # Synchronous: nothing slips in.
        taken = start_capture(state, self._last_event, fork=self.fork_snapshots, decider=self.decider)
        self.snapshot_seq = state.event_count
        self._snapshot_task = asyncio.create_task(self._write_snapshot(taken))

    async def _write_snapshot(self, taken: Any) -> None:
        try:
            captured = await finish_capture(taken)
            t0 = time.perf_counter()
            store = await self._open_snapshots()
            await store.save(captured)
            self.snapshots_written += 1
            self.last_capture = captured
            log.info(
                "snapshot %s: %d bytes; loop held %.3fs, serialised in %.2fs%s, stored in %.2fs",
                captured.tag.name, len(captured.data), captured.stall_s, captured.serialise_s,
                " (forked child)" if captured.forked else "", time.perf_counter() - t0,
            )  # fmt: skip
        except Exception as err:
            log.warning("snapshot not written (%s: %s); the next one is due in %d events",
                        type(err).__name__, err, self.snapshot_every)  # fmt: skip
        finally:
            self._snapshot_task = None

    async def _finish_snapshot(self, timeout: float = 15.0) -> None:
        task = self._snapshot_task
        if task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), timeout)

    # --- deciding and publishing --------------------------------------------------------------------

    async def process(self, batch: list[Any]) -> None:
        """Decide a batch of commands and commit all their events (for callers outside the run loop)."""
        await self.decide_and_send(batch)
        await self.drain()

    def _snapshot_due(self) -> bool:
        every = self.snapshot_every
        return every > 0 and self.engine.state.event_count // every > self.snapshot_seq // every

    async def decide_and_send(self, batch: list[Any]) -> None:
        """Decide each command and send its events; commits may still be in flight on return."""
        pending: list[tuple[str, bytes]] = []
        max_events = self.decider.max_events_per_command  # one atomic batch
        decided: list[Any] = []  # the batch's events, counted once per batch (engine/metrics.py)
        clock = time.monotonic  # the reader's receive stamp is monotonic too
        started, waited = clock(), 0.0
        for m in batch:
            decided.extend(self.engine.handle(m.seq, m.ts, m.subject, m.data))
            payloads = self.engine.payloads  # the core encodes: an event that cannot be encoded is a decision too
            if len(pending) + len(payloads) > max_events:
                t = clock()
                await self.publish(pending)
                waited += clock() - t
                pending = []
            pending.extend(payloads)
            self.commands_done += 1
        decided_at = clock()
        self.metrics.decided(batch, decided, decided_at - started - waited)
        if pending:
            await self.publish(pending)
        if batch:  # the stages on one clock (engine/metrics.py STAGES): time.monotonic, as the reader stamps
            received = getattr(batch[0], "received", 0.0)
            taken = self.taken_at if self.taken_at >= received > 0.0 else started
            self.metrics.staged(taken - received if received > 0.0 else -1.0, decided_at - taken, clock() - decided_at)

    async def _hold(self) -> None:
        """Return only while our lease is good (on our monotonic clock); LeaseLost once it is someone else's.

        A lapse without a loss (renewals not answered for a moment) is waited
        out: a renewal can still succeed, and it only does if nobody took the
        lease in between, since it is a compare-and-set on our revision.
        """
        lease = self.lease
        if lease is None:
            return
        while not lease.held():
            if lease.lost:
                raise LeaseLost("the lease lapsed and another engine may hold it: not publishing")
            if self.stop.is_set():
                raise Stopping("stop requested while the lease was not confirmed")
            await asyncio.sleep(0.02)

    async def publish(self, payloads: list[tuple[str, bytes]]) -> None:
        """Start committing one atomic batch of encoded events (engine/commit.py); `drain` waits for it."""
        await self.commits.send(payloads)

    async def drain(self) -> None:
        """Wait until every batch in flight is committed (or the failure that stops us is known)."""
        await self.commits.drain()
