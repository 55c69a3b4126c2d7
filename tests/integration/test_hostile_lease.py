"""A refused lease renewal says why: our own late renewal is not "another engine", and a holder is named.

After a server restart (or any reconnect) a renewal can land without its
answer reaching the engine, and a restarted server can lose the newest one;
either way the next compare-and-set is refused while the record is still ours.
That used to be logged as "lease was taken by another engine" and made the
engine step down with no other engine about.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats

from engine.lease import LEASE_BUCKET, Lease, LeaseRecord
from jetbook.server import EmbeddedServer
from tests.conftest import wait_until


def _lease(url: str) -> Lease:
    return Lease(lambda: nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2), ttl=0.8)


async def _started(url: str) -> Lease:
    lease = _lease(url)
    await asyncio.get_running_loop().run_in_executor(None, lease.start)
    lease.want_lease()

    async def held() -> bool:
        return lease.held()

    await wait_until(held, what="the lease to be taken")
    return lease


async def test_a_renewal_that_landed_unanswered_is_not_a_takeover(nats_server: EmbeddedServer, nc: Any) -> None:
    lease = await _started(nats_server.url)
    try:
        kv = await nc.jetstream().key_value(LEASE_BUCKET)
        entry = await kv.get(lease.key)
        await kv.update(lease.key, lease.record.encode(), last=entry.revision)  # ours, at a revision we never saw
        before = lease.renewals

        async def renewed_past_it() -> bool:
            return lease.renewals >= before + 3

        await wait_until(renewed_past_it, what="renewals from the adopted revision")
        assert not lease.lost and lease.held() and lease.lost_reason == ""
    finally:
        await lease.close()


async def test_a_real_takeover_names_the_holder_and_a_lost_record_says_so(nats_server: EmbeddedServer, nc: Any) -> None:
    lease = await _started(nats_server.url)
    try:
        kv = await nc.jetstream().key_value(LEASE_BUCKET)
        entry = await kv.get(lease.key)
        other = LeaseRecord("other-engine", 800, "elsewhere", 4242)
        await kv.update(lease.key, other.encode(), last=entry.revision)

        async def lost() -> bool:
            return lease.lost

        await wait_until(lost, what="the lease to be lost")
        assert "other-engine" in lease.lost_reason and "elsewhere" in lease.lost_reason
    finally:
        await lease.close()
    second = await _started(nats_server.url)  # takes it after the other record's TTL
    try:
        await kv.delete(second.key)  # as if a restarted server had lost it

        async def lost() -> bool:
            return second.lost

        await wait_until(lost, what="the second lease to notice its record is gone")
        assert "gone" in second.lost_reason
    finally:
        await second.close()


async def test_after_a_server_restart_the_engine_keeps_its_lease(
    nats_server: EmbeddedServer, tmp_path: Any, caplog: Any
) -> None:
    from events.stream_readers import last_seq
    from protocol.subjects import CMD_STREAM
    from tests.integration.harness import publish_all, running_engine, wait_for_command, workload

    url = nats_server.url
    port = int(url.rsplit(":", 1)[1])
    engine_nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    client = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    server = nats_server
    try:
        js = client.jetstream()
        async with running_engine(engine_nc, lease=_lease(url)) as service:

            async def active() -> bool:
                return service.role == "active"

            await wait_until(active, what="the engine to lead")
            await wait_for_command(js, await publish_all(js, workload(50, seed=7)))
            server.kill()  # SIGKILL: the store is recovered from its files
            server = EmbeddedServer(nats_server.data_dir, port=port)
            server.start()

            async def serving() -> bool:
                try:
                    return await last_seq(js, CMD_STREAM) == 52
                except Exception:  # reconnecting, or JetStream not ready yet
                    return False

            await wait_until(serving, 60, "the restarted server to answer")
            await wait_for_command(js, await publish_all(js, workload(50, seed=8, markets=("M3",))), timeout=60)
            assert await last_seq(js, CMD_STREAM) == 103
            assert service.step_downs == 0, caplog.text
    finally:
        await client.close()
        await engine_nc.close()
        if server is not nats_server:
            server.stop()
    assert "taken by" not in caplog.text
