"""Market shards on a real nats-server: the broker routes each market where `protocol.shards.partition` says.

The engine will refuse a command outside its shard by computing the same
partition, so the Python function must agree with the server's mapping for
every id, which these tests check with the server's own routing.
"""

from __future__ import annotations

import random
import string
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from jetbook.server import EmbeddedServer
from protocol.shards import cmd_stream_name, evt_stream_name, mappings, partition, wal_prefix
from protocol.streams import ensure_stream_configs, shard_cmd_stream, shard_evt_stream
from protocol.subjects import CMD_STREAM, EVT_STREAM
from tests.conftest import wait_until


def _ids(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + "-_"
    ids = ["eth-usdc", "btc-usdc", "SOCCER-1", "_x", "a", "Z" * 64]
    while len(ids) < n:
        ids.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 64))))
    return ids


def test_one_shard_keeps_the_names_of_before() -> None:
    assert (cmd_stream_name(0, 1), evt_stream_name(0, 1), mappings(1)) == (CMD_STREAM, EVT_STREAM, {})
    assert all(partition(m, 1) == 0 for m in _ids(20, 1))


@pytest.fixture(params=[2, 3])
def sharded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[EmbeddedServer, int]]:
    server = EmbeddedServer(tmp_path / "nats", port=0, shards=request.param)
    server.start()
    yield server, request.param
    server.stop()


@pytest.fixture
async def sharded_js(sharded: tuple[EmbeddedServer, int]) -> AsyncIterator[tuple[Any, Any, int]]:
    server, shards = sharded
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    # In any order: a stream may source from one that does not exist yet.
    configs = [shard_cmd_stream(k, shards) for k in range(shards)]
    configs += [shard_evt_stream(k, shards) for k in range(shards)]
    await ensure_stream_configs(js, configs)
    yield nc, js, shards
    await nc.close()


async def test_each_market_lands_in_the_shard_partition_names(sharded_js: tuple[Any, Any, int]) -> None:
    _, js, shards = sharded_js
    seen: set[int] = set()
    for market in _ids(60, seed=shards):
        for subject in (f"jb.cmd.{market}.alice", f"jb.ctl.{market}"):
            ack = await js.publish(subject, b"\x80")
            assert ack.stream == cmd_stream_name(partition(market, shards), shards), (market, subject)
            # Stored under the subject the client used: the engine parses what it always parsed.
            stored = await js.get_msg(ack.stream, ack.seq)
            assert stored.subject == subject
        seen.add(partition(market, shards))
    assert seen == set(range(shards))  # the ids exercise every shard


async def test_an_all_markets_command_reaches_every_shard(sharded_js: tuple[Any, Any, int]) -> None:
    _, js, shards = sharded_js
    await js.publish("jb.cmd._all.alice", b"\x81\xa4type\xaacancel_all")

    async def everywhere() -> bool:
        for k in range(shards):
            info = await js.stream_info(cmd_stream_name(k, shards))
            if info.state.messages != 1:
                return False
            if (await js.get_msg(cmd_stream_name(k, shards), info.state.last_seq)).subject != "jb.cmd._all.alice":
                return False
        return True

    await wait_until(everywhere, what="the _all command in every shard's command stream, once")


async def test_shard_events_keep_their_subjects(sharded_js: tuple[Any, Any, int]) -> None:
    nc, js, shards = sharded_js
    live = await nc.subscribe("jb.evt.>")
    for k in range(shards):
        ack = await js.publish(f"{wal_prefix(k, shards)}.m{k}.fill", b"\x80")
        assert ack.stream == evt_stream_name(k, shards)
        assert (await js.get_msg(ack.stream, ack.seq)).subject == f"jb.evt.m{k}.fill"
    got = sorted([(await live.next_msg(timeout=5)).subject for _ in range(shards)])
    assert got == sorted(f"jb.evt.m{k}.fill" for k in range(shards))
