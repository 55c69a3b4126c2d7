"""Wait for the events a command caused, for clients that want an answer (submit, demo, tests).

A command's events are stored in one atomic batch, contiguously, before any of
them is delivered. So once one of them arrives with nothing pending after it,
or an event of a later command arrives, all of them are in hand.
"""

from __future__ import annotations

import asyncio
from typing import Any

from commands.subjects import EVT_STREAM, evt_filter
from events.model import Event, decode
from events.reader import StreamReader, last_seq


class EventWatcher:
    def __init__(self, js: Any, market_id: str | None = None) -> None:
        self.js = js
        self.filter = evt_filter(market_id) if market_id else ""
        self.by_cmd: dict[int, list[tuple[int, Event]]] = {}
        self._done_upto = 0  # every command <= this is complete
        self._reader: StreamReader | None = None

    async def start(self) -> EventWatcher:
        """Start watching at the current end of JB_EVT: call before publishing the commands."""
        start = await last_seq(self.js, EVT_STREAM) + 1
        self._reader = await StreamReader(self.js, EVT_STREAM, start, self.filter).start()
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
                if m.pending == 0:
                    self._done_upto = event.cmd_seq
        return {s: [e for _, e in self.by_cmd.get(s, [])] for s in cmd_seqs}
