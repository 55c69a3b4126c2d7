"""Hostile bytes on the wire: subjects and headers nats-py cannot decode, published through a raw socket.

The server stores any subject token but space, tab, CR and LF, and any header
bytes, so JB_CMD can hold what no well-behaved client would send. Every reader
(the engine, the projection, replay) must take such a message in, and the engine
must decide it (a `rejected`) and go on deciding the next command.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import msgpack
import pytest

from events.model import decode
from events.stream_readers import last_seq
from protocol.subjects import CMD_STREAM, EVT_STREAM
from replay.verify import verify
from tests.conftest import wait_until
from tests.integration.harness import (
    assert_log_is_exact,
    projection_position,
    publish_all,
    running_engine,
    running_projection,
    wait_for_command,
)  # fmt: skip

MARKET = [("jb.ctl.M", msgpack.packb({"type": "create_market", "market_id": "M", "base": "B", "quote": "Q"}))]
ORDER = msgpack.packb({"type": "place_order", "client_order_id": "ok1", "side": "buy", "price": 1000, "qty": 1})
FINAL = msgpack.packb({"type": "place_order", "client_order_id": "final", "side": "buy", "price": 1000, "qty": 1})


async def raw_publish(nc: Any, frames: list[tuple[bytes, bytes | None, bytes]]) -> None:
    """(subject, header block or None, payload) as PUB/HPUB frames on a plain TCP socket, then a PING round trip."""
    url = nc.connected_url
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n')
        for subject, headers, payload in frames:
            if headers is None:
                writer.write(b"PUB %s %d\r\n%s\r\n" % (subject, len(payload), payload))
            else:
                total = len(headers) + len(payload)
                writer.write(b"HPUB %s %d %d\r\n%s%s\r\n" % (subject, len(headers), total, headers, payload))
        writer.write(b"PING\r\n")
        await writer.drain()
        while True:
            line = await asyncio.wait_for(reader.readline(), 10)
            assert not line.startswith(b"-ERR"), line
            if line.startswith(b"PONG") or not line:
                break
    finally:
        writer.close()
        await writer.wait_closed()


async def decided_after_hostile(nc: Any, js: Any, frames: list[tuple[bytes, bytes | None, bytes]]) -> None:
    """Publish the hostile frames and then a valid order; the engine decides all of it and the log is exact."""
    await publish_all(js, MARKET)
    before = await last_seq(js, CMD_STREAM)
    await raw_publish(nc, frames)

    async def stored() -> bool:  # the PONG says the server read the frames; the stream stores them a moment later
        return await last_seq(js, CMD_STREAM) > before

    await wait_until(stored, 10, "the server to store the hostile messages")
    last = await publish_all(js, [("jb.cmd.M.alice", FINAL)])
    async with running_engine(nc) as engine:
        await wait_for_command(js, last)
        assert engine.engine.state.last_cmd_seq == last
        tail = decode((await js.get_msg(EVT_STREAM, await last_seq(js, EVT_STREAM))).data)
        assert tail.type == "order_accepted", tail  # the valid order after them was decided as usual
    await assert_log_is_exact(js)
    result = await verify(js)
    assert result.identical, result


HEADER_OK = b"NATS/1.0\r\n\r\n"


async def test_a_subject_token_that_is_not_utf8_is_decided_and_the_engine_goes_on(nc: Any, js: Any) -> None:
    await decided_after_hostile(nc, js, [(b"jb.cmd.\xff\xfe.alice", HEADER_OK, ORDER)])


async def test_an_account_token_that_is_not_utf8_and_a_vertical_tab(nc: Any, js: Any) -> None:
    # nats-py's parser splits control lines on any ASCII whitespace; the server only on space and tab.
    await decided_after_hostile(
        nc, js, [(b"jb.cmd.M.\xc3\x28", None, ORDER), (b"jb.cmd.M.a\x0bb", None, ORDER), (b"jb.cmd.M\x0c.x", None, b"")]
    )


async def test_header_bytes_nats_py_cannot_parse(nc: Any, js: Any) -> None:
    await decided_after_hostile(
        nc,
        js,
        [
            (b"jb.cmd.M.alice", b"NATS/1.0 \xff\xfe\r\n\r\n", ORDER),  # a status line that is not a number
            (b"jb.cmd.M.alice", b"NATS/1.0\r\n\xff\xfe: \xff\r\nNats-Msg-Id: \xc3\x28\r\n\r\n", ORDER),
            (b"jb.cmd.M.alice", b"NATS/1.0\r\nX\r\n:\r\n \r\n\r\n", ORDER),
        ],
    )


async def test_deep_nesting_is_rejected_and_the_engine_goes_on(nc: Any, js: Any) -> None:
    deep = b"\x81" + msgpack.packb("type") + b"\x91" * 1010 + b"\x00"
    await decided_after_hostile(nc, js, [(b"jb.cmd.M.alice", None, deep)])


async def test_the_projection_reads_past_hostile_subjects(nc: Any, js: Any, tmp_path: Path) -> None:
    await publish_all(js, MARKET)
    await raw_publish(nc, [(b"jb.cmd.\xff.alice", HEADER_OK, ORDER), (b"jb.cmd.M.\x0b", None, ORDER)])
    last = await publish_all(js, [("jb.cmd.M.alice", ORDER)])
    db = tmp_path / "rm.db"
    async with running_engine(nc), running_projection(js, db):
        await wait_for_command(js, last)
        end = await last_seq(js, EVT_STREAM)

        async def caught_up() -> bool:
            return projection_position(db) == end

        await wait_until(caught_up, what="the projection to fold past the hostile commands")


def _fuzz_frames(rng: random.Random, n: int) -> list[tuple[bytes, bytes | None, bytes]]:
    """Subjects with random token bytes (any byte but the server's separators) and random header blocks."""
    banned = {0x20, 0x09, 0x0D, 0x0A, 0x2E, 0x2A, 0x3E}  # separators, the token dot, and wildcards
    alphabet = [b for b in range(256) if b not in banned]

    def token() -> bytes:
        return bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))

    def header() -> bytes | None:
        kind = rng.randrange(4)
        if kind == 0:
            return None
        if kind == 1:
            return HEADER_OK
        junk = bytes(rng.choice([*alphabet, 0x20, 0x3A]) for _ in range(rng.randint(0, 24)))
        status = b" " + junk if kind == 2 else b""
        return b"NATS/1.0" + status + b"\r\n" + junk + b": " + junk + b"\r\n\r\n"

    frames = []
    for _ in range(n):
        subject = rng.choice([b"jb.cmd.%s.%s" % (token(), token()), b"jb.cmd.M.%s" % token(), b"jb.ctl.%s" % token()])
        payload = rng.choice([ORDER, b"", bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))])
        frames.append((subject, header(), payload))
    return frames


async def _fuzz(nc: Any, js: Any, n: int, seed: int) -> None:
    await decided_after_hostile(nc, js, _fuzz_frames(random.Random(seed), n))


async def test_transport_fuzz_small(nc: Any, js: Any) -> None:
    await _fuzz(nc, js, 200, seed=9)


@pytest.mark.slow
async def test_transport_fuzz_large(nc: Any, js: Any) -> None:
    await _fuzz(nc, js, 5000, seed=99)
