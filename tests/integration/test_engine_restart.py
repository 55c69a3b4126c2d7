"""The engine stopped or killed mid-stream resumes at the first command without events: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from engine.service import EngineService
from protocol.errors import Fenced
from protocol.streams import ensure_streams
from protocol.subjects import EVT_STREAM
from tests.conftest import wait_until
from tests.integration.harness import (
    assert_log_is_exact,
    publish_all,
    read_all,
    running_engine,
    wait_for_command,
    workload,
)  # fmt: skip


async def test_graceful_stop_mid_stream_then_restart(nc: Any, js: Any) -> None:
    last = await publish_all(js, workload(1500))
    first = EngineService(nc, max_batch=25)
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))

    async def partway() -> bool:
        return first.engine.state.last_cmd_seq >= 300

    await wait_until(partway, what="engine to get partway")
    stop.set()
    await task
    stopped_at = first.engine.state.last_cmd_seq
    assert 300 <= stopped_at < last  # it really stopped mid-stream
    async with running_engine(nc) as second:
        await wait_for_command(js, last)
        assert second.engine.state.last_cmd_seq == last
    await assert_log_is_exact(js)


# kill -9 of `jetbook engine` under load, with restarts from snapshots: tests/integration/test_faults.py.


async def test_a_second_writer_is_fenced_by_the_broker(nc: Any, js: Any) -> None:
    await publish_all(js, workload(50))
    from protocol.subjects import CMD_STREAM

    cmds = await read_all(js, CMD_STREAM)
    active, stale = EngineService(nc), EngineService(nc)
    await active.recover()
    await stale.recover()  # both believe JB_EVT is empty
    await active.process(cmds[:30])
    with pytest.raises(Fenced):
        await stale.process(cmds[:30])
    await active.process(cmds[30:])
    await assert_log_is_exact(js)


class _CommitTimesOut:
    """The real client, except that one commit request raises a timeout: after sending it, or instead of it."""

    def __init__(self, nc: Any, *, deliver: bool) -> None:
        self._nc = nc
        self.deliver = deliver
        self.tripped = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nc, name)

    async def request(self, subject: str, data: bytes, timeout: float, headers: dict[str, str]) -> Any:
        if not self.tripped:
            self.tripped = True
            if self.deliver:
                await self._nc.request(subject, data, timeout=timeout, headers=headers)
            raise TimeoutError
        return await self._nc.request(subject, data, timeout=timeout, headers=headers)


@pytest.mark.parametrize("landed", [True, False], ids=["commit-landed", "commit-lost"])
async def test_ambiguous_commit_is_resolved_from_the_stream_tail(nc: Any, js: Any, landed: bool) -> None:
    await publish_all(js, workload(40))
    from protocol.subjects import CMD_STREAM

    cmds = await read_all(js, CMD_STREAM)
    flaky = _CommitTimesOut(nc, deliver=landed)
    service = EngineService(flaky)
    await service.recover()
    await service.process(cmds)
    assert flaky.tripped
    events = await assert_log_is_exact(js)  # written exactly once either way
    assert service.last_evt_seq == events[-1].seq


@pytest.mark.parametrize("landed", [True, False], ids=["write-landed", "write-lost"])
async def test_an_ambiguous_single_event_write_is_resolved_from_the_stream_tail(nc: Any, js: Any, landed: bool) -> None:
    """A one-event write is a plain fenced publish named by Jb-Write-Id: after a timeout the tail says whether it
    landed, and it is never stored twice; the next write, after it, is fenced on its end."""
    from engine.commit import CommitPipeline
    from protocol.subjects import HDR_BATCH_ID, HDR_WRITE_ID

    await ensure_streams(js)
    flaky = _CommitTimesOut(nc, deliver=landed)
    pipeline = CommitPipeline(flaky, js=js)
    await pipeline.send([("jb.wal.M.x", b"one")])
    await pipeline.drain()
    assert flaky.tripped and pipeline.last_seq == 1
    await pipeline.send([("jb.wal.M.x", b"two")])
    await pipeline.drain()
    assert pipeline.last_seq == 2
    stored = [await js.get_msg(EVT_STREAM, seq) for seq in (1, 2)]
    assert [m.data for m in stored] == [b"one", b"two"]
    assert all(HDR_WRITE_ID in (m.headers or {}) and HDR_BATCH_ID not in (m.headers or {}) for m in stored)
    assert (await js.stream_info(EVT_STREAM)).state.messages == 2


async def test_engine_rebuilds_its_state_from_the_log_on_start(nc: Any, js: Any) -> None:
    from engine.core import state_hash

    last = await publish_all(js, workload(400))
    async with running_engine(nc) as live:
        await wait_for_command(js, last)
        live_hash = state_hash(live.engine.state)
    fresh = EngineService(nc)
    await ensure_streams(js)
    await fresh.recover()
    assert state_hash(fresh.engine.state) == live_hash
    assert fresh.engine.state.last_cmd_seq == last


async def test_a_commit_nobody_answers_backs_off_and_obeys_stop(nc: Any, js: Any) -> None:
    """No stream listening on jb.wal.> (a misconfigured or recovering server): retry slowly, stop on request."""
    from engine.commit import Stopping
    from protocol.streams import evt_stream
    from protocol.subjects import CMD_STREAM

    await publish_all(js, workload(5))
    cmds = await read_all(js, CMD_STREAM)
    service = EngineService(nc)
    await service.recover()
    elsewhere = evt_stream()
    elsewhere.subjects = ["jb.nowhere.>"]
    elsewhere.subject_transform = None
    await js.update_stream(elsewhere)
    task = asyncio.create_task(service.process(cmds))

    async def retrying() -> bool:
        return service.commit_retries >= 4

    await wait_until(retrying, what="a few commit retries")
    service.stop.set()
    with pytest.raises(Stopping):
        await asyncio.wait_for(task, 5)
    # 4+ retries with 50 ms doubling took at least 0.75 s; a hot loop would have made thousands.
    assert service.commit_retries < 12
    assert (await js.stream_info(EVT_STREAM)).state.messages == 0
