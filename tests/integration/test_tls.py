"""TLS end to end: a throwaway CA (trustme), a real nats-server that requires TLS, the engine and a trader over it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
import trustme

from commands.client import CommandClient
from events.watch import EventWatcher
from jetbook.roles import engine_role
from jetbook.server import EmbeddedServer
from jetbook.settings import CREDENTIALS_FILE, Credentials
from jetbook.wiring import connect
from protocol.streams import ensure_streams


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[EmbeddedServer, Credentials, Path]]:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    ca_path, cert, key = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    ca.cert_pem.write_to_path(str(ca_path))
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    creds = Credentials.load_or_create(tmp_path / CREDENTIALS_FILE, ["alice"])
    server = EmbeddedServer(tmp_path / "nats", port=0, credentials=creds, tls_cert=cert, tls_key=key)
    creds.url = server.start()
    creds.save()
    yield server, creds, ca_path
    server.stop()


async def test_engine_and_trader_over_tls(
    tls_server: tuple[EmbeddedServer, Credentials, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, creds, ca = tls_server
    assert server.url.startswith("tls://")
    monkeypatch.setenv("JETBOOK_TLS_CA", str(ca))
    monkeypatch.setenv("JETBOOK_CREDENTIALS", str(creds.path))

    # A client that does not speak TLS is turned away.
    plain = server.url.replace("tls://", "nats://")
    with pytest.raises((nats.errors.Error, OSError)):
        await nats.connect(
            plain, user="alice", password=creds.users["alice"], allow_reconnect=False, max_reconnect_attempts=1
        )

    up = await connect(server.url, "test-up", reconnect=False, role="engine")
    await ensure_streams(up.jetstream())
    await up.close()
    stop = asyncio.Event()
    engine = asyncio.create_task(engine_role(server.url, stop))
    op = await connect(server.url, "test-operator", reconnect=False)
    # The trader: its own login from the file, over TLS with the CA from JETBOOK_TLS_CA.
    alice = await connect(server.url, "test-alice", reconnect=False, role="alice")
    try:
        ops, trader = CommandClient(op.jetstream()), CommandClient(alice.jetstream())
        async with EventWatcher(op.jetstream()) as watcher:
            created = await ops.create_market("TLS-M", "ETH", "USDC")
            placed = await trader.place("TLS-M", "alice", "t-1", "sell", 300_000, 3)
            events = await watcher.wait([created, placed], timeout=30)
        assert [type(e).__name__ for e in events[placed]] == ["OrderAccepted"], events
    finally:
        stop.set()
        await engine
        await op.close()
        await alice.close()
