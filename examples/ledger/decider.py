"""The ledger's decider: its pure rules (examples/ledger/domain.py) declared to the machinery."""

from __future__ import annotations

from examples.ledger import domain
from examples.ledger.domain import INVALID, Checkpoint, Event, Rejected, State, UnknownEvent, is_id
from framework.pure import PureDecider, fingerprint


def checkpoint(cmd_seq: int, ts: int, covers_seq: int, state_hash: str) -> Event:
    return Checkpoint(cmd_seq, ts, covers_seq, state_hash)


def checkpoint_of(event: Event) -> tuple[int, str] | None:
    return (event.covers_seq, event.state_hash) if isinstance(event, Checkpoint) else None


def internal_error(cmd_seq: int, ts: int, subject: str, err: Exception) -> Event:
    """The reject that stands for a bug in parse or decide: filed under the subject's account if it has one."""
    tokens = subject.split(".") if isinstance(subject, str) else []
    account = tokens[2] if len(tokens) == 3 and is_id(tokens[2]) else INVALID
    return Rejected(cmd_seq, ts, account, "", "internal_error", type(err).__name__)


DECIDER: PureDecider[State, Event] = PureDecider(
    name="ledger",
    initial_state=State,
    parse=domain.parse,
    decide=domain.decide,
    evolve=domain.evolve,
    encode=domain.encode,
    decode=domain.decode,
    subject_of=domain.subject_of,
    checkpoint=checkpoint,
    checkpoint_of=checkpoint_of,
    internal_error=internal_error,
    snapshot=domain.snapshot,
    restore=domain.restore,
    state_hash=domain.state_hash,
    unknown_event=UnknownEvent,
    fingerprint=fingerprint(domain),
)
