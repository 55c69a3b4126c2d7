"""nats.micro services that answer only where an answer may go.

nats.micro answers PING, INFO, STATS and every endpoint request to whatever reply subject the request names,
with the permissions of the service's own user. The engine's user may publish on jb.wal.> (the log), the
query user on JetStream API subjects: a request naming one of those as its reply would make the service
publish there. `GuardedService` answers only to a subject under `_INBOX` (any client's inbox, as `nats micro`
and every jetbook client use), and never under this connection's own prefix, where its JetStream consumers
deliver (when it has one of its own: a locked-down server gives every user one).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Final

from nats.micro.request import Request
from nats.micro.service import Service, ServiceConfig

from protocol.barrier import barrier

log = logging.getLogger("jetbook.micro")

SERVICE_VERSION: Final = "1.0.0"


def may_answer(nc: Any, reply: str, *, own_inbox: bool = False) -> bool:
    """Whether a service on connection `nc` may publish its answer on `reply`.

    `own_inbox`: a service that runs no JetStream consumer on its connection (the query service) may answer
    into its own user's inbox prefix, where `jetbook query`, logged in as the same user, waits.
    """
    if own_inbox:
        return reply.startswith("_INBOX")
    own = nc._inbox_prefix  # nats-py keeps the connection's inbox prefix only here
    own_text = own.decode() if isinstance(own, bytes | bytearray) else str(own)
    if own_text != "_INBOX" and reply.startswith(own_text + "."):
        return False  # where its own consumers deliver (on an open server anyone may publish there anyway)
    return reply.startswith("_INBOX")


class GuardedService(Service):
    """A micro service whose PING, INFO, STATS and endpoint answers go only where `may_answer` allows."""

    own_inbox = False  # set True on a service whose connection runs no JetStream consumer (see may_answer)

    def _may_answer(self, reply: str) -> bool:
        return may_answer(self._client, reply, own_inbox=self.own_inbox)

    async def _handle_ping_request(self, msg: Any) -> None:
        if self._may_answer(msg.reply or ""):
            await super()._handle_ping_request(msg)

    async def _handle_info_request(self, msg: Any) -> None:
        if self._may_answer(msg.reply or ""):
            await super()._handle_info_request(msg)

    async def _handle_stats_request(self, msg: Any) -> None:
        if self._may_answer(msg.reply or ""):
            await super()._handle_stats_request(msg)


async def register_status_service(
    nc: Any, name: str, description: str, subject: str, status: Callable[[], dict[str, Any]]
) -> GuardedService:
    """Register `name` with nats.micro: a `status` endpoint on `subject`, the same status as `nats micro stats` data.

    The status endpoint has a queue group of its own per instance, so every
    instance (an active engine and its standbys) answers: `nats req` gets the
    first answer, `nats req --replies 0` all of them.
    """
    service = GuardedService(
        nc,
        ServiceConfig(
            name=name, version=SERVICE_VERSION, description=description,
            stats_handler=lambda _endpoint: status(),
        ),
    )  # fmt: skip
    await service.start()

    async def answer(req: Request) -> None:
        if not service._may_answer(req._msg.reply or ""):
            return
        try:
            body = json.dumps(status(), default=str).encode()
        except Exception as err:  # a status that cannot be read is an error answer, never silence
            await req.respond_error("500", f"{type(err).__name__}: {err}"[:200])
            return
        await req.respond(body, headers={"Content-Type": "application/json"})

    await service.add_endpoint(
        name="status", subject=subject, handler=answer, queue_group=f"status-{service.id}",
        metadata={"about": "this instance's position, lease and backlog (JSON)"},
    )  # fmt: skip
    await barrier(nc)
    log.info("micro service %s %s: status on %s", name, service.id, subject)
    return service
