"""One `/ws_ctl` WebSocket that survives the gateway going away: the TUI's and the bots' only way to the exchange.

The screen must keep working (and say so) while the gateway restarts, so the connection never raises for network
errors: it retries with exponential backoff (0.25 s doubling to 8 s, back to 0.25 s after a successful connect)
and exposes `state`/`detail` for a status line.

Two outgoing queues, because a user's click must never wait behind (or be lost with) ten thousand bot orders:
the user queue is written first and never dropped (frames sent while down go out after the reconnect; a frame
whose write failed is put back, so a user command may be sent twice across a reconnect: give it an
`idempotency_key` if that matters); the bot queue is bounded and `drain_bots()` empties it when the bots pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from websockets.asyncio.client import ClientConnection, connect

log = logging.getLogger("jetbook.tui.client")

BACKOFF_FIRST_S: Final = 0.25
BACKOFF_MAX_S: Final = 8.0
BOT_QUEUE: Final = 10_000
BOT_QUEUE_HIGH: Final = 100_000
USER_QUEUE: Final = 100_000  # "never dropped" within reason: past this a runaway caller is a bug, and it is logged
OPEN_TIMEOUT_S: Final = 5.0
MAX_FRAME: Final = 1 << 24  # a depth-1000 snapshot of a 64-runner market is large; the gateway bounds its own

Frame = dict[str, Any]


class Connection:
    """One /ws_ctl WebSocket that reconnects with exponential backoff (0.25 s doubling to 8 s, reset on success)."""

    def __init__(
        self, url: str, *, on_frame: Callable[[Frame], None], high_throughput: bool = False, name: str = ""
    ) -> None:
        self.url = url
        self.on_frame = on_frame
        self.name = name or url
        self.high_throughput = high_throughput
        self.state = "connecting"
        self.detail = ""
        self.reconnects = 0  # successful connects after the first
        self.sent = 0  # frames written
        self.received = 0  # frames read (JSON or not)
        self.bad_frames = 0  # frames that were not a JSON object, or whose callback raised
        self.bot_dropped = 0  # send_bot refusals (queue full) plus drained frames
        self._user: deque[Frame] = deque()
        self._bot: deque[Frame] = deque()
        self._bot_max = BOT_QUEUE_HIGH if high_throughput else BOT_QUEUE
        self._subscription: Frame | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._connected = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._ever_connected = False

    # --- what callers use -----------------------------------------------------------------------------------

    def send_user(self, frame: Frame) -> None:
        """Queue a user frame: written before any bot frame, kept across reconnects, never dropped."""
        if len(self._user) >= USER_QUEUE:
            log.error("%s: user queue over %d frames while %s", self.name, USER_QUEUE, self.state)
        self._user.append(frame)
        self._wake.set()

    def send_bot(self, frame: Frame) -> bool:
        """Queue a bot frame; False (and dropped) when the bot queue is full: bots must not outrun the socket."""
        if len(self._bot) >= self._bot_max:
            self.bot_dropped += 1
            return False
        self._bot.append(frame)
        self._wake.set()
        return True

    def drain_bots(self) -> int:
        """Drop every queued bot frame (the bots paused); the user queue is left alone. How many were dropped."""
        n = len(self._bot)
        self._bot.clear()
        self.bot_dropped += n
        return n

    def subscribe(self, market_id: str, depth: int | None = None, runner: str | None = None) -> None:
        """Watch `market_id` (one market per connection); remembered and sent again after every reconnect."""
        frame: Frame = {"type": "subscribe", "market_id": market_id}
        if depth is not None:
            frame["depth"] = depth
        if runner is not None:
            frame["runner"] = runner
        self._subscription = frame
        if self.state == "connected":
            self.send_user(dict(frame))
        # while down, the reconnect sends the remembered frame first: queuing it too would subscribe twice

    @property
    def subscription(self) -> Frame | None:
        return self._subscription

    @property
    def user_queued(self) -> int:
        return len(self._user)

    @property
    def bot_queued(self) -> int:
        return len(self._bot)

    @property
    def bot_capacity(self) -> int:
        return self._bot_max

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """True once connected (now or within `timeout`); for callers that want to wait for the first connect."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()

    # --- the loop -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, pump frames both ways, and on any network error wait and connect again; until stop()."""
        delay = BACKOFF_FIRST_S
        while not self._stop.is_set():
            self.state, self.detail = "connecting", f"connecting to {_where(self.url)}"
            reason = ""
            try:
                async with connect(
                    self.url, open_timeout=OPEN_TIMEOUT_S, max_size=MAX_FRAME, compression=None, max_queue=None
                ) as ws:
                    self._ws = ws
                    if self._ever_connected:
                        self.reconnects += 1
                    self._ever_connected = True
                    delay = BACKOFF_FIRST_S
                    self.state, self.detail = "connected", f"connected to {_where(self.url)}"
                    self._connected.set()
                    reason = await self._pump(ws)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # every network failure: refused, reset, timeout, a handshake refused (HTTP)
                reason = type(err).__name__
                if str(err):
                    reason += f": {str(err)[:80]}"
            finally:
                self._ws = None
                self._connected.clear()
            if self._stop.is_set():
                break
            self.state, self.detail = "down", f"retry in {delay:.2f}s ({reason or 'closed'})"
            log.info("%s: %s", self.name, self.detail)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
        self.state, self.detail = "down", "stopped"

    async def _pump(self, ws: ClientConnection) -> str:
        """Read and write until the socket closes or stop(); the reason it ended, for `detail`."""
        if self._subscription is not None:  # the remembered subscription first, and no stale copy behind it
            kept = [f for f in self._user if f.get("type") != "subscribe"]
            self._user.clear()
            self._user.extend([dict(self._subscription), *kept])
        reader = asyncio.create_task(self._read(ws))
        writer = asyncio.create_task(self._write(ws))
        stopper = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait({reader, writer, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, writer, stopper):
                task.cancel()
            for task in (reader, writer, stopper):
                with contextlib.suppress(BaseException):
                    await task
        for finished in done:
            err = None if finished is stopper or finished.cancelled() else finished.exception()
            if err is not None:
                return f"{type(err).__name__}: {str(err)[:80]}" if str(err) else type(err).__name__
        code = ws.close_code
        return f"closed {code}" if code is not None else "closed"

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            self.received += 1
            try:
                frame = json.loads(raw)
            except ValueError:
                self.bad_frames += 1
                log.warning("%s: a frame that is not JSON: %r", self.name, raw[:80])
                continue
            if not isinstance(frame, dict):
                self.bad_frames += 1
                continue
            try:
                self.on_frame(frame)
            except Exception:  # a caller's bug must not take the connection down
                self.bad_frames += 1
                log.exception("%s: on_frame failed for a %s frame", self.name, frame.get("type"))

    async def _write(self, ws: ClientConnection) -> None:
        user, bot = self._user, self._bot
        while True:
            if user:
                frame = user.popleft()
                try:
                    await ws.send(json.dumps(frame, separators=(",", ":")))
                except BaseException:
                    user.appendleft(frame)  # never dropped: it goes out after the reconnect
                    raise
            elif bot:
                await ws.send(json.dumps(bot.popleft(), separators=(",", ":")))
            else:
                self._wake.clear()
                await self._wake.wait()
                continue
            self.sent += 1


def _where(url: str) -> str:
    """host:port/path of a URL, without the query (it may hold an API key)."""
    rest = url.split("://", 1)[-1]
    return rest.split("?", 1)[0]
