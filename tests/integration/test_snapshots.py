"""Snapshots in JB_SNAP and checkpoints in JB_EVT: a restart folds only the tail, and nothing wrong is trusted."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import pytest
from nats.js.api import ObjectMeta

from engine.core import Engine, snapshot, state_hash
from engine.service import CheckpointCadence, EngineService, LogDiverged
from engine.snapshots import SNAP_BUCKET, SnapshotStore, Tag, capture
from events.model import Checkpoint, decode, encode
from events.stream_readers import last_seq
from protocol.subjects import CMD_STREAM, EVT_STREAM, wal_subject
from tests.conftest import wait_until
from tests.integration.harness import (
    assert_matches_crash_free,
    crash_free,
    publish_all,
    read_all,
    running_engine,
    wait_for_command,
    workload,
)  # fmt: skip

EVERY = 300  # snapshot interval, events
CHECKPOINTS = 250  # checkpoint interval, events


async def _log_with_snapshots(nc: Any, js: Any, commands: int = 1500, snapshots: int = 3) -> list[Tag]:
    """Run an engine over a workload that writes several snapshots; their tags, newest first."""
    last = await publish_all(js, workload(commands, seed=31))
    options = {"snapshot_every": EVERY, "snapshot_keep": 3, "checkpoint_every": CHECKPOINTS, "max_batch": 50}
    async with running_engine(nc, **options) as live:
        await wait_for_command(js, last)

        async def settled() -> bool:
            return live._snapshot_task is None and live.snapshots_written >= snapshots

        await wait_until(settled, what="the snapshots to be stored")
        assert live.last_capture is not None and live.last_capture.forked
    store = await SnapshotStore(js).open()
    return await store.tags()


async def _recover(nc: Any) -> EngineService:
    service = EngineService(nc, checkpoint_every=CHECKPOINTS)
    await service.recover()
    return service


async def test_restart_loads_the_newest_snapshot_and_folds_only_the_tail(nc: Any, js: Any) -> None:
    tags = await _log_with_snapshots(nc, js)
    assert len(tags) == 3  # older ones pruned
    tail = await last_seq(js, EVT_STREAM)
    service = await _recover(nc)
    assert service.recovered_from == tags[0]
    assert service.recovery_folded == tail - tags[0].seq < EVERY + 50
    await assert_matches_crash_free(js, nc, checkpoint_every=CHECKPOINTS)
    _, expected_hash = await crash_free(js, CHECKPOINTS)
    assert state_hash(service.engine.state) == expected_hash


async def test_a_forked_snapshot_is_the_inline_one(js: Any) -> None:
    engine = Engine(checkpoint_every=CHECKPOINTS)
    for seq, (subject, data) in enumerate(workload(800, seed=32), 1):
        engine.handle(seq, 1_795_000_000_000_000_000 + seq, subject, data)
    forked = await capture(engine.state, b"last", fork=True)
    inline = await capture(engine.state, b"last", fork=False)
    assert forked.forked and not inline.forked
    assert forked.data == inline.data == snapshot(engine.state)
    assert forked.tag == inline.tag and forked.tag.state_hash == state_hash(engine.state)


async def _replace(js: Any, tag: Tag, data: bytes, state_hash_in_tag: str | None = None) -> None:
    """Overwrite a snapshot object: these bytes, under its tag (or a tag naming another hash)."""
    obj = await js.object_store(SNAP_BUCKET)
    headers = Tag(tag.seq, tag.cmd_seq, state_hash_in_tag or tag.state_hash, tag.event_digest, tag.core).headers()
    await obj.put(tag.name, data, meta=ObjectMeta(name=tag.name, headers=headers))


async def _garble_chunks(js: Any, tag: Tag) -> None:
    """Keep the object's metadata (and digest), change its bytes: what a damaged store would return."""
    obj = await js.object_store(SNAP_BUCKET)
    info = await obj.get_info(tag.name)
    subject = f"$O.{SNAP_BUCKET}.C.{info.nuid}"
    await js.purge_stream(f"OBJ_{SNAP_BUCKET}", subject=subject)
    await js.publish(subject, b"\x00" * 100)


async def test_bad_snapshots_fall_back_to_older_ones_then_to_a_full_replay(
    nc: Any, js: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jetbook")
    newest, middle, oldest = await _log_with_snapshots(nc, js)
    expected = (await crash_free(js, CHECKPOINTS))[1]

    await _garble_chunks(js, newest)
    service = await _recover(nc)
    assert service.recovered_from == middle
    assert "corrupt: its bytes do not match the object digest" in caplog.text

    older_bytes = await (await SnapshotStore(js).open()).fetch(oldest)
    # The bytes of another state under this tag, with a hash that matches those bytes: restore catches it.
    await _replace(js, middle, older_bytes, hashlib.sha256(older_bytes).hexdigest())
    service = await _recover(nc)
    assert service.recovered_from == oldest
    assert f"it restores to event {oldest.seq}" in caplog.text
    assert state_hash(service.engine.state) == expected

    await _replace(js, middle, b"not msgpack at all", hashlib.sha256(b"not msgpack at all").hexdigest())
    await _replace(js, oldest, older_bytes, "0" * 64)  # a tag that does not match its bytes
    service = await _recover(nc)
    assert service.recovered_from is None and service.recovery_folded == await last_seq(js, EVT_STREAM)
    assert "undecodable" in caplog.text and "do not hash to its tag" in caplog.text
    assert "replaying JB_EVT from the start" in caplog.text
    assert state_hash(service.engine.state) == expected


async def test_a_snapshot_of_another_log_is_refused(nc: Any, js: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="jetbook")
    tags = await _log_with_snapshots(nc, js, commands=600, snapshots=1)
    # JB_EVT and JB_CMD recreated, the snapshot bucket kept: an older, different log of the same length.
    await js.delete_stream(EVT_STREAM)
    await js.delete_stream(CMD_STREAM)
    from protocol.streams import ensure_streams

    await ensure_streams(js)
    last = await publish_all(js, workload(900, seed=33))
    async with running_engine(nc, snapshot_every=0, checkpoint_every=CHECKPOINTS):
        await wait_for_command(js, last)
    assert await last_seq(js, EVT_STREAM) >= tags[0].seq
    service = await _recover(nc)
    assert service.recovered_from is None
    assert "taken from another log" in caplog.text
    await assert_matches_crash_free(js, nc, checkpoint_every=CHECKPOINTS)


async def _append(js: Any, payloads: list[bytes]) -> None:
    for data in payloads:
        event = decode(data)
        await js.publish(wal_subject(event.market_id, event.type), data)


async def _log_from_commands(js: Any, every: int) -> list[bytes]:
    await publish_all(js, workload(400, seed=34))
    events, _ = await crash_free(js, every)
    assert sum(decode(e).type == "checkpoint" for e in events) >= 2
    return events


async def test_a_checkpoint_that_disagrees_stops_the_engine(nc: Any, js: Any) -> None:
    events = await _log_from_commands(js, 100)
    i = next(i for i, e in enumerate(events) if isinstance(decode(e), Checkpoint))
    bad = decode(events[i])
    assert isinstance(bad, Checkpoint)
    bad.state_hash = "f" * 64
    await _append(js, [*events[:i], encode(bad), *events[i + 1 :]])
    service = EngineService(nc, checkpoint_every=100)
    with pytest.raises(LogDiverged, match=f"JB_EVT {i + 1}: checkpoint after event {bad.covers_seq}"):
        await service.recover()


async def test_the_checkpoint_interval_must_be_the_logs(nc: Any, js: Any) -> None:
    await _append(js, await _log_from_commands(js, 100))
    for wrong in (90, 1000, 100_000):
        with pytest.raises(CheckpointCadence):
            await EngineService(nc, checkpoint_every=wrong).recover()
    right = EngineService(nc, checkpoint_every=100)
    await right.recover()
    assert right.engine.state.last_cmd_seq == (await read_all(js, CMD_STREAM))[-1].seq
