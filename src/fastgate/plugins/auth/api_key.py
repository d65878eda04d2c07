"""``api_key``: a key in a request header, checked against a keys file; the caller is the key's name.

    plugins:
      - use: api_key
        options: {header: x-api-key, keys_file: keys.txt}   # lines: "name:key" or "key"

The keys are kept as SHA-256 digests: a request's key is hashed, looked up, and the digest compared with
``hmac.compare_digest``, so neither the lookup nor the comparison leaks by timing how much of a key matched.
"""

from __future__ import annotations

import hashlib
import hmac

from ..base import Answer, Plugin, RequestContext
from ._common import DEFAULT_IDENTITY_HEADER, IdentityHeader, fingerprint, header_name, read_lines, refusal

__all__ = ["ApiKey"]


class ApiKey(Plugin):
    """Options: ``keys_file`` (required), ``header`` (``x-api-key``), ``strip`` (true: the key does not go
    upstream), ``identity_header`` (``x-fastgate-identity``; null for none)."""

    def __init__(
        self,
        keys_file: str,
        header: str = "x-api-key",
        strip: bool = True,
        identity_header: str | None = DEFAULT_IDENTITY_HEADER,
    ) -> None:
        name = header_name(header, "header")
        assert name is not None
        self.header = name
        self.strip = strip
        self.challenge = [("www-authenticate", f'ApiKey header="{header.lower()}"')]
        self.identity = IdentityHeader(identity_header)
        self.keys: dict[bytes, tuple[bytes, str]] = {}  # sha256(key) -> (sha256(key), name)
        for number, line in read_lines(keys_file, "keys_file"):
            label, sep, key = line.partition(":")
            if not sep:
                label, key = "", line
            label, key = label.strip(), key.strip()
            if not key:
                raise ValueError(f"keys_file: line {number} has an empty key")
            secret = key.encode("utf-8")
            digest = hashlib.sha256(secret).digest()
            if digest in self.keys:
                raise ValueError(f"keys_file: line {number} repeats a key")
            self.keys[digest] = (digest, label or fingerprint(secret))

    async def on_request(self, request: RequestContext) -> Answer | None:
        self.identity.scrub(request)
        name = self.header
        presented = None
        for k, v in request.headers.raw:
            if k == name:
                presented = v
                break
        if presented is None:
            return refusal(request, 401, "missing API key", self.challenge)
        digest = hashlib.sha256(presented.strip()).digest()
        entry = self.keys.get(digest)
        if entry is None or not hmac.compare_digest(entry[0], digest):
            return refusal(request, 401, "invalid API key", self.challenge)
        if self.strip:
            raw = request.headers.raw
            raw[:] = [pair for pair in raw if pair[0] != name]
        self.identity.set(request, entry[1])
        return None
