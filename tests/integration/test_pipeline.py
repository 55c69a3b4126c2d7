"""Several atomic batches in flight: each fenced on the end of the one before, settled in order, never twice."""

from __future__ import annotations

from typing import Any

import pytest

from engine.service import EngineService
from protocol.subjects import CMD_STREAM
from tests.integration.harness import assert_log_is_exact, publish_all, read_all, workload


class _NthCommitTimesOut:
    """The real client, except that the nth commit request raises a timeout: after sending it, or instead."""

    def __init__(self, nc: Any, nth: int, *, deliver: bool) -> None:
        self._nc = nc
        self.nth = nth
        self.deliver = deliver
        self.commits = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nc, name)

    async def request(self, subject: str, data: bytes, timeout: float, headers: dict[str, str]) -> Any:
        self.commits += 1
        if self.commits == self.nth:
            if self.deliver:
                await self._nc.request(subject, data, timeout=timeout, headers=headers)
            raise TimeoutError
        return await self._nc.request(subject, data, timeout=timeout, headers=headers)


async def _send_in_slices(service: EngineService, cmds: list[Any], size: int) -> int:
    """One decide_and_send per slice: each slice is its own atomic batch, several of them in flight."""
    peak = 0
    for i in range(0, len(cmds), size):
        await service.decide_and_send(cmds[i : i + size])
        peak = max(peak, service.commits.in_flight)
    await service.drain()
    return peak


async def test_batches_in_flight_all_land_in_order(nc: Any, js: Any) -> None:
    await publish_all(js, workload(200))
    cmds = await read_all(js, CMD_STREAM)
    service = EngineService(nc, inflight=4)
    await service.recover()
    assert await _send_in_slices(service, cmds, 10) == 4  # the pipeline really filled up
    events = await assert_log_is_exact(js)
    assert service.last_evt_seq == events[-1].seq == service.engine.state.event_count


@pytest.mark.parametrize("landed", [True, False], ids=["commit-landed", "commit-lost"])
@pytest.mark.parametrize("nth", [1, 3], ids=["first", "third"])
async def test_an_ambiguous_commit_with_later_batches_in_flight(nc: Any, js: Any, landed: bool, nth: int) -> None:
    """If the lost commit did not land, the batches sent after it were refused by their fence; all are re-sent."""
    await publish_all(js, workload(200))
    cmds = await read_all(js, CMD_STREAM)
    flaky = _NthCommitTimesOut(nc, nth, deliver=landed)
    service = EngineService(flaky, inflight=4)
    await service.recover()
    await _send_in_slices(service, cmds, 10)
    assert flaky.commits > nth
    events = await assert_log_is_exact(js)  # every command's events exactly once, in order
    assert service.last_evt_seq == events[-1].seq == service.engine.state.event_count


async def test_the_fence_is_checked_at_commit_so_frames_may_precede_the_previous_commit(nc: Any, js: Any) -> None:
    """What pipelining relies on: batch B's first message (fenced on A's end) may reach the server before A commits."""
    from engine.commit import batch_frames
    from protocol.errors import parse_puback
    from protocol.streams import ensure_streams
    from protocol.subjects import HDR_BATCH_COMMIT, HDR_BATCH_ID, HDR_BATCH_SEQ

    await ensure_streams(js)
    a = [("jb.wal.M.x", b"a1"), ("jb.wal.M.x", b"a2")]
    b = [("jb.wal.M.x", b"b1"), ("jb.wal.M.x", b"b2")]
    await nc._send_command(batch_frames("A", 0, a[:1]))
    await nc._send_command(batch_frames("B", 2, b[:1]))  # fenced on A's end, which is not committed yet
    commit = {HDR_BATCH_COMMIT: "1", HDR_BATCH_SEQ: "2"}
    ack_a = parse_puback((await nc.request("jb.wal.M.x", b"a2", headers={HDR_BATCH_ID: "A", **commit})).data)
    ack_b = parse_puback((await nc.request("jb.wal.M.x", b"b2", headers={HDR_BATCH_ID: "B", **commit})).data)
    assert (ack_a["seq"], ack_b["seq"]) == (2, 4)
    stored = [(await js.get_msg("JB_EVT", seq)).data for seq in range(1, 5)]
    assert stored == [b"a1", b"a2", b"b1", b"b2"]
