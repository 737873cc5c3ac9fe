"""The rebinding guard: which answers a hostname rule may not allow.

A hostname rule allows the addresses its name resolves to, and whoever runs the name's
zone chooses them. Without a guard, ``--net-allow cdn.example:443`` opens
``127.0.0.1:443`` (the host's own services), ``169.254.169.254`` (a cloud's metadata
service) or ``10.0.0.5`` (the private network) the moment the name answers so: DNS
rebinding. So an answer in :data:`GUARDED_NETWORKS` is never allowed *through a
hostname rule*:

- if an IP/CIDR (or any-address) rule allows the address anyway
  (:meth:`sandlock.policy.Policy.allows_by_address`), the name still resolves to it
  for the command, and that rule, not the hostname rule, decides its calls;
- otherwise the address is dropped: the forwarder removes its records (NXDOMAIN when
  none remain), start-up resolution leaves it out, and both say so
  (``"rule": "rebinding-guard"``).

Exceptions: a loopback answer (127/8, ::1, an IPv4-mapped 127/8) for ``localhost`` or a
name under ``.localhost`` (RFC 6761: loopback by definition; resolved at start, sandlock
answers them so itself), and ``--dns-allow-private``, which turns the guard off. Any
other guarded answer for those names is guarded as any name's: ``.localhost`` names
reach the upstream through the forwarder (and the system resolver at start may answer
from anywhere), so a resolver answering ``dev.localhost`` with ``169.254.169.254`` or
``10.0.0.5`` must not open it. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from .policy import Policy

__all__ = ["GUARDED_NETWORKS", "RULE", "Sorted", "exempt", "guarded", "sort_answers"]

RULE = "rebinding-guard"
"""The ``rule`` of an audit record for an answer the guard dropped."""

# The one list. Written out as networks rather than with ipaddress's is_private, which
# also covers documentation and benchmarking ranges (192.0.2/24, 198.18/15, 2001:db8::/32)
# that are no one's internal service, and changed between Python versions. Addresses
# are checked unmapped (::ffff:10.0.0.1 is 10.0.0.1: stored_address does that first).
GUARDED_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(
    ipaddress.ip_network(text)
    for text in (
        "0.0.0.0/8",  # unspecified, "this network" (0.0.0.0 reaches the local host)
        "127.0.0.0/8",  # loopback
        "10.0.0.0/8",  # RFC 1918
        "172.16.0.0/12",  # RFC 1918
        "192.168.0.0/16",  # RFC 1918
        "100.64.0.0/10",  # CGNAT shared address space (RFC 6598)
        "169.254.0.0/16",  # link-local, cloud metadata (169.254.169.254)
        "224.0.0.0/4",  # multicast
        "::/128",  # unspecified
        "::1/128",  # loopback
        "fe80::/10",  # link-local
        "fc00::/7",  # unique local (ULA)
        "ff00::/8",  # multicast
    )
)


# The list as (network, mask) integers per IP version: a check is a few integer ands.
_MASKS = {
    version: tuple(
        (int(n.network_address), int(n.netmask)) for n in GUARDED_NETWORKS if n.version == version
    )
    for version in (4, 6)
}


def guarded(address: str) -> bool:
    """Whether a stored answer (:func:`sandlock.policy.stored_address`: text, unmapped)
    lies in :data:`GUARDED_NETWORKS`."""
    ip = ipaddress.ip_address(address)
    value = int(ip)
    return any(value & mask == net for net, mask in _MASKS[ip.version])


def exempt(name: str, address: str) -> bool:
    """Whether the guard lets ``name`` (lower case, no final dot) answer ``address`` (an
    answer as :func:`guarded` takes it): a loopback address (127/8, ::1, or the
    IPv4-mapped form of 127/8, should a caller pass it unmapped) for ``localhost`` or a
    name under ``.localhost`` (RFC 6761: loopback by definition). Their other guarded
    answers (169.254.169.254, 10.0.0.5) are not exempt."""
    if name != "localhost" and not name.endswith(".localhost"):
        return False
    ip = ipaddress.ip_address(address)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return (mapped or ip).is_loopback


class Sorted(NamedTuple):
    """A name's answers as the guard sorts them, each in the order given."""

    allowed: tuple[str, ...]
    """Allowed through the hostname rule: learned under its host key."""
    by_address: tuple[str, ...]
    """Guarded, but an IP/CIDR rule allows them: shown to the command, not learned."""
    dropped: tuple[str, ...]
    """Guarded, and no rule allows them: never shown to the command."""


def sort_answers(policy: Policy, name: str, answers: Iterable[str], *, on: bool) -> Sorted:
    """Sort the stored ``answers`` for ``name`` under ``policy``; ``on`` False (the
    ``--dns-allow-private`` option) allows them all, :func:`exempt` the loopback answers
    of ``localhost`` names."""
    allowed: list[str] = []
    by_address: list[str] = []
    dropped: list[str] = []
    for address in answers:
        if not on or not guarded(address) or exempt(name, address):
            allowed.append(address)
        elif policy.allows_by_address(ipaddress.ip_address(address).packed):
            by_address.append(address)
        else:
            dropped.append(address)
    return Sorted(tuple(allowed), tuple(by_address), tuple(dropped))
