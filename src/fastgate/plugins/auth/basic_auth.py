"""``basic_auth``: HTTP Basic credentials checked against an htpasswd file of bcrypt entries.

    plugins:
      - use: basic_auth
        options: {users_file: htpasswd, realm: admin}     # htpasswd -B -c htpasswd alice

bcrypt is slow on purpose (tens of milliseconds per check), so it runs in a worker thread (at most as many at once
as the machine has CPUs) and never on the event loop. A successful check is remembered for ``cache_ttl`` seconds
under a keyed hash of the credential (never the password itself; at most ``cache_size`` entries, the oldest
dropped first), so a busy client pays bcrypt once, not per request. Failures are not remembered. An unknown user
is checked against a dummy hash, so the answer takes as long as for a wrong password. The dummy hash is made in a
worker thread too, under the same limiter, when the plugin starts (``startup``; hundreds of milliseconds at cost
12): building the plugin, which a reload does on the running gateway's event loop, hashes nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from collections import OrderedDict

import anyio
import anyio.to_thread
import bcrypt

from ..base import Answer, Plugin, RequestContext
from ._common import DEFAULT_IDENTITY_HEADER, IdentityHeader, read_lines, refusal

__all__ = ["BasicAuth"]

_BCRYPT_PREFIXES = (b"$2a$", b"$2b$", b"$2y$")


class BasicAuth(Plugin):
    """Options: ``users_file`` (required; ``user:bcrypt-hash`` lines), ``realm`` (fastgate), ``strip`` (true:
    Authorization does not go upstream), ``identity_header`` (x-fastgate-identity; null for none), ``cache_ttl``
    (60 s; 0 turns the cache off), ``cache_size`` (1024)."""

    def __init__(
        self,
        users_file: str,
        realm: str = "fastgate",
        strip: bool = True,
        identity_header: str | None = DEFAULT_IDENTITY_HEADER,
        cache_ttl: float = 60.0,
        cache_size: int = 1024,
    ) -> None:
        if '"' in realm or "\\" in realm:
            raise ValueError("realm: may not contain '\"' or '\\'")
        if cache_ttl < 0 or cache_size < 0:
            raise ValueError("cache_ttl, cache_size: may not be negative")
        self.users: dict[str, bytes] = {}
        for number, line in read_lines(users_file, "users_file"):
            user, sep, hashed = line.partition(":")
            entry = hashed.strip().encode("ascii", "replace")
            if not sep or not user or not entry.startswith(_BCRYPT_PREFIXES) or len(entry) != 60:
                raise ValueError(f"users_file: line {number} is not 'user:<bcrypt hash>' (htpasswd -B)")
            self.users[user] = entry
        self.challenge = [("www-authenticate", f'Basic realm="{realm}", charset="UTF-8"')]
        self.strip = strip
        self.identity = IdentityHeader(identity_header)
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, tuple[float, str]] = OrderedDict()
        self._cache_key = secrets.token_bytes(32)  # the cache holds HMACs under a per-process key, not passwords
        self._dummy_rounds = _rounds(next(iter(self.users.values())))
        self._dummy: bytes | None = None  # made by startup(), off the event loop
        self._limiter = anyio.CapacityLimiter(os.cpu_count() or 1)
        self.verifications = 0  # bcrypt checks run (the cache's misses)

    async def startup(self) -> None:
        await self._dummy_hash()

    async def _dummy_hash(self) -> bytes:
        """The hash an unknown user is checked against, of the users' cost; made once, in a worker thread."""
        if self._dummy is None:
            dummy = await anyio.to_thread.run_sync(_make_dummy, self._dummy_rounds, limiter=self._limiter)
            if self._dummy is None:
                self._dummy = dummy
        return self._dummy

    async def on_request(self, request: RequestContext) -> Answer | None:
        self.identity.scrub(request)
        value = request.headers.get("authorization")
        if value is None:
            return refusal(request, 401, "missing credentials", self.challenge)
        scheme, _, encoded = value.partition(" ")
        if scheme.lower() != "basic":
            return refusal(request, 401, "missing credentials", self.challenge)
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return refusal(request, 401, "malformed credentials", self.challenge)
        user_bytes, sep, password = decoded.partition(b":")
        if not sep:
            return refusal(request, 401, "malformed credentials", self.challenge)
        user = user_bytes.decode("utf-8", "replace")
        digest = hmac.new(self._cache_key, decoded, hashlib.sha256).digest()
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now and cached[1] == user:
            verified = True
        else:
            hashed = self.users.get(user)
            self.verifications += 1
            if hashed is None:
                reference = self._dummy or await self._dummy_hash()  # made by startup(); here if it never ran
            else:
                reference = hashed
            ok = await anyio.to_thread.run_sync(_check, password, reference, limiter=self._limiter)
            verified = ok and hashed is not None
            if verified and self.cache_ttl > 0 and self.cache_size > 0:
                self._cache[digest] = (now + self.cache_ttl, user)
                self._cache.move_to_end(digest)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        if not verified:
            return refusal(request, 401, "invalid credentials", self.challenge)
        if self.strip:
            request.headers.remove("authorization")
        self.identity.set(request, user)
        return None


def _check(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # bcrypt 5 refuses passwords over 72 bytes rather than truncating them
        return False


def _make_dummy(rounds: int) -> bytes:
    return bcrypt.hashpw(b"dummy", bcrypt.gensalt(rounds=rounds))


def _rounds(hashed: bytes) -> int:
    try:
        return min(max(int(hashed[4:6]), 4), 31)
    except ValueError:
        return 10
