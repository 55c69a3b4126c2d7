"""A round trip that proves the server has processed everything a connection sent before it.

nats-py's `flush()` writes its PING straight to the socket, ahead of commands (SUBs above all) that still
wait in the client's pending buffer for its flusher task. Its PONG can then come back before the server
has seen a subscription made just before the call, and another client's request meets no responder.
CI on a loaded 2-core machine hit exactly that. `barrier` first waits for the flusher to write the
buffer, then flushes: the PING now travels behind every earlier command.
"""

from __future__ import annotations

from typing import Any


async def barrier(nc: Any, timeout: float = 10.0) -> None:
    """Return once the server has processed every command `nc` sent before this call."""
    await nc._flush_pending(force_flush=True)  # nats-py has no public way to wait for it
    await nc.flush(timeout=timeout)
