"""Parse the raw bytes of a sockaddr copied out of the child (untrusted input).

The checks mirror what the kernel does with the same bytes, so that a refused or
malformed address fails with the errno the child would have seen anyway:

- ``len < 2`` (no room for ``sa_family``) or ``len > 128``
  (``sizeof(struct sockaddr_storage)``): ``EINVAL``;
- ``AF_INET`` needs ``len >= 16`` (``sizeof(struct sockaddr_in)``), else ``EINVAL``;
- ``AF_INET6`` needs ``len >= 24`` (``SIN6_LEN_RFC2133``, no scope id), else ``EINVAL``;
- ``AF_UNSPEC`` carries no destination (:class:`NoDest`): ``connect`` with it
  dissolves an association;
- any other family: ``EAFNOSUPPORT``.

``sa_family`` is host-endian, the port and address are network order, at fixed
offsets. Pure and allocation-light: it runs on every trapped syscall.

One kernel quirk callers must know: ``sendto``/``sendmsg`` on an ``AF_INET`` UDP
socket reads an ``AF_UNSPEC`` name *as* ``sockaddr_in`` (legacy BSD behaviour in
``udp_sendmsg``), so for that case pass ``unspec_as_inet=True`` and the address is
decided like any other. (An ``AF_INET6`` UDP socket treats it as "no address";
ping sockets refuse it.)

And the address a destination stands for, the one place that says it: :func:`canonical`
(an IPv4-mapped address is IPv4, an unspecified one the loopback address a call to it
reaches) is the address every rule is matched against and every report shows
(:func:`shown`).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from typing import NamedTuple

from . import _syscalls as sys_

__all__ = [
    "MAPPED_PREFIX",
    "Dest",
    "IPAddress",
    "Invalid",
    "NoDest",
    "ParsedSockaddr",
    "canonical",
    "parse_sockaddr",
    "shown",
    "unmapped",
    "unmapped_ip",
]

SOCKADDR_STORAGE_SIZE = sys_.SOCKADDR_MAX
SOCKADDR_IN_SIZE = sys_.SOCKADDR_IN_SIZE
SIN6_LEN_RFC2133 = sys_.SIN6_LEN_RFC2133

_AF_UNSPEC = int(socket.AF_UNSPEC)
_AF_INET = int(socket.AF_INET)
_AF_INET6 = int(socket.AF_INET6)
_FAMILY = struct.Struct("=H")  # sa_family_t, host byte order
_PORT = struct.Struct("!H")  # sin_port / sin6_port, network byte order


class Dest(NamedTuple):
    """An IP destination: ``addr`` is the packed 4- or 16-byte address, as sent."""

    family: int
    addr: bytes
    port: int


class NoDest(NamedTuple):
    """``AF_UNSPEC``: no destination (``connect`` dissolves the association)."""


class Invalid(NamedTuple):
    """The kernel would refuse these bytes with ``errno``."""

    errno: int


ParsedSockaddr = Dest | NoDest | Invalid

_NO_DEST = NoDest()
_EINVAL = Invalid(errno.EINVAL)
_EAFNOSUPPORT = Invalid(errno.EAFNOSUPPORT)


def parse_sockaddr(data: bytes, *, unspec_as_inet: bool = False) -> ParsedSockaddr:
    """Parse a sockaddr of ``len(data)`` bytes, as the kernel would.

    With ``unspec_as_inet`` an ``AF_UNSPEC`` name is read as ``sockaddr_in``
    (what ``udp_sendmsg`` does) and gives a ``Dest`` with family ``AF_INET``.
    """
    size = len(data)
    if size < 2 or size > SOCKADDR_STORAGE_SIZE:
        return _EINVAL
    family = _FAMILY.unpack_from(data, 0)[0]
    if family == _AF_INET or (family == _AF_UNSPEC and unspec_as_inet):
        if size < SOCKADDR_IN_SIZE:
            return _EINVAL
        return Dest(_AF_INET, data[4:8], _PORT.unpack_from(data, 2)[0])
    if family == _AF_INET6:
        if size < SIN6_LEN_RFC2133:
            return _EINVAL
        return Dest(_AF_INET6, data[8:24], _PORT.unpack_from(data, 2)[0])
    if family == _AF_UNSPEC:
        return _NO_DEST
    return _EAFNOSUPPORT


# --- the address as the rules see it ---------------------------------------------

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAPPED_PREFIX = bytes(10) + b"\xff\xff"
"""The 12 bytes in front of an IPv4-mapped IPv6 address (``::ffff:0:0/96``)."""

# 0.0.0.0 and :: as a destination: the kernel sends to the local host.
_LOOPBACK = {bytes(4): bytes((127, 0, 0, 1)), bytes(16): bytes(15) + b"\x01"}


def canonical(addr: bytes) -> bytes:
    """The packed address as the rules see it: every decision, every report.

    - An IPv4-mapped address (``::ffff:a.b.c.d``) is the IPv4 address ``a.b.c.d`` (four
      bytes): an IPv6 socket reaches exactly that IPv4 host through it.
    - An unspecified address is the loopback address a call to it reaches: ``0.0.0.0``
      (and ``::ffff:0.0.0.0``) is ``127.0.0.1``, ``::`` is ``::1``; so a deny on loopback
      stops it too. (The kernel really sends to the socket's own bound address, which
      is why onbehalf.py pins the name it sends to this one.)
    - Nothing else is rewritten: an IPv4-compatible ``::a.b.c.d``, NAT64 ``64:ff9b::/96``
      or 6to4 ``2002::/16`` address is an IPv6 address like any other, since the kernel
      sends it over IPv6 (a translator beyond is the network's business).

    Bytes of any other length come back as they are. :meth:`sandlock.policy.Policy.decide`
    does the same on integers (its hot path)."""
    addr = unmapped(addr)
    return _LOOPBACK.get(addr, addr)


def unmapped(addr: bytes) -> bytes:
    """The packed address, an IPv4-mapped one as its four IPv4 bytes; any other as it is.

    The first half of :func:`canonical`, alone where an address is *stored* rather than
    called: the addresses a hostname resolves to (a name sinkholed to ``0.0.0.0`` must
    grant nothing, so it does not become loopback), rules written in mapped form, the
    DNS upstream."""
    return addr[12:] if len(addr) == 16 and addr.startswith(MAPPED_PREFIX) else addr


def unmapped_ip(ip: IPAddress) -> IPAddress:
    """:func:`unmapped` for an ``ipaddress`` object (a zone index, ``fe80::1%eth0``, stays)."""
    packed = ip.packed
    v4 = unmapped(packed)
    return ip if v4 is packed else ipaddress.IPv4Address(v4)


def shown(addr: bytes) -> str:
    """How a decision's address is printed (the audit log's ``dst``, the denial report,
    --summary, learn mode): :func:`canonical`, as text. ValueError unless 4 or 16 bytes."""
    return str(ipaddress.ip_address(canonical(addr)))
