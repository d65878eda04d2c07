"""Which address a request comes from, behind trusted proxies (``server.trusted_proxies``). Pure, no I/O.

From a peer that is not trusted, the client is the peer. From a trusted peer, the client is the rightmost address
of X-Forwarded-For that is not itself trusted, walking right to left (nginx's ``set_real_ip_from`` with
``real_ip_recursive on``, Traefik's ``forwardedHeaders.trustedIPs``). Several X-Forwarded-For headers count as one
list, joined in the order they came. nginx's rules for the odd cases:

- every address of the list is trusted: the leftmost one (the farthest hop anyone vouched for);
- an entry that is not an address (``unknown``, a host name, an obfuscated RFC 7239 node, an IPv6 zone): the walk
  stops there, and the client is the last address accepted before it, i.e. the peer when it is the rightmost entry;
- empty entries (``a,,b``, a trailing comma) are skipped.

An entry may carry a port (``203.0.113.7:4711``, ``[2001:db8::1]:4711``); the port is dropped, as is the address's
spelling: the result is the address in its normal form (``2001:db8::1``; an IPv4-mapped IPv6 address as IPv4).

>>> trusted = TrustedProxies(["10.0.0.0/8"])
>>> client_address("10.0.0.2", [b"203.0.113.7, 10.0.0.9"], trusted)
'203.0.113.7'
>>> client_address("198.51.100.1", [b"203.0.113.7"], trusted)  # an untrusted peer speaks for itself
'198.51.100.1'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

__all__ = ["TrustedProxies", "client_address", "forwarded_client", "parse_address", "parse_forwarded_entry"]

Address = IPv4Address | IPv6Address
# Distinct peers and X-Forwarded-For entries remembered per TrustedProxies (then forgotten all at once): parsing an
# address with ``ipaddress`` costs some 10,000 instructions, a dict lookup a few dozen, and clients come back.
_REMEMBERED = 4096
_UNSEEN = ("", False)


class TrustedProxies:
    """A set of networks whose requests' X-Forwarded-For (and X-Real-IP, X-Forwarded-*, Forwarded) are believed.

    >>> TrustedProxies(["127.0.0.0/8", "::1"]).trusts("127.0.0.1")
    True

    A bad entry is a ValueError saying which (``ip_network``'s strict=False: ``10.0.0.1/8`` is ``10.0.0.0/8``).
    Answers are remembered (at most 4,096 peers and as many entries, then forgotten at once), so a returning peer or
    client costs a dict lookup.
    """

    __slots__ = ("networks", "_v4", "_v6", "_peers", "_entries")

    def __init__(self, cidrs: Iterable[str]) -> None:
        networks: list[IPv4Network | IPv6Network] = []
        for cidr in cidrs:
            try:
                networks.append(ip_network(cidr.strip(), strict=False))
            except ValueError:
                raise ValueError(f"not an address or CIDR block: {cidr!r}") from None
        self.networks = tuple(networks)
        self._v4 = tuple(net for net in networks if isinstance(net, IPv4Network))
        self._v6 = tuple(net for net in networks if isinstance(net, IPv6Network))
        self._peers: dict[str, bool] = {}
        self._entries: dict[bytes, tuple[str, bool] | None] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __repr__(self) -> str:
        return f"TrustedProxies({[str(net) for net in self.networks]!r})"

    def contains(self, address: Address) -> bool:
        if isinstance(address, IPv4Address):
            return any(address in net for net in self._v4)
        return any(address in net for net in self._v6)

    def trusts(self, peer: str) -> bool:
        """Whether the TCP peer ``peer`` (an address as the server reports it) is a trusted proxy."""
        known = self._peers.get(peer)
        if known is None:
            address = parse_address(peer)
            known = address is not None and self.contains(address)
            if len(self._peers) >= _REMEMBERED:
                self._peers.clear()
            self._peers[peer] = known
        return known

    def entry(self, entry: bytes) -> tuple[str, bool] | None:
        """An X-Forwarded-For entry (without surrounding spaces) as its address in normal form and whether it is
        trusted; None when it is no address (``parse_forwarded_entry``)."""
        known = self._entries.get(entry, _UNSEEN)
        if known is _UNSEEN:
            address = parse_forwarded_entry(entry)
            known = None if address is None else (str(address), self.contains(address))
            if len(self._entries) >= _REMEMBERED:
                self._entries.clear()
            self._entries[entry] = known
        return known


def parse_address(text: str) -> Address | None:
    """``text`` as an IP address (an IPv4-mapped IPv6 address as IPv4), None when it is not one."""
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address):
        if address.scope_id is not None:
            return None
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
    return address


def parse_forwarded_entry(entry: bytes) -> Address | None:
    """One X-Forwarded-For entry (spaces around it allowed) as an address, None when it is not one.

    Accepted: ``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1``, ``[2001:db8::1]``, ``[2001:db8::1]:80``.
    """
    text = entry.strip(b" \t")
    if not text or len(text) > 64 or not text.isascii():
        return None
    value = text.decode("ascii")
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not _port(rest)):
            return None
        address = parse_address(host)
        return address if isinstance(address, IPv6Address) or address is None else None
    if value.count(":") == 1:  # IPv4 with a port (a bare IPv6 address has at least two colons)
        host, _, port = value.partition(":")
        if not _port(":" + port):
            return None
        address = parse_address(host)
        return address if isinstance(address, IPv4Address) else None
    return parse_address(value)


def _port(text: str) -> bool:
    """``:PORT`` with 1-5 digits."""
    return 2 <= len(text) <= 6 and text[0] == ":" and text[1:].isdigit()


def client_address(peer: str, forwarded_for: Sequence[bytes], trusted: TrustedProxies) -> str:
    """The client's address for a request from the TCP peer ``peer`` carrying the X-Forwarded-For values
    ``forwarded_for`` (each header's value, in order).

    ``peer`` comes back as it is when it is not trusted, or when X-Forwarded-For names nobody usable.
    """
    if not trusted or not forwarded_for or not trusted.trusts(peer):
        return peer
    return forwarded_client(forwarded_for, trusted) or peer


def forwarded_client(forwarded_for: Sequence[bytes], trusted: TrustedProxies) -> str | None:
    """The client X-Forwarded-For names, as told by a peer already known to be trusted; None when the rightmost
    entry is no address (or there is none): then the client is the peer."""
    if not forwarded_for:
        return None
    entries = b",".join(forwarded_for).split(b",") if len(forwarded_for) > 1 else forwarded_for[0].split(b",")
    found: str | None = None
    for entry in reversed(entries):
        entry = entry.strip(b" \t")
        if not entry:
            continue
        read = trusted.entry(entry)
        if read is None:
            break
        found = read[0]
        if not read[1]:
            break
    return found
