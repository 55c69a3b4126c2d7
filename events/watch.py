"""Wait for the events a command caused, for clients that want an answer (submit, demo, tests).

A command's events are stored in one atomic batch, contiguously, and the
engine never splits a command across batches. So a command is complete once
an event of a later command arrives, or the message that committed its batch
(the one with `Nats-Batch-Commit`). The watcher reads every event, not one
market's: the commit message of a batch can belong to any market. (Waiting for
`num_pending` to reach 0 is not enough: the server can report 0 while a batch
is still being delivered.)
"""

from __future__ import annotations

import asyncio
from typing import Any

from events.model import Event, decode
from events.stream_readers import StreamReader, last_seq
from protocol.subjects import EVT_STREAM, HDR_BATCH_COMMIT


class EventWatcher:
    """`stream`: the event stream of the commands' shard (protocol.streams.market_evt_stream); JB_EVT for one."""

    def __init__(self, js: Any, stream: str = EVT_STREAM) -> None:
        self.js = js
        self.stream = stream
        self.by_cmd: dict[int, list[tuple[int, Event]]] = {}
        self._done_upto = 0  # every command <= this is complete
        self._reader: StreamReader | None = None

    async def start(self) -> EventWatcher:
        """Start watching at the current end of JB_EVT: call before publishing the commands."""
        start = await last_seq(self.js, self.stream) + 1
        self._reader = await StreamReader(self.js, self.stream, start).start()
        return self

    async def stop(self) -> None:
        if self._reader is not None:
            await self._reader.stop()

    async def __aenter__(self) -> EventWatcher:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _complete(self, cmd_seq: int) -> bool:
        return cmd_seq <= self._done_upto

    async def wait(self, cmd_seqs: list[int], timeout: float = 10.0) -> dict[int, list[Event]]:
        """The events of each command, in log order. Raises TimeoutError if they do not all arrive."""
        assert self._reader is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not all(self._complete(s) for s in cmd_seqs):
            left = deadline - loop.time()
            if left <= 0:
                missing = [s for s in cmd_seqs if not self._complete(s)]
                raise TimeoutError(f"no complete events for commands {missing} within {timeout}s")
            for m in await self._reader.next_batch(10_000, timeout=left):
                event = decode(m.data)
                self.by_cmd.setdefault(event.cmd_seq, []).append((m.seq, event))
                self._done_upto = max(self._done_upto, event.cmd_seq - 1)
                if m.headers and HDR_BATCH_COMMIT in m.headers:
                    self._done_upto = event.cmd_seq
        return {s: [e for _, e in self.by_cmd.get(s, [])] for s in cmd_seqs}


async def past_events(js: Any, cmd_seq: int, stream: str = EVT_STREAM) -> list[Event]:
    """The events of a command that was decided before anyone watched (a duplicate publish's original).

    `cmd_seq` never decreases along JB_EVT, so a binary search over direct gets
    finds the command's first event in about log2(N) reads.
    """
    hi = await last_seq(js, stream)
    lo, first = 1, hi + 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if decode((await js.get_msg(stream, mid)).data).cmd_seq >= cmd_seq:
            first, hi = mid, mid - 1
        else:
            lo = mid + 1
    out: list[Event] = []
    seq = first
    while True:
        try:
            event = decode((await js.get_msg(stream, seq)).data)
        except Exception:  # past the end of the stream
            break
        if event.cmd_seq != cmd_seq:
            break
        out.append(event)
        seq += 1
    return out
