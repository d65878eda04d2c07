"""``HoldLoop``: a plugin that holds the gateway's event loop with synchronous work, as a CPU-heavy handler or a
loaded loop does (``use: tests.loop_hold:HoldLoop``); for tests that must not mistake our loop for a slow Redis."""

from __future__ import annotations

import time

from fastgate import Plugin, RequestContext


class HoldLoop(Plugin):
    """Every request on its route blocks the loop for ``ms`` milliseconds before going on."""

    def __init__(self, ms: float = 30.0) -> None:
        self.seconds = ms / 1000

    async def on_request(self, request: RequestContext) -> None:
        time.sleep(self.seconds)  # noqa: ASYNC251 - the point: synchronous work on the loop
