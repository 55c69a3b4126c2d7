"""A whole stack for gateway tests, in-process: engine, projection, query service and the gateway on uvicorn.

Every part is real: the nats-server of the `nats_server` fixture, SQLite files, uvicorn on a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import uvicorn

from gateway.app import create_app
from gateway.auth import ApiKeys, Auth
from gateway.ws import WS_MAX_SIZE
from projections.query_service import QueryService
from tests.conftest import wait_until
from tests.integration.harness import running_engine, running_projection


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def running_gateway(url: str, keys_file: Path | None = None) -> AsyncIterator[str]:
    """The gateway on uvicorn at a free port, with its own NATS connection; yields its base URL."""
    auth = Auth(ApiKeys.load(keys_file) if keys_file is not None else None)
    app = create_app(lambda: nats.connect(url), auth)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", access_log=False, ws_max_size=WS_MAX_SIZE
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        if task.done():
            task.result()  # raises what stopped it
        return bool(server.started)

    await wait_until(started, what="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@contextlib.asynccontextmanager
async def running_query_service(url: str, db: Path) -> AsyncIterator[QueryService]:
    conn = await nats.connect(url)
    service = QueryService(conn, db)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
        await conn.close()


@dataclass
class Stack:
    url: str  # the gateway's base URL, http://127.0.0.1:<port>
    nats_url: str
    db: Path
    js: Any


@contextlib.asynccontextmanager
async def gateway_stack(
    nats_server: Any, nc: Any, js: Any, tmp_path: Path, keys_file: Path | None = None
) -> AsyncIterator[Stack]:
    """Engine, projection, query service and gateway on one real nats-server (the fixtures' `nc` and `js`)."""
    db = tmp_path / "rm.db"
    async with (
        running_engine(nc),
        running_projection(js, db),
        running_query_service(nats_server.url, db),
        running_gateway(nats_server.url, keys_file) as base,
    ):
        yield Stack(base, nats_server.url, db, js)
