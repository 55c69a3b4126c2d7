"""The right to write JB_EVT: a lease in the JetStream KV bucket JB_LEASE, renewed by compare-and-set.

One record per shard (key `engine` today). Whoever holds it writes JB_EVT;
every other engine is a hot standby. The record names its holder and its TTL.
Every write of it is a compare-and-set on the key's revision (KV `update` with
`last=`, i.e. `Nats-Expected-Last-Subject-Sequence`), so of two engines racing
for it exactly one wins.

Expiry is judged on monotonic clocks, never by comparing wall clocks between
machines (the Kubernetes leader-election rule):

- the holder counts its validity from the moment it *sent* its last
  successful renewal, and stops trusting it `margin` before the TTL is up;
- a standby counts from the moment it first *saw* the current revision, which
  is later than the write, and takes over only after a whole TTL without a
  new revision.

So the holder always gives up before a standby may take over. Server-side TTL
is not needed for safety; the bucket's `max_age` only lets a record of an
engine that died long ago disappear, so a later start does not wait one TTL
for it. The broker's fence (`Nats-Expected-Last-Sequence` on every JB_EVT
batch) stays the final guard: a holder that is paused at the wrong moment can
at worst have its batch refused.

The lease runs in its own thread with its own event loop and NATS connection.
The engine's loop can be busy for a long time in one synchronous call
(folding a big tail, a checkpoint hash over a large state); renewing from that
loop would lose the lease to every such pause. A watchdog keeps the thread
honest: it renews only while the engine's loop has beaten within
`watchdog` seconds, so an engine whose loop is wedged lets the lease lapse.
SIGSTOP and kill -9 stop the thread with the process, as they should.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType
from nats.nuid import NUID

from protocol.errors import JetbookError

log = logging.getLogger("jetbook.lease")

T = TypeVar("T")


class _Closing(Exception):
    """close() was called while a request was out: the thread stops without waiting for the answer."""


LEASE_BUCKET: Final = "JB_LEASE"
LEASE_KEY: Final = "engine"  # one shard's key; shard k of a sharded venue has "engine-<k>" (engine.exchange.shard_app)
DEFAULT_TTL_S: Final = 1.0  # a standby takes over about this long after the holder's last renewal
WATCHDOG_S: Final = 10.0  # renew only while the engine's loop has beaten this recently
RECORD_MAX_AGE_S: Final = 30.0  # the server forgets a record nobody renewed for this long

Connect = Callable[[], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    holder: str
    ttl_ms: int
    host: str
    pid: int

    def encode(self) -> bytes:
        return json.dumps(
            {"holder": self.holder, "ttl_ms": self.ttl_ms, "host": self.host, "pid": self.pid}, sort_keys=True
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> LeaseRecord | None:
        try:
            body = json.loads(raw)
            return cls(str(body["holder"]), int(body["ttl_ms"]), str(body.get("host", "")), int(body.get("pid", 0)))
        except (ValueError, KeyError, TypeError):
            return None  # not ours: treat like a holder with the default TTL


# Anything but a lost compare-and-set is transient here: a timeout, a reconnect, a stream leader election
# ("no response from stream", 503). The lease thread must never die of one; it keeps trying, and the
# holder's validity simply runs out meanwhile.
_TRANSIENT: Final = (asyncio.TimeoutError, OSError, nats.errors.Error)


async def lease_bucket(js: Any, replicas: int = 1, bucket: str = LEASE_BUCKET) -> Any:
    """Bind to JB_LEASE, creating it if needed (two engines creating it at once is harmless)."""
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(
            KeyValueConfig(
                bucket=bucket,
                description="jetbook: which engine may write JB_EVT",
                history=1,
                ttl=RECORD_MAX_AGE_S,
                storage=StorageType.FILE,
                replicas=replicas,
            )
        )


class Lease:
    """Acquire, renew and release the writer lease from a background thread.

    The engine's thread only reads plain attributes (`held()`, `lost`) and sets
    `want`; nothing crosses threads but those, so no lock is needed.
    """

    def __init__(
        self,
        connect: Connect,
        *,
        ttl: float = DEFAULT_TTL_S,
        key: str = LEASE_KEY,
        bucket: str = LEASE_BUCKET,
        replicas: int = 1,
        watchdog: float = WATCHDOG_S,
        poll: float = 0.1,
    ) -> None:
        if ttl < 0.2:
            raise ValueError("lease TTL must be at least 0.2 s")
        self._connect = connect
        self.ttl = ttl
        self.key = key
        self.bucket = bucket  # an application's own (framework.app.Streams.lease_bucket); JB_LEASE for the exchange
        self.replicas = replicas
        self.watchdog = watchdog
        self.poll = poll
        self.renew_every = ttl / 4
        self.margin = max(ttl / 4, 0.05)  # the holder stops trusting its lease this long before a standby may act
        self.holder = NUID().next().decode()
        self.record = LeaseRecord(self.holder, int(ttl * 1000), socket.gethostname(), os.getpid())
        # Shared with the engine's thread (single assignments only).
        self.want = False  # set by the engine when it is caught up and could lead
        self.lost = False  # set here when a held lease was taken or could not be kept; cleared by want_lease()
        self.lost_reason = ""  # why, for the engine's log
        self.acquisitions = 0
        self.renewals = 0
        self.current_holder = ""  # who holds it, as last seen
        self._valid_until = 0.0  # monotonic; only meaningful while holding
        self._holding = False
        self._rev = 0  # revision of our record while holding
        self._beat = time.monotonic()
        self._failures = 0  # transient failures in a row, for the log
        self._closing = False
        self._release_on_close = True
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    # --- the engine's side ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="jetbook-lease", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._ready.wait(0.05) and not self._closing and time.monotonic() < deadline:
            pass
        if self._error is not None:
            raise JetbookError(f"cannot use the lease bucket {self.bucket}: {self._error!r}") from self._error

    @property
    def failure(self) -> BaseException | None:
        """Why the lease thread stopped by itself (None while it runs, or after close)."""
        thread = self._thread
        if thread is None or thread.is_alive() or self._closing:
            return None
        return self._error or RuntimeError("the lease thread stopped")

    def held(self) -> bool:
        """True while this engine may write: it holds the lease and its last renewal is recent enough."""
        return self._holding and not self.lost and time.monotonic() < self._valid_until

    def want_lease(self) -> None:
        """The engine is caught up: take the lease when it is free (again, after a loss)."""
        self.lost = False
        self.want = True

    def beat(self) -> None:
        """The engine's loop is alive (called from a task on that loop)."""
        self._beat = time.monotonic()

    async def close(self, release: bool = True) -> None:
        """Stop the thread; with `release`, hand the lease back so a standby takes over at once."""
        self._release_on_close = release
        self._closing = True
        thread = self._thread
        if thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 10)

    # --- the lease thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # reported to start(), or logged if it happens later
            self._error = err
            self._ready.set()
            if not isinstance(err, asyncio.CancelledError | _Closing):
                log.error("lease thread failed: %s", err)
            self._holding = False
            self.lost = True

    async def _main(self) -> None:
        nc = await self._ask(self._connect())
        try:
            kv = await self._ask(lease_bucket(nc.jetstream(), self.replicas, self.bucket))
            self._ready.set()
            with contextlib.suppress(_Closing):
                await self._loop(nc, kv)
            if self._holding and self._release_on_close:
                if nc.is_connected:
                    await self._release(kv)
                else:  # waiting out a request timeout would only delay the stop
                    log.warning("lease not released (no connection to the server); a standby takes over after its TTL")
        finally:
            self._holding = False
            try:
                await nc.close()
            except Exception:
                pass

    async def _loop(self, nc: Any, kv: Any) -> None:
        """Renew while holding; watch and take the lease while wanted; until close() (or _Closing mid-request)."""
        seen_rev, seen_at, seen_ttl = -1, 0.0, self.ttl
        while not self._closing:
            if self._holding:
                if nc.is_connected:  # else no renewal can land: the lease runs out by itself
                    await self._renew(kv)
                await self._sleep(self.renew_every)
                continue
            if self.want and nc.is_connected:  # disconnected, a read would only wait out its timeout
                try:
                    rev, record, free = await self._observe(kv)
                except _TRANSIENT as err:
                    self._transient("read", err)
                    await self._sleep(self.poll)
                    continue
                now = time.monotonic()
                if rev != seen_rev:
                    seen_rev, seen_at = rev, now
                    seen_ttl = record.ttl_ms / 1000 if record else self.ttl
                    self.current_holder = record.holder if record and not free else ""
                if free or now - seen_at >= seen_ttl:
                    await self._acquire(kv, rev, free)
                    continue
            await self._sleep(self.poll)

    async def _ask(self, request: Awaitable[T]) -> T:
        """A KV request that gives way to close(): a server that has just gone answers only at the request's
        timeout (5 s), and a stopping engine joins this thread. An acquisition or renewal cut short this way
        may still land: nobody renews it, so it runs out after its TTL, as if the engine had died."""
        task = asyncio.ensure_future(request)
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.05)
            if done:
                return task.result()
            if self._closing:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                raise _Closing

    def _transient(self, what: str, err: BaseException) -> None:
        self._failures += 1
        if self._failures in (1, 10) or self._failures % 100 == 0:
            log.warning("lease %s failed (%s: %s; %d in a row); retrying", what, type(err).__name__, err,
                        self._failures)  # fmt: skip

    async def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._closing and (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.05))

    async def _observe(self, kv: Any) -> tuple[int, LeaseRecord | None, bool]:
        """(revision, record, free): the key's newest revision, deleted/absent counting as free."""
        try:
            entry = await self._ask(kv.get(self.key))
        except nats.js.errors.KeyNotFoundError as err:
            entry = getattr(err, "entry", None)
            return (int(entry.revision) if entry is not None else 0), None, True
        return int(entry.revision), LeaseRecord.decode(entry.value or b""), False

    async def _acquire(self, kv: Any, last_rev: int, free: bool) -> None:
        sent = time.monotonic()
        try:
            rev = await self._ask(kv.update(self.key, self.record.encode(), last=last_rev))
        except nats.js.errors.KeyWrongLastSequenceError:
            return  # another engine won the race; keep watching its record
        except _TRANSIENT as err:
            self._transient("acquisition", err)
            return
        self._failures = 0
        self._rev = int(rev)
        self._valid_until = sent + self.ttl - self.margin
        self._holding = True
        self.acquisitions += 1
        self.current_holder = self.holder
        log.info(
            "lease %s/%s acquired (%s; revision %d, TTL %.2fs)",
            self.bucket, self.key, "it was free" if free else "the previous holder stopped renewing", rev, self.ttl,
        )  # fmt: skip

    async def _renew(self, kv: Any) -> None:
        now = time.monotonic()
        if now - self._beat > self.watchdog:
            log.error("engine loop unresponsive for %.1fs: letting the lease lapse", now - self._beat)
            self.lost_reason = f"the engine's loop was unresponsive for {now - self._beat:.1f}s"
            self._lose()
            return
        try:
            rev = await self._ask(kv.update(self.key, self.record.encode(), last=self._rev))
        except nats.js.errors.KeyWrongLastSequenceError:
            await self._refused(kv)
            return
        except _TRANSIENT as err:
            # Not renewed: our validity runs out by itself; the next renewal may still succeed, since a CAS
            # on our revision can only succeed if nobody took the lease in between.
            self._transient("renewal", err)
            return
        self._failures = 0
        self._rev = int(rev)
        self._valid_until = now + self.ttl - self.margin
        self.renewals += 1

    async def _refused(self, kv: Any) -> None:
        """Our renewal's compare-and-set was refused: find out why before stepping down.

        The key moved past our revision, or back. If the record there is still
        ours, our own earlier renewal landed without its answer reaching us (a
        reconnect, a server restart in between), or a restarted server lost
        our newest renewal: nobody else wrote, so carry on from that revision
        (validity is not extended until a renewal succeeds). Only a record of
        another holder means another engine took the lease; a missing one means
        it expired or the server lost it.
        """
        try:
            rev, record, free = await self._observe(kv)
        except _TRANSIENT as err:
            self._transient("read after a refused renewal", err)
            return  # not renewed: validity runs out by itself, and the next renewal asks again
        if not free and record is not None and record.holder == self.holder:
            log.info("lease %s/%s: the record at revision %d is ours (a renewal answered late or lost in a "
                     "reconnect); renewing from there", self.bucket, self.key, rev)  # fmt: skip
            self._rev = rev
            return
        if free or record is None:
            self.lost_reason = "the lease record is gone (it expired, or a restarted server lost it)"
        else:
            self.lost_reason = f"the lease was taken by engine {record.holder} (host {record.host}, pid {record.pid})"
        log.warning("lease %s/%s: %s; stepping down", self.bucket, self.key, self.lost_reason)
        self._lose()

    def _lose(self) -> None:
        self._holding = False
        self.lost = True
        self.want = False  # the engine must resync before it may lead again

    async def _release(self, kv: Any) -> None:
        try:
            await kv.delete(self.key, last=self._rev)
            log.info("lease %s/%s released", self.bucket, self.key)
        except Exception as err:  # a standby then waits one TTL instead
            log.warning("lease not released (%s); a standby takes over after its TTL", err)
        self._holding = False
