"""Forged events in JB_EVT are found as the log is folded: CorruptLog naming the sequence, never a bare exception.

The server here has no permissions (as `jetbook up --insecure`), so anyone may
publish on jb.wal.>. Preventing that is the permissions' job; these tests are
about detection: the engine's recovery, the projection, and `replay` (verify,
rebuild, at) each stop at the forged event and say which one it is.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from engine.exchange import APP as EXCHANGE
from engine.service import EngineService
from events.model import Event, Fill, OrdersAccepted, Rejected, decode, encode
from events.stream_readers import last_seq
from projections.runner import ProjectionRunner
from protocol.errors import CorruptLog
from protocol.subjects import EVT_STREAM, wal_subject
from replay.at import state_at
from replay.rebuild import RebuildError, rebuild
from replay.verify import verify
from tests.integration.harness import publish_all, running_engine, wait_for_command, workload


async def _decided_log(nc: Any, js: Any, n: int = 120) -> int:
    """A real log of `n` commands; the cmd_seq of its newest event."""
    last = await publish_all(js, workload(n, seed=41))
    async with running_engine(nc):
        await wait_for_command(js, last)
    tail = await js.get_msg(EVT_STREAM, await last_seq(js, EVT_STREAM))
    return decode(tail.data).cmd_seq


async def _forge(js: Any, event: Event) -> int:
    ack = await js.publish(wal_subject(event.market_id, event.type), encode(event))
    return int(ack.seq)


def _fill(cmd_seq: int) -> Fill:
    return Fill(
        market_id="M1",
        cmd_seq=cmd_seq,
        ts=1,
        trade_id=10**6,
        price=1000,
        qty=5,
        maker_order_id=999_998,
        taker_order_id=999_999,
        maker_account="a",
        taker_account="b",
        taker_side="buy",
        maker_client_order_id="x",
        taker_client_order_id="y",
        maker_remaining=0,
        taker_remaining=0,
        runner=None,
    )


def _rejected(cmd_seq: int) -> Rejected:
    return Rejected(
        market_id="M1",
        cmd_seq=cmd_seq,
        ts=1,
        reason="forged",  # type: ignore[arg-type]  # not a reason the engine has: a forged event
        detail="forged",
        account_id="a",
        command_type="place_order",
    )


async def _every_reader_names(nc: Any, js: Any, forged: int, tmp_path: Path, *, projection: bool = True) -> None:
    """The engine (recovery, and a run), the projection and replay all stop on JB_EVT `forged`."""
    with pytest.raises(CorruptLog) as recovering:
        await EngineService(nc, snapshot_every=0).recover()
    assert recovering.value.seq == forged, recovering.value
    with pytest.raises(CorruptLog) as running:
        await asyncio.wait_for(EngineService(nc, snapshot_every=0).run(asyncio.Event()), 20)
    assert running.value.seq == forged
    if projection:
        with pytest.raises(CorruptLog) as projecting:
            await asyncio.wait_for(ProjectionRunner(EXCHANGE, js, tmp_path / "rm.db").run(asyncio.Event()), 20)
        assert projecting.value.seq == forged, projecting.value
        with pytest.raises(RebuildError, match=f"CorruptLog {forged}"):
            await rebuild(js, tmp_path / "rebuilt.db")
        with pytest.raises(CorruptLog) as at:
            await state_at(js, forged)
        assert at.value.seq == forged
    result = await verify(js)
    assert not result.identical and result.divergence is not None
    assert result.divergence.evt_seq == forged, result.divergence


async def test_a_forged_fill_of_an_unknown_order(nc: Any, js: Any, tmp_path: Path) -> None:
    cmd = await _decided_log(nc, js)
    forged = await _forge(js, _fill(cmd))  # of the newest command: its cmd_seq is in order
    await _every_reader_names(nc, js, forged, tmp_path)


async def test_a_forged_reject_ahead_of_the_command_log(nc: Any, js: Any, tmp_path: Path) -> None:
    cmd = await _decided_log(nc, js)
    forged = await _forge(js, _rejected(cmd + 20))  # twenty commands would be skipped
    await _every_reader_names(nc, js, forged, tmp_path)


async def test_a_forged_reject_of_the_next_command_before_it_exists(nc: Any, js: Any, tmp_path: Path) -> None:
    cmd = await _decided_log(nc, js)
    forged = await _forge(js, _rejected(cmd + 1))
    # In order along JB_EVT, so a reader of JB_EVT alone cannot tell; the engine compares with JB_CMD's end,
    # and verify finds an event that no command produces.
    await _every_reader_names(nc, js, forged, tmp_path, projection=False)


async def test_a_forged_event_of_an_earlier_command(nc: Any, js: Any, tmp_path: Path) -> None:
    cmd = await _decided_log(nc, js)
    forged = await _forge(js, _rejected(cmd - 5))  # cmd_seq going backwards: a command decided twice
    await _every_reader_names(nc, js, forged, tmp_path)


@pytest.mark.parametrize("orders", [[[1, "x"]], [7], "junk"])
async def test_a_forged_orders_accepted_with_odd_rows(nc: Any, js: Any, tmp_path: Path, orders: Any) -> None:
    """v1.3: a row that is not an order_accepted's ten columns stops every reader at that event, by name."""
    cmd = await _decided_log(nc, js)
    forged = await _forge(js, OrdersAccepted(market_id="M1", cmd_seq=cmd, ts=1, account_id="a", orders=orders))
    await _every_reader_names(nc, js, forged, tmp_path)
