"""``request_context``: the RequestContext the proxy builds per request, the same as the class call gives."""

from __future__ import annotations

from fastgate.plugins.base import HeaderList, RequestContext, request_context


def test_request_context_is_the_constructors_object_slot_for_slot() -> None:
    headers = [(b"host", b"example"), (b"accept", b"*/*")]
    scope = {"type": "http", "method": "POST", "path": "/a"}
    fast = request_context("POST", b"/a?b=1", headers, "/a", ("10.0.0.1", 5000), "rid", "api", 3, True, scope)
    built = RequestContext(
        "POST", b"/a?b=1", HeaderList(headers), "/a", ("10.0.0.1", 5000), "rid", "api", 3, True, scope
    )
    assert type(fast) is RequestContext and type(fast.headers) is HeaderList
    for slot in RequestContext.__slots__:
        if slot == "headers":
            assert fast.headers.raw is built.headers.raw is headers
        else:
            assert getattr(fast, slot) == getattr(built, slot), slot
    assert fast.state == {} and fast.identity is None and fast.answered_at == -1
    fast.headers.set("x-tenant", "acme")
    assert headers[-1] == (b"x-tenant", b"acme")  # the proxy's list, edited in place
