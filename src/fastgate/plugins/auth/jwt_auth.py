"""``jwt``: a bearer JWT verified against a JWKS (a file, or a URL fetched with fastgate's own pooled client).

    plugins:
      - use: jwt
        options: {jwks_url: "https://idp.example/.well-known/jwks.json", issuer: "https://idp.example/",
                  audience: api, algorithms: [RS256, ES256]}

How this works. The token's header names its ``alg`` and ``kid``; the ``alg`` must be one of ``algorithms`` (only
asymmetric ones may be listed: never ``none``, never HS*, so a public key can never serve as an HMAC secret), and
the key with that ``kid`` must be of the algorithm's family (RSA for RS/PS, the right EC curve for ES, OKP for
EdDSA) and carry that ``alg`` if it names one. Then PyJWT checks the signature, ``exp``/``nbf``/``iat`` with
``leeway`` seconds of clock skew, ``iss`` and ``aud``. The verified ``sub`` becomes ``request.identity``.

The token is read as an attacker wrote it: over ``MAX_TOKEN_CHARS`` it is refused unread, and every header field
we act on is checked for its type before use (``alg`` a listed string, ``kid`` and ``typ`` strings when present);
a ``crit`` header is refused, since we understand no extension (RFC 7515 §4.1.11). Anything malformed is a 401,
never a 500 and never an error log line.

The JWKS is kept in memory. A ``jwks_url`` is fetched at startup (the gateway waits for it), then **in the
background**: after ``cache_ttl`` seconds, and when a token names a ``kid`` we do not know (a key rotation), but
never more than once per ``min_refresh_interval`` seconds, and one fetch at a time. Requests meanwhile use the keys
we have: a token with a known ``kid`` never waits for the JWKS server, however slow it is. A token with an unknown
``kid`` waits for the fetch in flight (at most ``timeout``), so the first token signed with a rotated key passes;
when no fetch may start (within the interval) it is refused at once, so a flood of made-up ``kid``s costs the JWKS
server one fetch per interval and the flood's requests no wait. A failed fetch keeps the keys we had and logs one
line.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import jwt
import jwt.types

from ...exceptions import UpstreamError
from ...observability.logging import error_logger
from ...observability.safe_url import safe_url
from ..base import Answer, Plugin, RequestContext
from ._common import DEFAULT_IDENTITY_HEADER, IdentityHeader, refusal
from ._http import OutboundClient

__all__ = ["MAX_TOKEN_CHARS", "Jwt"]

# Larger tokens are refused without being parsed. An IdP's access token is a few hundred bytes to a few KiB (Entra ID
# with many group claims stays under 8 KiB before it switches to a groups overage claim).
MAX_TOKEN_CHARS = 16 * 1024

# Algorithm -> (key type, curve or None). Symmetric (HS*) and "none" are refused at config time.
ALGORITHMS: dict[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}

_FAILURES: dict[type[Exception], str] = {
    jwt.ExpiredSignatureError: "token expired",
    jwt.ImmatureSignatureError: "token not yet valid",
    jwt.InvalidAudienceError: "token audience not accepted",
    jwt.InvalidIssuerError: "token issuer not accepted",
    jwt.MissingRequiredClaimError: "token lacks a required claim",
    jwt.InvalidSignatureError: "token signature invalid",
}


@dataclass(slots=True, frozen=True)
class _Key:
    key: Any  # a cryptography public key
    kty: str
    crv: str | None
    alg: str | None  # the JWK's own "alg", when it names one

    def fits(self, alg: str) -> bool:
        kty, crv = ALGORITHMS[alg]
        return self.kty == kty and (crv is None or self.crv == crv) and (self.alg is None or self.alg == alg)


def parse_jwks(data: Any, source: str) -> dict[str | None, _Key]:
    """The usable signing keys of a JWKS document, by ``kid`` (``None`` for a lone key without one)."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError(f"{source}: not a JWKS (an object with a 'keys' list)")
    keys: dict[str | None, _Key] = {}
    for jwk in data["keys"]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or jwk.get("kty") not in ("RSA", "EC", "OKP"):
            continue  # encryption keys, symmetric ("oct") keys and unknown types are never used to verify
        try:
            parsed = jwt.PyJWK(jwk)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue
        alg = jwk.get("alg")
        if alg is not None and not (isinstance(alg, str) and alg in ALGORITHMS):
            continue
        kid = jwk.get("kid")
        crv = jwk.get("crv")
        keys[kid if isinstance(kid, str) else None] = _Key(
            parsed.key, jwk["kty"], crv if isinstance(crv, str) else None, alg
        )
    if not keys:
        raise ValueError(f"{source}: no usable signing key (RSA, EC or OKP with use 'sig')")
    return keys


class Jwt(Plugin):
    """Options: ``jwks_file`` or ``jwks_url`` (one of them), ``issuer``, ``audience``, ``algorithms``
    ([RS256, ES256]), ``leeway`` (60 s), ``required_claims`` ([exp]), ``identity_claim`` (sub), ``realm``,
    ``strip`` (true: Authorization does not go upstream), ``identity_header`` (x-fastgate-identity; null for none),
    ``cache_ttl`` (600 s), ``min_refresh_interval`` (30 s), ``timeout`` (5 s), ``ca_file``."""

    def __init__(
        self,
        jwks_file: str | None = None,
        jwks_url: str | None = None,
        issuer: str | None = None,
        audience: str | Sequence[str] | None = None,
        algorithms: Sequence[str] = ("RS256", "ES256"),
        leeway: float = 60.0,
        required_claims: Sequence[str] = ("exp",),
        identity_claim: str = "sub",
        realm: str = "fastgate",
        strip: bool = True,
        identity_header: str | None = DEFAULT_IDENTITY_HEADER,
        cache_ttl: float = 600.0,
        min_refresh_interval: float = 30.0,
        timeout: float = 5.0,
        ca_file: str | None = None,
        token_cache_size: int = 1024,
        token_cache_ttl: float = 60.0,
    ) -> None:
        if (jwks_file is None) == (jwks_url is None):
            raise ValueError("jwks_file, jwks_url: give exactly one of them")
        if isinstance(algorithms, str) or not algorithms:
            raise ValueError("algorithms: a non-empty list, e.g. [RS256, ES256]")
        for alg in algorithms:
            if alg not in ALGORITHMS:
                raise ValueError(
                    f"algorithms: {alg!r} is not allowed (allowed: {', '.join(ALGORITHMS)}; never 'none', never HS*)"
                )
        if token_cache_size < 0 or token_cache_ttl < 0:
            raise ValueError("token_cache_size, token_cache_ttl: may not be negative")
        if leeway < 0 or cache_ttl <= 0 or min_refresh_interval < 0 or timeout <= 0:
            raise ValueError("leeway, cache_ttl, min_refresh_interval, timeout: must be positive")
        self.algorithms = frozenset(algorithms)
        self.issuer = issuer
        self.audience = audience if audience is None or isinstance(audience, str) else list(audience)
        self.leeway = leeway
        self.identity_claim = identity_claim
        self.options: jwt.types.Options = {"require": list(required_claims), "verify_aud": audience is not None}
        self.strip = strip
        self.identity = IdentityHeader(identity_header)
        self.challenge = f'Bearer realm="{realm}"'
        self.cache_ttl = cache_ttl
        self.min_refresh_interval = min_refresh_interval
        self.keys: dict[str | None, _Key] = {}
        # sha256(token) -> (good until, claims, subject): a token verified once is not verified again for a while
        self.token_cache: OrderedDict[bytes, tuple[float, dict[str, Any], str]] = OrderedDict()
        self.token_cache_size = token_cache_size if token_cache_ttl > 0 else 0
        self.token_cache_ttl = token_cache_ttl
        self.verifications = 0  # signature checks run (the token cache's misses)
        self.fetched_at = -1e18
        self.attempted_at = -1e18
        self.fetches = 0
        self.timeout = timeout
        self._group: anyio.abc.TaskGroup | None = None
        self._refreshing: anyio.Event | None = None  # set when the fetch in flight ends; None while none is
        self.client: OutboundClient | None = None
        if jwks_file is not None:
            try:
                data = json.loads(Path(jwks_file).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise ValueError(f"jwks_file: cannot read {jwks_file!r}: {exc}") from None
            self.keys = parse_jwks(data, "jwks_file")
        else:
            assert jwks_url is not None
            self.client = OutboundClient("jwks", jwks_url, "jwks_url", timeout, ca_file)
            self.jwks_url = jwks_url

    async def startup(self) -> None:
        if self.client is not None:
            await self.client.open()
            group = anyio.create_task_group()
            await group.__aenter__()  # left in shutdown, which the same task runs (Snapshot.run)
            self._group = group
            try:
                await self._fetch(time.monotonic())  # not counted against min_refresh_interval
            except BaseException:
                await self.shutdown()  # a failed startup gets no shutdown call: leave the scopes we entered, in order
                raise

    async def shutdown(self) -> None:
        group, self._group = self._group, None
        try:
            if group is not None:
                group.cancel_scope.cancel()  # a fetch in flight ends here; the keys die with the plugin
                await group.__aexit__(None, None, None)
        finally:
            if self.client is not None:
                await self.client.close()

    def refresh(self, now: float) -> anyio.Event | None:
        """Start a background fetch of the JWKS unless one is in flight or the last began less than
        ``min_refresh_interval`` ago; the event of the fetch in flight (set when it ends), or None."""
        if (
            self._refreshing is None
            and self._group is not None
            and now - self.attempted_at >= self.min_refresh_interval
        ):
            self.attempted_at = now
            self._refreshing = anyio.Event()
            self._group.start_soon(self._refresh, self._refreshing, name="fastgate jwks refresh")
        return self._refreshing

    async def _refresh(self, done: anyio.Event) -> None:
        try:
            await self._fetch(time.monotonic())
        finally:
            self._refreshing = None
            done.set()

    async def _fetch(self, now: float) -> None:
        """One fetch of the JWKS, at most ``timeout`` in all; on failure the keys we had stay, and the log gets
        one line."""
        assert self.client is not None
        self.fetches += 1
        error: str | None = None
        with anyio.move_on_after(self.timeout) as scope:
            try:
                status, _, body = await self.client.request(b"GET", [(b"accept", b"application/json")])
                if status != 200:
                    raise ValueError(f"status {status}")
                self.keys = parse_jwks(json.loads(body), "JWKS")
                self.fetched_at = now
            except (UpstreamError, ValueError, OSError) as exc:
                error = str(exc)
        if scope.cancelled_caught:
            error = f"no complete answer within {self.timeout:g}s"
        if error is not None:
            error_logger.warning("jwt: JWKS fetch from %s failed: %s", safe_url(self.jwks_url or ""), error)

    def _refuse(self, request: RequestContext, detail: str, error: str = "invalid_token") -> Answer:
        challenge = f'{self.challenge}, error="{error}", error_description="{detail}"' if error else self.challenge
        return refusal(request, 401, detail, [("www-authenticate", challenge)])

    async def on_request(self, request: RequestContext) -> Answer | None:
        self.identity.scrub(request)
        value = request.headers.get("authorization")
        if value is None:
            return self._refuse(request, "missing bearer token", "")
        scheme, _, token = value.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return self._refuse(request, "missing bearer token", "invalid_request")
        if len(token) > MAX_TOKEN_CHARS:
            return self._refuse(request, "token too large")
        digest = hashlib.sha256(token.encode("latin-1")).digest()
        cached = self.token_cache.get(digest) if self.token_cache_size else None
        if cached is not None and cached[0] > time.time():
            claims, subject = cached[1], cached[2]
        else:
            verified = await self._verify(request, token)
            if isinstance(verified, Answer):
                return verified
            claims, subject = verified
            if self.token_cache_size:
                self._remember(digest, claims, subject)
        if self.strip:
            request.headers.remove("authorization")
        request.state["jwt_claims"] = dict(claims)  # a copy: the cached claims are shared by later requests
        self.identity.set(request, subject)
        return None

    def _remember(self, digest: bytes, claims: dict[str, Any], subject: str) -> None:
        """Keep a verified token until ``token_cache_ttl`` from now, or its ``exp`` (plus leeway) if sooner."""
        until = time.time() + self.token_cache_ttl
        exp = claims.get("exp")
        if isinstance(exp, (int, float)):
            until = min(until, exp + self.leeway)
        cache = self.token_cache
        cache[digest] = (until, claims, subject)
        cache.move_to_end(digest)
        while len(cache) > self.token_cache_size:
            cache.popitem(last=False)

    def _key(self, kid: str | None) -> _Key | None:
        """The key named ``kid``; a token without ``kid`` may use a lone key."""
        key = self.keys.get(kid)
        if key is None and kid is None and len(self.keys) == 1:
            key = next(iter(self.keys.values()))
        return key

    async def _verify(self, request: RequestContext, token: str) -> tuple[dict[str, Any], str] | Answer:
        """The token's claims and subject, or the 401 that refuses it."""
        self.verifications += 1
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return self._refuse(request, "malformed token")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:  # ["RS256"] is not hashable: was a 500
            return self._refuse(request, "token algorithm not accepted")
        kid = header.get("kid")
        if not isinstance(kid, (str, type(None))) or not isinstance(header.get("typ", ""), str):
            return self._refuse(request, "malformed token")
        if "crit" in header:
            return self._refuse(request, "token names critical extensions")
        key = self._key(kid)
        if self.client is not None:
            now = time.monotonic()
            if now - self.fetched_at > self.cache_ttl:
                self.refresh(now)  # in the background: this request goes on with the keys we have
            if key is None:
                in_flight = self.refresh(now)  # a rotation? at most one fetch per min_refresh_interval
                if in_flight is not None:
                    with anyio.move_on_after(self.timeout):
                        await in_flight.wait()
                    key = self._key(kid)
        if key is None:
            return self._refuse(request, "token key id not known")
        if not key.fits(alg):
            return self._refuse(request, "token algorithm does not fit its key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options=self.options,
            )
        except jwt.PyJWTError as exc:
            return self._refuse(request, _FAILURES.get(type(exc), "token invalid"))
        subject = claims.get(self.identity_claim)
        if not isinstance(subject, str) or not subject:
            return self._refuse(request, f"token has no {self.identity_claim}")
        return claims, subject
