"""Fixtures chained server -> client -> jetstream, on a real nats-server with a temporary store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from jetbook.server import EmbeddedServer
from protocol.streams import ensure_streams


@pytest.fixture(autouse=True)
def _state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """`jetbook up` lists running stacks under the user's state dir; a test's stacks stay in its own temp dir."""
    monkeypatch.setenv("JETBOOK_STATE_DIR", str(tmp_path_factory.mktemp("state")))


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(tmp_path / "nats", port=0)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: EmbeddedServer) -> AsyncIterator[Any]:
    client = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    yield client
    await client.close()


@pytest.fixture
async def js(nc: Any) -> Any:
    jetstream = nc.jetstream()
    await ensure_streams(jetstream)
    return jetstream


POLL_INTERVAL_S = 0.02  # how often wait_until re-checks its condition; never a wait for an outcome by itself


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "") -> None:
    """Poll a condition until it holds; fail the test at the deadline. Never a bare sleep."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(POLL_INTERVAL_S)


def wait_until_sync(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """wait_until outside an event loop (a fixture starting a process, a check of `pgrep`)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(POLL_INTERVAL_S)
