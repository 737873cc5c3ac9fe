"""Parsing untrusted sockaddr bytes the way the kernel reads them (pure: no socket opened)."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

import pytest

from sandlock.sockaddr import Dest, Invalid, NoDest, format_dest, parse_sockaddr

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


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (sin("127.0.0.1", 80), "127.0.0.1:80"),
        (sin6("::1", 80), "[::1]:80"),
        (sin6("2001:db8::1", 443), "[2001:db8::1]:443"),
        (sin6("::ffff:10.0.0.1", 22), "10.0.0.1:22"),
        (sin6("::", 0), "[::]:0"),
    ],
)
def test_format_dest(data: bytes, text: str) -> None:
    """Destinations print as host:port, IPv6 in brackets, mapped as IPv4."""
    dest = parse_sockaddr(data)
    assert isinstance(dest, Dest)
    assert format_dest(dest) == text


def test_results_are_frozen() -> None:
    """Results are values."""
    dest = parse_sockaddr(sin("1.2.3.4", 80))
    assert isinstance(dest, Dest)
    with pytest.raises(AttributeError):
        dest.port = 1  # type: ignore[misc]
