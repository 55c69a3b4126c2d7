"""The ledger as a pure state machine: accounts, deposits and transfers with an overdraft rule.

The second application of jetbook's machinery (docs/FRAMEWORK.md walks through
it). Everything here is pure: no I/O, no clock, no randomness, no floats.
Amounts are integers (minor units). Time is the command's JetStream timestamp,
handed in by the machinery. The same command log always gives the same event
bytes, which is what `replay verify` checks.

Commands arrive on `ledger.cmd.<account>`, the acting account being the last
subject token (so NATS permissions can bind a user to its own account), with a
msgpack map body:

- `{"type": "open_account", "overdraft_limit": 0}`: open `<account>`;
- `{"type": "deposit", "amount": 100}`: credit `<account>`;
- `{"type": "transfer", "transfer_id": "t1", "to": "bob", "amount": 30}`:
  move money from `<account>` to `to`, if the payer's balance stays at or above
  minus its overdraft limit.

Each command gives exactly one event: what it did, or `rejected` with a reason.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Final, Literal

import msgpack

# --- the wire: subjects ---------------------------------------------------------------------------

CMD_PREFIX: Final = "ledger.cmd"
WAL_PREFIX: Final = "ledger.wal"  # where the engine publishes; LEDGER_EVT stores it as ledger.evt.>
EVT_PREFIX: Final = "ledger.evt"
INVALID: Final = "_invalid"  # the subject token of a rejection whose account could not be read
LEDGER: Final = "_ledger"  # the subject token of checkpoints: they are the ledger's, not an account's

MAX_AMOUNT: Final = 10**15  # one amount, in minor units
MAX_BALANCE: Final = 2**62  # |balance| stays far inside int64 (msgpack, SQLite)
MAX_ACCOUNTS: Final = 1_000_000
_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_id(value: object) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def cmd_subject(account: str) -> str:
    return f"{CMD_PREFIX}.{account}"


def wal_subject(account: str, kind: str) -> str:
    return f"{WAL_PREFIX}.{account}.{kind}"


# --- commands -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenAccount:
    account: str
    overdraft_limit: int


@dataclass(frozen=True, slots=True)
class Deposit:
    account: str
    amount: int


@dataclass(frozen=True, slots=True)
class Transfer:
    account: str  # the payer: the subject's account
    transfer_id: str
    to: str
    amount: int


@dataclass(frozen=True, slots=True)
class Invalid:
    """A command that cannot be read: it is rejected, never dropped, so the log says why."""

    account: str  # INVALID when the subject has no readable account
    command: str  # the type it claimed, or "" when it claimed none we know
    detail: str


Command = OpenAccount | Deposit | Transfer
COMMAND_TYPES: Final = ("open_account", "deposit", "transfer")


def _amount(body: dict[str, Any], name: str, low: int) -> int:
    value = body.get(name)
    if type(value) is not int or not low <= value <= MAX_AMOUNT:
        raise ValueError(f"{name} must be an integer from {low} to {MAX_AMOUNT}")
    return value


def parse(subject: str, data: bytes) -> Command | Invalid:
    """A command from its subject and bytes. Total: anything unreadable becomes an Invalid, never an exception."""
    tokens = subject.split(".") if isinstance(subject, str) else []
    if len(tokens) != 3 or ".".join(tokens[:2]) != CMD_PREFIX or not is_id(tokens[2]):
        return Invalid(INVALID, "", "subject is not ledger.cmd.<account>")
    account = tokens[2]
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as err:
        return Invalid(account, "", f"body is not msgpack ({type(err).__name__})")
    if type(body) is not dict:
        return Invalid(account, "", "body is not a map")
    kind = body.get("type")
    if kind not in COMMAND_TYPES:
        return Invalid(account, "", f"unknown command type {kind!r}"[:200])
    try:
        if kind == "open_account":
            return OpenAccount(account, _amount(body, "overdraft_limit", 0))
        if kind == "deposit":
            return Deposit(account, _amount(body, "amount", 1))
        transfer_id, to = body.get("transfer_id"), body.get("to")
        if not isinstance(transfer_id, str) or not isinstance(to, str) or not (is_id(transfer_id) and is_id(to)):
            raise ValueError("transfer_id and to must be ids ([A-Za-z0-9_-]{1,64})")
        return Transfer(account, transfer_id, to, _amount(body, "amount", 1))
    except ValueError as err:
        return Invalid(account, str(kind), str(err))


def encode_command(command: Command) -> tuple[str, bytes]:
    """(subject, bytes) of a command, for clients and tests."""
    body: dict[str, Any]
    if isinstance(command, OpenAccount):
        body = {"type": "open_account", "overdraft_limit": command.overdraft_limit}
    elif isinstance(command, Deposit):
        body = {"type": "deposit", "amount": command.amount}
    else:
        body = {"type": "transfer", "transfer_id": command.transfer_id, "to": command.to, "amount": command.amount}
    return cmd_subject(command.account), msgpack.packb(body, use_bin_type=True)


# --- events ---------------------------------------------------------------------------------------
# Field order is wire order: `encode` writes "type" and then every field in declaration order.


@dataclass(frozen=True, slots=True)
class Event:
    type: ClassVar[str] = ""
    cmd_seq: int  # LEDGER_CMD sequence of the command that caused it
    ts: int  # that command's JetStream timestamp, ns since the epoch

    @property
    def subject_token(self) -> str:
        return LEDGER


@dataclass(frozen=True, slots=True)
class AccountOpened(Event):
    type: ClassVar[str] = "account_opened"
    account: str
    overdraft_limit: int

    @property
    def subject_token(self) -> str:
        return self.account


@dataclass(frozen=True, slots=True)
class Deposited(Event):
    type: ClassVar[str] = "deposited"
    account: str
    amount: int
    balance: int  # after it

    @property
    def subject_token(self) -> str:
        return self.account


@dataclass(frozen=True, slots=True)
class Transferred(Event):
    type: ClassVar[str] = "transferred"
    transfer_id: str
    payer: str
    payee: str
    amount: int
    payer_balance: int  # after it
    payee_balance: int

    @property
    def subject_token(self) -> str:
        return self.payer


Reason = Literal["overdraft", "unknown_account", "duplicate", "invalid", "limit", "internal_error"]
REASONS: Final[tuple[Reason, ...]] = ("overdraft", "unknown_account", "duplicate", "invalid", "limit", "internal_error")


@dataclass(frozen=True, slots=True)
class Rejected(Event):
    type: ClassVar[str] = "rejected"
    account: str
    command: str
    reason: str  # one of REASONS
    detail: str

    @property
    def subject_token(self) -> str:
        return self.account


@dataclass(frozen=True, slots=True)
class Checkpoint(Event):
    """Every N events the state's hash, so any follower finds a divergence where it happens."""

    type: ClassVar[str] = "checkpoint"
    covers_seq: int  # the LEDGER_EVT sequence of the last event the hash covers
    state_hash: str


EVENT_TYPES: Final[dict[str, type[Event]]] = {
    cls.type: cls for cls in (AccountOpened, Deposited, Transferred, Rejected, Checkpoint)
}
_FIELDS: Final[dict[type[Event], tuple[str, ...]]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in EVENT_TYPES.values()
}


class UnknownEvent(ValueError):
    """A LEDGER_EVT payload this version cannot read: a newer writer, or not ours."""


def encode(event: Event) -> bytes:
    body: dict[str, Any] = {"type": event.type}
    for name in _FIELDS[type(event)]:
        body[name] = getattr(event, name)
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def decode(data: bytes) -> Event:
    body = msgpack.unpackb(data, raw=False)
    if type(body) is not dict:
        raise ValueError("an event is a msgpack map")
    cls = EVENT_TYPES.get(body.get("type", ""))
    if cls is None:
        raise UnknownEvent(f"unknown event type {body.get('type')!r}")
    names = _FIELDS[cls]
    if set(body) != {"type", *names}:
        raise ValueError(f"{cls.type} has fields {sorted(body)}, expected {sorted(names)}")
    return cls(**{name: body[name] for name in names})


def subject_of(event: Event) -> str:
    """The WAL subject the engine publishes `event` on."""
    return wal_subject(event.subject_token, event.type)


# --- state ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Account:
    overdraft_limit: int
    balance: int = 0


@dataclass(slots=True)
class State:
    accounts: dict[str, Account] = field(default_factory=dict)
    transfer_ids: set[str] = field(default_factory=set)  # every transfer id ever used: reuse is a duplicate
    last_cmd_seq: int = 0  # the newest command whose events are folded in
    event_count: int = 0  # events folded in; equals the LEDGER_EVT sequence of the newest one


# --- decide ---------------------------------------------------------------------------------------


class _Refuse(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _account(state: State, account: str) -> Account:
    found = state.accounts.get(account)
    if found is None:
        raise _Refuse("unknown_account", f"no account {account}")
    return found


def _decide(state: State, cmd_seq: int, ts: int, command: Command) -> Event:
    if isinstance(command, OpenAccount):
        if command.account in state.accounts:
            raise _Refuse("duplicate", f"account {command.account} is already open")
        if len(state.accounts) >= MAX_ACCOUNTS:
            raise _Refuse("limit", f"the ledger holds {MAX_ACCOUNTS} accounts")
        return AccountOpened(cmd_seq, ts, command.account, command.overdraft_limit)
    if isinstance(command, Deposit):
        balance = _account(state, command.account).balance + command.amount
        if balance > MAX_BALANCE:
            raise _Refuse("limit", f"the balance would exceed {MAX_BALANCE}")
        return Deposited(cmd_seq, ts, command.account, command.amount, balance)
    payer = _account(state, command.account)
    payee = _account(state, command.to)
    if command.transfer_id in state.transfer_ids:
        raise _Refuse("duplicate", f"transfer {command.transfer_id} was already made")
    if command.to == command.account:
        raise _Refuse("invalid", "a transfer to the same account")
    payer_balance = payer.balance - command.amount
    if payer_balance < -payer.overdraft_limit:
        raise _Refuse("overdraft", f"balance {payer.balance} minus {command.amount} is below -{payer.overdraft_limit}")
    payee_balance = payee.balance + command.amount
    if payee_balance > MAX_BALANCE:
        raise _Refuse("limit", f"the payee's balance would exceed {MAX_BALANCE}")
    return Transferred(
        cmd_seq, ts, command.transfer_id, command.account, command.to, command.amount, payer_balance, payee_balance
    )


def decide(state: State, cmd_seq: int, ts: int, command: Command | Invalid) -> list[Event]:
    """The events of one command against `state`; never mutates it. A refusal is one Rejected event."""
    if isinstance(command, Invalid):
        return [Rejected(cmd_seq, ts, command.account, command.command, "invalid", command.detail)]
    kind = {OpenAccount: "open_account", Deposit: "deposit", Transfer: "transfer"}[type(command)]
    try:
        return [_decide(state, cmd_seq, ts, command)]
    except _Refuse as refused:
        return [Rejected(cmd_seq, ts, command.account, kind, refused.reason, refused.detail)]


# --- evolve ---------------------------------------------------------------------------------------


def evolve(state: State, event: Event) -> State:
    """Fold one event into `state` (in place, returned). The only code that changes a state, live or on replay."""
    if isinstance(event, AccountOpened):
        state.accounts[event.account] = Account(event.overdraft_limit)
    elif isinstance(event, Deposited):
        state.accounts[event.account].balance = event.balance
    elif isinstance(event, Transferred):
        state.accounts[event.payer].balance = event.payer_balance
        state.accounts[event.payee].balance = event.payee_balance
        state.transfer_ids.add(event.transfer_id)
    elif not isinstance(event, Rejected | Checkpoint):
        raise TypeError(f"the ledger cannot fold {type(event).__name__}")
    state.last_cmd_seq = event.cmd_seq
    state.event_count += 1
    return state


# --- snapshot, restore, hash ----------------------------------------------------------------------


def snapshot(state: State) -> bytes:
    """The state as canonical msgpack (sorted: no hash-order iteration), so equal states give equal bytes."""
    accounts = [[name, a.overdraft_limit, a.balance] for name, a in sorted(state.accounts.items())]
    tree = [state.last_cmd_seq, state.event_count, accounts, sorted(state.transfer_ids)]
    return msgpack.packb(tree, use_bin_type=True)  # type: ignore[no-any-return]


def restore(data: bytes) -> State:
    last_cmd_seq, event_count, accounts, transfer_ids = msgpack.unpackb(data, raw=False, use_list=True)
    return State(
        {name: Account(limit, balance) for name, limit, balance in accounts},
        set(transfer_ids),
        last_cmd_seq,
        event_count,
    )


def state_hash(state: State) -> str:
    """sha256 of the canonical snapshot: what checkpoints state and snapshots are tagged with."""
    return hashlib.sha256(snapshot(state)).hexdigest()
