"""Run the gateway on uvicorn in the foreground, until SIGINT or SIGTERM.

uvicorn handles the signals itself: the first stops accepting, lets requests in flight finish and runs the
lifespan's shutdown (the NATS connection closes); a second SIGINT forces the exit. Either way the process
then exits 0: being asked to stop is not a failure. The address is printed once the
socket listens, with the port the OS chose when asked for port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

import uvicorn

from gateway.app import Connect, create_app
from gateway.auth import ApiKeys, Auth
from gateway.http import DEFAULT_READY_MAX_LAG
from gateway.ws import WS_MAX_SIZE

log = logging.getLogger("jetbook.gateway")


class GatewayStartError(RuntimeError):
    """The gateway could not start (NATS unreachable, the port taken); uvicorn has logged why."""


def serve(
    connect: Connect, host: str, port: int, api_keys: Path | None, *, ready_max_lag: int = DEFAULT_READY_MAX_LAG
) -> None:
    """Serve until a signal; raises KeyFileError for a bad key file, GatewayStartError when it cannot start."""
    auth = Auth(ApiKeys.load(api_keys) if api_keys is not None else None)
    stopped: list[int] = []

    async def main() -> None:
        # NATS first, outside uvicorn: its lifespan startup cannot be interrupted, and the connection may wait
        # for a server that is not up yet. A signal meanwhile ends the wait cleanly.
        opening: asyncio.Future[Any] = asyncio.ensure_future(connect())
        while not opening.done():
            if stopped:
                opening.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await opening
                return
            await asyncio.sleep(0.05)
        nc = opening.result()

        async def opened() -> Any:
            return nc

        app = create_app(opened, auth, ready_max_lag=ready_max_lag)
        # access_log off: a WebSocket's ?api_key= must not reach a log.
        config = uvicorn.Config(app, host=host, port=port, lifespan="on", log_level="warning", access_log=False,
                                server_header=False, ws_max_size=WS_MAX_SIZE)  # fmt: skip
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)  # uvicorn has no started event; this only decides when to print
        if server.started:
            sock = server.servers[0].sockets[0].getsockname()
            shown = f"[{sock[0]}]" if ":" in str(sock[0]) else sock[0]
            mode = "development mode (no API keys)" if auth.dev_mode else f"API keys from {api_keys}"
            print(f"gateway: http://{shown}:{sock[1]}  (docs /docs, metrics /metrics; {mode})", flush=True)
        await task
        if not server.started:
            if not nc.is_closed:
                await nc.close()
            raise GatewayStartError(f"the gateway did not start on {host}:{port} (see the log above)")

    # uvicorn catches SIGINT/SIGTERM while it serves, shuts down gracefully, then raises the signal again for
    # "the calling code" to handle; a stop asked for is a clean exit here, so the re-raised signal is swallowed.
    previous = {sig: signal.signal(sig, lambda s, _f: stopped.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        asyncio.run(main())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped:
        log.info("gateway stopped (signal %d)", stopped[0])
