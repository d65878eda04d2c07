"""The running config as JSON for ``GET /config``, with secrets replaced by ``"***"``; pure.

>>> redacted_config(config)["admin"]["token"]
'***'

Redacted: ``admin.token``; the password of any URL with one (``redis.url``, an upstream's
``http://user:pass@host``); the value of any key whose name says it is a secret (``token``, ``secret``,
``password``, ``api_key``, ``credentials``, ``private_key``...) wherever it is, plugin options included; the
values of headers that carry credentials (``authorization``, ``proxy-authorization``, ``cookie``, ``set-cookie``,
and names with ``token``, ``secret``, ``api-key``, ``password``, ``session`` or ``auth``) in route header rules
and matchers.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..config import GatewayConfig

REDACTED = "***"
SECRET_KEY = re.compile(r"token|secret|passw|api[-_]?key|apikey|credential|private[-_]?key|authori[sz]ation|cookie")
SECRET_HEADER = re.compile(r"auth|token|secret|api-?key|passw|cookie|session")
# Keys whose values are header-name -> value maps.
HEADER_MAPS = frozenset({"set", "add", "headers"})
URL_WITH_PASSWORD = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/@\s]*:[^/@\s]*@")


def redacted_config(config: GatewayConfig) -> dict[str, Any]:
    """``config`` as plain JSON data with every secret replaced by ``"***"``."""
    data: dict[str, Any] = config.model_dump(mode="json")
    redacted: dict[str, Any] = _walk(data, parent="")
    return redacted


def _walk(value: Any, parent: str) -> Any:
    if isinstance(value, dict):
        headers = parent in HEADER_MAPS
        out = {}
        for key, item in value.items():
            secret = SECRET_HEADER.search(key.lower()) if headers else SECRET_KEY.search(key.lower())
            if secret and item not in (None, "", [], {}):
                out[key] = REDACTED
            else:
                out[key] = _walk(item, key)
        return out
    if isinstance(value, list):
        return [_walk(item, parent) for item in value]
    if isinstance(value, str):
        return redact_url(value)
    return value


def redact_url(value: str) -> str:
    """``scheme://user:password@host/...`` with the password replaced; any other text unchanged."""
    if not URL_WITH_PASSWORD.match(value):
        return value
    parts = urlsplit(value)
    if parts.password is None:
        return value
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{REDACTED}@{host}"))
