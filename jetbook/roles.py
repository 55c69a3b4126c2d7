"""Each role as a coroutine: what `jetbook engine` and `jetbook project` run, and what tests run in-process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from engine.core import CHECKPOINT_EVERY
from engine.exchange import APP as EXCHANGE
from engine.exchange import shard_app
from engine.lease import DEFAULT_TTL_S, Lease, lease_bucket
from engine.metrics import register_engine, serve_metrics
from engine.service import DEFAULT_SNAPSHOT_EVERY, EngineService
from events.stream_readers import last_seq
from jetbook.wiring import close_quietly, connect
from projections.fanout import FanOut
from projections.metrics import register_fanout, register_projection
from projections.runner import ProjectionRunner
from protocol.streams import ShardsMismatch, venue_shards_from_events

log = logging.getLogger("jetbook")

DEFAULT_METRICS_HOST = "127.0.0.1"


@contextlib.contextmanager
def metrics_served(what: str, port: int, registry: Any, host: str = DEFAULT_METRICS_HOST) -> Iterator[None]:
    """/metrics of `registry` on host:port while the role runs (port 0: not served)."""
    if not port:
        yield
        return
    try:
        server = serve_metrics(port, registry, host)
    except OSError as err:  # a busy port must not stop the exchange: run without /metrics, and say so loudly
        log.error("%s: /metrics NOT served, %s:%d: %s", what, host, port, err)
        yield
        return
    log.info("%s metrics on http://%s:%d/metrics", what, host, port)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


MICRO_STOP_S = 2.0


async def _unregister(service: Any) -> None:
    if service is not None:
        # The connection may be gone already (the service dies with it): a stop that cannot reach the server
        # must not hold up the role's exit.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(service.stop(), MICRO_STOP_S)


async def _report(what: str, count: Callable[[], int], stop: asyncio.Event, every: float = 5.0) -> None:
    last = count()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        now = count()
        if now != last:
            log.info("%s: %d (+%d, %.0f/s)", what, now, now - last, (now - last) / every)
            last = now


async def engine_role(
    url: str,
    stop: asyncio.Event,
    replicas: int = 1,
    *,
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
    checkpoint_every: int = CHECKPOINT_EVERY,
    lease_ttl: float = DEFAULT_TTL_S,
    metrics_port: int = 0,
    metrics_host: str = DEFAULT_METRICS_HOST,
    shard: int = 0,
    shards: int = 1,
    standby: bool = False,
) -> None:
    """Active or hot standby, whichever the lease makes it; a second `jetbook engine` is a standby.

    Shard `shard` of `shards` (engine.exchange.shard_app): its own streams, snapshots and lease key. With
    `standby` it joins only once another engine holds its shard's lease, so it never becomes the active one
    by starting first. It registers as the nats.micro service `jetbook-engine` (status on
    jb.svc.engine.status), and serves /metrics on metrics_host:metrics_port when a port is given.
    """
    app = shard_app(shard, shards)
    name = "jetbook-engine" if shards == 1 else f"jetbook-engine-{shard}"
    nc = await connect(url, name, role="engine")
    if standby and not await _lease_held(nc, app.streams.lease_bucket, app.streams.lease_key, replicas, stop):
        await close_quietly(nc)
        return
    lease = Lease(
        lambda: connect(url, f"{name}-lease", role="engine"), ttl=lease_ttl, replicas=replicas,
        key=app.streams.lease_key, bucket=app.streams.lease_bucket,
    )  # fmt: skip
    service = EngineService(
        nc, replicas=replicas, snapshot_every=snapshot_every, checkpoint_every=checkpoint_every, lease=lease, app=app
    )
    reporter = asyncio.create_task(_report("commands applied", lambda: service.commands_done, stop))
    micro = None
    try:
        with metrics_served("engine", metrics_port, service.metrics.registry, metrics_host):
            micro = await register_engine(nc, service.metrics)
            await service.run(stop)
    finally:
        stop.set()
        await reporter
        await _unregister(micro)
        await close_quietly(nc)


async def wait_for_venue(
    js: Any,
    stop: asyncio.Event,
    shards: int | None = None,
    probe: Callable[[Any], Awaitable[int | None]] = venue_shards_from_events,
) -> int | None:
    """The venue's shard count once its streams exist (None if stopped first); ShardsMismatch when `shards`
    is given and the venue was made with another count. Readers follow whatever the engines created.

    `probe`: how this reader may ask (its permissions): from the event streams (projection, fan-out), or from
    the command streams (protocol.streams.venue_shards: the query service, which reads JB_CMD's tail).
    """
    announced = False
    while not stop.is_set():
        found = await probe(js)
        if found is not None:
            if shards is not None and found != shards:
                raise ShardsMismatch(found, shards)
            return found
        if not announced:
            log.info("waiting for the venue's event streams (start the engine or `jetbook up`)")
            announced = True
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass
    return None


async def _lease_held(nc: Any, bucket: str, key: str, replicas: int, stop: asyncio.Event) -> bool:
    """Wait until someone holds the lease `key` (a record that is not a release); False if stopped first."""
    kv = await lease_bucket(nc.jetstream(), replicas, bucket)
    announced = False
    while not stop.is_set():
        with contextlib.suppress(Exception):  # no key yet, or a deleted one: nobody holds it
            entry = await kv.get(key)
            if entry.value:
                return True
        if not announced:
            log.info("standby: waiting for an active engine to hold the lease %s", key)
            announced = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
    return False


async def project_role(
    url: str,
    db: Path,
    stop: asyncio.Event,
    from_seq: int | None = None,
    *,
    metrics_port: int = 0,
    metrics_host: str = DEFAULT_METRICS_HOST,
    shards: int | None = None,
) -> None:
    """A projection worker, registered as the nats.micro service `jetbook-projection`; /metrics when given a port.

    It follows every shard's event stream (the count found with venue_shards unless `shards` is given).
    """
    nc = await connect(url, "jetbook-projection", role="projection")
    js = nc.jetstream()
    found = await wait_for_venue(js, stop, shards)
    if found is None:
        await close_quietly(nc)
        return
    runner = ProjectionRunner(EXCHANGE, js, db, from_seq=from_seq, shards=found)

    async def tails() -> dict[str, int]:
        return {s: await last_seq(js, s) for s in runner.streams}

    reporter = asyncio.create_task(_report("projection position", lambda: runner.position, stop))
    sampler = asyncio.create_task(runner.metrics.sample_lag(tails, stop))
    micro = None
    try:
        with metrics_served("projection", metrics_port, runner.metrics.registry, metrics_host):
            micro = await register_projection(nc, runner.metrics)
            await runner.run(stop)
    finally:
        stop.set()
        await reporter
        await sampler
        await _unregister(micro)
        await close_quietly(nc)


async def fanout_role(
    url: str, stop: asyncio.Event, replicas: int = 1, *, metrics_port: int = 0, metrics_host: str = DEFAULT_METRICS_HOST
) -> None:
    """The private feeds: each account's own events on jb.acct.<account>.>, the public tape on jb.tape.<market>."""
    nc = await connect(url, "jetbook-fanout", role="fanout")
    shards = await wait_for_venue(nc.jetstream(), stop)
    if shards is None:
        await close_quietly(nc)
        return
    fanout = FanOut(nc, replicas=replicas, shards=shards)
    micro = None
    try:
        with metrics_served("fan-out", metrics_port, fanout.metrics.registry, metrics_host):
            micro = await register_fanout(nc, fanout.metrics)
            await fanout.run(stop)
    finally:
        stop.set()
        await _unregister(micro)
        await close_quietly(nc)
