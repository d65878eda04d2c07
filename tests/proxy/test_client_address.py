"""The client's address behind trusted proxies, as a pure function (no sockets): nginx's real_ip_recursive rules."""

from __future__ import annotations

import pytest

from fastgate.proxy.client_address import TrustedProxies, client_address, parse_forwarded_entry

TRUSTED = TrustedProxies(["127.0.0.0/8", "10.0.0.0/8", "::1", "fd00::/8"])

# (peer, X-Forwarded-For header values in the order they came, expected client address)
CASES = [
    # an untrusted peer speaks for itself, whatever it claims
    ("198.51.100.1", [b"203.0.113.7"], "198.51.100.1"),
    ("198.51.100.1", [b"10.0.0.1"], "198.51.100.1"),
    ("2001:db8::5", [b"203.0.113.7"], "2001:db8::5"),
    # a trusted peer without X-Forwarded-For is the client
    ("127.0.0.1", [], "127.0.0.1"),
    ("127.0.0.1", [b""], "127.0.0.1"),
    ("127.0.0.1", [b" , ,"], "127.0.0.1"),
    # IPv4: the rightmost entry that is not trusted
    ("127.0.0.1", [b"203.0.113.7"], "203.0.113.7"),
    ("127.0.0.1", [b"203.0.113.7, 10.0.0.2"], "203.0.113.7"),
    ("127.0.0.1", [b"198.51.100.9, 203.0.113.7, 10.0.0.2, 10.0.0.3"], "203.0.113.7"),  # the spoofable left is ignored
    ("127.0.0.1", [b"203.0.113.7,10.0.0.2"], "203.0.113.7"),
    ("127.0.0.1", [b"\t203.0.113.7 ,  10.0.0.2 "], "203.0.113.7"),
    # ports are accepted and dropped
    ("127.0.0.1", [b"203.0.113.7:4711"], "203.0.113.7"),
    ("127.0.0.1", [b"203.0.113.7:4711, 10.0.0.2:80"], "203.0.113.7"),
    # IPv6: bare, bracketed, bracketed with a port; written in its normal form
    ("::1", [b"2001:db8::7"], "2001:db8::7"),
    ("::1", [b"[2001:db8::7]"], "2001:db8::7"),
    ("::1", [b"[2001:db8::7]:4711"], "2001:db8::7"),
    ("::1", [b"2001:DB8:0:0:0:0:0:7"], "2001:db8::7"),
    ("::1", [b"2001:db8::7, fd00::1"], "2001:db8::7"),
    ("127.0.0.1", [b"2001:db8::7, [fd00::1]:443"], "2001:db8::7"),
    ("::1", [b"203.0.113.7, ::1"], "203.0.113.7"),
    # IPv4-mapped IPv6 is IPv4, for the peer and for entries
    ("::ffff:127.0.0.1", [b"203.0.113.7"], "203.0.113.7"),
    ("127.0.0.1", [b"::ffff:203.0.113.7"], "203.0.113.7"),
    ("127.0.0.1", [b"203.0.113.7, ::ffff:10.0.0.2"], "203.0.113.7"),
    # several headers are one list, joined in order
    ("127.0.0.1", [b"203.0.113.7", b"10.0.0.2"], "203.0.113.7"),
    ("127.0.0.1", [b"10.0.0.2", b"203.0.113.7"], "203.0.113.7"),
    ("127.0.0.1", [b"198.51.100.9, 10.0.0.4", b"10.0.0.3", b"10.0.0.2"], "198.51.100.9"),
    ("127.0.0.1", [b"198.51.100.9", b"203.0.113.7, 10.0.0.2"], "203.0.113.7"),
    # every entry trusted: the leftmost (nginx)
    ("127.0.0.1", [b"10.0.0.3, 10.0.0.2"], "10.0.0.3"),
    ("127.0.0.1", [b"127.0.0.5"], "127.0.0.5"),
    ("::1", [b"fd00::3, ::1"], "fd00::3"),
    # empty entries are skipped
    ("127.0.0.1", [b"203.0.113.7,,10.0.0.2,"], "203.0.113.7"),
    ("127.0.0.1", [b",203.0.113.7"], "203.0.113.7"),
    # garbage stops the walk: the last address accepted before it, the peer when it is the rightmost entry (nginx)
    ("127.0.0.1", [b"unknown"], "127.0.0.1"),
    ("127.0.0.1", [b"203.0.113.7, unknown"], "127.0.0.1"),
    ("127.0.0.1", [b"203.0.113.7, unknown, 10.0.0.2"], "10.0.0.2"),
    ("127.0.0.1", [b"unknown, 203.0.113.7"], "203.0.113.7"),  # garbage left of the client is never read
    ("127.0.0.1", [b"example.com"], "127.0.0.1"),
    ("127.0.0.1", [b"_hidden"], "127.0.0.1"),  # an RFC 7239 obfuscated node
    ("127.0.0.1", [b"203.0.113.7:"], "127.0.0.1"),
    ("127.0.0.1", [b"203.0.113.7:99999999"], "127.0.0.1"),
    ("127.0.0.1", [b"203.0.113.7:http"], "127.0.0.1"),
    ("127.0.0.1", [b"203.0.113"], "127.0.0.1"),
    ("127.0.0.1", [b"203.0.113.007"], "127.0.0.1"),  # leading zeros: octal to some parsers
    ("127.0.0.1", [b"0x7f.1"], "127.0.0.1"),
    ("127.0.0.1", [b"256.1.1.1"], "127.0.0.1"),
    ("127.0.0.1", [b"[203.0.113.7]"], "127.0.0.1"),  # brackets are for IPv6
    ("127.0.0.1", [b"[2001:db8::7"], "127.0.0.1"),
    ("127.0.0.1", [b"[2001:db8::7]x"], "127.0.0.1"),
    ("127.0.0.1", [b"2001:db8::7:4711:1:1:1:1:1"], "127.0.0.1"),  # nine groups
    ("127.0.0.1", [b"fe80::1%eth0"], "127.0.0.1"),  # a zone means nothing beyond the sender's host
    ("127.0.0.1", [b"203.0.113.7 10.0.0.2"], "127.0.0.1"),  # a space is no separator
    ("127.0.0.1", ["203.0.113.7\u00e9".encode()], "127.0.0.1"),
    ("127.0.0.1", [b"203.0.113.7\x00"], "127.0.0.1"),
    ("127.0.0.1", [b"1" * 200], "127.0.0.1"),
]


@pytest.mark.parametrize(("peer", "forwarded_for", "expected"), CASES)
def test_client_address_table(peer: str, forwarded_for: list[bytes], expected: str) -> None:
    assert client_address(peer, forwarded_for, TRUSTED) == expected


def test_no_trusted_proxies_trust_no_one() -> None:
    nobody = TrustedProxies([])
    assert not nobody
    assert client_address("127.0.0.1", [b"203.0.113.7"], nobody) == "127.0.0.1"


def test_a_peer_the_server_names_oddly_is_not_trusted() -> None:
    assert client_address("unix-socket", [b"203.0.113.7"], TRUSTED) == "unix-socket"
    assert client_address("fe80::1%lo", [b"203.0.113.7"], TrustedProxies(["fe80::/10"])) == "fe80::1%lo"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (b"203.0.113.7", "203.0.113.7"),
        (b" 203.0.113.7:80 ", "203.0.113.7"),
        (b"[::1]:80", "::1"),
        (b"::1", "::1"),
        (b"[::1]", "::1"),
        (b"::1:80", "::1:80"),  # a bare IPv6 address cannot carry a port: this is the address ::1:80
        (b"1.2.3.4:", None),
        (b"", None),
        (b"[]", None),
        (b"[::1]:", None),
    ],
)
def test_parse_forwarded_entry(entry: bytes, expected: str | None) -> None:
    parsed = parse_forwarded_entry(entry)
    assert (None if parsed is None else str(parsed)) == expected


def test_trusted_proxies_take_cidrs_and_single_addresses() -> None:
    trusted = TrustedProxies(["192.0.2.0/24", "198.51.100.7", "2001:db8::/32", "10.1.2.3/8"])
    assert [str(n) for n in trusted.networks] == ["192.0.2.0/24", "198.51.100.7/32", "2001:db8::/32", "10.0.0.0/8"]
    assert trusted.trusts("192.0.2.200") and trusted.trusts("198.51.100.7") and trusted.trusts("2001:db8::9")
    assert not trusted.trusts("198.51.100.8") and not trusted.trusts("2001:db9::1")


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "not-an-ip", "", "10.0.0.0/8/8", "::1/129"])
def test_trusted_proxies_refuse_a_bad_entry(bad: str) -> None:
    with pytest.raises(ValueError, match="not an address or CIDR block"):
        TrustedProxies([bad])


def test_remembered_answers_stay_right_past_the_bound() -> None:
    """Peers and entries are remembered (4,096 of each, then forgotten at once): answers never change with it."""
    trusted = TrustedProxies(["10.0.0.0/8"])
    for i in range(10_000):
        client = f"203.0.{i // 256 % 256}.{i % 256}"
        peer = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
        assert client_address(peer, [f"{client}, 10.0.0.2".encode()], trusted) == client
        assert client_address(f"198.51.{i // 256 % 256}.{i % 256}", [client.encode()], trusted) != client
    for _ in range(3):
        assert client_address("10.0.0.1", [b"unknown"], trusted) == "10.0.0.1"
        assert client_address("10.0.0.1", [b"203.0.113.7, unknown, 10.0.0.2"], trusted) == "10.0.0.2"
