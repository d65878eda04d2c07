"""fastgate as a library inside an ASGI app (FastAPI or plain Starlette); see docs/library.md.

``fastapi``: :class:`Upstreams` (a lifespan), :func:`forward`, :func:`upstream_client` (a dependency),
:class:`ProxyApp` (mounting). ``cancel``: :func:`cancel_on_disconnect`. ``sync``: calls from ``def`` endpoints.
``client``: :class:`UpstreamClient`. The public names are exported from :mod:`fastgate` itself.
"""
