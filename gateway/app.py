"""The gateway's FastAPI application: HTTP routes (gateway/http.py), WebSockets (gateway/ws.py), the page.

`create_app` takes a coroutine that opens the NATS connection, so that the shell decides who the gateway
logs in as (the `gateway` user of deploy/accounts.conf) and the tests can hand it any server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from gateway import http, page, ws
from gateway.auth import Auth
from gateway.core import Gateway
from protocol.streams import venue_shards

Connect = Callable[[], Awaitable[Any]]


def create_app(connect: Connect, auth: Auth, *, ready_max_lag: int = http.DEFAULT_READY_MAX_LAG) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nc = await connect()
        try:
            # How many shards the venue has (its streams say): one tail per shard's event stream.
            gateway = Gateway(nc, await venue_shards(nc.jetstream()) or 1)
            await gateway.start()
        except BaseException:
            await nc.close()
            raise
        app.state.gateway = gateway
        try:
            yield
        finally:
            await gateway.stop()
            await nc.close()

    app = FastAPI(
        title="jetbook gateway",
        version="1",
        description="HTTP and WebSocket in front of the jetbook exchange (docs/GATEWAY.md, docs/QUERIES.md).",
        lifespan=lifespan,
    )
    # Set before the lifespan runs, so a request that races startup is refused by auth, not by an AttributeError.
    app.state.auth = auth
    app.state.ready_max_lag = ready_max_lag
    http.install(app)
    app.include_router(http.router)
    app.include_router(ws.router)
    app.include_router(page.router)
    return app
