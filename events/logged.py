"""A logged event: one stored JB_EVT message, decoded and checked the one way every reader of the log does.

The engine (its recovery and its standby), the projection runner, the fan-out
worker, `replay rebuild`, `replay verify` and time travel all read JB_EVT, and
all of them stop on a message that is not what the engine writes rather than
skip it: `CorruptLog`, naming its JB_EVT sequence (docs/GUARANTEES.md, "The
log is checked as it is folded"). So they share this: `decode_logged` for one
message, `decode_chunk` for consecutive ones, and the command-order check
(`check_cmd_seq`, `LogCheck`) that says a log holds every command once, in
order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import msgpack

from events.model import EVENT_TYPES, Event, UnknownEvent, decode
from events.stream_readers import subject_text
from protocol.errors import CorruptLog, JetbookError


def _wire_layouts() -> dict[str, tuple[type[Event], tuple[str, ...]]]:
    return {kind: (cls, ("type", *cls.__struct_fields__)) for kind, cls in EVENT_TYPES.items()}


_LAYOUTS = _wire_layouts()


def decode_fast(data: bytes, unpackb: Callable[..., Any] = msgpack.unpackb) -> Event:
    """`events.model.decode`, about 20% cheaper for a payload in exactly the layout `encode` writes.

    `encode` writes "type" and then every field in declaration order, so
    such a payload, less its "type", is exactly the constructor's keyword
    arguments, and the dict that `from_wire` builds field by field is skipped.
    Anything else (fields missing, extra, reordered, an unknown type) goes
    through `decode`, so what `decode` refuses this refuses with the same
    error. tests/unit/test_replay_decode.py holds the two equal for every
    event type.
    """
    body = unpackb(data)
    layout = _LAYOUTS.get(body.get("type", "")) if type(body) is dict else None
    if layout is not None and tuple(body) == layout[1]:
        del body["type"]
        return layout[0](**body)
    return decode(data)


def decode_logged(
    seq: int,
    subject: str,
    data: bytes,
    check: LogCheck | None = None,
    *,
    unknown_is_newer: bool = False,
    decode: Callable[[bytes], Any] = decode_fast,
    unknown: type[Exception] = UnknownEvent,
) -> Any:
    """The event stored at JB_EVT `seq` (on `subject`); CorruptLog if it is not a jetbook event.

    With `check`, also CorruptLog when it is out of command order. With
    `unknown_is_newer` (the engine), an event type this version does not know
    is a JetbookError saying to upgrade instead: an engine must not decide on
    top of a log it cannot read, and the likely cause is a newer writer, not
    damage.

    `decode` and `unknown` are the application's codec (framework.app.Decider): the exchange's by default.
    """
    try:
        event = decode(data)
    except unknown as err:
        if unknown_is_newer:
            raise JetbookError(
                f"JB_EVT {seq} ({subject}) is an event this engine does not know ({err}): "
                "it was written by a newer jetbook; upgrade this engine"
            ) from err
        raise CorruptLog(seq, subject, err) from err
    except Exception as err:
        raise CorruptLog(seq, subject, err) from err
    if check is not None:
        check.check(seq, subject, event.cmd_seq)
    return event


class Messages(Protocol):
    """Consecutive JB_EVT messages as parallel lists (events.stream_readers.Chunk, or replay.fold.Frame)."""

    @property
    def seqs(self) -> list[int]: ...

    @property
    def subjects(self) -> list[bytes]: ...

    @property
    def data(self) -> list[bytes]: ...


def decode_chunk(
    chunk: Messages, check: LogCheck | None = None, decode_event: Callable[[bytes], Any] = decode_fast
) -> list[tuple[int, Any]]:
    """`decode_logged` for consecutive messages, without its per-message cost when all of them are good.

    CorruptLog for the first one that does not decode, or (with `check`) is out of command order.
    `decode_event` is the application's decoder (the exchange's by default).
    """
    try:
        out = [(seq, decode_event(data)) for seq, data in zip(chunk.seqs, chunk.data, strict=True)]
    except Exception:
        slow = decode if decode_event is decode_fast else decode_event
        for seq, subject, data in zip(chunk.seqs, chunk.subjects, chunk.data, strict=True):
            try:
                slow(data)
            except Exception as err:
                raise CorruptLog(seq, subject_text(subject), err) from err
        raise
    if check is not None:
        for (seq, event), subject in zip(out, chunk.subjects, strict=True):
            _check(check, seq, subject, event.cmd_seq)
    return out


def _check(check: LogCheck, seq: int, subject: bytes, cmd_seq: object) -> None:
    """`check.check` without building the subject's text in the common case (this runs for every event)."""
    last = check.last
    if type(cmd_seq) is int and cmd_seq >= 1 and (last is None or 0 <= cmd_seq - last <= 1):
        check.last = cmd_seq
    else:
        check.check(seq, subject_text(subject), cmd_seq)


def check_cmd_seq(seq: int, subject: str, last: int | None, cmd_seq: object) -> int:
    """The event at JB_EVT `seq` may follow command `last` (None: not known): its command, or CorruptLog.

    Every JB_CMD message gets at least one event (a `rejected` when nothing
    else), a command's events are stored together, and commands are decided
    in JB_CMD order; JB_CMD denies delete and purge. So along JB_EVT `cmd_seq`
    starts at 1 and steps by 0 or 1: a step back is a command decided twice,
    a step of more than one is commands with no events (skipped).
    """
    if type(cmd_seq) is not int or cmd_seq < 1:
        raise CorruptLog(seq, subject, f"names command {cmd_seq!r}, which is not a JB_CMD sequence")
    if last is not None and cmd_seq != last and cmd_seq != last + 1:
        if cmd_seq < last:
            raise CorruptLog(seq, subject, f"is an event of command {cmd_seq} after events of command {last}")
        raise CorruptLog(
            seq, subject, f"is an event of command {cmd_seq} right after command {last}: commands "
            f"{last + 1}..{cmd_seq - 1} have no events",
        )  # fmt: skip
    return cmd_seq


def check_resume(seq: int, last_cmd_seq: int, cmd_tail: int) -> None:
    """At a resume: the newest event (JB_EVT `seq`) may not name a command JB_CMD does not hold.

    Read JB_CMD's tail after JB_EVT's: a command is stored before any of its
    events, so the tail read later can only be further on.
    """
    if last_cmd_seq > cmd_tail:
        raise CorruptLog(
            seq, "the newest event", f"names command {last_cmd_seq} but JB_CMD ends at {cmd_tail}: "
            "resuming there would leave the commands in between undecided",
        )  # fmt: skip


class LogCheck:
    """`check_cmd_seq` along a read of JB_EVT, for readers that do not keep the engine's state."""

    __slots__ = ("last",)

    def __init__(self, last: int | None) -> None:
        self.last = last  # the command of the event before the next one; None when not known (a resumed reader)

    def check(self, seq: int, subject: str, cmd_seq: object) -> None:
        self.last = check_cmd_seq(seq, subject, self.last, cmd_seq)
