"""TLS to upstreams: one client context per upstream, verifying against the system CAs or a configured bundle."""

from __future__ import annotations

import ssl


def client_context(ca_file: str | None = None) -> ssl.SSLContext:
    """The context for an ``https``/``wss`` upstream: certificate and host name always checked.

    >>> client_context("/etc/fastgate/internal-ca.pem").verify_mode
    <VerifyMode.CERT_REQUIRED: 2>
    """
    return ssl.create_default_context(cafile=ca_file)
