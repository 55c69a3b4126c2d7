"""The ledger's pure core: its rules, its codec, its determinism, and the core the machinery drives over it."""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from examples.ledger import domain, projection
from examples.ledger.decider import DECIDER
from examples.ledger.domain import (
    AccountOpened,
    Checkpoint,
    Deposit,
    Deposited,
    Invalid,
    OpenAccount,
    Rejected,
    State,
    Transfer,
    Transferred,
    UnknownEvent,
    encode_command,
)
from framework.pure import Diverged, HalfApplied, run

TS = 1_700_000_000_000_000_000


def log_of(*commands: domain.Command) -> list[tuple[int, int, str, bytes]]:
    """Commands as a command log: (cmd_seq, ts, subject, bytes), numbered from 1."""
    return [(i, TS + i, *encode_command(c)) for i, c in enumerate(commands, 1)]


def events_of(*commands: domain.Command) -> tuple[State, list[domain.Event]]:
    state, payloads = run(DECIDER, log_of(*commands))
    return state, [domain.decode(p) for p in payloads]


def test_a_transfer_moves_money_and_names_both_balances() -> None:
    state, events = events_of(
        OpenAccount("alice", 0), OpenAccount("bob", 0), Deposit("alice", 100), Transfer("alice", "t1", "bob", 30)
    )
    assert events == [
        AccountOpened(1, TS + 1, "alice", 0),
        AccountOpened(2, TS + 2, "bob", 0),
        Deposited(3, TS + 3, "alice", 100, 100),
        Transferred(4, TS + 4, "t1", "alice", "bob", 30, 70, 30),
    ]
    assert {a: acct.balance for a, acct in state.accounts.items()} == {"alice": 70, "bob": 30}
    assert (state.last_cmd_seq, state.event_count) == (4, 4)


@pytest.mark.parametrize(
    ("limit", "amount", "outcome"),
    [(0, 100, "transferred"), (0, 101, "overdraft"), (50, 150, "transferred"), (50, 151, "overdraft")],
)
def test_the_overdraft_rule_is_the_limit_exactly(limit: int, amount: int, outcome: str) -> None:
    state, events = events_of(
        OpenAccount("alice", limit), OpenAccount("bob", 0), Deposit("alice", 100), Transfer("alice", "t", "bob", amount)
    )
    last = events[-1]
    assert last.type == ("transferred" if outcome == "transferred" else "rejected")
    if isinstance(last, Rejected):
        assert (last.account, last.command, last.reason) == ("alice", "transfer", "overdraft")
        assert state.accounts["alice"].balance == 100  # nothing moved
    else:
        assert state.accounts["alice"].balance == 100 - amount >= -limit


@pytest.mark.parametrize(
    ("commands", "reason"),
    [
        ((Deposit("carol", 5),), "unknown_account"),
        ((OpenAccount("alice", 0), Transfer("alice", "t", "nobody", 1)), "unknown_account"),
        ((OpenAccount("alice", 0), OpenAccount("alice", 5)), "duplicate"),
        (
            (OpenAccount("a", 9), OpenAccount("b", 0), Transfer("a", "t", "b", 1), Transfer("a", "t", "b", 1)),
            "duplicate",
        ),
        ((OpenAccount("a", 9), Transfer("a", "t", "a", 1)), "invalid"),
        ((OpenAccount("a", 0), Deposit("a", domain.MAX_AMOUNT), *[Deposit("a", domain.MAX_AMOUNT)] * 4700), "limit"),
    ],
)
def test_refusals_are_rejected_events_with_a_reason(commands: tuple[domain.Command, ...], reason: str) -> None:
    _, events = events_of(*commands)
    rejected = [e for e in events if isinstance(e, Rejected)]
    assert rejected and rejected[0].reason == reason
    assert rejected[0].reason in domain.REASONS


@pytest.mark.parametrize(
    ("subject", "body", "detail"),
    [
        ("ledger.cmd", {"type": "deposit", "amount": 1}, "subject"),
        ("ledger.cmd.a.b", {"type": "deposit", "amount": 1}, "subject"),
        ("other.cmd.a", {"type": "deposit", "amount": 1}, "subject"),
        ("ledger.cmd.a", {"type": "steal", "amount": 1}, "unknown command type"),
        ("ledger.cmd.a", {"type": "deposit", "amount": 1.5}, "amount"),
        ("ledger.cmd.a", {"type": "deposit", "amount": 0}, "amount"),
        ("ledger.cmd.a", {"type": "deposit", "amount": True}, "amount"),
        ("ledger.cmd.a", {"type": "deposit", "amount": domain.MAX_AMOUNT + 1}, "amount"),
        ("ledger.cmd.a", {"type": "transfer", "transfer_id": "x y", "to": "b", "amount": 1}, "ids"),
        ("ledger.cmd.a", {"type": "open_account", "overdraft_limit": -1}, "overdraft_limit"),
        ("ledger.cmd.a", [1, 2], "not a map"),
    ],
)
def test_parse_is_total_and_says_what_is_wrong(subject: str, body: Any, detail: str) -> None:
    parsed = domain.parse(subject, msgpack.packb(body))
    assert isinstance(parsed, Invalid)
    assert detail in parsed.detail
    [event] = domain.decide(State(), 1, TS, parsed)
    assert isinstance(event, Rejected) and event.reason == "invalid"


def test_garbage_bytes_are_a_reject_not_an_exception() -> None:
    core = DECIDER.core()
    [event] = core.handle(1, TS, "ledger.cmd.alice", b"\xc1\xff")
    assert isinstance(event, Rejected) and (event.account, event.reason) == ("alice", "invalid")
    [event] = core.handle(2, TS, "\udcff", b"")
    assert isinstance(event, Rejected) and event.account == domain.INVALID
    assert [s for s, _ in core.payloads] == ["ledger.wal._invalid.rejected"]


def test_a_bug_in_decide_is_an_internal_error_reject() -> None:
    def broken(state: State, cmd_seq: int, ts: int, command: Any) -> list[domain.Event]:
        raise KeyError("bug")

    core = dataclasses.replace(DECIDER, decide=broken).core()
    [event] = core.handle(1, TS, *encode_command(Deposit("alice", 1)))
    assert isinstance(event, Rejected) and (event.account, event.reason, event.detail) == (
        "alice",
        "internal_error",
        "KeyError",
    )
    assert core.state.event_count == 1


def test_a_bug_in_evolve_of_its_own_events_stops_the_core() -> None:
    def broken(state: State, event: domain.Event) -> State:
        raise RuntimeError("bug")

    core = dataclasses.replace(DECIDER, evolve=broken).core()
    with pytest.raises(HalfApplied):
        core.handle(1, TS, *encode_command(OpenAccount("alice", 0)))


def test_a_redelivered_command_decides_nothing() -> None:
    core = DECIDER.core()
    core.handle(1, TS, *encode_command(OpenAccount("alice", 0)))
    assert core.handle(1, TS, *encode_command(OpenAccount("bob", 0))) == []
    assert core.payloads == []
    assert list(core.state.accounts) == ["alice"]


def test_events_go_out_on_their_account_subject() -> None:
    core = DECIDER.core()
    core.handle(1, TS, *encode_command(OpenAccount("alice", 0)))
    assert [s for s, _ in core.payloads] == ["ledger.wal.alice.account_opened"]


def test_codec_round_trips_every_event_type_and_refuses_the_unknown() -> None:
    samples = [
        AccountOpened(1, TS, "a", 5),
        Deposited(2, TS, "a", 3, 3),
        Transferred(3, TS, "t", "a", "b", 1, 2, 1),
        Rejected(4, TS, "a", "deposit", "unknown_account", "no account a"),
        Checkpoint(5, TS, 4, "ab" * 32),
    ]
    assert {type(e) for e in samples} == set(domain.EVENT_TYPES.values())
    for event in samples:
        assert domain.decode(domain.encode(event)) == event
    with pytest.raises(UnknownEvent):
        domain.decode(msgpack.packb({"type": "order_accepted", "cmd_seq": 1, "ts": 0}))
    with pytest.raises(ValueError, match="fields"):
        domain.decode(msgpack.packb({"type": "deposited", "cmd_seq": 1, "ts": 0}))


def test_checkpoints_land_where_the_count_crosses_a_multiple_and_are_checked_on_fold() -> None:
    log = log_of(OpenAccount("a", 0), *[Deposit("a", 1)] * 9)
    core = DECIDER.core(checkpoint_every=4)
    payloads: list[bytes] = []
    for item in log:
        core.handle(*item)
        payloads.extend(p for _, p in core.payloads)
    events = [domain.decode(p) for p in payloads]
    covers = [e.covers_seq for e in events if isinstance(e, Checkpoint)]
    assert covers == [4, 8, 12]  # counted with the checkpoints themselves, like the exchange's core

    follower = DECIDER.core(checkpoint_every=4)
    for event in events:
        follower.apply(event, verify=True)
    assert DECIDER.state_hash(follower.state) == DECIDER.state_hash(core.state)

    bad = DECIDER.core(checkpoint_every=4)
    forged = [dataclasses.replace(e, state_hash="0" * 64) if isinstance(e, Checkpoint) else e for e in events]
    with pytest.raises(Diverged):
        for event in forged:
            bad.apply(event, verify=True)


def test_snapshot_restore_is_the_identity_and_the_hash_is_of_the_bytes() -> None:
    state, _ = events_of(
        OpenAccount("b", 3),
        OpenAccount("a", 0),
        Deposit("a", 10),
        Transfer("a", "t9", "b", 4),
        Transfer("b", "t1", "a", 6),
    )
    data = domain.snapshot(state)
    again = domain.restore(data)
    assert again == state
    assert domain.snapshot(again) == data
    assert domain.state_hash(state) == hashlib.sha256(data).hexdigest()


names = st.sampled_from(["a", "b", "c", "d"])
commands = st.one_of(
    st.builds(OpenAccount, names, st.integers(0, 100)),
    st.builds(Deposit, names, st.integers(1, 500)),
    st.builds(Transfer, names, st.sampled_from(["t1", "t2", "t3", "t4", "t5", "t6"]), names, st.integers(1, 300)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(commands, max_size=40), st.integers(1, 7))
def test_any_command_log_keeps_the_books_and_replays_to_the_same_state(cmds: list[domain.Command], every: int) -> None:
    log = log_of(*cmds)
    core = DECIDER.core(checkpoint_every=every)
    payloads: list[bytes] = []
    for item in log:
        core.handle(*item)
        payloads.extend(p for _, p in core.payloads)
    state = core.state
    deposited = sum(c.amount for c in cmds if isinstance(c, Deposit))
    deposits_made = sum(e.amount for p in payloads if isinstance(e := domain.decode(p), Deposited))
    assert deposits_made <= deposited
    assert sum(a.balance for a in state.accounts.values()) == deposits_made  # money is only moved, never made
    assert all(a.balance >= -a.overdraft_limit for a in state.accounts.values())

    # Same log, same bytes; and folding the bytes gives the live state.
    assert run(dataclasses.replace(DECIDER, checkpoint_every=every), log)[1] == payloads
    follower = DECIDER.core(checkpoint_every=every)
    for p in payloads:
        follower.apply(domain.decode(p), verify=True)
    assert domain.snapshot(follower.state) == domain.snapshot(state)

    # The projection of those events, in one batch or one event at a time, holds the state's balances.
    seqd = [(i, domain.decode(p)) for i, p in enumerate(payloads, 1)]
    dumps = []
    for size in (len(seqd) or 1, 1):
        con = sqlite3.connect(":memory:", isolation_level=None)
        con.executescript(projection.SCHEMA)
        for start in range(0, len(seqd), size):
            con.execute("BEGIN")
            projection.write(con, projection.plan(seqd[start : start + size]), projection.NAME)
            con.execute("COMMIT")
        assert projection.balances(con) == {a: acct.balance for a, acct in sorted(state.accounts.items())}
        assert projection.position(con) == len(seqd)
        dumps.append(list(con.iterdump()))
        con.close()
    assert dumps[0] == dumps[1]
