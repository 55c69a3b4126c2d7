"""The composition root: connect to NATS and run a role until a signal arrives."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import nats
import nats.errors


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")


def split_url(url: str) -> tuple[list[str], dict[str, str]]:
    """Servers and credentials from `nats://[user:password@]host:port[,host:port...]`.

    Credentials go to the client as options, not inside the URLs: nats-py does
    not reuse URL credentials for the cluster members it discovers, so a
    failover to another node would be refused.
    """
    servers: list[str] = []
    auth: dict[str, str] = {}
    for part in (p.strip() for p in url.split(",") if p.strip()):
        if "://" not in part:
            part = f"nats://{part}"
        parsed = urlsplit(part)
        if parsed.username and not auth:
            if parsed.password is not None:
                auth = {"user": unquote(parsed.username), "password": unquote(parsed.password)}
            else:
                auth = {"token": unquote(parsed.username)}
        host = parsed.hostname or "127.0.0.1"
        servers.append(f"{parsed.scheme}://{host}:{parsed.port or 4222}")
    return servers, auth


async def connect(url: str, name: str, *, reconnect: bool = True) -> Any:
    async def on_error(err: Exception) -> None:
        if reconnect:  # a one-shot client reports its own failure once, at the end
            logging.getLogger("jetbook.nats").warning("%s: %s", name, err)

    servers, auth = split_url(url)
    return await nats.connect(
        servers=servers,
        **auth,
        name=name,
        allow_reconnect=reconnect,
        # nats-py applies this to the first connect too, and reads 0 as "forever":
        # a one-shot client gets one retry, then NoServersError.
        max_reconnect_attempts=-1 if reconnect else 1,
        reconnect_time_wait=0.5,
        connect_timeout=3,
        error_cb=on_error,
    )


async def close_quietly(nc: Any) -> None:
    """Drain (finish in-flight work) when the server is there; just close when it is not."""
    try:
        await nc.drain()
    except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError, nats.errors.TimeoutError):
        await nc.close()


STOP_GRACE_S = 10.0  # after a stop signal, how long a role may take to finish its batch


def run_until_signal(role: Callable[[asyncio.Event], Awaitable[Any]]) -> Any:
    """Run `role(stop)`; SIGINT or SIGTERM sets `stop`, and the role finishes its batch and returns.

    A role stuck in an await that does not watch `stop` (a request to a server
    that just died waits out its own timeout, then nats-py may retry) is
    cancelled after STOP_GRACE_S, or at once on a second signal. Both roles are
    safe to cancel anywhere: an engine batch is atomic and fenced, and a
    projection transaction that is not committed is rolled back.
    """

    async def main() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(role(stop))

        def on_signal() -> None:
            if stop.is_set():
                task.cancel()
                return
            logging.getLogger("jetbook").info("stopping: finishing the current batch (signal again to stop now)")
            stop.set()
            loop.call_later(STOP_GRACE_S, task.cancel)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            return await task
        except asyncio.CancelledError:
            logging.getLogger("jetbook").warning("stopped without finishing the current batch")
            return None

    return asyncio.run(main())
