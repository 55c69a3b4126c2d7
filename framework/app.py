"""The interface between jetbook's machinery and an application: a decider, projections, stream names.

The machinery (the engine service with its commit pipeline, lease and
snapshots; the projection runner; `replay rebuild` and `replay verify`) takes
an `App` and never names the exchange. docs/FRAMEWORK.md builds one step by
step; the exchange is `engine.exchange.APP`, the ledger `examples.ledger.app.APP`.
"""

from __future__ import annotations

import importlib
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class Positioned(Protocol):
    """What the machinery reads of any state: how far into the two logs it is."""

    @property
    def last_cmd_seq(self) -> int: ...

    @property
    def event_count(self) -> int: ...


class Core(Protocol):
    """One live state and the code that moves it: what the engine service drives.

    `handle` decides one command message (total: anything unreadable is a
    decision too), folds its events, and leaves their encoded form, (WAL
    subject, bytes) in log order, in `payloads`; a command at or below
    `state.last_cmd_seq` is a redelivery and decides nothing. `apply` folds one
    logged event; with `verify`, a checkpoint that disagrees raises the
    decider's `diverged`.
    """

    @property
    def state(self) -> Positioned: ...

    @property
    def payloads(self) -> list[tuple[str, bytes]]: ...

    def handle(self, cmd_seq: int, ts: int, subject: str, data: bytes) -> list[Any]: ...

    def apply(self, event: Any, *, verify: bool = False) -> None: ...


class Decider(Protocol):
    """An application's rules as the machinery uses them: initial state, decide/evolve (in `core`), hash, codec."""

    @property
    def name(self) -> str: ...

    @property
    def checkpoint_every(self) -> int: ...  # the default interval; checkpoints are part of the log's bytes

    @property
    def max_events_per_command(self) -> int: ...  # one command's events are one atomic batch

    @property
    def fingerprint(self) -> str: ...  # changes with the code that defines the state or its encoding

    @property
    def unknown_event(self) -> type[Exception]: ...  # what `decode` raises for a type this version lacks

    @property
    def diverged(self) -> type[Exception]: ...  # what `Core.apply(verify=True)` raises at a bad checkpoint

    def initial_state(self) -> Any: ...

    def core(self, state: Any = None, *, checkpoint_every: int | None = None) -> Core: ...

    def decode(self, data: bytes) -> Any: ...  # a logged event, with its `cmd_seq`

    def encode(self, event: Any) -> bytes: ...

    def checkpoint_covers(self, event: Any) -> int | None: ...  # a checkpoint's covered sequence, else None

    def snapshot(self, state: Any) -> bytes: ...

    def restore(self, data: bytes) -> Any: ...

    def state_hash(self, state: Any) -> str: ...


class SqliteProjection(Protocol):
    """What a projection offers so that it can be kept live and rebuilt: its schema, its fold split in plan and write.

    `SCHEMA` must create `projection_position (name, stream, last_seq)`;
    `write` stores the batch's last sequence there, in the caller's
    transaction, with the rows.
    """

    @property
    def NAME(self) -> str: ...

    @property
    def SCHEMA(self) -> str: ...

    def plan(self, batch: Iterable[tuple[int, Any]], /) -> Any: ...

    def write(self, con: sqlite3.Connection, writes: Any, name: str, /) -> None: ...


def create_schema(con: sqlite3.Connection, script: str, journal: str = "WAL") -> None:
    """A projection's whole schema in one transaction.

    A reader (the query service) that can read the position table can then
    read every table: the projection's first start no longer shows it a file
    with some tables and not others. The journal mode is set first because
    SQLite cannot change it inside a transaction.
    """
    con.execute(f"PRAGMA journal_mode = {journal}")
    con.executescript(f"BEGIN IMMEDIATE;\n{script}\nCOMMIT;")


@dataclass(frozen=True, slots=True)
class Streams:
    """An application's names on the broker. Two applications on one server differ in all of them."""

    cmd: str  # the command stream: what was asked
    evt: str  # the event stream: what happened, the only source of truth
    cmd_subjects: tuple[str, ...]  # what the command stream listens on
    wal_prefix: str  # the engine publishes events under <wal_prefix>.>
    evt_prefix: str  # the event stream stores and republishes them as <evt_prefix>.>
    snapshot_bucket: str  # object store of engine snapshots
    lease_bucket: str  # KV bucket of the writer lease
    lease_key: str = "engine"


@dataclass(frozen=True, slots=True)
class App:
    """An application of the machinery.

    `ref` names the module whose `APP` this is, so that a child process
    (`replay rebuild`'s writer) finds the same application. `ensure_streams`
    creates both streams; None means the generic settings
    (framework/streams.py), which are the exchange's with the names changed.
    """

    name: str
    ref: str
    streams: Streams
    decider: Decider
    projections: Mapping[str, SqliteProjection] = field(default_factory=dict)
    ensure_streams: Callable[[Any, int], Awaitable[None]] | None = None


def load_app(ref: str) -> App:
    """The `APP` of module `ref` (e.g. "examples.ledger.app" or "engine.exchange").

    "module:spec" is the app the module's `app_for(spec)` returns: one of several apps one module
    makes, such as a market shard of the exchange ("engine.exchange:1/2").
    """
    module_name, _, spec = ref.partition(":")
    module = importlib.import_module(module_name)
    if spec:
        app = module.app_for(spec)
    else:
        app = getattr(module, "APP", None)
    if not isinstance(app, App):
        raise ValueError(f"module {ref} has no APP (a framework.app.App)")
    return app
