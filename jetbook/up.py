"""`jetbook up`: the embedded nats-server, the engine and a projection worker as one process tree.

Children run in their own sessions so that Ctrl-C reaches only this
supervisor, which then stops them in order: workers first (each finishes its
batch), the server last. A worker that dies is restarted after a pause; its
state is in JB_EVT and in its SQLite file, so a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from rich.console import Console

from events.streams import ensure_streams
from jetbook.errors import JetbookError
from jetbook.server import DIE_WITH_PARENT, EmbeddedServer
from jetbook.wiring import STOP_GRACE_S, connect

console = Console(highlight=False)
COLORS = {"engine": "cyan", "project": "magenta"}


async def _pump(name: str, stream: asyncio.StreamReader) -> None:
    while line := await stream.readline():
        console.print(f"[{COLORS.get(name, 'white')}]{name:>8}[/] | {line.decode(errors='replace').rstrip()}")


async def _supervise(name: str, args: list[str], stop: asyncio.Event) -> None:
    restarts = 0
    while not stop.is_set():
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=DIE_WITH_PARENT,
        )
        assert proc.stdout is not None
        pump = asyncio.create_task(_pump(name, proc.stdout))
        waiter = asyncio.create_task(proc.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set() and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            # asyncio.wait, not wait_for: the grace period must not cancel the waiter itself.
            await asyncio.wait({waiter}, timeout=STOP_GRACE_S + 5)
            if not waiter.done():
                proc.kill()
                await waiter
        stopper.cancel()
        await pump
        if stop.is_set():
            console.print(f"{name:>8} | stopped")
            return
        restarts += 1
        pause = min(5.0, 0.5 * restarts)
        console.print(f"[red]{name:>8} | exited with {proc.returncode}; restarting in {pause:.1f}s[/]")
        try:
            await asyncio.wait_for(stop.wait(), pause)
        except TimeoutError:
            pass


async def _watch_server(server: EmbeddedServer, stop: asyncio.Event) -> None:
    """An embedded server that dies takes the stack down with it, loudly, rather than leaving workers retrying."""
    assert server.proc is not None
    while not stop.is_set():
        if server.proc.poll() is not None:
            console.print(
                f"[red]nats-server exited with {server.proc.returncode}; stopping (log: {server.log_path})[/]"
            )
            stop.set()
            return
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


async def _run(url: str, db: Path, replicas: int, server: EmbeddedServer | None) -> None:
    nc = await connect(url, "jetbook-up", reconnect=False)
    await ensure_streams(nc.jetstream(), replicas)
    await nc.close()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    me = [sys.executable, "-m", "jetbook"]
    roles = {
        "engine": [*me, "engine", "--nats-url", url, "--replicas", str(replicas)],
        "project": [*me, "project", "--nats-url", url, "--db", str(db)],
    }
    console.print(f"NATS        [bold]{url}[/]")
    console.print(f"read model  [bold]{db}[/] (SQLite)")
    console.print("try         jetbook demo   |   jetbook fills --follow   |   Ctrl-C stops everything")
    watchers = [_watch_server(server, stop)] if server is not None else []
    await asyncio.gather(*(_supervise(name, args, stop) for name, args in roles.items()), *watchers)
    # Only now, with every worker stopped, may the server's death end the process with an error.
    if server is not None and server.proc is not None and server.proc.returncode is not None:
        raise JetbookError(f"nats-server exited with {server.proc.returncode}")


def up(data_dir: Path, nats_url: str | None, port: int, replicas: int) -> None:
    server: EmbeddedServer | None = None
    if nats_url is None:
        server = EmbeddedServer(data_dir / "nats", port=port, die_with_parent=True)
        nats_url = server.start()
        console.print(f"nats-server started (JetStream store in {data_dir / 'nats'}, log {server.log_path})")
    try:
        asyncio.run(_run(nats_url, data_dir / "read_model.db", replicas, server))
    finally:
        if server is not None:
            server.stop()
            console.print("nats-server stopped")
