"""A small pooled HTTP client over fastgate's own upstream transport, for plugins that call out (JWKS, ForwardAuth).

Opened in the plugin's ``startup`` and closed in its ``shutdown``: one keep-alive pool for the gateway's life, the
same client code, timeouts and TLS settings as any upstream, and failures as fastgate's ``UpstreamError``s.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import anyio

from ...config import RetryPolicy, Timeouts, UpstreamConfig
from ...observability.safe_url import safe_url
from ...upstream.transport import Transport, UpstreamRequest, create_transport

__all__ = ["OutboundClient", "split_url"]


def split_url(url: str, key: str) -> tuple[str, bytes, str]:
    """``(origin, target, authority)`` of an absolute http(s) URL; a ValueError naming ``key`` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{key}: must be an absolute http:// or https:// URL, got {safe_url(url)!r}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"{key}: bad port in {safe_url(url)!r}") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return f"{parts.scheme}://{parts.netloc}", target.encode("ascii"), parts.netloc


class OutboundClient:
    """``await client.request(method, target, headers)`` -> ``(status, headers, body)``, body capped at ``max_body``."""

    def __init__(self, name: str, url: str, key: str, timeout: float, ca_file: str | None = None) -> None:
        origin, self.target, self.authority = split_url(url, key)
        config = UpstreamConfig(
            url=origin,
            timeouts=Timeouts(connect=timeout, read=timeout, write=timeout, pool=timeout),
            retries=RetryPolicy(max_retries=0),
            ca_file=ca_file,
        )
        self.name = name
        self._config = config
        self._transport: Transport | None = None

    async def open(self) -> None:
        transport = create_transport(self.name, self._config)
        await transport.__aenter__()
        self._transport = transport

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.__aexit__(None, None, None)

    async def request(
        self, method: bytes, headers: list[tuple[bytes, bytes]], max_body: int = 1 << 20
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Send ``method`` to the URL with ``headers`` (Host added) and no body; raises UpstreamError subclasses."""
        transport = self._transport
        if transport is None:
            raise RuntimeError(f"{self.name}: the client is not open (startup did not run)")
        request = UpstreamRequest(method, self.target, [(b"host", self.authority.encode("ascii")), *headers])
        response = await transport.send(request, None)
        try:
            chunks: list[bytes] = []
            size = 0
            while chunk := await response.read():
                size += len(chunk)
                if size > max_body:
                    raise ValueError(f"{self.name}: response body over {max_body} bytes")
                chunks.append(chunk)
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()
        return response.status, response.headers, b"".join(chunks)
