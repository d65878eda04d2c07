"""TLS on the listener: the server SSLContext Uvicorn serves with, and new certificates loaded into it on a reload.

``server.tls`` gives a certificate chain and a key. :func:`uvicorn_options` hands Uvicorn the two paths and
:func:`context_factory` (Uvicorn's ``ssl_context_factory``), which builds the context fastgate wants rather than
Uvicorn's default: TLS 1.2 at least (Uvicorn's ``ssl_version`` picks a protocol constant, not a minimum), ALPN
offering ``h2`` and ``http/1.1`` (``http/1.1`` only with ``server.http2.enabled: false``), no TLS compression and no
client-initiated renegotiation. The context is built in each worker process (it is not picklable), and remembered there.

:func:`reload_certificates` loads the files a config names into every context this process serves with:
``SSLContext.load_cert_chain`` on a live context applies to the handshakes that follow, while connections already
established keep the certificate they were shown. The new pair is first loaded into a scratch context, so a bad file
raises :class:`~fastgate.exceptions.ConfigError` and leaves the live certificate in place. Each worker serves with its
own context: the reload must run in every worker (as the config reload does).
"""

from __future__ import annotations

import functools
import ssl
import weakref
from collections.abc import Callable
from typing import Any

from ..config import GatewayConfig, TlsConfig
from ..exceptions import ConfigError

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
ALPN_PROTOCOLS = ["h2", "http/1.1"]  # h2 is served by http2/server.py
ALPN_HTTP1 = ["http/1.1"]  # server.http2.enabled: false

# Every server context built in this process (normally one: the listener's).
_live: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()


def server_context(tls: TlsConfig, *, http2: bool = True) -> ssl.SSLContext:
    """A new server context for ``tls``: its certificate and key, TLS 1.2 or later, ALPN h2 (unless not
    ``http2``) and http/1.1."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(ALPN_PROTOCOLS if http2 else ALPN_HTTP1)
    _load(context, tls)
    return context


def context_factory(config: Any, default: Callable[[], ssl.SSLContext], http2: bool = True) -> ssl.SSLContext:
    """Uvicorn's ``ssl_context_factory``: fastgate's context for the ``ssl_certfile``/``ssl_keyfile`` it was given.

    Module level, so that Uvicorn can pass it to worker processes.
    """
    tls = TlsConfig(cert_file=str(config.ssl_certfile), key_file=str(config.ssl_keyfile))
    context = server_context(tls, http2=http2)
    _live.add(context)
    return context


def uvicorn_options(tls: TlsConfig | None, *, http2: bool = True) -> dict[str, Any]:
    """The Uvicorn settings that serve HTTPS with ``tls`` (none for plain HTTP)."""
    if tls is None:
        return {}
    factory = context_factory if http2 else functools.partial(context_factory, http2=False)
    return {"ssl_certfile": tls.cert_file, "ssl_keyfile": tls.key_file, "ssl_context_factory": factory}


def reload_certificates(config: GatewayConfig) -> None:
    """Load ``config.server.tls``'s certificate and key into the listener's context in this process.

    New handshakes present the new certificate; established connections are not touched. Raises ConfigError (and
    changes nothing) when the files cannot be loaded as a matching pair. Does nothing without TLS on the listener:
    turning TLS on or off needs a restart.
    """
    tls = config.server.tls
    if tls is None:
        return
    _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), tls)  # a bad file fails here, before the live context is touched
    for context in list(_live):
        _load(context, tls)


def _load(context: ssl.SSLContext, tls: TlsConfig) -> None:
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"server.tls.cert_file: cannot load {tls.cert_file!r} with server.tls.key_file {tls.key_file!r}: "
            f"{exc.strerror or exc}"
        ) from None
