"""A plugin that checks a bearer token before anything goes upstream, and passes the caller on as an identity.

    # gateway.yaml
    upstreams: {api: {url: "http://127.0.0.1:9000"}}
    routes:
      - prefix: /
        upstream: api
        plugins: [{use: "plugin_token_check:TokenCheck", options: {tokens: {s3cret: alice}, realm: api}}]

    PYTHONPATH=examples fastgate run gateway.yaml
    curl -i http://127.0.0.1:8000/            # 401 with WWW-Authenticate; the upstream never sees it
    curl -H 'Authorization: Bearer s3cret' http://127.0.0.1:8000/   # forwarded with x-user: alice

The check runs on the request head only: a refused upload is answered before a byte of its body is read.
"""

from __future__ import annotations

from fastgate import Answer, Plugin, RequestContext


class TokenCheck(Plugin):
    def __init__(self, tokens: dict[str, str], realm: str = "api", header: str = "x-user") -> None:
        self.tokens = dict(tokens)  # token -> the caller's name
        self.challenge = f'Bearer realm="{realm}"'
        self.header = header

    async def on_request(self, request: RequestContext) -> Answer | None:
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        user = self.tokens.get(token) if scheme.lower() == "bearer" else None
        if user is None:
            return Answer.json(401, {"error": "unauthorized"}, {"www-authenticate": self.challenge})
        request.identity = user
        request.headers.remove("authorization")  # the upstream gets who, not the secret
        request.headers.set(self.header, user)
        return None
