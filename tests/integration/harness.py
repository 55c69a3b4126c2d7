"""Helpers for integration tests: run roles in-process, read whole streams, re-decide the command log."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from commands.subjects import CMD_STREAM, EVT_STREAM
from engine.core import Engine
from engine.service import EngineService
from events.model import encode
from events.reader import RawMsg, StreamReader, last_seq, read_to_end
from projections.runner import ProjectionRunner
from tests.conftest import wait_until


@contextlib.asynccontextmanager
async def running_engine(nc: Any) -> AsyncIterator[EngineService]:
    service = EngineService(nc)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def running_projection(js: Any, db: Path) -> AsyncIterator[ProjectionRunner]:
    runner = ProjectionRunner(js, db)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        yield runner
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def read_all(js: Any, stream: str) -> list[RawMsg]:
    if not await last_seq(js, stream):
        return []
    async with StreamReader(js, stream, 1) as reader:
        return [m for batch in await read_to_end(reader) for m in batch]


async def wait_for_command(js: Any, cmd_seq: int, timeout: float = 20.0) -> None:
    """Until JB_EVT holds the events of command `cmd_seq` (every command has at least one)."""
    from events.model import decode

    async def done() -> bool:
        seq = await last_seq(js, EVT_STREAM)
        if not seq:
            return False
        msg = await js.get_msg(EVT_STREAM, seq)
        return decode(msg.data).cmd_seq >= cmd_seq

    await wait_until(done, timeout, f"events of command {cmd_seq}")


async def redecide(js: Any) -> list[bytes]:
    """Every command of JB_CMD through a fresh core: the event bytes JB_EVT must hold."""
    engine = Engine()
    out: list[bytes] = []
    for m in await read_all(js, CMD_STREAM):
        out += [encode(e) for e in engine.handle(m.seq, m.ts, m.subject, m.data)]
    return out


async def assert_log_is_exact(js: Any) -> list[RawMsg]:
    """JB_EVT equals the re-decided command log byte for byte: nothing missing, nothing twice."""
    events = await read_all(js, EVT_STREAM)
    assert [m.data for m in events] == await redecide(js)
    return events


def workload(n: int, seed: int = 1, markets: tuple[str, ...] = ("M1", "M2")) -> list[tuple[str, bytes]]:
    """A seeded command log: markets first, then places around a mid and cancels of earlier ids."""
    import random

    import msgpack

    rng = random.Random(seed)
    out = [(f"jb.ctl.{m}", msgpack.packb({"type": "create_market", "market_id": m, "base": "B", "quote": "Q"}))
           for m in markets]  # fmt: skip
    placed: dict[str, int] = dict.fromkeys(markets, 0)
    for i in range(n):
        m = rng.choice(markets)
        account = rng.choice(["a", "b", "c", "d"])
        if placed[m] and rng.random() < 0.25:
            body = {"type": "cancel_order", "order_id": rng.randint(1, placed[m])}
        else:
            placed[m] += 1
            body = {"type": "place_order", "client_order_id": f"w{i}", "side": rng.choice(["buy", "sell"]),
                    "price": rng.randint(990, 1010), "qty": rng.randint(1, 20)}  # fmt: skip
        out.append((f"jb.cmd.{m}.{account}", msgpack.packb(body)))
    return out


async def publish_all(js: Any, commands: list[tuple[str, bytes]]) -> int:
    """Publish in order with acks pipelined; returns the last command's sequence."""
    for subject, data in commands:
        await js.publish_async(subject, data)
    await js.publish_async_completed()
    return await last_seq(js, CMD_STREAM)
