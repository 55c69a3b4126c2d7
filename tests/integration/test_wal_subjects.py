"""What is visible on jb.evt.> is exactly what the log holds: refused batches and stray publishes never show."""

from __future__ import annotations

from typing import Any

import nats.errors
import pytest
from nats.js.errors import NoStreamResponseError

from commands.client import CommandClient
from engine.service import EngineService
from events.model import OrderAccepted, Rejected
from events.watch import EventWatcher
from protocol.errors import CorruptLog, Fenced
from protocol.subjects import CMD_STREAM, EVT_STREAM
from tests.conftest import wait_until
from tests.integration.harness import assert_log_is_exact, publish_all, read_all, running_engine, workload


async def test_plain_subscribers_see_only_committed_events_once(nc: Any, js: Any) -> None:
    live: list[tuple[str, bytes, str | None]] = []

    async def on_msg(msg: Any) -> None:
        live.append((msg.subject, msg.data, (msg.headers or {}).get("Nats-Sequence")))

    await nc.subscribe("jb.evt.>", cb=on_msg)
    await publish_all(js, workload(60))
    cmds = await read_all(js, CMD_STREAM)
    active, stale = EngineService(nc), EngineService(nc)
    await active.recover()
    await stale.recover()
    await active.process(cmds[:40])
    with pytest.raises(Fenced):
        await stale.process(cmds[:40])  # its whole batch is published, then refused at commit
    await active.process(cmds[40:])
    stored = await assert_log_is_exact(js)

    async def all_seen() -> bool:
        return len(live) >= len(stored)

    await wait_until(all_seen, what="republished events")
    await nc.flush()
    assert [(m.subject, m.data, str(m.seq)) for m in stored] == live


async def test_a_stray_publish_on_jb_evt_is_not_stored(nc: Any, js: Any) -> None:
    with pytest.raises((NoStreamResponseError, nats.errors.TimeoutError)):
        await js.publish("jb.evt.M1.fill", b"forged", timeout=1)
    assert (await js.stream_info(EVT_STREAM)).state.messages == 0


async def test_a_foreign_message_in_the_log_is_a_clear_error_not_a_crash_loop(nc: Any, js: Any) -> None:
    await js.publish("jb.wal.M1.fill", b"\xc1 not an event")
    with pytest.raises(CorruptLog, match=r"sequence 1 \(jb\.evt\.M1\.fill\)"):
        await EngineService(nc).recover()


async def test_a_corrected_order_may_reuse_a_rejected_client_order_id_at_once(nc: Any, js: Any) -> None:
    client = CommandClient(js)
    async with running_engine(nc), EventWatcher(js) as watcher:
        early = await client.place("M1", "a", "fix-me", "buy", 10, 1)  # the market does not exist yet
        created = await client.create_market("M1", "B", "Q")
        fixed = await client.place("M1", "a", "fix-me", "buy", 11, 1)  # corrected, same id, inside the window
        retry = await client.place("M1", "a", "fix-me", "buy", 11, 1)  # a blind retry of the corrected order
        out = await watcher.wait([early, created, fixed])
    (r,) = out[early]
    assert isinstance(r, Rejected) and r.reason == "unknown_market"
    assert fixed not in (early, created)  # stored as a new command, not dropped as a duplicate of `early`
    assert isinstance(out[fixed][0], OrderAccepted) and out[fixed][0].price == 11
    assert retry == fixed  # the broker dropped the identical retry
    assert (await js.stream_info(CMD_STREAM)).state.messages == 3
