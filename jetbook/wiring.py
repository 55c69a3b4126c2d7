"""The composition root: connect to NATS and run a role until a signal arrives."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import nats
import nats.errors


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")


def split_url(url: str) -> tuple[list[str], dict[str, str]]:
    """Servers and credentials from `nats://[user:password@]host:port[,host:port...]` (or `tls://`).

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


@dataclass(frozen=True)
class Access:
    """Who a connection is and how it is secured: resolved once per connect, from flags, environment, data dir.

    `inbox_prefix` is `_INBOX_<user>` for a named user: the server lets each
    user subscribe only under its own prefix, so no client sees another's
    replies or consumer deliveries.
    """

    auth: dict[str, str] = field(default_factory=dict)
    tls: ssl.SSLContext | None = None
    inbox_prefix: str = "_INBOX"


def tls_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    """A client context that trusts `ca` (the system store if absent) and presents `cert`/`key` if given."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def resolve_access(url: str, role: str, env: Mapping[str, str] | None = None) -> Access:
    """Credentials for `role` in this order: the URL, JETBOOK_NATS_USER/PASSWORD, the credentials file.

    The credentials file is the one `jetbook up` wrote for the server at this
    URL (found through JETBOOK_CREDENTIALS, JETBOOK_DATA_DIR, ./.jetbook, or
    the per-user index of running stacks); a file written for another server
    is never used, so a local operator password never goes to a remote host.
    No credentials at all is fine: an open (`--insecure`) server takes any client.
    """
    from jetbook.settings import find_for_url

    env = os.environ if env is None else env
    servers, auth = split_url(url)
    if not auth and env.get("JETBOOK_NATS_USER"):
        auth = {"user": env["JETBOOK_NATS_USER"], "password": env.get("JETBOOK_NATS_PASSWORD", "")}
    if not auth:
        creds = find_for_url(servers, env)
        if creds is not None:
            auth = creds.login(role)
    ca, cert, key = (env.get(f"JETBOOK_TLS_{k}") or None for k in ("CA", "CERT", "KEY"))
    secure = any(s.startswith("tls://") for s in servers) or bool(ca or cert)
    tls = tls_context(ca, cert, key) if secure else None
    prefix = f"_INBOX_{auth['user']}" if auth.get("user") else "_INBOX"
    return Access(auth=auth, tls=tls, inbox_prefix=prefix)


async def connect(
    url: str, name: str, *, reconnect: bool = True, role: str = "operator", login: dict[str, str] | None = None
) -> Any:
    """Connect as `role` (engine, projection, fanout, gateway, operator, or a trader's account), or as `login`.

    The server's permission refusals arrive asynchronously, while the request they refused just times out;
    they are kept in `REFUSALS[client]` so that a one-shot command can say why it timed out.
    """
    refused: list[str] = []

    async def on_error(err: Exception) -> None:
        if "permissions violation" in str(err).lower():
            refused.append(str(err).strip())
        if reconnect:  # a one-shot client reports its own failure once, at the end
            logging.getLogger("jetbook.nats").warning("%s: %s", name, err)

    servers, _ = split_url(url)
    access = resolve_access(url, role)
    if login is not None:
        access = Access(auth=login, tls=access.tls, inbox_prefix=f"_INBOX_{login['user']}")
    extra: dict[str, Any] = {"tls": access.tls} if access.tls is not None else {}
    global _connecting
    _connecting += 1
    try:
        nc = await nats.connect(
            servers=servers,
            **access.auth,
            **extra,
            inbox_prefix=access.inbox_prefix,
            name=name,
            allow_reconnect=reconnect,
            # nats-py applies this to the first connect too, and reads 0 as "forever":
            # a one-shot client gets one retry, then NoServersError.
            max_reconnect_attempts=-1 if reconnect else 1,
            reconnect_time_wait=0.5,
            connect_timeout=3,
            error_cb=on_error,
        )
    finally:
        _connecting -= 1
    REFUSALS[nc] = refused
    return nc


REFUSALS: weakref.WeakKeyDictionary[Any, list[str]] = weakref.WeakKeyDictionary()  # also: every client made here
_connecting = 0  # connects in progress in this process (a role's first connect retries while no server answers)


CLOSE_TIMEOUT_S = 2.0  # closing a connection whose server is gone: give up on its buffer after this


async def close_quietly(nc: Any) -> None:
    """Drain (finish in-flight work) when the server is there; just close when it is not.

    With the server gone (a killed `jetbook up` takes its nats-server with it) there is nobody to
    drain to, and nats-py's close waits on a socket that will never take the buffer: the role would
    sit out its whole stop grace and die with a traceback. It closes within CLOSE_TIMEOUT_S instead.
    """
    if nc.is_connected:
        try:
            # Bounded: nats-py counts a draining client as connected, so a server that dies mid-drain would
            # hold the role for the whole drain timeout (30 s); a live server drains in milliseconds.
            await asyncio.wait_for(nc.drain(), CLOSE_TIMEOUT_S)
            return
        except (
            nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError, nats.errors.TimeoutError,
            TimeoutError,
        ):  # fmt: skip
            pass
    if not nc.is_closed:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), CLOSE_TIMEOUT_S)


STOP_GRACE_S = 10.0  # after a stop signal, how long a role may take to finish its batch


async def _cancel_when_cut_off(task: asyncio.Future[Any]) -> None:
    """Cancel a stopping role once none of its open connections is up: with its server gone there is no batch to
    finish, and whatever it awaits (a request, a reconnect) can only run out its timeout. A role that has closed
    its connections itself is finishing on its own and is left alone."""
    said = False
    while not task.done():
        open_ = [nc for nc in list(REFUSALS) if not nc.is_closed]
        # A draining client counts as up (nats-py says so too): it is finishing with a live server, and
        # close_quietly bounds the drain should the server go meanwhile.
        if (open_ or _connecting) and not any(nc.is_connected for nc in open_):
            if not said:
                logging.getLogger("jetbook").warning("stopping: no connection to the server; not waiting for it")
                said = True
            task.cancel()  # again until it ends: nats-py's first connect swallows a cancellation between retries
        await asyncio.sleep(0.1)


def run_until_signal(role: Callable[[asyncio.Event], Awaitable[Any]]) -> Any:
    """Run `role(stop)`; SIGINT or SIGTERM sets `stop`, and the role finishes its batch and returns.

    A role stuck in an await that does not watch `stop` (a request to a server
    that just died waits out its own timeout, then nats-py may retry) is
    cancelled after STOP_GRACE_S, at once on a second signal, and as soon as
    none of its open connections is up (a killed `jetbook up` takes its
    nats-server with it: nothing is left to finish). Both roles are
    safe to cancel anywhere: an engine batch is atomic and fenced, and a
    projection transaction that is not committed is rolled back.
    """

    async def main() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(role(stop))
        watchers: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak references to tasks

        def on_signal() -> None:
            if stop.is_set():
                task.cancel()
                return
            logging.getLogger("jetbook").info("stopping: finishing the current batch (signal again to stop now)")
            stop.set()
            loop.call_later(STOP_GRACE_S, task.cancel)
            watchers.add(loop.create_task(_cancel_when_cut_off(task)))

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            return await task
        except asyncio.CancelledError:
            logging.getLogger("jetbook").warning("stopped without finishing the current batch")
            return None

    return asyncio.run(main())
