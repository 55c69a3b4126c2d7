"""Readers accept only their own stream's deliveries, in order: a consumer aimed at another's inbox changes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from nats.js.api import ConsumerConfig, DeliverPolicy

from engine.exchange import APP as EXCHANGE
from events.stream_readers import StreamReader, last_seq
from jetbook.roles import project_role
from projections.runner import ProjectionRunner
from protocol.streams import ensure_streams
from protocol.subjects import CMD_STREAM, EVT_STREAM
from replay.hashing import db_content_hash
from tests.conftest import wait_until
from tests.integration.harness import assert_log_is_exact, publish_all, running_engine, wait_for_command, workload
from tests.integration.harness import projection_position as position


async def _aim(js: Any, stream: str, inbox: str, start: int | None = None) -> None:
    """What any user allowed to create a consumer can do: deliver a stream into another reader's inbox."""
    config = ConsumerConfig(deliver_subject=inbox, deliver_policy=DeliverPolicy.ALL)
    if start is not None:
        config = ConsumerConfig(
            deliver_subject=inbox, deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
        )
    await js.add_consumer(stream, config)


async def test_foreign_consumers_aimed_at_an_idle_engines_inbox_change_nothing(nc: Any, js: Any) -> None:
    """An idle engine's reader expects consumer sequence 1, so a fresh foreign consumer's deliveries look in order."""
    commands = workload(600, seed=11)
    first = await publish_all(js, commands[:300])
    async with running_engine(nc):
        await wait_for_command(js, first)
    async with running_engine(nc) as engine:  # restarted, caught up, idle

        async def reading() -> bool:
            return engine.cmd_reader is not None

        await wait_until(reading, what="the engine to start reading JB_CMD")
        assert engine.cmd_reader is not None
        inbox = engine.cmd_reader.inbox
        await _aim(js, EVT_STREAM, inbox)  # the whole event log, as if it were commands
        await _aim(js, CMD_STREAM, inbox)  # old commands again

        async def refused_some() -> bool:
            return engine.cmd_reader is not None and engine.cmd_reader.dropped >= 100

        await wait_until(refused_some, what="the engine's reader to refuse the foreign deliveries")
        last = await publish_all(js, commands[300:])
        await wait_for_command(js, last)
    await assert_log_is_exact(js)  # every command once, in order, and nothing else


async def test_a_forward_jump_is_refused_and_the_reader_reads_again_from_where_it_is(js: Any) -> None:
    for i in range(5):
        await js.publish(f"jb.cmd.M.a{i}", b"x")
    async with StreamReader(js, CMD_STREAM, 1) as reader:
        got = [m.seq for m in await _take(reader, 5)]
        # What a foreign consumer of the same stream, started further on, delivers.
        forged = SimpleNamespace(subject="jb.cmd.M.z", data=b"forged", headers=None,
                                 reply="$JS.ACK.JB_CMD.someone.1.40.1.1.0")  # fmt: skip
        await reader._on_msg(forged)
        assert reader.dropped == 1
        for i in range(5, 10):
            await js.publish(f"jb.cmd.M.a{i}", b"x")
        got += [m.seq for m in await _take(reader, 5)]
    assert got == list(range(1, 11))


async def _take(reader: StreamReader, n: int) -> list[Any]:
    out: list[Any] = []

    async def enough() -> bool:
        out.extend(await reader.next_batch(n - len(out), timeout=0.05))
        return len(out) >= n

    await wait_until(enough, what=f"{n} messages")
    return out


async def test_a_projection_started_before_the_streams_exist_waits_for_them(nc: Any, tmp_path: Path) -> None:

    js = nc.jetstream()
    url = nc.connected_url.geturl()
    db = tmp_path / "rm.db"
    stop = asyncio.Event()
    projection = asyncio.create_task(project_role(url, db, stop))
    await ensure_streams(js)
    last = await publish_all(js, workload(200, seed=13))
    async with running_engine(nc):
        await wait_for_command(js, last)
    end = await last_seq(js, EVT_STREAM)

    async def caught_up() -> bool:
        return position(db) == end

    await wait_until(caught_up, what="the early projection to catch up")
    stop.set()
    await projection
    rebuilt = tmp_path / "rebuilt.db"
    await ProjectionRunner(EXCHANGE, js, rebuilt, from_seq=0).run(asyncio.Event(), until_seq=end)
    assert db_content_hash(db) == db_content_hash(rebuilt)
