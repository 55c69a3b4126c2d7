"""Each role as a coroutine: what `jetbook engine` and `jetbook project` run, and what tests run in-process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from engine.core import CHECKPOINT_EVERY
from engine.lease import DEFAULT_TTL_S, Lease
from engine.service import DEFAULT_SNAPSHOT_EVERY, EngineService
from jetbook.wiring import close_quietly, connect
from projections.fanout import FanOut
from projections.runner import ProjectionRunner
from protocol.streams import wait_for_stream
from protocol.subjects import EVT_STREAM

log = logging.getLogger("jetbook")


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
) -> None:
    """Active or hot standby, whichever the lease makes it; a second `jetbook engine` is a standby."""
    nc = await connect(url, "jetbook-engine", role="engine")
    lease = Lease(lambda: connect(url, "jetbook-engine-lease", role="engine"), ttl=lease_ttl, replicas=replicas)
    service = EngineService(
        nc, replicas=replicas, snapshot_every=snapshot_every, checkpoint_every=checkpoint_every, lease=lease
    )
    reporter = asyncio.create_task(_report("commands applied", lambda: service.commands_done, stop))
    try:
        await service.run(stop)
    finally:
        stop.set()
        await reporter
        await close_quietly(nc)


async def project_role(url: str, db: Path, stop: asyncio.Event, from_seq: int | None = None) -> None:
    nc = await connect(url, "jetbook-projection", role="projection")
    js = nc.jetstream()
    if not await wait_for_stream(js, EVT_STREAM, stop):
        await close_quietly(nc)
        return
    runner = ProjectionRunner(js, db, from_seq=from_seq)
    reporter = asyncio.create_task(_report("projection position", lambda: runner.position, stop))
    try:
        await runner.run(stop)
    finally:
        stop.set()
        await reporter
        await close_quietly(nc)


async def fanout_role(url: str, stop: asyncio.Event, replicas: int = 1) -> None:
    """The private feeds: each account's own events on jb.acct.<account>.>, the public tape on jb.tape.<market>."""
    nc = await connect(url, "jetbook-fanout", role="fanout")
    if not await wait_for_stream(nc.jetstream(), EVT_STREAM, stop):
        await close_quietly(nc)
        return
    fanout = FanOut(nc, replicas=replicas)
    try:
        await fanout.run(stop)
    finally:
        stop.set()
        await close_quietly(nc)
