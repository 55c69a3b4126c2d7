"""Engine snapshots in the JetStream object store JB_SNAP, so a restart folds only the tail of JB_EVT.

Why the object store and not a KV value: a snapshot is the canonical msgpack
of the whole state (`engine.core.snapshot`), and with a busy log that is tens
of MB (every open order, and every (account, client_order_id) ever accepted,
which the core keeps forever to refuse reuse). A KV value is one message,
capped by the server's max_payload (1 MB by default). The object store chunks
it and checks a SHA-256 digest of the whole object on read.

Each object is named `engine-<seq>` and tagged (object headers) with:

- `Jetbook-Covers-Seq`: the JB_EVT sequence it covers (`state.event_count`);
- `Jetbook-Cmd-Seq`: `state.last_cmd_seq` at that point;
- `Jetbook-State-Hash`: `engine.core.state_hash` of the state, which is the
  sha256 of exactly these bytes;
- `Jetbook-Event-Digest`: sha256 of the JB_EVT payload at `covers_seq`, so a
  snapshot of another log (JB_EVT deleted and recreated, the bucket kept) is
  refused;
- `Jetbook-Core`: a fingerprint of the core's source. A snapshot from
  another build of the core is not trusted on its digest alone: it is
  restored and re-hashed, and used only if the restored state hashes to its
  tag.

Loading tries the newest first and falls back to older ones, then to a full
replay, saying why each was refused. The newest `keep` objects are kept.

Serialising a large state takes seconds of pure Python (2.2 s for the state of
a 1M-event log). Doing that on the engine's loop would stall matching, and the
lease with it, so `capture` forks: the child serialises its copy-on-write
image of the state and writes the bytes to a pipe, and the parent only pays
for the fork (like Redis's BGSAVE). Where fork is missing, it serialises
inline.

The state's bytes, hash and fingerprint are the decider's (framework/app.py):
the exchange's by default (engine/exchange.py, with its `CORE` fingerprint); an application
passes its own decider and bucket (`SnapshotStore(..., bucket=, decider=)`).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Final

import nats.js.errors
from nats.js.api import DeliverPolicy, ObjectInfo, ObjectMeta, ObjectMetaOptions, StorageType

from framework.app import Decider
from protocol.subjects import SNAP_BUCKET

log = logging.getLogger("jetbook.snapshots")

SNAP_PREFIX: Final = "engine-"
DEFAULT_KEEP: Final = 3
CHUNK_BYTES: Final = 512 * 1024  # under the server's default 1 MB max_payload, with room for headers

H_SEQ: Final = "Jetbook-Covers-Seq"
H_CMD: Final = "Jetbook-Cmd-Seq"
H_HASH: Final = "Jetbook-State-Hash"
H_EVENT: Final = "Jetbook-Event-Digest"
H_CORE: Final = "Jetbook-Core"


@dataclass(frozen=True, slots=True)
class Tag:
    seq: int
    cmd_seq: int
    state_hash: str
    event_digest: str
    core: str

    @property
    def name(self) -> str:
        return f"{SNAP_PREFIX}{self.seq:012d}"

    def headers(self) -> dict[str, list[str]]:
        # Object headers use the Go client's shape (a list of values per name), so `nats obj info` shows them.
        return {
            H_SEQ: [str(self.seq)], H_CMD: [str(self.cmd_seq)], H_HASH: [self.state_hash],
            H_EVENT: [self.event_digest], H_CORE: [self.core],
        }  # fmt: skip

    @classmethod
    def from_headers(cls, headers: dict[str, Any] | None) -> Tag | None:
        if not headers:
            return None

        def one(name: str) -> str:
            value = headers[name]
            return str(value[0] if isinstance(value, list) else value)

        try:
            return cls(int(one(H_SEQ)), int(one(H_CMD)), one(H_HASH), one(H_EVENT), one(H_CORE))
        except (KeyError, ValueError, IndexError):
            return None


@dataclass(frozen=True, slots=True)
class Captured:
    """A snapshot taken at one instant, ready to upload."""

    data: bytes
    tag: Tag
    stall_s: float  # how long the engine's loop was held up taking it
    serialise_s: float  # how long serialising took (in the child when forked)
    forked: bool


def _event_digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _decider(decider: Decider | None) -> Decider:
    """The application's decider; the exchange's when none is named (imported late: it imports this module)."""
    if decider is not None:
        return decider
    from engine.exchange import DECIDER

    return DECIDER


_HASH_OF_BYTES: dict[int, bool] = {}


def hash_of_bytes(decider: Decider) -> bool:
    """The tag's hash is computed as sha256 of the bytes; that is only `state_hash` if the decider defines it so."""
    known = _HASH_OF_BYTES.get(id(decider))
    if known is None:
        empty = decider.initial_state()
        known = _HASH_OF_BYTES[id(decider)] = (
            decider.state_hash(empty) == hashlib.sha256(decider.snapshot(empty)).hexdigest()
        )
    return known


def _hash(decider: Decider, state: Any, data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() if hash_of_bytes(decider) else decider.state_hash(state)


def capture_inline(state: Any, last_event: bytes, decider: Decider | None = None) -> Captured:
    d = _decider(decider)
    t0 = time.perf_counter()
    data = d.snapshot(state)
    digest = _hash(d, state, data)
    took = time.perf_counter() - t0
    tag = Tag(state.event_count, state.last_cmd_seq, digest, _event_digest(last_event), d.fingerprint)
    return Captured(data, tag, took, took, False)


@dataclass(frozen=True, slots=True)
class Forked:
    """A child serialising the state as it was at the fork."""

    pid: int
    fd: int
    seq: int
    cmd_seq: int
    event_digest: str
    stall_s: float
    core: str  # the decider's fingerprint


def _child_write(state: Any, fd: int, decider: Decider) -> None:
    """In the forked child: serialise and write to the pipe, then leave without running any cleanup."""
    status = 1
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)  # the parent's event loop owns that fd; a signal here must not wake it
        gc.disable()  # a collection would touch every object and copy the whole heap
        from protocol.process import DIE_WITH_PARENT

        if DIE_WITH_PARENT is not None:
            DIE_WITH_PARENT()
        t0 = time.perf_counter()
        data = decider.snapshot(state)
        digest = _hash(decider, state, data)
        took = time.perf_counter() - t0
        with os.fdopen(fd, "wb") as pipe:
            pipe.write(f"{took:.6f} {digest}\n".encode())
            pipe.write(data)
        status = 0
    finally:
        os._exit(status)


def start_capture(
    state: Any, last_event: bytes, *, fork: bool = True, decider: Decider | None = None
) -> Forked | Captured:
    """Take a snapshot of `state` as it is at this instant; synchronous, so no event can slip in.

    With fork, returns at once (the loop pays only for the fork) and
    `finish_capture` collects the bytes; without, serialises here.
    """
    d = _decider(decider)
    if not fork or not hasattr(os, "fork"):
        return capture_inline(state, last_event, d)
    hash_of_bytes(d)  # known before the fork, so the child does not work it out
    t0 = time.perf_counter()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        os.close(r)
        _child_write(state, w, d)
    os.close(w)
    return Forked(pid, r, state.event_count, state.last_cmd_seq, _event_digest(last_event), time.perf_counter() - t0,
                  d.fingerprint)  # fmt: skip


def _read_all(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as pipe:
        return pipe.read()


async def finish_capture(taken: Forked | Captured) -> Captured:
    if isinstance(taken, Captured):
        return taken
    loop = asyncio.get_running_loop()
    raw = await loop.run_in_executor(None, _read_all, taken.fd)
    _, status = await loop.run_in_executor(None, os.waitpid, taken.pid, 0)
    head, sep, data = raw.partition(b"\n")
    if status != 0 or not sep:
        raise RuntimeError(f"snapshot child exited with status {status}")
    took, digest = head.decode().split()
    tag = Tag(taken.seq, taken.cmd_seq, digest, taken.event_digest, taken.core)
    return Captured(data, tag, taken.stall_s, float(took), True)


async def capture(state: Any, last_event: bytes, *, fork: bool = True, decider: Decider | None = None) -> Captured:
    return await finish_capture(start_capture(state, last_event, fork=fork, decider=decider))


class SnapshotStore:
    def __init__(
        self, js: Any, *, keep: int = DEFAULT_KEEP, bucket: str = SNAP_BUCKET, decider: Decider | None = None
    ) -> None:
        self.js = js
        self.keep = max(keep, 1)
        self.bucket = bucket
        self.decider = _decider(decider)  # restores and checks what it loads
        self._obj: Any = None

    async def open(self, replicas: int = 1) -> SnapshotStore:
        try:
            self._obj = await self.js.object_store(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            self._obj = await self.js.create_object_store(
                self.bucket,
                description="jetbook engine snapshots (see engine/snapshots.py)",
                storage=StorageType.FILE,
                replicas=replicas,
            )
        return self

    async def tags(self) -> list[Tag]:
        """Every snapshot's tag, newest first."""
        tags = []
        for info in await self._infos():
            if info.deleted or not str(info.name).startswith(SNAP_PREFIX):
                continue
            tag = Tag.from_headers(info.headers)
            if tag is None:
                log.warning("snapshot %s has no readable tag; ignored", info.name)
                continue
            tags.append(tag)
        return sorted(tags, key=lambda t: t.seq, reverse=True)

    async def _infos(self, timeout: float = 10.0) -> list[ObjectInfo]:
        """The newest meta record of every object, read from the bucket's stream by name.

        nats-py's `ObjectStore.list()` subscribes without naming the stream, so
        the client first asks the server which stream holds the meta subjects
        (`$JS.API.STREAM.NAMES`), a request the engine's user may not make under
        deploy/accounts.conf: a restart then failed on a permission violation.
        Here the ordered consumer is bound to `OBJ_<bucket>`, which the engine
        may read.
        """
        stream, subject = f"OBJ_{self.bucket}", f"$O.{self.bucket}.M.>"
        try:
            await self.js.get_last_msg(stream, subject)
        except nats.js.errors.NotFoundError:
            return []  # no object was ever stored
        infos: list[ObjectInfo] = []
        done = asyncio.Event()

        async def on_msg(msg: Any) -> None:
            try:
                infos.append(ObjectInfo.from_response(json.loads(msg.data)))
            except Exception as err:  # one unreadable record must not hide the others
                log.warning("object store %s: unreadable meta record on %s (%s)", self.bucket, msg.subject, err)
            if msg.metadata.num_pending == 0:
                done.set()

        sub = await self.js.subscribe(
            subject, stream=stream, ordered_consumer=True, deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, cb=on_msg
        )
        try:
            await asyncio.wait_for(done.wait(), timeout)
        finally:
            await sub.unsubscribe()
        return infos

    async def save(self, captured: Captured) -> None:
        tag = captured.tag
        meta = ObjectMeta(
            name=tag.name,
            description=f"engine state after JB_EVT {tag.seq} (command {tag.cmd_seq})",
            headers=tag.headers(),
            options=ObjectMetaOptions(max_chunk_size=CHUNK_BYTES),
        )
        await self._obj.put(tag.name, captured.data, meta=meta)
        await self.prune()

    async def prune(self) -> None:
        for old in (await self.tags())[self.keep :]:
            try:
                await self._obj.delete(old.name)
            except nats.js.errors.NotFoundError:
                pass  # another engine pruned it first

    async def fetch(self, tag: Tag) -> bytes:
        """The object's bytes, chunk by chunk with direct gets, checked against its SHA-256 digest.

        nats-py's `ObjectStore.get` reads through an ordered consumer whose
        flow-control replies go out on a 250 ms timer: 0.5 s for 10 MB,
        whatever the chunk size. Direct gets of the chunks in sequence order
        take a few milliseconds each.
        """
        info = await self._obj.get_info(tag.name)
        subject = f"$O.{self.bucket}.C.{info.nuid}"
        stream = f"OBJ_{self.bucket}"
        parts: list[bytes] = []
        seq = 1
        digest = hashlib.sha256()
        while len(parts) < int(info.chunks or 0):
            try:
                msg = await self.js.get_msg(stream, seq=seq, subject=subject, direct=True, next=True)
            except nats.js.errors.NotFoundError as err:
                raise nats.js.errors.DigestMismatchError from err  # a chunk is missing
            data = bytes(msg.data or b"")
            parts.append(data)
            digest.update(data)
            seq = int(msg.seq) + 1
        expected = str(info.digest or "").split("=", 1)[-1]
        if base64.urlsafe_b64encode(digest.digest()).decode() != expected:
            raise nats.js.errors.DigestMismatchError
        return b"".join(parts)

    async def load(self, evt_tail: int, event_at: Any) -> tuple[Any, Tag] | None:
        """The newest snapshot that checks out against this log, restored; None means replay from the start.

        `event_at(seq)` returns the JB_EVT payload at `seq` (to tie a snapshot to this very log).
        """
        for tag in await self.tags():
            why = await self._refuse(tag, evt_tail, event_at)
            if why is None:
                try:
                    data = await self.fetch(tag)
                except nats.js.errors.DigestMismatchError:
                    why = "corrupt: its bytes do not match the object digest"
                except Exception as err:
                    why = f"unreadable ({type(err).__name__}: {err})"
            if why is None:
                state, why = self._restore(tag, data)
                if state is not None:
                    log.info("loaded snapshot %s (JB_EVT %d, state %s)", tag.name, tag.seq, tag.state_hash[:16])
                    return state, tag
            log.warning("snapshot %s refused: %s; trying an older one", tag.name, why)
        return None

    async def _refuse(self, tag: Tag, evt_tail: int, event_at: Any) -> str | None:
        if tag.seq > evt_tail:
            return f"it covers JB_EVT {tag.seq} but the log ends at {evt_tail} (was JB_EVT recreated?)"
        if tag.seq < 1:
            return "it covers no event"
        try:
            payload = await event_at(tag.seq)
        except Exception as err:
            return f"JB_EVT {tag.seq} unreadable ({type(err).__name__})"
        if _event_digest(payload) != tag.event_digest:
            return f"it was taken from another log (JB_EVT {tag.seq} differs)"
        return None

    def _restore(self, tag: Tag, data: bytes) -> tuple[Any, str]:
        decider = self.decider
        of_bytes = hash_of_bytes(decider)
        if of_bytes and hashlib.sha256(data).hexdigest() != tag.state_hash:
            return None, "its bytes do not hash to its tag"
        enabled = gc.isenabled()
        gc.disable()  # restore builds the whole state: a cyclic collection would traverse it again and again
        try:
            state = decider.restore(data)
        except Exception as err:
            return None, f"undecodable ({type(err).__name__}: {err})"
        finally:
            if enabled:
                gc.enable()
        if state.event_count != tag.seq or state.last_cmd_seq != tag.cmd_seq:
            return None, f"it restores to event {state.event_count}, command {state.last_cmd_seq}, not its tag"
        if tag.core != decider.fingerprint or not of_bytes:
            # Written by another build of the core: restore and snapshot may no longer be inverses.
            actual = decider.state_hash(state)
            if actual != tag.state_hash:
                return None, f"written by core {tag.core}; restored here it hashes to {actual[:16]}"
            log.info("snapshot %s from core %s re-hashed under core %s: identical", tag.name, tag.core,
                     decider.fingerprint)  # fmt: skip
        return state, ""


__all__ = ["SNAP_BUCKET", "Captured", "Forked", "SnapshotStore", "Tag", "capture", "finish_capture", "start_capture"]
