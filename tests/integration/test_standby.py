"""Two engines on the same streams: one active, one hot standby; the log never forks.

The lease (JB_LEASE) decides who writes; the broker's fence on every JB_EVT
batch is the last guard. Engines run as real `jetbook engine` processes here,
killed with SIGKILL or paused with SIGSTOP, against a real nats-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats

from engine.lease import Lease
from engine.service import EngineService
from events.stream_readers import last_seq
from jetbook.server import EmbeddedServer
from protocol.subjects import CMD_STREAM, EVT_STREAM
from tests.conftest import wait_until
from tests.integration.harness import (
    assert_log_is_exact,
    assert_matches_crash_free,
    jetbook_proc,
    log_has,
    publish_all,
    read_all,
    stop_proc,
    wait_for_command,
    workload,
)  # fmt: skip

TTL = "1.0"


def _lease(url: str, ttl: float = 0.5) -> Lease:
    return Lease(lambda: nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2), ttl=ttl)


async def _held(lease: Lease) -> bool:
    return lease.held()


async def test_the_lease_has_one_holder_and_passes_on_release_or_silence(nats_server: EmbeddedServer) -> None:
    a, b, c = _lease(nats_server.url), _lease(nats_server.url), _lease(nats_server.url)
    for lease in (a, b, c):
        await asyncio.get_running_loop().run_in_executor(None, lease.start)
    try:
        a.want_lease()
        await wait_until(lambda: _held(a), what="a to take the free lease")
        b.want_lease()
        start = a.renewals

        async def several_renewals() -> bool:
            return a.renewals >= start + 6 and b.current_holder == a.holder

        await wait_until(several_renewals, what="a to renew several times while b watches")  # > 1 TTL
        assert a.held() and not b.held() and b.acquisitions == 0
        await a.close(release=True)  # a clean stop hands over at once
        await wait_until(lambda: _held(b), what="b to take the released lease")
        c.want_lease()
        await b.close(release=False)  # as if b died: c waits for its record to go stale
        await wait_until(lambda: _held(c), what="c to take the lease b stopped renewing")
        assert c.acquisitions == 1 and not b.held()
    finally:
        for lease in (a, b, c):
            await lease.close()


def logged(log: Path, text: str) -> Callable[[], Awaitable[bool]]:
    """A wait_until predicate: `text` has appeared in a process's log."""

    async def predicate() -> bool:
        return log_has(log, text)

    return predicate


def _engine(url: str, log: Path, *extra: str) -> Any:
    return jetbook_proc(log, "engine", "--nats-url", url, "--lease-ttl", TTL, *extra)


@contextlib.asynccontextmanager
async def _active_and_standby(url: str, tmp_path: Path) -> AsyncIterator[tuple[Any, Path, Any, Path]]:
    """Engine a active, engine b following as its standby; both stopped (and woken, if paused) at the end."""
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    a = _engine(url, a_log)
    b = None
    try:
        await wait_until(logged(a_log, "active: deciding"), 30, "engine a to become active")
        b = _engine(url, b_log)
        await wait_until(logged(b_log, "standby: following"), 30, "engine b to stand by")
        yield a, a_log, b, b_log
    finally:
        for proc in (a, b):
            if proc is not None:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGCONT)
                stop_proc(proc)


async def test_standby_takes_over_when_the_active_is_killed(
    nats_server: EmbeddedServer, nc: Any, js: Any, tmp_path: Path
) -> None:
    async with _active_and_standby(nats_server.url, tmp_path) as (a, _, _, b_log):
        publisher = asyncio.create_task(publish_all(js, workload(3000, seed=21)))

        async def busy() -> bool:
            return await last_seq(js, EVT_STREAM) >= 1500

        await wait_until(busy, 60, "the active engine to be under load")
        a.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        a.wait()
        await wait_until(logged(b_log, "active: deciding"), 30, "the standby to take over")
        print(f"standby active {time.monotonic() - killed:.2f}s after kill -9 (lease TTL {TTL}s)")
        last = await publisher
        await wait_for_command(js, last, timeout=60)
        assert not log_has(b_log, "replaying JB_EVT from the start")
        await assert_matches_crash_free(js, nc)


async def test_a_paused_active_is_refused_and_steps_down(
    nats_server: EmbeddedServer, nc: Any, js: Any, tmp_path: Path
) -> None:
    async with _active_and_standby(nats_server.url, tmp_path) as (a, a_log, b, b_log):
        commands = workload(4000, seed=22)
        first = await publish_all(js, commands[:1000])
        await wait_for_command(js, first)
        a.send_signal(signal.SIGSTOP)  # past its lease: it cannot renew, and cannot know
        publisher = asyncio.create_task(publish_all(js, commands[1000:3000]))
        await wait_until(logged(b_log, "active: deciding"), 30, "the standby to take over")
        await wait_for_command(js, await publisher, timeout=60)  # b decided them; a holds some of them unsent
        a.send_signal(signal.SIGCONT)
        await wait_until(logged(a_log, "stepping down to standby"), 30, "the woken engine to step down")
        await wait_until(logged(a_log, "standby: following"), 30, "a to follow again")
        await assert_log_is_exact(js)  # no fork, nothing twice
        # The stale engine is now a working hot standby: kill b and a carries on.
        b.send_signal(signal.SIGKILL)
        b.wait()
        last = await publish_all(js, commands[3000:])
        await wait_for_command(js, last, timeout=60)
        assert a.poll() is None
        await assert_matches_crash_free(js, nc)


class _CommitWaits:
    """The real client, except that the first commit waits at a gate: a pause between the lease check and the commit."""

    def __init__(self, nc: Any) -> None:
        self._nc = nc
        self.waiting = asyncio.Event()
        self.gate = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nc, name)

    async def request(self, subject: str, data: bytes, timeout: float, headers: dict[str, str]) -> Any:
        if not self.waiting.is_set():
            self.waiting.set()
            await self.gate.wait()
        return await self._nc.request(subject, data, timeout=timeout, headers=headers)


async def test_a_fence_refusal_is_a_step_down_not_a_crash(nats_server: EmbeddedServer, nc: Any, js: Any) -> None:
    """An engine that passed its lease check and then paused is stopped by the broker's fence, and recovers."""
    paused = _CommitWaits(nc)
    lease = _lease(nats_server.url, ttl=1.0)
    stale = EngineService(paused, lease=lease)
    stop = asyncio.Event()
    task = asyncio.create_task(stale.run(stop))
    try:

        async def active() -> bool:
            return stale.role == "active"

        await wait_until(active, what="the engine to become active")
        last = await publish_all(js, workload(60, seed=23))
        await asyncio.wait_for(paused.waiting.wait(), 15)  # its first batch is staged, the commit held back
        other = EngineService(nc)  # meanwhile another writer appends (as a standby that took over would)
        await other.recover()
        await other.process((await read_all(js, CMD_STREAM))[:40])
        paused.gate.set()

        async def done() -> bool:
            return stale.step_downs == 1 and stale.role == "active" and stale.engine.state.last_cmd_seq == last

        await wait_until(done, 30, "the refused engine to step down, resync, lead again and finish the log")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    await assert_log_is_exact(js)
