"""`jetbook up`: the embedded nats-server, the engine and a projection worker as one process tree.

Children run in their own sessions so that Ctrl-C reaches only this
supervisor, which then stops them in order: workers first (each finishes its
batch), the server last. A worker that dies is restarted after a pause; its
state is in JB_EVT and in its SQLite file, so a restart loses nothing.

The embedded server is locked down unless `--insecure`: each child connects
as its own role user, with the password handed over in its environment (not
its argv, which `ps` shows to everyone). The passwords live in
<data dir>/credentials.json (0600), reused on every restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from rich.console import Console

from jetbook.server import EmbeddedServer
from jetbook.settings import (
    CREDENTIALS_FILE,
    Credentials,
    record_venue_shards,
    register_stack,
    unregister_stack,
    venue_file_shards,
)
from jetbook.wiring import STOP_GRACE_S, connect
from protocol.errors import JetbookError
from protocol.process import DIE_WITH_PARENT
from protocol.streams import ShardsMismatch, ensure_shard_streams

console = Console(highlight=False)
COLORS = {"engine": "cyan", "project": "magenta", "fanout": "green", "query": "yellow", "gateway": "blue"}
# Each role's /metrics port is --metrics-port-base plus its offset here (docs/METRICS.md, deploy/prometheus.yml).
METRICS_OFFSETS = {"engine": 0, "project": 1, "fanout": 2, "query": 3}
DEFAULT_METRICS_PORT_BASE = 9464
DEFAULT_HTTP_PORT = 3000


async def _pump(name: str, stream: asyncio.StreamReader) -> None:
    while line := await stream.readline():
        color = COLORS.get(name.split("-")[0], "white")
        console.print(f"[{color}]{name:>8}[/] | {line.decode(errors='replace').rstrip()}")


async def _supervise(name: str, args: list[str], stop: asyncio.Event, env: dict[str, str] | None = None) -> None:
    restarts = 0
    while not stop.is_set():
        proc = await asyncio.create_subprocess_exec(
            *args,
            env=env,
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


def role_env(creds: Credentials | None, role: str) -> dict[str, str] | None:
    """A child's environment: its role's login, so it never falls back to another role's credentials."""
    if creds is None:
        return None
    login = creds.login(role)
    return {**os.environ, "JETBOOK_NATS_USER": login["user"], "JETBOOK_NATS_PASSWORD": login["password"]}


def role_commands(
    url: str,
    db: Path,
    replicas: int,
    *,
    http_port: int | None = None,
    api_keys: Path | None = None,
    metrics_port_base: int | None = None,
    shards: int = 1,
) -> dict[str, tuple[list[str], str]]:
    """Every supervised role: name -> (argv after `jetbook`, its NATS user). No gateway without an HTTP port,
    no /metrics without a base port. With shards, one engine per shard, engine-<k>; engine-0 serves /metrics
    at the engine's port, engine-<k> at the base plus len(METRICS_OFFSETS) - 1 + k (after the other roles')."""
    engine = ["engine", "--nats-url", url, "--replicas", str(replicas)]
    engines = (
        {"engine": (engine, "engine")}
        if shards == 1
        else {f"engine-{k}": ([*engine, "--shard", str(k), "--shards", str(shards)], "engine") for k in range(shards)}
    )
    roles = {
        **engines,
        "project": (["project", "--nats-url", url, "--db", str(db)], "projection"),
        "fanout": (["fanout", "--nats-url", url, "--replicas", str(replicas)], "fanout"),
        "query": (["query-service", "--nats-url", url, "--db", str(db)], "query"),
    }
    if metrics_port_base is not None:
        for name, (argv, _) in roles.items():
            argv.extend(["--metrics-port", str(metrics_port_base + metrics_offset(name))])
    if http_port is not None:
        argv = ["gateway", "--nats-url", url, "--http-port", str(http_port)]
        if api_keys is not None:
            argv += ["--api-keys", str(api_keys)]
        roles["gateway"] = (argv, "gateway")
    return roles


def metrics_offset(name: str) -> int:
    """A role's /metrics port offset; engine-<k> of a sharded venue: engine-0 the engine's, the rest after all."""
    role, _, shard = name.partition("-")
    if shard and int(shard) > 0:
        return len(METRICS_OFFSETS) - 1 + int(shard)
    return METRICS_OFFSETS[role]


def addresses(http_port: int | None, metrics_port_base: int | None) -> list[tuple[str, str]]:
    """What `jetbook up` prints at start: where the gateway, its page and every /metrics are."""
    out: list[tuple[str, str]] = []
    if http_port is not None:
        base = f"http://127.0.0.1:{http_port}"
        out += [
            ("HTTP", f"{base}  (docs: {base}/docs)"),
            ("page", f"{base}/"),
            ("metrics", f"{base}/metrics (gateway)"),
        ]
    if metrics_port_base is not None:
        for name, offset in METRICS_OFFSETS.items():
            out.append(("metrics", f"http://127.0.0.1:{metrics_port_base + offset}/metrics ({name})"))
    return out


async def _run(
    url: str,
    db: Path,
    replicas: int,
    server: EmbeddedServer | None,
    creds: Credentials | None = None,
    *,
    http_port: int | None = None,
    api_keys: Path | None = None,
    metrics_port_base: int | None = None,
    shards: int = 1,
    record: Path | None = None,
) -> None:
    """`record`: the data dir to write the shard count to, once the streams agree with it."""
    login = creds.login("engine") if creds is not None else None
    nc = await connect(url, "jetbook-up", reconnect=False, role="engine", login=login)
    try:
        await ensure_shard_streams(nc.jetstream(), shards, replicas)  # ShardsMismatch: a venue of another count
    finally:
        await nc.close()
    if record is not None:
        record_venue_shards(record, shards)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    me = [sys.executable, "-m", "jetbook"]
    roles = role_commands(
        url, db, replicas, http_port=http_port, api_keys=api_keys, metrics_port_base=metrics_port_base, shards=shards
    )
    console.print(f"NATS        [bold]{url}[/]" + (f" ({shards} market shards)" if shards > 1 else ""))
    for what, where in addresses(http_port, metrics_port_base):
        console.print(f"{what:<11} [bold]{where}[/]")
    if creds is not None:
        console.print(f"users       [bold]{creds.path}[/] (0600; jetbook commands read it; --insecure: none)")
    console.print(f"read model  [bold]{db}[/] (SQLite)")
    console.print("try         jetbook demo   |   jetbook fills --follow   |   Ctrl-C stops everything")
    watchers = [_watch_server(server, stop)] if server is not None else []
    await asyncio.gather(
        *(_supervise(name, [*me, *argv], stop, role_env(creds, role)) for name, (argv, role) in roles.items()),
        *watchers,
    )
    # Only now, with every worker stopped, may the server's death end the process with an error.
    if server is not None and server.proc is not None and server.proc.returncode is not None:
        raise JetbookError(f"nats-server exited with {server.proc.returncode}")


def up(
    data_dir: Path,
    nats_url: str | None,
    port: int,
    replicas: int,
    *,
    insecure: bool = False,
    traders: list[str] | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    http_port: int | None = DEFAULT_HTTP_PORT,
    api_keys: Path | None = None,
    metrics_port_base: int | None = DEFAULT_METRICS_PORT_BASE,
    shards: int = 1,
) -> None:
    """`http_port` None: no gateway; `metrics_port_base` None: no role serves /metrics. `shards`: one engine per
    market shard, the embedded server mapping each market to its shard; a venue made with another count is refused
    (protocol.streams.ShardsMismatch)."""
    server: EmbeddedServer | None = None
    creds: Credentials | None = None
    recorded = venue_file_shards(data_dir)
    if recorded is not None and recorded != shards:
        raise ShardsMismatch(recorded, shards)
    if nats_url is None:
        if not insecure:
            creds = Credentials.load_or_create(data_dir / CREDENTIALS_FILE, traders or [])
        server = EmbeddedServer(
            data_dir / "nats",
            port=port,
            die_with_parent=True,
            credentials=creds,
            tls_cert=tls_cert,
            tls_key=tls_key,
            shards=shards,
        )
        nats_url = server.start()
        console.print(f"nats-server started (JetStream store in {data_dir / 'nats'}, log {server.log_path})")
        if creds is not None:
            creds.url = nats_url
            creds.save()
            register_stack(nats_url, creds.path)
    try:
        asyncio.run(
            _run(
                nats_url, data_dir / "read_model.db", replicas, server, creds,
                http_port=http_port, api_keys=api_keys, metrics_port_base=metrics_port_base, shards=shards,
                record=data_dir if recorded is None and server is not None else None,
            )
        )  # fmt: skip
    finally:
        if server is not None:
            server.stop()
            if creds is not None:
                unregister_stack(nats_url, creds.path)
            console.print("nats-server stopped")
