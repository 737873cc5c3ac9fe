"""Parse one ``--net-allow`` / ``--net-deny`` rule spec into a :class:`Rule`.

The grammar is the contract in ``net-rules.md``::

    [scheme://] target [:ports]

Pure: no I/O, no DNS. A hostname is only validated and lower-cased here; the
policy resolves it. Every error is a :class:`~sandlock.errors.PolicyError` whose
message names the flag and quotes the spec in backticks.

Decisions where the reference is silent (keep in sync with the tests):

- Whitespace around the whole spec and around each port is ignored
  (``" h:80, 443 "``); anywhere else it makes the target invalid.
- The scheme is case-insensitive (``TCP://`` is ``tcp://``); hostnames are
  lower-cased and one trailing dot is dropped (``Example.COM.`` is ``example.com``).
- A CIDR with host bits (``10.1.2.3/8``) is accepted and masked to its network
  (``10.0.0.0/8``), as the original does; only the prefix is parsed strictly, and
  it must be decimal (no netmask form ``/255.0.0.0``).
- A target made only of digits and dots must be a dotted-quad IPv4 address:
  ``1.2.3`` or ``010.0.0.1`` is an error, never a hostname (the resolver would
  read them as ``1.2.0.3`` and ``8.0.0.1``).
- Brackets hold an IPv6 address or CIDR only; ``[::1]`` without a port means all
  ports. IPv6 zone indexes (``fe80::1%eth0``) are not accepted.
- An IPv4-mapped rule is stored as IPv4 (``::ffff:10.0.0.0/104`` is
  ``10.0.0.0/8``); an IPv6 network wider than ``/96`` keeps its IPv6 form and so
  never matches IPv4(-mapped) destinations.
- ``icmp://`` takes no port suffix at all, not even ``:*``.
- Ports are decimal, 1-65535, at most five digits; ranges (``80-90``) are not part
  of the grammar. Duplicate ports collapse.
- A wildcard hostname is ``*.`` followed by a valid hostname of at least two
  labels (``*.example.com``; ``*.com`` is too broad). It stands for one or more
  labels in front of that domain: ``a.example.com`` and ``a.b.example.com``, never
  ``example.com`` itself. ``Rule.host`` keeps the pattern, lower-cased, with the
  trailing dot dropped (``*.Example.COM.`` is ``*.example.com``).
- A ``*`` anywhere else in a target (``a.*.example.com``, ``*a.example.com``,
  ``**.example.com``, ``*.*.example.com``, ``a*b``) is a misplaced ``*``: it must be
  the whole first label and appear once.
- ``*.`` followed by an IP address or anything made only of digits and dots
  (``*.1.2.3.4``) is an error: addresses have no subdomains, so the rule could
  only be a typo for the address itself or for a CIDR.
- ``--net-deny`` takes hostnames and wildcards with the same grammar (ports and
  schemes included): such a rule names names that never resolve for the command
  (:meth:`sandlock.policy.Policy.denied_name`), never addresses. A wildcard allow
  rule gets its addresses only from the DNS-following mode (:mod:`sandlock.dns`);
  nothing resolves it at start.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal, NamedTuple, NoReturn

from .errors import PolicyError
from .sockaddr import unmapped_ip

__all__ = ["PROTOS", "WILDCARD_PREFIX", "Network", "Proto", "Rule", "is_wildcard", "parse_rule"]

Proto = Literal["tcp", "udp", "icmp"]
PROTOS: tuple[Proto, ...] = ("tcp", "udp", "icmp")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

WILDCARD_PREFIX = "*."

_WILDCARD_HINT = "(a wildcard is `*.` followed by a domain, as in `*.example.com`)"
_PORTS_HINT = "(ports are 1-65535, comma-separated, or `*`)"
# One label of RFC 1123, after lower-casing; underscores are tolerated (SRV-style
# and some internal names use them), hyphens may not start or end a label.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMERIC = re.compile(r"\.*[0-9][0-9.]*")  # digits and dots, at least one digit


class Rule(NamedTuple):
    """One parsed rule.

    ``network`` and ``host`` are never both set; both ``None`` means any IP.
    ``ports`` is ``None`` for all ports (always ``None`` for icmp).
    """

    spec: str
    proto: Proto
    network: Network | None
    host: str | None
    ports: frozenset[int] | None

    @property
    def wildcard(self) -> bool:
        """Whether ``host`` is a wildcard pattern (``*.example.com``)."""
        return self.host is not None and is_wildcard(self.host)


def is_wildcard(host: str) -> bool:
    """Whether a host key (``Rule.host``) is a wildcard pattern rather than one name."""
    return host.startswith(WILDCARD_PREFIX)


def parse_rule(spec: str, *, flag: str) -> Rule:
    """Parse ``spec`` as written after ``flag`` (``--net-allow`` or ``--net-deny``).

    Raises :class:`PolicyError` with ``flag`` and ``spec`` set on any mistake.
    """
    body = spec.strip()
    proto: Proto = "tcp"
    scheme, sep, rest = body.partition("://")
    if sep:
        proto = _parse_scheme(scheme, flag, spec)
        body = rest
    if not body:
        if proto == "icmp":
            _fail(flag, spec, f"icmp rule needs a host/IP or `*`: `{spec}`")
        _fail(flag, spec, f"empty rule `{spec}` (write `*` to mean everything)")
    network, host, ports_text = _split_target(body, flag, spec)
    ports = None
    if ports_text is not None:
        if proto == "icmp":
            _fail(flag, spec, f"icmp rule takes no port: `{spec}`")
        ports = _parse_ports(ports_text, flag, spec)
    return Rule(spec=spec, proto=proto, network=network, host=host, ports=ports)


def _fail(flag: str, spec: str, message: str) -> NoReturn:
    raise PolicyError(f"{flag}: {message}", flag=flag, spec=spec)


def _parse_scheme(scheme: str, flag: str, spec: str) -> Proto:
    name = scheme.lower()
    for proto in PROTOS:
        if name == proto:
            return proto
    _fail(flag, spec, f"unknown scheme `{scheme}://` in `{spec}` (expected {', '.join(PROTOS)})")


def _split_target(body: str, flag: str, spec: str) -> tuple[Network | None, str | None, str | None]:
    """Split a scheme-less body into (network, host, ports text or None)."""
    if body.startswith("["):
        return _split_bracketed(body, flag, spec)
    if body.count(":") > 1:
        # A hostname or `*` has no colon and a port list has none either, so two
        # or more colons can only be a bare IPv6 address or CIDR: all ports.
        return _parse_ipv6_body(body, flag, spec), None, None
    target, colon, ports_text = body.partition(":")
    network, host = _parse_target(target, flag, spec)
    return network, host, ports_text if colon else None


def _split_bracketed(body: str, flag: str, spec: str) -> tuple[Network, None, str | None]:
    inside, close, after = body[1:].partition("]")
    if not close:
        _fail(flag, spec, f"unclosed `[` in `{spec}`")
    if after and not after.startswith(":"):
        _fail(flag, spec, f"expected `:ports` after `]` in `{spec}`")
    network = _parse_ipv6_body(inside, flag, spec)
    return network, None, after[1:] if after else None


def _parse_ipv6_body(text: str, flag: str, spec: str) -> Network:
    """Parse an IPv6 address or CIDR (bare, or from inside brackets)."""
    if "/" in text:
        network = _parse_cidr(text, flag, spec, ipv6_only=True)
    else:
        address = _ip_address(text)
        if not isinstance(address, ipaddress.IPv6Address):
            _fail(
                flag,
                spec,
                f"invalid IPv6 address `{text}` in `{spec}` "
                "(an IPv6 address with ports is written `[addr]:ports`)",
            )
        network = ipaddress.ip_network(address)
    return _unmap(network)


def _parse_target(target: str, flag: str, spec: str) -> tuple[Network | None, str | None]:
    """Parse a target that has no colon: `*`/empty, IPv4, CIDR or hostname."""
    if target in ("", "*"):
        return None, None
    if "/" in target:
        return _unmap(_parse_cidr(target, flag, spec, ipv6_only=False)), None
    address = _ip_address(target)
    if address is not None:
        return _unmap(ipaddress.ip_network(address)), None
    if _NUMERIC.fullmatch(target):
        _fail(flag, spec, f"invalid IP address `{target}` in `{spec}`")
    if "*" in target:
        host = _parse_wildcard(target, flag, spec)
    else:
        host = _parse_hostname(target, flag, spec)
    return None, host


def _parse_wildcard(target: str, flag: str, spec: str) -> str:
    """The one place that decides on ``*.example.com``: returns the pattern."""
    star, dot, domain = target.partition(".")
    if star != "*" or "*" in domain:
        _fail(flag, spec, f"misplaced `*` in `{spec}` {_WILDCARD_HINT}")
    if not (dot and domain):
        _fail(flag, spec, f"wildcard needs a domain after `*.` in `{spec}` {_WILDCARD_HINT}")
    if _NUMERIC.fullmatch(domain):
        _fail(flag, spec, f"a wildcard needs a domain name, not an IP address: `{spec}`")
    name = _parse_hostname(domain, flag, spec)
    if "." not in name:
        _fail(
            flag,
            spec,
            f"wildcard `{target}` is too broad in `{spec}` "
            "(write at least two labels after `*.`, as in `*.example.com`)",
        )
    return WILDCARD_PREFIX + name


def _parse_hostname(target: str, flag: str, spec: str) -> str:
    # isascii() is checked on the text as written: "\u212a".lower() is an ASCII "k".
    name = target.lower()[:-1] if target.endswith(".") else target.lower()
    labels = name.split(".")
    valid = (
        target.isascii()
        and 0 < len(name) <= 253
        and all(_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )
    if not valid:
        _fail(flag, spec, f"invalid hostname `{target}` in `{spec}`")
    return name


def _parse_cidr(text: str, flag: str, spec: str, *, ipv6_only: bool) -> Network:
    address_text, _, prefix_text = text.partition("/")
    address = _ip_address(address_text)
    if address is None or (ipv6_only and address.version != 6):
        kind = "IPv6 network" if ipv6_only else "network"
        _fail(flag, spec, f"invalid {kind} address `{address_text}` in `{spec}`")
    limit = address.max_prefixlen
    if not (prefix_text.isascii() and prefix_text.isdigit() and len(prefix_text) <= 3) or (
        int(prefix_text) > limit
    ):
        _fail(
            flag,
            spec,
            f"invalid prefix `/{prefix_text}` in `{spec}` "
            f"(IPv{address.version} prefixes are 0-{limit})",
        )
    # Host bits are masked off (strict=False): `10.1.2.3/8` means `10.0.0.0/8`.
    return ipaddress.ip_network((address, int(prefix_text)), strict=False)


def _ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address written in ``text``, or None; a zone index (``%eth0``) is refused."""
    if "%" in text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _unmap(network: Network) -> Network:
    """Turn an IPv4-mapped IPv6 network (``::ffff:0:0/96`` or narrower) into IPv4."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        address = unmapped_ip(network.network_address)
        if address.version == 4:
            return ipaddress.IPv4Network((address, network.prefixlen - 96))
    return network


def _parse_ports(text: str, flag: str, spec: str) -> frozenset[int] | None:
    items = [item.strip() for item in text.split(",")]
    if "*" in items:
        if any(item != "*" for item in items):
            _fail(flag, spec, f"cannot mix `*` with port numbers in `{spec}`")
        return None
    ports: set[int] = set()
    for item in items:
        if not (item.isascii() and item.isdigit() and len(item) <= 5 and 0 < int(item) <= 65535):
            shown = f"`{item}`" if item else "(empty)"
            _fail(flag, spec, f"invalid port {shown} in `{spec}` {_PORTS_HINT}")
        ports.add(int(item))
    return frozenset(ports)
