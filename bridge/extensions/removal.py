"""Removal after a grace period: an endpoint away for longer than ``endpoint_remove_after``
is forgotten.

A de-registration is not a removal: devices reboot, lose power and update their firmware,
and each time they de-register and register again. So the bridge keeps an endpoint that
left (``$state`` says ``offline`` or ``expired``) with everything it published for it.
With ``endpoint_remove_after`` set, an endpoint that has not come back by then is
forgotten (:meth:`BridgeContext.forget_endpoint`), and the other extensions clear its
retained messages. The remove bridge request does the same at once.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from bridge.core.events import EndpointRemoved
from bridge.extensions.base import Extension

log = logging.getLogger("bridge.removal")

BUSY_RETRY = 1.0  # seconds before trying again when the background queue is full


class Removal(Extension):
    name = "removal"

    def start(self) -> None:
        if self.ctx.settings.endpoint_remove_after > 0:
            self.ctx.bus.subscribe(EndpointRemoved, self._on_removed)

    def _on_removed(self, event: EndpointRemoved) -> None:
        # Any later change of the endpoint (it came back, left again) is after this mark
        # and cancels this removal; a later departure schedules its own.
        since = self.ctx.registry.mark()
        self.ctx.deadlines.schedule(
            self.ctx.settings.endpoint_remove_after,
            functools.partial(self._due, event.name, since),
        )

    def _due(self, name: str, since: int) -> None:
        # On the deadline thread, which must stay quick: clearing the retained messages
        # is a worker's job.
        if self.ctx.registry.changed_since(name, since):
            return
        if not self.ctx.background.submit(functools.partial(self._forget, name, since)):
            self.ctx.deadlines.schedule(BUSY_RETRY, functools.partial(self._due, name, since))

    def _forget(self, name: str, since: int) -> None:
        ep = self.ctx.forget_endpoint(name, "grace", since)
        if ep is not None:
            log.info(
                "%r forgotten: %s for more than %g s",
                name, ep.state, self.ctx.settings.endpoint_remove_after,
            )  # fmt: skip

    def info(self) -> dict[str, Any]:
        after = self.ctx.settings.endpoint_remove_after
        return {
            "remove_after": after or None,
            "forgotten": self.ctx.counters.get("endpoints_forgotten"),
        }
