"""Parsing untrusted sockaddr bytes the way the kernel reads them (pure: no socket opened)."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

import pytest

from sandlock.sockaddr import (
    MAPPED_PREFIX,
    Dest,
    Invalid,
    NoDest,
    canonical,
    parse_sockaddr,
    shown,
    unmapped,
    unmapped_ip,
)

AF_INET, AF_INET6, AF_UNSPEC = int(socket.AF_INET), int(socket.AF_INET6), int(socket.AF_UNSPEC)


def sin(addr: str, port: int, *, family: int = AF_INET) -> bytes:
    """A 16-byte struct sockaddr_in."""
    return (
        struct.pack("=H", family)
        + struct.pack("!H", port)
        + ipaddress.IPv4Address(addr).packed
        + bytes(8)
    )


def sin6(addr: str, port: int, *, flowinfo: int = 0, scope_id: int = 0) -> bytes:
    """A 28-byte struct sockaddr_in6."""
    return (
        struct.pack("=H", AF_INET6)
        + struct.pack("!HI", port, flowinfo)
        + ipaddress.IPv6Address(addr).packed
        + struct.pack("=I", scope_id)
    )


def test_sockaddr_in() -> None:
    """An AF_INET sockaddr gives the 4 address bytes and the big-endian port."""
    data = sin("192.0.2.1", 8080)
    assert parse_sockaddr(data) == Dest(AF_INET, bytes([192, 0, 2, 1]), 8080)


def test_sockaddr_in_matches_socket_layout() -> None:
    """Our offsets agree with the C layout (sin_family, sin_port, sin_addr, sin_zero)."""
    data = sin("10.0.0.1", 0x1234)
    assert data[2:4] == b"\x12\x34"
    assert len(data) == 16


def test_sockaddr_in6() -> None:
    """An AF_INET6 sockaddr gives the 16 address bytes; flowinfo and scope are ignored."""
    data = sin6("2001:db8::1", 443, flowinfo=0xABCDE, scope_id=3)
    assert parse_sockaddr(data) == Dest(AF_INET6, ipaddress.IPv6Address("2001:db8::1").packed, 443)


def test_sockaddr_in6_rfc2133_length() -> None:
    """24 bytes (no sin6_scope_id) is enough for AF_INET6, as in the kernel."""
    assert parse_sockaddr(sin6("::1", 22)[:24]) == Dest(AF_INET6, bytes(15) + b"\x01", 22)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", errno.EINVAL),
        (b"\x02", errno.EINVAL),
        (sin("1.2.3.4", 80)[:15], errno.EINVAL),
        (sin("1.2.3.4", 80)[:2], errno.EINVAL),
        (sin6("::1", 80)[:23], errno.EINVAL),
        (sin6("::1", 80)[:2], errno.EINVAL),
        (sin("1.2.3.4", 80) + bytes(113), errno.EINVAL),
        (struct.pack("=H", int(socket.AF_UNIX)) + b"/tmp/x\0", errno.EAFNOSUPPORT),
        (struct.pack("=H", int(socket.AF_NETLINK)) + bytes(10), errno.EAFNOSUPPORT),
        (struct.pack("=H", 0xFFFF) + bytes(30), errno.EAFNOSUPPORT),
        (struct.pack("=H", 0x0200) + bytes(14), errno.EAFNOSUPPORT),  # AF_INET byte-swapped
    ],
)
def test_invalid(data: bytes, expected: int) -> None:
    """Short, oversized and foreign-family names fail with the kernel's errno."""
    assert parse_sockaddr(data) == Invalid(expected)


def test_length_bounds() -> None:
    """128 bytes (sizeof sockaddr_storage) is the most accepted; extra bytes are ignored."""
    data = sin("1.2.3.4", 80)
    assert parse_sockaddr(data + bytes(112)) == Dest(AF_INET, bytes([1, 2, 3, 4]), 80)
    assert parse_sockaddr(data + bytes(113)) == Invalid(errno.EINVAL)


@pytest.mark.parametrize(
    "data", [struct.pack("=H", AF_UNSPEC), sin("1.2.3.4", 80, family=AF_UNSPEC)]
)
def test_af_unspec_is_no_destination(data: bytes) -> None:
    """AF_UNSPEC carries no destination (connect dissolves the association)."""
    assert parse_sockaddr(data) == NoDest()


def test_af_unspec_as_inet() -> None:
    """udp_sendmsg reads an AF_UNSPEC name as sockaddr_in: opt-in, same length rule."""
    data = sin("198.51.100.9", 53, family=AF_UNSPEC)
    assert parse_sockaddr(data, unspec_as_inet=True) == Dest(AF_INET, bytes([198, 51, 100, 9]), 53)
    assert parse_sockaddr(data[:15], unspec_as_inet=True) == Invalid(errno.EINVAL)
    assert parse_sockaddr(sin6("::1", 1), unspec_as_inet=True) == Dest(
        AF_INET6, bytes(15) + b"\x01", 1
    )


def test_port_zero_and_max() -> None:
    """The port is passed through as is (0..65535); the policy decides on it."""
    assert parse_sockaddr(sin("1.2.3.4", 0)) == Dest(AF_INET, bytes([1, 2, 3, 4]), 0)
    assert parse_sockaddr(sin("1.2.3.4", 65535)) == Dest(AF_INET, bytes([1, 2, 3, 4]), 65535)


def packed(text: str) -> bytes:
    """The 4 or 16 bytes of an address, as a sockaddr carries them."""
    return ipaddress.ip_address(text).packed


@pytest.mark.parametrize(
    ("dest", "seen"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("192.0.2.1", "192.0.2.1"),
        ("0.0.0.0", "127.0.0.1"),
        ("::", "::1"),
        ("::1", "::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("::ffff:0.0.0.0", "127.0.0.1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("::ffff:255.255.255.255", "255.255.255.255"),
        ("::10.0.0.1", "::a00:1"),  # IPv4-compatible (deprecated): IPv6 like any other
        ("::ffff:0:10.0.0.1", "::ffff:0:a00:1"),  # SIIT's IPv4-translated: IPv6 too
        ("64:ff9b::10.0.0.1", "64:ff9b::a00:1"),  # NAT64: sent over IPv6
        ("2002:a00:1::", "2002:a00:1::"),  # 6to4: sent over IPv6
        ("0.0.0.1", "0.0.0.1"),  # only the unspecified address itself is loopback
        ("::2", "::2"),
        ("fe80::", "fe80::"),
    ],
)
def test_canonical_and_shown(dest: str, seen: str) -> None:
    """The address as the rules see it: mapped is IPv4, unspecified is loopback, and
    nothing else is rewritten; shown() prints exactly that."""
    assert canonical(packed(dest)) == packed(seen)
    assert shown(packed(dest)) == seen


@pytest.mark.parametrize("size", [0, 3, 5, 12, 15, 17])
def test_canonical_leaves_other_lengths(size: int) -> None:
    """Bytes that are no address come back as they are; shown() refuses them."""
    junk = MAPPED_PREFIX[:size] + bytes(max(0, size - 12))
    assert canonical(junk) == junk
    with pytest.raises(ValueError):
        shown(junk)


def test_unmapped_is_only_the_first_half() -> None:
    """unmapped() turns mapped into IPv4 but leaves unspecified addresses as they are (a
    name sinkholed to 0.0.0.0 must not become loopback)."""
    assert unmapped(packed("::ffff:192.0.2.7")) == packed("192.0.2.7")
    assert unmapped(packed("::ffff:0.0.0.0")) == bytes(4)
    assert unmapped(bytes(4)) == bytes(4)
    assert unmapped(bytes(16)) == bytes(16)
    plain = packed("2001:db8::1")
    assert unmapped(plain) is plain


def test_unmapped_ip() -> None:
    """The same on ipaddress objects; an address that is not mapped is returned itself,
    its zone index kept."""
    assert unmapped_ip(ipaddress.ip_address("::ffff:10.1.2.3")) == ipaddress.IPv4Address(
        "10.1.2.3"
    )
    zoned = ipaddress.ip_address("fe80::1%eth0")
    assert unmapped_ip(zoned) is zoned
    v4 = ipaddress.IPv4Address("0.0.0.0")
    assert unmapped_ip(v4) is v4


def test_mapped_prefix() -> None:
    """MAPPED_PREFIX is the ::ffff:0:0/96 network's 12 leading bytes."""
    assert MAPPED_PREFIX == ipaddress.ip_network("::ffff:0:0/96").network_address.packed[:12]


def test_results_are_frozen() -> None:
    """Results are values."""
    dest = parse_sockaddr(sin("1.2.3.4", 80))
    assert isinstance(dest, Dest)
    with pytest.raises(AttributeError):
        dest.port = 1  # type: ignore[misc]
