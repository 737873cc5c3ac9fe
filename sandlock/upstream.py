"""The resolver sandlock asks: ``--dns-upstream`` parsed, the system's nameservers read,
and the blocking lookups made at start (plan.py) -- without trio, which only the
forwarder (dns.py) needs.

Start-up lookups (:func:`lookup`) ask A then AAAA and fail on any rcode but NOERROR
from either: a half-answered name is an error at start, not a surprise later.
``--dns-upstream`` takes an IP address only (finding the resolver by name would need a
resolver); a bad value is a :class:`DnsConfigError`, a PolicyError, so it is reported
like a bad rule.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import NoReturn

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.resolver

from .errors import DnsConfigError
from .policy import stored_address
from .sockaddr import unmapped_ip

__all__ = [
    "ADDRESS_TYPES",
    "DEFAULT_TIMEOUT",
    "DnsLookupError",
    "Upstream",
    "chain_addresses",
    "lookup",
    "parse_upstream",
    "resolver_for",
    "system_upstreams",
]

Upstream = tuple[str, int]

DEFAULT_TIMEOUT = 3.0
ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)

_FLAG = "--dns-upstream"
_UPSTREAM_HINT = "(expected IP[:PORT], as in `127.0.0.53`, `127.0.0.53:5300` or `[::1]:53`)"


class DnsLookupError(OSError):
    """A start-up lookup failed; ``strerror`` (and ``str()``) says why, in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.strerror = reason


# --- configuration -----------------------------------------------------------------


def parse_upstream(text: str) -> Upstream:
    """Parse ``--dns-upstream IP[:PORT]`` (``[v6]:PORT`` or bare ``v6``); port 53 by default."""
    body = text.strip()
    port_text: str | None = None
    if body.startswith("["):
        host_text, close, after = body[1:].partition("]")
        if not close or (after and not after.startswith(":")):
            _bad_upstream(text, f"invalid address `{body}` in `{text}` {_UPSTREAM_HINT}")
        port_text = after[1:] if after else None
    elif body.count(":") > 1:
        host_text = body
    else:
        host_text, colon, port_part = body.partition(":")
        port_text = port_part if colon else None
    try:
        address = ipaddress.ip_address(host_text)
    except ValueError:
        _bad_upstream(text, f"invalid address `{host_text}` in `{text}` {_UPSTREAM_HINT}")
    return str(unmapped_ip(address)), 53 if port_text is None else _parse_port(port_text, text)


def _parse_port(port_text: str, text: str) -> int:
    if not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) <= 65535):
        _bad_upstream(text, f"invalid port `{port_text}` in `{text}` (ports are 1-65535)")
    return int(port_text)


def _bad_upstream(text: str, message: str) -> NoReturn:
    raise DnsConfigError(f"{_FLAG}: {message}", flag=_FLAG, spec=text)


def system_upstreams(path: str = "/etc/resolv.conf") -> list[Upstream]:
    """The ``nameserver`` entries of ``path``, port 53; empty if it names none.

    A line dnspython cannot read is a :class:`DnsConfigError` (pass --dns-upstream).
    """
    resolver = dns.resolver.Resolver(configure=False)
    try:
        resolver.read_resolv_conf(path)
    except dns.resolver.NoResolverConfiguration:
        return []
    except ValueError as err:
        raise DnsConfigError(f"{path}: {err} (pass {_FLAG} IP[:PORT])") from err
    return [(str(server), 53) for server in resolver.nameservers]


def _where(upstream: Upstream) -> str:
    host, port = upstream
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- start-up lookups (blocking) ---------------------------------------------------


def lookup(
    upstream: Upstream, name: str, *, timeout: float = DEFAULT_TIMEOUT
) -> list[tuple[str, int]]:
    """Every A and AAAA address of ``name`` at ``upstream``, with its TTL.

    Blocking: UDP, then TCP when the reply is truncated. NXDOMAIN, SERVFAIL (any
    rcode but NOERROR), a timeout or a network error raise :class:`DnsLookupError`.
    A name with no address gives ``[]``.
    """
    try:
        qname = dns.name.from_text(name)
    except dns.exception.DNSException as err:
        raise DnsLookupError(f"not a DNS name: {err}") from err
    found: dict[str, int] = {}
    for rdtype in ADDRESS_TYPES:
        reply = _ask_blocking(upstream, dns.message.make_query(qname, rdtype), timeout)
        if reply.rcode() != dns.rcode.NOERROR:
            raise DnsLookupError(f"{dns.rcode.to_text(reply.rcode())} from {_where(upstream)}")
        for address, ttl in chain_addresses(reply, qname):
            found[address] = max(ttl, found.get(address, 0))
    return list(found.items())


def _ask_blocking(
    upstream: Upstream, query: dns.message.Message, timeout: float
) -> dns.message.Message:
    host, port = upstream
    try:
        reply, _tcp = dns.query.udp_with_fallback(
            query, host, timeout, port, ignore_unexpected=True
        )
    except dns.exception.Timeout as err:
        raise DnsLookupError(f"no answer from {_where(upstream)} within {timeout:g} s") from err
    except (dns.exception.DNSException, OSError) as err:
        raise DnsLookupError(f"{_where(upstream)}: {err}") from err
    return reply


def resolver_for(
    upstream: Upstream, *, timeout: float = DEFAULT_TIMEOUT
) -> Callable[[str], list[str]]:
    """A ``resolver=`` for :func:`sandlock.plan.make` that asks ``upstream`` (:func:`lookup`)."""

    def resolve(name: str) -> list[str]:
        return [address for address, _ttl in lookup(upstream, name, timeout=timeout)]

    return resolve


def chain_addresses(reply: dns.message.Message, qname: dns.name.Name) -> list[tuple[str, int]]:
    """(address, ttl) of the A/AAAA records on the CNAME chain from ``qname`` in the answer."""
    owners = {qname}
    grown = True
    while grown:
        grown = False
        for rrset in reply.answer:
            if rrset.name not in owners:
                continue
            for rdata in rrset:
                if isinstance(rdata, dns.rdtypes.ANY.CNAME.CNAME) and rdata.target not in owners:
                    owners.add(rdata.target)
                    grown = True
    return [
        (stored_address(rdata.address), rrset.ttl)
        for rrset in reply.answer
        if rrset.name in owners and rrset.rdclass == dns.rdataclass.IN
        for rdata in rrset
        if isinstance(rdata, dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA)
    ]
