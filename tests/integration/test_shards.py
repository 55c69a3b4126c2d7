"""Market shards on a real nats-server: N engines, each deciding its own markets from its own streams (issue 15).

The verdicts: per market, the same fills as one engine deciding everything; every shard's JB_EVT_k holds exactly
what a fresh core of that shard makes of its JB_CMD_k (nothing lost, nothing twice), crash or no crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgpack
import nats
import pytest

from engine.core import Engine
from engine.exchange import shard_app
from engine.metrics import STATUS_SUBJECT
from events.model import Event, Fill, OrderAccepted, Rejected, decode, encode
from events.stream_readers import last_seq
from jetbook.server import EmbeddedServer
from protocol.shards import cmd_stream_name, evt_stream_name, partition
from protocol.streams import ShardsMismatch, ensure_shard_streams, venue_shards
from tests.conftest import wait_until
from tests.integration.harness import (
    jetbook_proc,
    log_has,
    read_all,
    running_engine,
    scatter,
    stop_proc,
    workload,
)

MARKETS = ("M1", "M2", "M3", "M4", "M5")


def _strip(event: Event) -> tuple[Any, ...]:
    """An event without what depends on the stream it was decided from: its command's sequence and time."""
    raw = msgpack.unpackb(encode(event))
    return tuple(sorted((k, repr(v)) for k, v in raw.items() if k not in ("cmd_seq", "ts")))


def _fills_per_market(events: list[Event]) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    for e in events:
        if isinstance(e, Fill):
            out.setdefault(e.market_id, []).append(_strip(e))
    return out


def _one_engine(commands: list[tuple[str, bytes]]) -> list[Event]:
    """One shard deciding the whole log, in publish order: the reference."""
    engine = Engine()
    out: list[Event] = []
    for seq, (subject, data) in enumerate(commands, 1):
        out += engine.handle(seq, 1_000 + seq, subject, data)
    return out


async def _redecide(js: Any, shard: int, shards: int) -> list[bytes]:
    """What a fresh core of shard k makes of JB_CMD_k: the bytes JB_EVT_k must hold."""
    engine = Engine(shard=shard, shards=shards)
    out: list[bytes] = []
    for m in await read_all(js, cmd_stream_name(shard, shards)):
        out += [encode(e) for e in engine.handle(m.seq, m.ts, m.subject, m.data)]
    return out


async def _all_decided(js: Any, shards: int) -> bool:
    """Every command of every JB_CMD_k has its events in JB_EVT_k."""
    for k in range(shards):
        cmd_tail = await last_seq(js, cmd_stream_name(k, shards))
        evt_tail = await last_seq(js, evt_stream_name(k, shards))
        if cmd_tail and (
            not evt_tail or decode((await js.get_msg(evt_stream_name(k, shards), evt_tail)).data).cmd_seq < cmd_tail
        ):
            return False
    return True


async def _publish(js: Any, commands: list[tuple[str, bytes]]) -> None:
    for subject, data in commands:
        await js.publish_async(subject, data)
    await js.publish_async_completed()


@pytest.fixture
def venue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[EmbeddedServer, int]]:
    shards = request.param
    server = EmbeddedServer(tmp_path / "nats", port=0, shards=shards)
    server.start()
    yield server, shards
    server.stop()


@contextlib.asynccontextmanager
async def _engines(nc: Any, shards: int) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for k in range(shards):
            await stack.enter_async_context(running_engine(nc, app=shard_app(k, shards), snapshot_every=0))
        yield


@pytest.mark.parametrize("venue", [2, 3], indirect=True)
async def test_shards_give_the_fills_of_one_engine_and_keep_to_their_markets(venue: tuple[EmbeddedServer, int]) -> None:
    server, shards = venue
    commands = workload(400, seed=15, markets=MARKETS)
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    try:
        await ensure_shard_streams(js, shards)
        assert await venue_shards(js) == shards
        async with _engines(nc, shards):
            await _publish(js, commands)
            # A trader publishing straight to a shard that does not decide M1 (permissions allow it: they are
            # checked on the mapped subject) is refused there, deterministically.
            wrong = (partition("M1", shards) + 1) % shards
            body = msgpack.packb(
                {"type": "place_order", "client_order_id": "x", "side": "buy", "price": 1000, "qty": 1}
            )
            ack = await js.publish(f"jbs.{wrong}.cmd.M1.a", body)
            assert ack.stream == cmd_stream_name(wrong, shards)
            await wait_until(lambda: _all_decided(js, shards), 30, "every shard to decide its commands")
        events: list[Event] = []
        for k in range(shards):
            stored = await read_all(js, evt_stream_name(k, shards))
            assert [m.data for m in stored] == await _redecide(js, k, shards)  # exact: nothing lost or twice
            mine = [decode(m.data) for m in stored]
            refused = [e for e in mine if isinstance(e, Rejected) and e.reason == "wrong_shard"]
            assert [(e.market_id, e.account_id, e.client_order_id) for e in refused] == (
                [("M1", "a", "x")] if k == wrong else []
            )
            # A market's events all come from its own shard; its subject is jb.evt.<m>.<kind> as ever.
            assert {e.market_id for e in mine if e not in refused} <= {m for m in MARKETS if partition(m, shards) == k}
            assert all(m.subject.startswith("jb.evt.") for m in stored)
            events += [e for e in mine if e not in refused]
        reference = _fills_per_market(_one_engine(commands))
        assert reference and _fills_per_market(events) == reference
    finally:
        await nc.close()


@pytest.mark.parametrize("venue", [3], indirect=True)
async def test_a_cancel_all_over_every_market_reaches_every_shard(venue: tuple[EmbeddedServer, int]) -> None:
    server, shards = venue
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    try:
        await ensure_shard_streams(js, shards)
        async with _engines(nc, shards):
            await _publish(js, [c for c in workload(200, seed=3, markets=MARKETS)])
            await wait_until(lambda: _all_decided(js, shards), 30, "the workload to be decided")
            await js.publish("jb.cmd._all.a", msgpack.packb({"type": "cancel_all"}))

            async def everywhere() -> bool:
                for k in range(shards):
                    cmds = await read_all(js, cmd_stream_name(k, shards))
                    if not any(m.subject == "jb.cmd._all.a" for m in cmds):
                        return False
                return await _all_decided(js, shards)

            await wait_until(everywhere, 30, "the cancel_all to be decided in every shard")
        for k in range(shards):
            # One command per shard, atomic there: account a has no open order left in this shard's markets.
            engine = Engine(shard=k, shards=shards)
            for m in await read_all(js, evt_stream_name(k, shards)):
                engine.apply(decode(m.data))
            opened = [
                o for market in engine.state.markets.values() for o in market.open_orders(lambda o: o.account_id == "a")
            ]
            assert engine.state.markets and not opened
    finally:
        await nc.close()


@pytest.mark.parametrize("venue", [2], indirect=True)
async def test_a_venue_refuses_another_shard_count(venue: tuple[EmbeddedServer, int]) -> None:
    server, shards = venue
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    try:
        assert await venue_shards(js) is None
        await ensure_shard_streams(js, shards)
        with pytest.raises(ShardsMismatch, match="created with 2 shard"):
            await ensure_shard_streams(js, 3)
        with pytest.raises(ShardsMismatch):
            await shard_app(0, 1).ensure_streams(js, 1)  # type: ignore[misc]  # a one-shard engine on a sharded venue
    finally:
        await nc.close()


@pytest.mark.parametrize("venue", [2], indirect=True)
async def test_kill_9_of_one_shard_leaves_the_other_trading_and_its_standby_takes_over(
    venue: tuple[EmbeddedServer, int], tmp_path: Path
) -> None:
    server, shards = venue
    url = server.url
    victim = partition("M1", shards)
    nc = await nats.connect(url)
    js = nc.jetstream()
    logs = {name: tmp_path / f"{name}.log" for name in ("a", "b", "other")}
    args = ("engine", "--nats-url", url, "--lease-ttl", "1.0", "--shards", str(shards))
    procs: list[Any] = []
    try:
        procs.append(a := jetbook_proc(logs["a"], *args, "--shard", str(victim)))
        procs.append(jetbook_proc(logs["other"], *args, "--shard", str(1 - victim)))
        procs.append(jetbook_proc(logs["b"], *args, "--shard", str(victim), "--standby"))
        for name in ("a", "other"):
            await wait_until(lambda n=name: _logged(logs[n], "active: deciding"), 30, f"engine {name} active")
        await wait_until(lambda: _logged(logs["b"], "standby: following"), 30, "the standby to follow")
        commands = workload(1500, seed=9, markets=("M1", "M2", "M3", "M4"))
        victim_evt, other_evt = evt_stream_name(victim, shards), evt_stream_name(1 - victim, shards)
        publisher = asyncio.create_task(_publish(js, commands[:800]))

        async def busy() -> bool:
            return await last_seq(js, victim_evt) >= 100

        await wait_until(busy, 60, "the victim's shard under load")
        b = procs[2]
        b.send_signal(signal.SIGSTOP)  # so that the victim's shard stays down until we have looked
        a.send_signal(signal.SIGKILL)
        a.wait()
        await publisher
        before = await last_seq(js, other_evt)
        await _publish(js, commands[800:])

        async def other_done() -> bool:
            cmd = await last_seq(js, cmd_stream_name(1 - victim, shards))
            tail = await last_seq(js, other_evt)
            return decode((await js.get_msg(other_evt, tail)).data).cmd_seq == cmd

        await wait_until(other_done, 30, "the other shard to decide its half while the victim is down")
        assert await last_seq(js, other_evt) > before
        assert not await _all_decided(js, shards)  # the victim's shard has commands nobody decided yet
        b.send_signal(signal.SIGCONT)
        await wait_until(lambda: _logged(logs["b"], "active: deciding"), 30, "the standby to take over")
        await wait_until(lambda: _all_decided(js, shards), 60, "every command decided")
        # Every shard's engines answer on the one status subject, each naming the log it decides.
        statuses = await scatter(nc, STATUS_SUBJECT, 2)
        assert sorted((s["evt_stream"], s["cmd_stream"], s["app"], s["role"]) for s in statuses) == sorted(
            (evt_stream_name(k, shards), cmd_stream_name(k, shards), shard_app(k, shards).name, "active")
            for k in (victim, 1 - victim)
        )
        events: list[Event] = []
        for k in range(shards):
            stored = await read_all(js, evt_stream_name(k, shards))
            assert [m.data for m in stored] == await _redecide(js, k, shards)  # crash-free bytes
            events += [decode(m.data) for m in stored]
        assert _fills_per_market(events) == _fills_per_market(_one_engine(commands))
        assert any(isinstance(e, OrderAccepted) for e in events)
    finally:
        for proc in procs:
            stop_proc(proc)
        await nc.close()


async def _logged(log: Path, text: str) -> bool:
    return log_has(log, text)
