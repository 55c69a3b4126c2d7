"""The fill subscriber: fills of one market or all, from any JB_EVT sequence, then live if asked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from events.model import Fill, decode
from events.stream_readers import StreamReader, batches
from protocol.subjects import EVT_STREAM, evt_filter


async def fills(
    js: Any, market_id: str | None = None, from_seq: int = 1, follow: bool = False, stream: str = EVT_STREAM
) -> AsyncIterator[tuple[int, Fill]]:
    """Yield (JB_EVT sequence, Fill). Without `follow`, stop at the end of the log as it is now.

    `stream`: a sharded venue's JB_EVT_k (its events keep their jb.evt subjects).
    """
    async with StreamReader(js, stream, from_seq, evt_filter(market_id, "fill")) as reader:
        async for batch in batches(reader, follow, max_msgs=1000):
            for m in batch:
                event = decode(m.data)
                assert isinstance(event, Fill)
                yield m.seq, event
