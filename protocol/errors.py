"""Broker error codes mapped to jetbook's exceptions, in one place.

JetStream answers a publish with a JSON PubAck that either has a sequence or an
`error` object carrying `err_code`; the codes below are the ones whose meaning
changes what the engine does next.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

import nats.errors
import nats.js.errors

# A timeout, a reconnect, or a stream with no leader for a moment (a node lost in a cluster: 503,
# "no response from stream"): not an answer, so wait and ask again.
TRANSIENT: Final = (
    asyncio.TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError, nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
)  # fmt: skip


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that nats-py swallowed.

    nats-py's publish ends with `except asyncio.CancelledError: pass` around its wait for room in the
    flush queue (nats/aio/client.py, `_flush_pending`), so a task cancelled mid-publish under backpressure
    carries on as if nothing happened. Python still counts the request (`Task.cancelling()`), so a loop that
    publishes calls this once a round and stops as it was asked to.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class JetbookError(Exception):
    """Base class for errors jetbook raises on purpose."""


class BrokerError(JetbookError):
    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{description} (code {code}, err_code {err_code})")
        self.code = code
        self.err_code = err_code
        self.description = description


class Fenced(BrokerError):
    """Someone else appended to JB_EVT since we last looked: we are not the writer any more."""


class BatchRejected(BrokerError):
    """The atomic batch was refused whole (too large, incomplete, atomic publish off)."""


class CorruptLog(JetbookError):
    """JB_EVT at `seq` is not what the engine writes: not a jetbook event, one that does not apply, or out of order.

    The engine, a projection and `replay` stop on it rather than skip or loop:
    a log that was written to by something else (a publish on jb.wal.> that
    permissions should have refused) or damaged needs an operator, and
    `jetbook replay verify` names the first event that differs. See
    docs/GUARANTEES.md, "The log is checked as it is folded".
    """

    def __init__(self, seq: int, subject: str, cause: Exception | str, *, stream: str = "JB_EVT") -> None:
        detail = cause if isinstance(cause, str) else f"is not a jetbook event ({type(cause).__name__}: {cause})"
        super().__init__(
            f"{stream} sequence {seq} ({subject}) {detail}. "
            "Only the engine may publish on jb.wal.>; restrict it with permissions (docs/DEPLOY.md)."
        )
        self.seq = seq
        self.subject = subject
        self.detail = detail
        self.stream = stream

    def in_stream(self, stream: str) -> CorruptLog:
        """The same finding, naming the shard's event stream it was read from (issue 15)."""
        return CorruptLog(self.seq, self.subject, self.detail, stream=stream)


class ServerNotFound(JetbookError):
    """No nats-server binary in this environment or on PATH."""


ERR_WRONG_LAST_SEQUENCE: Final = 10071
ERR_BATCH_TOO_LARGE: Final = 10199

_BY_CODE: Final[dict[int, type[BrokerError]]] = {
    ERR_WRONG_LAST_SEQUENCE: Fenced,
    ERR_BATCH_TOO_LARGE: BatchRejected,
}


def parse_puback(raw: bytes) -> dict[str, Any]:
    """The PubAck body, or the matching exception when the server refused the publish."""
    body: dict[str, Any] = json.loads(raw)
    err = body.get("error")
    if err:
        err_code = int(err.get("err_code", 0))
        cls = _BY_CODE.get(err_code, BatchRejected if "batch" in str(err.get("description", "")) else BrokerError)
        raise cls(int(err.get("code", 0)), err_code, str(err.get("description", "")))
    return body
