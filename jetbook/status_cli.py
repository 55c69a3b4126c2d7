"""`jetbook status`: every engine, projection worker and fan-out worker of the venue, as each one's micro status
says, and the query service instances that answer micro's PING.

Every instance answers a status request itself (its endpoint has a queue group of its own), so one request
is a scatter: the answers that come within `--wait` are the instances that are up. With shards, every
shard's engines answer on the one subject and name the stream they decide (`evt_stream`); the shard count
comes from the venue's command streams (`venue_shards`), so a shard that nobody decides is named too.

Exit status: 0 when every shard has exactly one active engine, 1 when one has none or two (a health check
for a supervisor or a probe), 2 when NATS cannot be reached or refuses. It logs in as the operator, the one
user of deploy/accounts.conf that may ask every service.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from jetbook.cli_common import Url, client_call
from jetbook.settings import DEFAULT_URL

_FIELD_MAX = 80  # an answer's text is shown cut to this: whoever answered may have sent anything


def _readable(data: bytes) -> dict[str, Any] | None:
    """A status answer as a JSON object; None for anything else (on an open server anyone may answer)."""
    try:
        answer = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return answer if isinstance(answer, dict) else None


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _FIELD_MAX else text[: _FIELD_MAX - 3] + "..."


def judge(shards: int | None, engines: list[dict[str, Any]]) -> list[str]:
    """What is wrong with the venue, by the engines' answers: no venue, or a shard without exactly one active."""
    from protocol.shards import evt_stream_name

    if shards is None:
        return ["no venue: neither JB_CMD nor JB_CMD_0 exists (start `jetbook up` or `jetbook engine`)"]
    problems = []
    for stream in (evt_stream_name(k, shards) for k in range(shards)):
        active = sum(1 for e in engines if e.get("evt_stream") == stream and e.get("role") == "active")
        if active != 1:
            problems.append(f"{stream}: {'no' if not active else active} active engine{'s' if active > 1 else ''}")
    return problems


def _engine_line(e: dict[str, Any]) -> str:
    lease = "" if e.get("me") is None else f"  lease {_text(e.get('me'))}{' (held)' if e.get('lease_held') else ''}"
    return (
        f"  {_text(e.get('evt_stream', '?')):<10} {_text(e.get('role', '?')):<8} cmd {_text(e.get('last_cmd_seq'))}"
        f"  evt {_text(e.get('last_evt_seq'))}  backlog {_text(e.get('backlog'))}{lease}"
    )


def _projection_line(p: dict[str, Any]) -> str:
    streams = p.get("streams")
    per_stream = ""
    if isinstance(streams, dict) and len(streams) > 1:
        per_stream = "  [" + ", ".join(
            f"{_text(name)} {_text(at.get('position') if isinstance(at, dict) else at)}"
            for name, at in sorted(streams.items())
        ) + "]"  # fmt: skip
    return (
        f"  {_text(p.get('read_model', '?'))}  position {_text(p.get('position'))}  lag {_text(p.get('lag_events'))}"
        f" events ({_text(p.get('lag_seconds'))} s){per_stream}"
    )


def _fanout_line(f: dict[str, Any]) -> str:
    return (
        f"  position {_text(f.get('position'))}  lag {_text(f.get('lag_events'))} events"
        f"  republished {_text(f.get('republished'))}"
    )


def status(
    nats_url: Url = DEFAULT_URL,
    wait: Annotated[float, typer.Option(help="Seconds to collect answers: every instance up answers within it.")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print every answer as one JSON document.")] = False,
) -> None:
    """Every engine (per shard: active or standby) and projection worker, from their status endpoints; exit 1
    when a shard has no active engine."""
    from protocol.barrier import barrier
    from protocol.streams import venue_shards
    from protocol.subjects import (
        ENGINE_STATUS_SUBJECT,
        FANOUT_STATUS_SUBJECT,
        PROJECTION_STATUS_SUBJECT,
        QUERY_SERVICE,
    )

    if not 0 < wait <= 60:
        typer.echo("error: --wait must be more than 0 and at most 60 seconds", err=True)
        raise typer.Exit(2)

    async def body(js: Any) -> int:
        nc = js._nc  # nats-py's JetStreamContext keeps its connection only here
        shards = await venue_shards(js)
        ping_queries = f"$SRV.PING.{QUERY_SERVICE}"  # the query service has no status endpoint: micro's PING
        answers: dict[str, list[bytes]] = {
            ENGINE_STATUS_SUBJECT: [], PROJECTION_STATUS_SUBJECT: [], FANOUT_STATUS_SUBJECT: [], ping_queries: [],
        }  # fmt: skip
        subs, inboxes = [], []
        for into in answers.values():

            async def keep(msg: Any, into: list[bytes] = into) -> None:
                if not (msg.headers and "Status" in msg.headers):  # the server's own notice (503: nobody listens)
                    into.append(msg.data)

            inboxes.append(nc.new_inbox())
            subs.append(await nc.subscribe(inboxes[-1], cb=keep))
        await barrier(nc)  # every inbox is subscribed before any request goes out
        for subject, inbox in zip(answers, inboxes, strict=True):
            await nc.publish(subject, b"", reply=inbox)
        # The scatter's window: how many instances will answer is what this command is asking.
        await asyncio.sleep(wait)
        for sub in subs:
            await sub.unsubscribe()
        readable = {subject: [_readable(data) for data in got] for subject, got in answers.items()}
        engines = [a for a in readable[ENGINE_STATUS_SUBJECT] if a is not None]
        projections = [a for a in readable[PROJECTION_STATUS_SUBJECT] if a is not None]
        fanouts = [a for a in readable[FANOUT_STATUS_SUBJECT] if a is not None]
        queries = sorted(str(a.get("id")) for a in readable[ping_queries] if a is not None)
        unreadable = sum(a is None for got in readable.values() for a in got)
        engines.sort(key=lambda e: (str(e.get("evt_stream")), str(e.get("role")) != "active", str(e.get("me"))))
        problems = judge(shards, engines)
        if as_json:
            doc = {"shards": shards, "engines": engines, "projections": projections, "fanouts": fanouts,
                   "query_services": queries, "unreadable_answers": unreadable, "problems": problems}  # fmt: skip
            typer.echo(json.dumps(doc, indent=2, default=str))
        else:
            typer.echo(f"venue: {'none' if shards is None else f'{shards} shard' + ('s' if shards > 1 else '')}")
            typer.echo(f"engines ({len(engines)})")
            for e in engines:
                typer.echo(_engine_line(e))
            typer.echo(f"projection workers ({len(projections)})")
            for p in projections:
                typer.echo(_projection_line(p))
            typer.echo(f"fan-out workers ({len(fanouts)})")
            for f in fanouts:
                typer.echo(_fanout_line(f))
            listed = f": {', '.join(_text(q) for q in queries)}" if queries else ""
            typer.echo(f"query services ({len(queries)}){listed}")
            if unreadable:
                typer.echo(f"{unreadable} answer(s) that are not a status were left out")
            for problem in problems:
                typer.echo(f"problem: {problem}")
        return 1 if problems else 0

    client_call(nats_url, body, name="jetbook-status")
