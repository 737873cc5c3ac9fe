"""The egress decision: may this (protocol, address, port) leave the sandbox?

The model, as in ``net-rules.md``:

- **Per protocol.** Rules of each protocol (tcp, udp, icmp) form their own
  policy; a protocol with no allow rule at all is denied by default. An unknown
  protocol is denied.
- **Deny wins.** ``--net-deny`` rules of that protocol are checked first; a match
  refuses the call even where an allow rule would match. Then the allow rules:
  the first one that matches (in the order given) allows the call.
- **The address as the rules see it** (:func:`sandlock.sockaddr.canonical`): a
  mapped ``::ffff:a.b.c.d`` is the IPv4 address ``a.b.c.d`` for every rule, allow and
  deny alike (rules written in mapped form are already IPv4: see :mod:`sandlock.rules`);
  an unspecified destination is the loopback address it reaches (``0.0.0.0`` and
  ``::ffff:0.0.0.0`` are ``127.0.0.1``, ``::`` is ``::1``), so a deny on loopback stops
  it too. A *rule* written as exactly ``0.0.0.0`` or ``::`` is read the same way, so
  that ``--net-deny 0.0.0.0`` is not silently dead. Addresses a hostname resolves to
  are only unmapped: a sinkholed name (``0.0.0.0``) grants nothing.
- **Host keys.** Addresses are kept per host key: an exact hostname, or a wildcard
  pattern (``*.example.com``). The plan (:mod:`sandlock.plan`) resolves exact names
  at start; wildcards start with no address and match nothing until the
  DNS-following mode (:mod:`sandlock.dns`) learns addresses for them
  (:meth:`Policy.with_hosts`). :meth:`Policy.host_for_name` says which key covers a
  name the command looks up.
- **Name deny rules** (``--net-deny evil.example``, ``--net-deny '*.evil.example'``)
  hold no addresses: they say which names never resolve for the command
  (:meth:`Policy.denied_name`), and :meth:`Policy.host_for_name` covers none of them,
  whatever allow rule or wildcard names them. Their ports and schemes are parsed as in
  allow rules; a denied name is denied whatever they are.
- **Carried, not decided here**: the ``--unix-allow`` rules (:mod:`sandlock.unixrules`)
  and the HTTP rules (:mod:`sandlock.httprules`), which the handlers and the HTTP relay
  read from the policy deciding now. A swap of the policy swaps them with the rest, at
  once: there is no second copy of any rule to go stale.

Pure: no I/O, no resolver; a Policy is built from parsed rules and the addresses of
their hosts, in one way (its constructor). It is immutable: the supervisor swaps whole
objects. Building one compiles the rules into per-protocol tables of plain integers
so that :meth:`Policy.decide` does no allocation and no ``ipaddress`` work per call.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Container, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple

from .rules import PROTOS, WILDCARD_PREFIX, Rule, is_wildcard
from .sockaddr import MAPPED_PREFIX, IPAddress, canonical, unmapped

__all__ = ["Decision", "HostAddrs", "IPAddress", "Policy", "stored_address", "stored_addresses"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .httprules import HttpRules
    from .unixrules import UnixRules

HostAddrs = Mapping[str, Iterable[str | IPAddress]]

_ALL4 = (1 << 32) - 1
_ALL6 = (1 << 128) - 1
# canonical() in integers, for decide(): the 96 bits above a mapped address, and what
# an unspecified address becomes (both read from sockaddr.py's bytes, not retyped).
_MAPPED_TAG = int.from_bytes(MAPPED_PREFIX, "big")
_LOOPBACK4 = int.from_bytes(canonical(bytes(4)), "big")
_LOOPBACK6 = int.from_bytes(canonical(bytes(16)), "big")


class Decision(NamedTuple):
    """The verdict on one destination.

    ``rule`` is the spec text of the rule that decided, ``None`` for the default
    deny; ``host`` is the host key (hostname or wildcard pattern) whose address
    matched, if any.
    """

    allowed: bool
    rule: str | None
    host: str | None

    @property
    def reason(self) -> str:
        """``"default-deny"`` or the text of the deciding rule, for logs."""
        return "default-deny" if self.rule is None else self.rule


_DEFAULT_DENY = Decision(allowed=False, rule=None, host=None)


class _Entry(NamedTuple):
    """One compiled match: ``addr & mask == net`` and the port in ``ports``."""

    net: int
    mask: int
    ports: frozenset[int] | None
    decision: Decision


class _Table(NamedTuple):
    """The compiled rules of one protocol, split by IP version."""

    deny4: tuple[_Entry, ...]
    deny6: tuple[_Entry, ...]
    allow4: tuple[_Entry, ...]
    allow6: tuple[_Entry, ...]


class Policy:
    """An immutable, compiled set of allow and deny rules: build it, then :meth:`decide`.

    ``host_addrs`` must name exactly the hostnames of the allow rules (an empty address
    list is allowed and matches nothing); the hostnames of deny rules hold no addresses.
    Addresses are strings or ``ipaddress`` objects (:func:`stored_address`). Raises
    ValueError otherwise. ``unix`` are the ``--unix-allow`` rules (None: none given);
    ``http`` the HTTP rules (None: the run has no HTTP relay; empty rules: it has one,
    and every request passes).
    The plan (:mod:`sandlock.plan`) parses the rule strings and resolves the hostnames.
    """

    __slots__ = (
        "_allow",
        "_denied",
        "_denied_domains",
        "_deny",
        "_domains",
        "_hosts",
        "_http",
        "_tables",
        "_unix",
    )

    _allow: tuple[Rule, ...]
    _deny: tuple[Rule, ...]
    _denied: Mapping[str, str]
    _denied_domains: Mapping[str, str]
    _domains: frozenset[str]
    _hosts: Mapping[str, tuple[str, ...]]
    _http: HttpRules | None
    _tables: dict[str, _Table]
    _unix: UnixRules | None

    def __init__(
        self,
        allow: Sequence[Rule],
        deny: Sequence[Rule],
        host_addrs: HostAddrs,
        unix: UnixRules | None = None,
        *,
        http: HttpRules | None = None,
    ) -> None:
        allow, deny = tuple(allow), tuple(deny)
        object.__setattr__(self, "_unix", unix)
        object.__setattr__(self, "_http", http)
        hosts = _check_hosts(allow, host_addrs)
        object.__setattr__(self, "_allow", allow)
        object.__setattr__(self, "_deny", deny)
        object.__setattr__(self, "_hosts", MappingProxyType(hosts))
        domains = frozenset(
            host.removeprefix(WILDCARD_PREFIX) for host in hosts if is_wildcard(host)
        )
        object.__setattr__(self, "_domains", domains)
        denied: dict[str, str] = {}
        denied_domains: dict[str, str] = {}
        for rule in deny:
            if rule.host is not None:
                if is_wildcard(rule.host):
                    denied_domains.setdefault(rule.host.removeprefix(WILDCARD_PREFIX), rule.spec)
                else:
                    denied.setdefault(rule.host, rule.spec)
        object.__setattr__(self, "_denied", MappingProxyType(denied))
        object.__setattr__(self, "_denied_domains", MappingProxyType(denied_domains))
        object.__setattr__(self, "_tables", _compile(allow, deny, hosts))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Policy is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Policy is immutable (cannot delete {name!r})")

    def with_host_addresses(self, host: str, addrs: Iterable[str | IPAddress]) -> Policy:
        """A new Policy where ``host``'s addresses are ``addrs``; this one is unchanged."""
        return self.with_hosts({host: addrs})

    def with_hosts(self, host_addrs: HostAddrs) -> Policy:
        """A new Policy where each host key named in ``host_addrs`` gets those addresses.

        Keys not named keep theirs; this Policy is unchanged. A key that no allow
        rule names is a ValueError.
        """
        for host in host_addrs:
            if host not in self._hosts:
                raise ValueError(f"no --net-allow rule names the host {host!r}")
        hosts: dict[str, Iterable[str | IPAddress]] = {**self._hosts, **host_addrs}
        return type(self)(self._allow, self._deny, hosts, self._unix, http=self._http)

    def with_allow(self, rule: Rule) -> Policy:
        """A new Policy with one more allow rule, after the others (a hostname rule's host
        starts with no address, unless another rule names it already); this one is
        unchanged."""
        hosts: dict[str, Iterable[str | IPAddress]] = dict(self._hosts)
        if rule.host is not None:
            hosts.setdefault(rule.host, ())
        return type(self)((*self._allow, rule), self._deny, hosts, self._unix, http=self._http)

    def host_for_name(self, name: str) -> str | None:
        """The host key of the allow rules that covers the DNS name ``name``, or None.

        ``name`` is in DNS presentation format. Case-insensitive (ASCII only, as DNS
        is; other text matches nothing), one trailing dot ignored. A name with an
        escape (``x\\.example.com``: a label that holds a dot) matches nothing, since
        its labels cannot be told apart by the dots. A name a deny rule names
        (:meth:`denied_name`) matches nothing. An exact hostname wins over wildcards,
        and a longer wildcard domain over a shorter one: ``a.b.example.com`` under
        ``*.b.example.com`` and ``*.example.com`` is ``*.b.example.com``.
        """
        key = _plain(name)
        if key is None or self._deny_for(key) is not None:
            return None
        if key in self._hosts:
            return key
        domain = _covering_domain(key, self._domains)
        return None if domain is None else WILDCARD_PREFIX + domain

    def denied_name(self, name: str) -> str | None:
        """The spec of the deny rule that names the DNS name ``name`` (read as
        :meth:`host_for_name` reads it), or None: an exact name, or a wildcard that
        covers it (one or more labels in front of its domain)."""
        key = _plain(name)
        return None if key is None else self._deny_for(key)

    def _deny_for(self, key: str) -> str | None:
        spec = self._denied.get(key)
        if spec is not None:
            return spec
        domain = _covering_domain(key, self._denied_domains)
        return None if domain is None else self._denied_domains[domain]

    def allows_by_address(self, addr: bytes) -> bool:
        """Whether an IP/CIDR or any-address allow rule, of some protocol, covers the
        packed address ``addr`` on some port, and no deny rule of that protocol covers it
        (on any port): what lets the rebinding guard (:mod:`sandlock.rebinding`) pass an
        answer. Hostname rules are not asked. Read as :meth:`decide_peer` reads it."""
        if len(addr) not in (4, 16):
            return False
        seen = canonical(addr)
        value, v4 = int.from_bytes(seen, "big"), len(seen) == 4
        for table in self._tables.values():
            deny, allow = (table.deny4, table.allow4) if v4 else (table.deny6, table.allow6)
            for entry in (*deny, *allow):
                if entry.decision.host is None and value & entry.mask == entry.net:
                    if entry.decision.allowed:
                        return True
                    break
        return False

    @property
    def allow_rules(self) -> tuple[Rule, ...]:
        """The allow rules, in the order given."""
        return self._allow

    @property
    def unix_rules(self) -> UnixRules | None:
        """The ``--unix-allow`` rules (None: none given; only sockets bound inside)."""
        return self._unix

    @property
    def http_rules(self) -> HttpRules | None:
        """The HTTP rules (None: the run has no HTTP relay): the relay reads them here
        for each request (httprelay.py)."""
        return self._http

    @property
    def deny_rules(self) -> tuple[Rule, ...]:
        """The deny rules, in the order given."""
        return self._deny

    @property
    def host_addresses(self) -> Mapping[str, tuple[str, ...]]:
        """Each allow host key and its addresses (read-only).

        Keys are hostnames and wildcard patterns (:func:`sandlock.rules.is_wildcard`);
        only the hostnames belong in a virtual /etc/hosts.
        """
        return self._hosts

    def decide(self, proto: str, addr: bytes, port: int) -> Decision:
        """Decide on a destination: ``addr`` is the packed 4- or 16-byte address, read as
        :func:`sandlock.sockaddr.canonical` says."""
        table = self._tables.get(proto)
        if table is None:
            return _DEFAULT_DENY
        # canonical(), inlined on integers: this runs on every call the gate hands on.
        size = len(addr)
        if size == 4:
            value = int.from_bytes(addr, "big")
            v4 = True
        elif size == 16:
            value = int.from_bytes(addr, "big")
            v4 = value >> 32 == _MAPPED_TAG
            if v4:
                value &= _ALL4
            elif value == 0:
                value = _LOOPBACK6
        else:
            return _DEFAULT_DENY
        if v4:
            if value == 0:
                value = _LOOPBACK4
            deny, allow = table.deny4, table.allow4
        else:
            deny, allow = table.deny6, table.allow6
        for net, mask, ports, decision in deny:
            if value & mask == net and (ports is None or port in ports):
                return decision
        for net, mask, ports, decision in allow:
            if value & mask == net and (ports is None or port in ports):
                return decision
        return _DEFAULT_DENY

    def decide_peer(self, proto: str, addr: bytes) -> Decision:
        """Decide on the peer of a connection the sandbox accepted (``addr`` packed, 4 or
        16 bytes): allowed when a call to that address would be allowed on *some* port.

        Ports are ignored: a deny rule that covers the address refuses the peer whatever
        its ports, then the first allow rule that covers it allows it. Addresses are
        read as :meth:`decide` reads them (:func:`sandlock.sockaddr.canonical`)."""
        table = self._tables.get(proto)
        if table is None or len(addr) not in (4, 16):
            return _DEFAULT_DENY
        seen = canonical(addr)
        value, v4 = int.from_bytes(seen, "big"), len(seen) == 4
        deny, allow = (table.deny4, table.allow4) if v4 else (table.deny6, table.allow6)
        for entry in (*deny, *allow):
            if value & entry.mask == entry.net:
                return entry.decision
        return _DEFAULT_DENY

    def describe(self) -> str:
        """A one-line summary: rule counts per protocol and the resolved hosts."""
        parts = []
        for proto in PROTOS:
            n_allow = sum(rule.proto == proto for rule in self._allow)
            n_deny = sum(rule.proto == proto for rule in self._deny)
            if n_allow:
                parts.append(f"{proto}: {n_allow} allow, {n_deny} deny")
            else:
                parts.append(f"{proto}: default deny")
        n_addrs = sum(len(addrs) for addrs in self._hosts.values())
        parts.append(f"hostnames: {len(self._hosts)}, addresses: {n_addrs}")
        return "; ".join(parts)

    def __repr__(self) -> str:
        return f"<Policy {self.describe()}>"


def stored_address(value: str | IPAddress) -> str:
    """An address of a host key as the policy keeps it: text, an IPv4-mapped address as
    IPv4 (:func:`sandlock.sockaddr.unmapped`, never made loopback), a zone index
    (``%eth0``) dropped. ValueError if ``value`` is not an IP address."""
    if isinstance(value, str):
        value = ipaddress.ip_address(value.partition("%")[0])
    return str(ipaddress.ip_address(unmapped(value.packed)))


def stored_addresses(addrs: Iterable[str | IPAddress]) -> tuple[str, ...]:
    """Each address as :func:`stored_address` gives it, once, in the order given."""
    return tuple({stored_address(value): None for value in addrs})


def _plain(name: str) -> str | None:
    """A DNS name as rules name hosts (lower case, no final dot); None for one no rule
    can name (not ASCII, or with an escape)."""
    if not name.isascii() or "\\" in name:
        return None
    return name.lower().removesuffix(".")


def _covering_domain(name: str, domains: Container[str]) -> str | None:
    """The longest of ``domains`` that ``name`` lies under, by one label or more."""
    rest = name
    while True:
        _label, dot, rest = rest.partition(".")
        if not dot:
            return None
        if rest in domains:
            return rest


def _check_hosts(allow: tuple[Rule, ...], host_addrs: HostAddrs) -> dict[str, tuple[str, ...]]:
    named = {rule.host: None for rule in allow if rule.host is not None}
    missing = [host for host in named if host not in host_addrs]
    extra = [host for host in host_addrs if host not in named]
    if missing or extra:
        raise ValueError(f"host addresses do not match the rules: missing {missing}, extra {extra}")
    return {host: stored_addresses(host_addrs[host]) for host in named}


def _compile(
    allow: tuple[Rule, ...], deny: tuple[Rule, ...], hosts: Mapping[str, tuple[str, ...]]
) -> dict[str, _Table]:
    tables: dict[str, _Table] = {}
    for proto in PROTOS:
        denied = [r for r in deny if r.proto == proto and r.host is None]  # names: no address
        deny4, deny6 = _entries(denied, hosts, allowed=False)
        allow4, allow6 = _entries([r for r in allow if r.proto == proto], hosts, allowed=True)
        tables[proto] = _Table(deny4, deny6, allow4, allow6)
    return tables


def _entries(
    rules: list[Rule], hosts: Mapping[str, tuple[str, ...]], *, allowed: bool
) -> tuple[tuple[_Entry, ...], tuple[_Entry, ...]]:
    """Compile rules into (IPv4 entries, IPv6 entries), keeping the rules' order."""
    v4: list[_Entry] = []
    v6: list[_Entry] = []
    for rule in rules:
        decision = Decision(allowed=allowed, rule=rule.spec, host=None)
        if rule.host is not None:
            host_decision = Decision(allowed=allowed, rule=rule.spec, host=rule.host)
            for text in hosts[rule.host]:
                ip = ipaddress.ip_address(text)
                is_v4 = ip.version == 4
                full = _ALL4 if is_v4 else _ALL6
                (v4 if is_v4 else v6).append(_Entry(int(ip), full, rule.ports, host_decision))
        elif rule.network is None:
            v4.append(_Entry(0, 0, rule.ports, decision))
            v6.append(_Entry(0, 0, rule.ports, decision))
        else:
            net, mask = _network_ints(rule.network)
            target = v4 if rule.network.version == 4 else v6
            target.append(_Entry(net, mask, rule.ports, decision))
    return tuple(v4), tuple(v6)


def _network_ints(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int]:
    """(network, mask) as integers; exactly ``0.0.0.0``/``::`` is read as the loopback
    address a destination written so is (:func:`sandlock.sockaddr.canonical`)."""
    net, mask = int(network.network_address), int(network.netmask)
    full = _ALL4 if network.version == 4 else _ALL6
    if net == 0 and mask == full:
        net = _LOOPBACK4 if network.version == 4 else _LOOPBACK6
    return net, mask
