"""The ledger's command line: the machinery's verbs, run for the ledger's `APP`.

    python -m examples.ledger engine  [--nats-url URL]           # active, or a hot standby if one runs
    python -m examples.ledger project [--db ledger.db]           # the balances projection
    python -m examples.ledger rebuild [--db ledger.db]           # replay rebuild, swapped in
    python -m examples.ledger verify                             # replay verify: "identical"
    python -m examples.ledger send alice open_account overdraft_limit=0
    python -m examples.ledger balances [--db ledger.db]

Each verb is one call into the same entry points `jetbook` uses for the
exchange (engine.service.EngineService, projections.runner.ProjectionRunner,
replay.rebuild.rebuild, replay.verify.verify), with `app=APP`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Annotated, Any

import msgpack
import typer

from examples.ledger import projection
from examples.ledger.app import APP
from examples.ledger.domain import cmd_subject
from jetbook.cli_common import Url, client_call
from jetbook.settings import log_level

app = typer.Typer(add_completion=False, no_args_is_help=True, help="A ledger on jetbook's machinery.")
DEFAULT_URL = "nats://127.0.0.1:4222"
Db = Annotated[Path, typer.Option(help="SQLite file of the balances projection.")]
Every = Annotated[
    int | None, typer.Option(help="A checkpoint event every N events (part of the log's bytes; default 100,000).")
]


async def engine_role(url: str, stop: asyncio.Event, checkpoint_every: int | None = None) -> None:
    from engine.lease import Lease
    from engine.service import EngineService
    from jetbook.wiring import close_quietly, connect

    nc = await connect(url, "ledger-engine", role="engine")
    streams = APP.streams
    lease = Lease(
        lambda: connect(url, "ledger-engine-lease", role="engine"),
        key=streams.lease_key,
        bucket=streams.lease_bucket,
    )
    try:
        await EngineService(nc, lease=lease, app=APP, checkpoint_every=checkpoint_every).run(stop)
    finally:
        stop.set()
        await close_quietly(nc)


async def project_role(url: str, db: Path, stop: asyncio.Event) -> None:
    from jetbook.wiring import close_quietly, connect
    from projections.runner import ProjectionRunner
    from protocol.streams import wait_for_stream

    nc = await connect(url, "ledger-projection", role="projection")
    try:
        if await wait_for_stream(nc.jetstream(), APP.streams.evt, stop):
            await ProjectionRunner(APP, nc.jetstream(), db).run(stop)
    finally:
        stop.set()
        await close_quietly(nc)


@app.command()
def engine(nats_url: Url = DEFAULT_URL, checkpoint_every: Every = None) -> None:
    """Decide LEDGER_CMD into LEDGER_EVT. Started twice, the second one is a hot standby."""
    from jetbook.wiring import run_until_signal, setup_logging

    setup_logging(log_level())
    run_until_signal(lambda stop: engine_role(nats_url, stop, checkpoint_every))


@app.command()
def project(nats_url: Url = DEFAULT_URL, db: Db = Path("ledger.db")) -> None:
    """Keep the balances projection current."""
    from jetbook.wiring import run_until_signal, setup_logging

    setup_logging(log_level())
    run_until_signal(lambda stop: project_role(nats_url, db, stop))


@app.command()
def rebuild(nats_url: Url = DEFAULT_URL, db: Db = Path("ledger.db")) -> None:
    """Rebuild the balances projection into a new file and swap it in under --db."""
    from replay.rebuild import rebuild as rebuild_

    async def body(js: Any) -> int:
        result = await rebuild_(js, db, app=APP)
        typer.echo(f"rebuilt {result.projection}: {APP.streams.evt} {result.from_seq}..{result.position}")
        return 0

    client_call(nats_url, body, "ledger-rebuild")


@app.command()
def verify(nats_url: Url = DEFAULT_URL, checkpoint_every: Every = None) -> None:
    """Re-decide LEDGER_CMD and compare with LEDGER_EVT, byte for byte."""
    from replay.verify import describe
    from replay.verify import verify as verify_

    async def body(js: Any) -> int:
        result = await verify_(js, checkpoint_every=checkpoint_every, app=APP)
        for line in describe(result):
            typer.echo(line)
        return 0 if result.identical else 1

    client_call(nats_url, body, "ledger-verify")


def _value(text: str) -> Any:
    return int(text) if text.lstrip("-").isdigit() else text


@app.command()
def send(
    account: str,
    command: str,
    fields: Annotated[list[str] | None, typer.Argument(help="name=value ...")] = None,
    nats_url: Url = DEFAULT_URL,
) -> None:
    """Publish one command on ledger.cmd.<account> and print its LEDGER_CMD sequence."""
    body: dict[str, Any] = {"type": command}
    for item in fields or []:
        name, _, value = item.partition("=")
        body[name] = _value(value)

    async def run(js: Any) -> int:
        ack = await js.publish(cmd_subject(account), msgpack.packb(body), stream=APP.streams.cmd)
        typer.echo(f"{APP.streams.cmd} seq {ack.seq}")
        return 0

    client_call(nats_url, run, "ledger-send")


@app.command()
def balances(db: Db = Path("ledger.db")) -> None:
    """Print every account's balance, as of the projection's position."""
    con = sqlite3.connect(db)
    try:
        typer.echo(f"at {APP.streams.evt} {projection.position(con)}")
        for account, balance in projection.balances(con).items():
            typer.echo(f"{account}\t{balance}")
    finally:
        con.close()


if __name__ == "__main__":
    app()
