"""The exchange as a pure state machine, as the shell sees it: `Engine.handle` (decode -> validate -> decide -> evolve).

The core is in parts: engine/state.py (the state, its snapshot and hash),
engine/decide.py (the rules: one decider per command type), engine/evolve.py
(one applier per event type) and engine/book.py (the matching loop);
engine/fast.py decides and folds the everyday place/cancel in one pass, to the
same events and state (it declines anything else). This module joins them
into the one entry point every caller uses, and keeps the engine's own
guarantees: any input becomes events or one deterministic reject, nothing is
half-applied, and checkpoints state the hash on the log.

No I/O, no clock, no randomness, no floats. Time is the command's JetStream
timestamp, handed in by the shell.
"""

from __future__ import annotations

from typing import Any, Final

from commands.model import (
    CancelOrders,
    Invalid,
    Parsed,
    PlaceOrders,
    ReplaceOrders,
    _Cancel,
    _decode_fast,
    _Place,
    _split_subject,
    parse,
)
from engine.decide import (
    CHUNK,
    DECIDERS,
    MAX_COMMAND_EVENTS,
    MAX_EVENTS_PER_COMMAND,
    MAX_FILLS,
    MAX_ODDS_PNL,
    Folding,
    _chunk_size,
    decide,
    decide_in_place,
)
from engine.evolve import apply_uncounted, count_logged, evolve, fold
from engine.fast import Route, cancel, place
from engine.state import Market, Risk, State, restore, snapshot, state_hash
from events.model import ENGINE_MARKET, Checkpoint, Event, Rejected, make_encoders
from protocol.shards import check_shards, partition, wal_prefix
from protocol.subjects import ALL_MARKETS, UNROUTABLE_MARKET, is_id

# The names callers import from here: the engine, and the core's limits and state functions it is built on.
__all__ = [
    "CHECKPOINT_EVERY",
    "CHUNK",
    "DECIDERS",
    "MAX_COMMAND_EVENTS",
    "MAX_EVENTS_PER_COMMAND",
    "MAX_FILLS",
    "MAX_ODDS_PNL",
    "Diverged",
    "Engine",
    "HalfApplied",
    "Market",
    "Risk",
    "State",
    "_chunk_size",
    "decide",
    "evolve",
    "parse",
    "restore",
    "snapshot",
    "state_hash",
]

# A checkpoint event follows the command whose events cross a multiple of this many events. It is
# part of the log, so re-deciding JB_CMD must use the same value to reproduce the same bytes.
CHECKPOINT_EVERY: Final = 100_000


def _internal_error(item: Parsed | Invalid, seq: int, ts: int, err: Exception) -> Rejected:
    command_type = item.command.type if isinstance(item, Parsed) else item.command_type
    return Rejected(
        market_id=item.market_id, cmd_seq=seq, ts=ts, reason="internal_error", detail=type(err).__name__,
        account_id=item.account_id, command_type=command_type,
    )  # fmt: skip


def _unparsed(subject: Any, err: Exception) -> Invalid:
    """What a command becomes when parse itself raised: filed under the subject's ids if it has them.

    Every market or account token that reaches an event (and so a jb.wal subject)
    has passed `is_id`; anything else is filed under `_invalid` with no account.
    """
    market, account = UNROUTABLE_MARKET, None
    try:
        tokens = subject.split(".")
        if len(tokens) in (3, 4) and is_id(tokens[2]):
            market = tokens[2]
            account = tokens[3] if len(tokens) == 4 and is_id(tokens[3]) else None
    except Exception:  # a subject that is not even a str
        pass
    return Invalid(market, account, "internal_error", type(err).__name__)


_BATCHES: Final = (PlaceOrders, CancelOrders, ReplaceOrders)
_ROUTES_MAX: Final = 65_536  # the cache of subjects the fused path takes is emptied at this size
_MINE_MAX: Final = 4096  # the cache of this shard's market tokens is emptied at this size (any valid id gets in)


def _hash(state: State) -> str:
    """state_hash, total: a state that cannot be hashed gets a fixed mark, the same live and on replay.

    By construction every int in the state fits 64 bits, so the mark should never
    be written; it exists so that hashing can never stop the engine.
    """
    try:
        return state_hash(state)
    except Exception as err:
        return f"unhashable:{type(err).__name__}"


class HalfApplied(Exception):
    """Folding a command's own decided events raised: the state may be half-changed, so the engine must stop.

    Unreachable by construction: decide only names books, orders and accounts
    that exist in the state it read, and evolve does nothing but dict and
    sorted-dict updates and Python int arithmetic (which cannot overflow) on
    them. The hypothesis machine and the fuzz test hold that; this is the
    guard that refuses to go on from a state nobody can vouch for.
    """


class Diverged(Exception):
    """A checkpoint in the log does not match the state folded from the events before it."""

    def __init__(self, event: Checkpoint, actual: str) -> None:
        super().__init__(
            f"checkpoint after event {event.covers_seq} says {event.state_hash[:16]}, state is {actual[:16]}"
        )
        self.event = event
        self.actual = actual


def _wrong_shard(item: Parsed | Invalid, shard: int, shards: int) -> Invalid | None:
    """A command for a market another shard decides: the broker never routes one here, but a trader may
    publish on jbs.<k>.cmd.<m>.<self> directly (permissions are checked on the mapped subject), so the
    engine refuses it. `_all` (sourced into every shard) and `_invalid` are every shard's."""
    market = item.market_id
    if market in (ALL_MARKETS, UNROUTABLE_MARKET) or partition(market, shards) == shard:
        return None
    if isinstance(item, Parsed):
        command_type: str | None = item.command.type
        client_order_id = getattr(item.command, "client_order_id", None)
    else:
        command_type, client_order_id = item.command_type, item.client_order_id
    return Invalid(
        market, item.account_id, "wrong_shard", f"market is shard {partition(market, shards)}'s, not {shard}'s",
        command_type, client_order_id,
    )  # fmt: skip


class Engine:
    """decode -> validate -> decide -> evolve, for one raw JB_CMD message at a time.

    With `shards` > 1 this is shard `shard`'s engine: it publishes under jbs.<shard>.wal and refuses a market
    that `protocol.shards.partition` gives to another shard. One shard: jb.wal and no check, today's bytes.
    """

    def __init__(
        self, state: State | None = None, *, checkpoint_every: int = CHECKPOINT_EVERY, shard: int = 0, shards: int = 1
    ) -> None:
        check_shards(shards)
        if not 0 <= shard < shards:
            raise ValueError(f"shard must be 0..{shards - 1}, not {shard}")
        self.state = state if state is not None else State()
        self.checkpoint_every = checkpoint_every
        self.shard = shard
        self.shards = shards
        self.wal_prefix = wal_prefix(shard, shards)
        self._mine: set[str] = set()  # market tokens known to be this shard's: a hash per command saved
        # (jb.wal subject, msgpack bytes) of each event the last `handle` returned, in order: the
        # encoding is part of the decision (a value that cannot be encoded becomes a reject), so the
        # shell publishes these bytes rather than encoding the events again.
        self.payloads: list[tuple[str, bytes]] = []
        self._encoders = make_encoders()
        # subject -> its Route for the fused place/cancel path (engine.fast), or None: a subject that path
        # never takes (control, _all, malformed, another shard's).
        self._routes: dict[str, Route | None] = {}

    def handle(self, cmd_seq: int, ts: int, subject: str, data: bytes) -> list[Event]:
        """The events of one JB_CMD message, folded into the state. Total for any subject and bytes.

        Every failure on the way (a subject that is not ours, undecodable bytes,
        a parse or decide bug, events that do not encode) becomes the command's
        one `rejected` event, decided before anything is folded, so nothing is
        half-applied; the same input fails the same way on replay, so the
        reject is as deterministic as any other. `cmd_seq` and `ts` come from
        JetStream (unsigned 64-bit, well inside int64 for centuries).
        """
        state = self.state
        if cmd_seq <= state.last_cmd_seq:
            self.payloads = []
            return []  # its events are already in the log: a redelivery, not a new command
        try:
            route = self._routes[subject]
        except KeyError:
            route = self._route(subject)
        except TypeError:  # not even a str: the general path makes it a reject
            route = None
        if route is not None:
            # The everyday place/cancel decided and folded in one pass (engine.fast). Nothing is changed
            # when it declines (None), or when it raises before it starts folding (it sets last_cmd_seq
            # first thing there): the command then takes the general path below, which names any reason
            # or makes a bug an internal_error. An exception after that is HalfApplied, as in `_fold`.
            before = state.event_count
            try:
                body = _decode_fast(data)
                if type(body) is _Place:
                    done = place(state, cmd_seq, ts, body, route)
                else:
                    assert type(body) is _Cancel
                    done = cancel(state, cmd_seq, ts, body, route)
            except Exception as err:
                if state.last_cmd_seq == cmd_seq:
                    raise HalfApplied(f"command {cmd_seq}: folding its events raised {type(err).__name__}") from err
                done = None
            if done is not None:
                events, payloads = done
                if state.event_count // self.checkpoint_every > before // self.checkpoint_every:
                    return self._checkpoint(cmd_seq, ts, before, events, payloads)
                self.payloads = payloads
                return events
        try:
            parsed = parse(subject, data)
        except Exception as err:  # parse is total by design; this guards a bug in it
            parsed = _unparsed(subject, err)
        if self.shards > 1 and parsed.market_id not in self._mine:
            wrong = _wrong_shard(parsed, self.shard, self.shards)
            if wrong is None:
                if len(self._mine) >= _MINE_MAX:
                    self._mine.clear()
                self._mine.add(parsed.market_id)
            else:
                parsed = wrong
        if type(parsed) is Parsed and type(parsed.command) in _BATCHES:
            batch = self._batch_in_place(cmd_seq, ts, parsed)
            if batch is not None:
                return batch
        try:
            events = decide(self.state, cmd_seq, ts, parsed)
            if len(events) > MAX_COMMAND_EVENTS:
                # A decider's own limits should make this impossible; if one is missed, a command
                # whose events cannot be committed atomically must become a reject, not a crash loop.
                raise OverflowError(f"{len(events)} events")
            enc = self._encoders
            wal = self.wal_prefix
            payloads = [(f"{wal}.{e.market_id}.{e.type}", enc[type(e)](e)) for e in events]
        except Exception as err:
            # A bug must not turn one command into a poison pill that halts every market on every
            # restart. decide does not mutate, so nothing is half-applied.
            events = [_internal_error(parsed, cmd_seq, ts, err)]
            payloads = [(self._subject(events[0].market_id, Rejected.type), self._encoders[Rejected](events[0]))]
        before = self.state.event_count
        self._fold(cmd_seq, events)
        return self._checkpoint(cmd_seq, ts, before, events, payloads)

    def _route(self, subject: str) -> Route | None:
        """The fused path's view of a subject (see `_routes`), remembered."""
        route: Route | None = None
        try:
            where = _split_subject(subject)
        except Exception:  # a subject that is not even a str: the general path makes it a reject
            return None
        if type(where) is tuple and where[0] == "cmd" and where[1] != ALL_MARKETS:
            market, account = where[1], where[2]
            assert market is not None and account is not None
            if self.shards == 1 or partition(market, self.shards) == self.shard:
                route = Route(self.wal_prefix, market, account, self._encoders)
        if len(self._routes) >= _ROUTES_MAX:
            self._routes.clear()
        self._routes[subject] = route
        return route

    def _subject(self, market_id: str, kind: str) -> str:
        return f"{self.wal_prefix}.{market_id}.{kind}"

    def _fold(self, cmd_seq: int, events: list[Event]) -> None:
        state = self.state
        try:
            fold(state, events)
        except Exception as err:
            raise HalfApplied(f"command {cmd_seq}: folding its own events raised {type(err).__name__}") from err

    def _batch_in_place(self, cmd_seq: int, ts: int, parsed: Parsed) -> list[Event] | None:
        """A batch decided and folded instruction by instruction (engine.decide.decide_in_place); None: decide it
        the usual way. Each instruction's events are encoded before they are folded, and one that cannot be
        becomes that instruction's internal_error reject, so what is folded is what is published."""
        before = self.state.event_count
        payloads: list[tuple[str, bytes]] = []
        enc = self._encoders
        wal = self.wal_prefix

        def fold(index: int, events: list[Event]) -> list[Event]:
            try:
                encoded = [(f"{wal}.{e.market_id}.{e.type}", enc[type(e)](e)) for e in events]
            except Exception as err:
                reject = _internal_error(parsed, cmd_seq, ts, err)
                reject.index = index
                events = [reject]
                encoded = [(self._subject(reject.market_id, Rejected.type), enc[Rejected](reject))]
            self._fold(cmd_seq, events)
            payloads.extend(encoded)
            return events

        def row(event: Event) -> None:
            try:
                apply_uncounted(self.state, event)
            except Exception as err:
                raise HalfApplied(f"command {cmd_seq}: folding its own events raised {type(err).__name__}") from err

        def run(event: Event) -> None:
            # A compact run's rows are folded already, so an event that cannot be encoded could no longer
            # become a reject: as unreachable as a fold that raises (every row holds an order_accepted's or
            # order_cancelled's own checked values), and as fatal.
            try:
                payloads.append((f"{wal}.{event.market_id}.{event.type}", enc[type(event)](event)))
            except Exception as err:
                raise HalfApplied(f"command {cmd_seq}: its compact run raised {type(err).__name__}") from err
            count_logged(self.state, event)

        events = decide_in_place(self.state, cmd_seq, ts, parsed, Folding(fold, row, run))
        if events is None:
            return None
        return self._checkpoint(cmd_seq, ts, before, events, payloads)

    def _checkpoint(
        self, cmd_seq: int, ts: int, before: int, events: list[Event], payloads: list[tuple[str, bytes]]
    ) -> list[Event]:
        """The command's events (and payloads), with a checkpoint after them when they cross a multiple."""
        state = self.state
        if state.event_count // self.checkpoint_every > before // self.checkpoint_every:
            checkpoint = Checkpoint(
                market_id=ENGINE_MARKET, cmd_seq=cmd_seq, ts=ts, covers_seq=state.event_count, state_hash=_hash(state)
            )
            evolve(state, checkpoint)
            events.append(checkpoint)
            payloads.append((self._subject(ENGINE_MARKET, Checkpoint.type), self._encoders[Checkpoint](checkpoint)))
        self.payloads = payloads
        return events

    def apply(self, event: Event, *, verify: bool = False) -> None:
        """Fold one event from the log; with verify, a checkpoint that disagrees raises Diverged."""
        if verify and isinstance(event, Checkpoint):
            actual = _hash(self.state)
            if actual != event.state_hash:
                raise Diverged(event, actual)
        evolve(self.state, event)
