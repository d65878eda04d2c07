"""A plugin on the response side and after the exchange: a Server-Timing header and per-route counters.

    routes:
      - prefix: /
        upstream: api
        plugins: [{use: "plugin_timing:Timing", options: {header: server-timing}}]

``on_response`` adds ``server-timing: gateway;dur=<ms until the response head>`` and drops the upstream's
``server`` header; ``on_finish`` counts exchanges by status class from the :class:`Exchange` record, which holds
the final status (499 when the client left), the bytes sent and the duration.
"""

from __future__ import annotations

from collections import Counter
from time import perf_counter

from fastgate import Exchange, Plugin, RequestContext, ResponseHead


class Timing(Plugin):
    def __init__(self, header: str = "server-timing") -> None:
        self.header = header
        self.counts: Counter[str] = Counter()
        self.bytes_sent = 0

    async def on_request(self, request: RequestContext) -> None:
        request.state["timing.start"] = perf_counter()

    async def on_response(self, request: RequestContext, response: ResponseHead) -> None:
        elapsed = (perf_counter() - request.state["timing.start"]) * 1000
        response.headers.add(self.header, f"gateway;dur={elapsed:.1f}")
        response.headers.remove("server")

    async def on_finish(self, request: RequestContext, exchange: Exchange) -> None:
        self.counts[f"{exchange.status // 100}xx"] += 1
        self.bytes_sent += exchange.bytes_sent
