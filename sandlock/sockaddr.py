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
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from typing import NamedTuple

from . import _syscalls as sys_

__all__ = ["Dest", "Invalid", "NoDest", "ParsedSockaddr", "format_dest", "parse_sockaddr"]

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


def format_dest(dest: Dest) -> str:
    """``"127.0.0.1:80"`` or ``"[::1]:80"``; an IPv4-mapped address is shown as IPv4."""
    ip = ipaddress.ip_address(dest.addr)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is None:
            return f"[{ip}]:{dest.port}"
        ip = ip.ipv4_mapped
    return f"{ip}:{dest.port}"
