"""A decider made of pure functions, and the core the engine service drives over it.

An application writes its rules as plain functions (parse, decide, evolve,
encode, decode, snapshot, restore, state_hash) and gets from `PureDecider` the
whole surface the machinery needs: a `Core` that handles one command's bytes
into encoded events and folds them, puts a checkpoint event wherever the event
count crosses a multiple of N, and folds logged events (checking checkpoints).
The exchange has its own core (engine.core.Engine, older and tuned); the
ledger (examples/ledger) uses this one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from types import ModuleType
from typing import Any, Generic, Protocol, TypeVar


class Positioned(Protocol):
    """What the machinery reads of any state: how far into the two logs it is."""

    @property
    def last_cmd_seq(self) -> int: ...

    @property
    def event_count(self) -> int: ...


class Logged(Protocol):
    """What the machinery reads of any event: the command that caused it."""

    @property
    def cmd_seq(self) -> int: ...


S = TypeVar("S", bound=Positioned)
E = TypeVar("E", bound=Logged)


class Diverged(Exception):
    """A checkpoint in the log does not match the state folded from the events before it."""

    def __init__(self, covers_seq: int, logged: str, actual: str) -> None:
        super().__init__(f"checkpoint after event {covers_seq} says {logged[:16]}, state is {actual[:16]}")
        self.actual = actual


class HalfApplied(Exception):
    """Folding a command's own decided events raised: the state may be half-changed, so the engine must stop."""


def fingerprint(*modules: ModuleType) -> str:
    """Changes whenever the source of the modules that define the state or its encoding changes."""
    digest = sha256()
    for module in modules:
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class PureDecider(Generic[S, E]):
    """An application's rules, as functions. Every one is pure: no I/O, no clock, no randomness, no floats.

    - `parse(subject, data)`: a command (or a value that decides into a reject); total.
    - `decide(state, cmd_seq, ts, command)`: its events; never mutates the state.
    - `evolve(state, event)`: folds one event, in place; bumps `last_cmd_seq` and `event_count`.
    - `encode` / `decode`: an event's bytes (canonical: the same event, the same bytes).
    - `subject_of(event)`: the WAL subject it is published on.
    - `checkpoint(cmd_seq, ts, covers_seq, hash)`: the checkpoint event; `checkpoint_of(event)`: its
      (covers_seq, hash) if it is one, else None.
    - `internal_error(cmd_seq, ts, subject, err)`: the reject that stands for a bug in parse or decide.
    - `snapshot` / `restore` / `state_hash`: canonical bytes of a state, their inverse, their hash.
    """

    name: str
    initial_state: Callable[[], S]
    parse: Callable[[str, bytes], Any]
    decide: Callable[[S, int, int, Any], list[E]]
    evolve: Callable[[S, E], S]
    encode: Callable[[E], bytes]
    decode: Callable[[bytes], E]
    subject_of: Callable[[E], str]
    checkpoint: Callable[[int, int, int, str], E]
    checkpoint_of: Callable[[E], tuple[int, str] | None]
    internal_error: Callable[[int, int, str, Exception], E]
    snapshot: Callable[[S], bytes]
    restore: Callable[[bytes], S]
    state_hash: Callable[[S], str]
    unknown_event: type[Exception]
    fingerprint: str
    checkpoint_every: int = 100_000
    max_events_per_command: int = 1000  # one ADR-50 atomic batch
    diverged: type[Exception] = field(default=Diverged)

    def core(self, state: S | None = None, *, checkpoint_every: int | None = None) -> Core[S, E]:
        return Core(self, state, checkpoint_every=checkpoint_every or self.checkpoint_every)

    def checkpoint_covers(self, event: E) -> int | None:
        found = self.checkpoint_of(event)
        return None if found is None else found[0]


class Core(Generic[S, E]):
    """parse -> decide -> encode -> evolve for one raw command at a time, plus checkpoints; folds logged events."""

    def __init__(self, decider: PureDecider[S, E], state: S | None = None, *, checkpoint_every: int) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        self.decider = decider
        self.state: S = state if state is not None else decider.initial_state()
        self.checkpoint_every = checkpoint_every
        # (WAL subject, bytes) of each event the last `handle` returned: the encoding is part of the
        # decision (an event that cannot be encoded becomes a reject), so these bytes are what is published.
        self.payloads: list[tuple[str, bytes]] = []

    def _hash(self) -> str:
        try:
            return self.decider.state_hash(self.state)
        except Exception as err:
            return f"unhashable:{type(err).__name__}"

    def handle(self, cmd_seq: int, ts: int, subject: str, data: bytes) -> list[E]:
        """The events of one command message, folded into the state. Total for any subject and bytes."""
        d = self.decider
        if cmd_seq <= self.state.last_cmd_seq:
            self.payloads = []
            return []  # already in the log: a redelivery, not a new command
        try:
            events = d.decide(self.state, cmd_seq, ts, d.parse(subject, data))
            if len(events) > d.max_events_per_command - 1:  # one slot is kept for a checkpoint
                raise OverflowError(f"{len(events)} events")
            payloads = [(d.subject_of(e), d.encode(e)) for e in events]
        except Exception as err:  # a bug must not make one command a poison pill: it becomes a reject
            events = [d.internal_error(cmd_seq, ts, subject, err)]
            payloads = [(d.subject_of(events[0]), d.encode(events[0]))]
        before = self.state.event_count
        try:
            for event in events:
                self.state = d.evolve(self.state, event)
        except Exception as err:
            raise HalfApplied(f"command {cmd_seq}: folding its own events raised {type(err).__name__}") from err
        count = self.state.event_count
        if count // self.checkpoint_every > before // self.checkpoint_every:
            checkpoint = d.checkpoint(cmd_seq, ts, count, self._hash())
            self.state = d.evolve(self.state, checkpoint)
            events.append(checkpoint)
            payloads.append((d.subject_of(checkpoint), d.encode(checkpoint)))
        self.payloads = payloads
        return events

    def apply(self, event: E, *, verify: bool = False) -> None:
        """Fold one event from the log; with verify, a checkpoint that disagrees raises Diverged."""
        if verify:
            found = self.decider.checkpoint_of(event)
            if found is not None:
                actual = self._hash()
                if actual != found[1]:
                    raise Diverged(found[0], found[1], actual)
        self.state = self.decider.evolve(self.state, event)


def run(decider: PureDecider[S, E], commands: Sequence[tuple[int, int, str, bytes]]) -> tuple[S, list[bytes]]:
    """Decide a whole command log in memory: the final state and every event's bytes (tests, docs)."""
    core = decider.core()
    out: list[bytes] = []
    for cmd_seq, ts, subject, data in commands:
        core.handle(cmd_seq, ts, subject, data)
        out.extend(payload for _, payload in core.payloads)
    return core.state, out
