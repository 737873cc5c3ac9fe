"""The plan of a run: the user's options in; a pure Policy and the hostname mode out.

Everything sandlock decides before a command starts is decided here, once, in order:

1. **The rules parsed**, each string once (:func:`parse`, with :mod:`sandlock.rules` and
   :mod:`sandlock.unixrules`): allow, then deny, then ``--unix-allow``; the first bad one
   raises :class:`~sandlock.errors.PolicyError`. Everything after reads the parsed rules.
2. **The hostname options** (:class:`NameOptions`), their defaults written here and
   nowhere else: the CLI's parser and its fast reader, the daemon's wire form and the
   DNS forwarder's book take them from here.
3. **The mode chosen** (:mod:`sandlock.names` says what each one is at run time):
   DNS-following when an allow rule names a host, unless ``--no-dns-proxy`` (or a
   ``resolver`` hook) asks for resolving at start; a wildcard rule needs DNS-following.
   Learn mode has neither: nothing runs for names, everything being allowed anyway.
4. **The hostnames resolved**, each exact name once: the plan's only I/O. In the
   DNS-following mode, or whenever ``--dns-upstream`` is given, by that upstream, whose
   TTLs then seed the forwarder's book (``localhost`` there is loopback, asked of
   nobody); by the system resolver (getaddrinfo) otherwise. A name that does not
   resolve is a PolicyError that quotes its rule. A name a deny rule names is not
   looked up at all (deny wins; one line says so: it is not an error, since deny lists
   are often shared between profiles). Answers the rebinding guard keeps from the rule
   (:mod:`sandlock.rebinding`) are left out, one line per name (:attr:`Plan.notes`)
   and one audit record (:attr:`Plan.records`) saying so.

:func:`make` is the way in; its result's :attr:`Plan.policy` is a pure
:class:`~sandlock.policy.Policy`, and :meth:`Plan.start` makes what each run under it
needs (the API runs one plan many times). The daemon, which counts a request's hostnames
before it resolves them in a thread of its own pool, calls the two halves: :func:`parse`,
then :class:`Plan`.

A running sandbox's policy is replaced by a plan too (``Process.set_policy``, ``sandlock
policy``): made with the run's own name options, its HTTP rules those of the swap
(:func:`swap_options`), and ``interposed`` when the run has an HTTP relay.

The daemon client's lean launch path imports this module for the defaults alone, so at
import it loads nothing but errors.py: the rest is imported where a plan is made.
"""

from __future__ import annotations

import sys

from .errors import PolicyError, SandlockError

# typing, collections and socket cost a launch several ms: only where they are used.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from . import upstream as dns_upstream
    from .httprules import HttpRules
    from .httptls import Interceptor
    from .names import Names
    from .policy import Policy
    from .rules import Rule
    from .unixrules import UnixRules

    Resolver = Callable[[str], Sequence[str]]
    """A start-up resolver: a hostname in, its addresses out (OSError if it has none)."""

__all__ = [
    "TTL_MAX",
    "TTL_MIN",
    "NameOptions",
    "Plan",
    "Rules",
    "make",
    "parse",
    "resolve_host",
    "swap_options",
]

TTL_MIN = 30.0
"""Seconds a learned address stays allowed at least (--dns-ttl-min): see dns.py."""
TTL_MAX = 3600.0
"""Seconds a learned address stays allowed at most, whatever its TTL (--dns-ttl-max)."""

_ALLOW_FLAG = "--net-allow"
_DENY_FLAG = "--net-deny"


class NameOptions:
    """How hostname rules behave (the CLI's --[no-]dns-proxy, --dns-upstream, ...).

    ``dns_proxy`` None means: on when an allow rule names a host; ``dns_upstream`` None
    means the first nameserver of the host's /etc/resolv.conf; ``dns_allow_private``
    turns the rebinding guard off (:mod:`sandlock.rebinding`). (A plain class: the
    dataclasses module costs the CLI's launch ~8 ms.)"""

    __slots__ = (
        "dns_allow_private",
        "dns_proxy",
        "dns_upstream",
        "http_allow",
        "http_deny",
        "http_ports",
        "http_tls",
        "http_upstream_ca",
        "http_upstream_ca_pem",
        "ttl_max",
        "ttl_min",
        "verify_names",
        "virtual_hosts",
    )

    def __init__(
        self,
        *,
        virtual_hosts: bool = True,
        dns_proxy: bool | None = None,
        dns_upstream: str | None = None,
        ttl_min: float = TTL_MIN,
        ttl_max: float = TTL_MAX,
        dns_allow_private: bool = False,
        verify_names: bool = False,
        http_allow: Sequence[str] = (),
        http_deny: Sequence[str] = (),
        http_ports: Sequence[int] = (),
        http_tls: bool = False,
        http_upstream_ca: str | None = None,
        http_upstream_ca_pem: str | None = None,
    ) -> None:
        self.dns_allow_private = dns_allow_private
        # HTTP rules (httprules.py; the plan parses them): they ride with the hostname
        # options, which every way in (CLI, API, daemon wire) already carries.
        self.http_allow = tuple(http_allow)
        self.http_deny = tuple(http_deny)
        self.http_ports = tuple(http_ports)  # () is httprules.DEFAULT_PORTS
        self.http_tls = http_tls  # --http-tls (httptls.py)
        self.http_upstream_ca = http_upstream_ca  # --http-upstream-ca FILE
        # ... its text instead, through the daemon (its client reads the file: the daemon
        # opens no path a client names)
        self.http_upstream_ca_pem = http_upstream_ca_pem
        self.verify_names = verify_names  # --verify-names (relay.py)
        self.virtual_hosts = virtual_hosts
        self.dns_proxy = dns_proxy
        self.dns_upstream = dns_upstream
        self.ttl_min = ttl_min
        self.ttl_max = ttl_max

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in self.__slots__
            if getattr(self, name) not in ((), False, None) or not name.startswith("http_")
        )
        return f"NameOptions({fields})"

    def to_wire(self) -> dict[str, object]:
        """A JSON-able form, for the daemon (HTTP rules only when there are some)."""
        http: dict[str, object] = {}
        if self.http_allow or self.http_deny or self.http_ports:
            http = {
                "http_allow": list(self.http_allow),
                "http_deny": list(self.http_deny),
                "http_ports": list(self.http_ports),
            }
        if self.http_tls:
            http["http_tls"] = True
        if self.http_upstream_ca is not None:
            http["http_upstream_ca"] = self.http_upstream_ca
        if self.http_upstream_ca_pem is not None:
            http["http_upstream_ca_pem"] = self.http_upstream_ca_pem
        return {
            "virtual_hosts": self.virtual_hosts,
            "dns_proxy": self.dns_proxy,
            "dns_upstream": self.dns_upstream,
            "ttl_min": self.ttl_min,
            "ttl_max": self.ttl_max,
            "dns_allow_private": self.dns_allow_private,
            "verify_names": self.verify_names,
        } | http

    @classmethod
    def from_wire(cls, data: object) -> NameOptions:
        """The inverse of :meth:`to_wire` (a field left out has its default); a malformed
        value raises PolicyError."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise PolicyError("name options must be an object")
        try:
            options = cls(
                virtual_hosts=bool(data.get("virtual_hosts", True)),
                dns_proxy=_opt_bool(data.get("dns_proxy")),
                dns_upstream=_opt_str(data.get("dns_upstream")),
                ttl_min=float(data.get("ttl_min", TTL_MIN)),
                ttl_max=float(data.get("ttl_max", TTL_MAX)),
                dns_allow_private=bool(data.get("dns_allow_private", False)),
                verify_names=bool(data.get("verify_names", False)),
                http_allow=_strs(data.get("http_allow", ())),
                http_deny=_strs(data.get("http_deny", ())),
                http_ports=_ports(data.get("http_ports", ())),
                http_tls=bool(data.get("http_tls", False)),
                http_upstream_ca=_opt_str(data.get("http_upstream_ca"), "http_upstream_ca"),
                http_upstream_ca_pem=_opt_str(
                    data.get("http_upstream_ca_pem"), "http_upstream_ca_pem"
                ),
            )
        except (TypeError, ValueError) as err:
            raise PolicyError(f"bad name options: {err}") from None
        options.check()
        return options

    def check(self) -> None:
        """Raise PolicyError for a TTL range that makes no sense."""
        if not 0 < self.ttl_min <= self.ttl_max:
            raise PolicyError(
                f"--dns-ttl-min/--dns-ttl-max: need 0 < min <= max, "
                f"got {self.ttl_min:g} and {self.ttl_max:g}",
                flag="--dns-ttl-min",
            )


def _opt_bool(value: object) -> bool | None:
    return None if value is None else bool(value)


def _strs(value: object) -> tuple[str, ...]:
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TypeError("http_allow and http_deny must be lists of strings")


def _ports(value: object) -> tuple[int, ...]:
    if isinstance(value, list | tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536 for v in value
    ):
        return tuple(value)
    raise TypeError("http_ports must be a list of ports (1-65535)")


def _opt_str(value: object, name: str = "dns_upstream") -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"{name} must be a string")


class Rules:
    """The rule strings of a run, each parsed once (:func:`parse`)."""

    __slots__ = ("allow", "deny", "unix")

    def __init__(
        self, allow: tuple[Rule, ...], deny: tuple[Rule, ...], unix: UnixRules | None
    ) -> None:
        self.allow = allow
        self.deny = deny
        self.unix = unix

    @property
    def hostnames(self) -> dict[str, str]:
        """Each exact hostname of the allow rules (what start-up resolution looks up), in
        the order first named, with the spec of the first rule that names it."""
        first: dict[str, str] = {}
        for rule in self.allow:
            if rule.host is not None and not rule.wildcard:
                first.setdefault(rule.host, rule.spec)
        return first

    @property
    def wildcards(self) -> list[str]:
        """The specs of the wildcard allow rules (``*.example.com``)."""
        return [rule.spec for rule in self.allow if rule.wildcard]


def parse(allow: Sequence[str], deny: Sequence[str], unix_allow: Sequence[str] = ()) -> Rules:
    """Parse every rule string once: ``--net-allow``, then ``--net-deny``, then
    ``--unix-allow``; the first bad one raises PolicyError."""
    from .rules import parse_rule

    allow_rules = tuple(parse_rule(spec, flag=_ALLOW_FLAG) for spec in allow)
    deny_rules = tuple(parse_rule(spec, flag=_DENY_FLAG) for spec in deny)
    unix = None
    if unix_allow:
        from .unixrules import UnixRules

        unix = UnixRules.from_specs(unix_allow)
    return Rules(allow_rules, deny_rules, unix)


def make(
    allow: Sequence[str],
    deny: Sequence[str],
    options: NameOptions | None = None,
    *,
    unix_allow: Sequence[str] = (),
    resolver: Resolver | None = None,
    learn: bool = False,
    interposed: bool = False,
) -> Plan:
    """The plan of these rule strings and hostname options (see :class:`Plan`); its
    :attr:`Plan.notes` printed on stderr."""
    rules = parse(allow, deny, unix_allow)
    plan = Plan(rules, options, resolver=resolver, learn=learn, interposed=interposed)
    for note in plan.notes:
        print(note, file=sys.stderr)
    return plan


class Plan:
    """The rules parsed and resolved once, and the mode decided: :meth:`start` makes the
    run-time part for each sandbox run under them.

    ``options`` None are the defaults. ``resolver`` (tests, the API's hook) replaces the
    start-up resolution and, unless ``options.dns_proxy`` says otherwise, means
    resolving at start. ``interrupt`` is called before each lookup, and may raise to
    stop the rest (the daemon's, when the client that asked has gone). ``learn`` is
    learn mode: no hostname machinery at run time, wildcards allowed (and empty).
    ``interposed``: the plan of a swap on a run that has an HTTP relay (it started with
    HTTP rules; :func:`swap_options`): its policy carries HTTP rules even when the swap
    gives none (every request then passes), and --http-upstream-ca, loaded at the start,
    is not read again."""

    def __init__(
        self,
        rules: Rules,
        options: NameOptions | None = None,
        *,
        resolver: Resolver | None = None,
        interrupt: Callable[[], None] | None = None,
        learn: bool = False,
        interposed: bool = False,
    ) -> None:
        if learn:  # nothing at run time: no forwarder, no virtual files
            options = NameOptions(virtual_hosts=False, dns_proxy=False)
        options = options if options is not None else NameOptions()
        options.check()
        self.options = options
        self._authority: Interceptor | None = None
        self.http: HttpRules | None = None
        """The HTTP rules (httprules.py), None without any; their allow rules' hosts are
        reachable over TCP on the HTTP ports (added to the allow rules here). The policy
        carries them (:attr:`Policy.http_rules`): the relay reads them there."""
        if options.http_allow or options.http_deny or interposed:
            rules = self._with_http(rules, options, interposed)
        elif options.http_tls:
            raise PolicyError(
                "--http-tls: no HTTP rule to enforce (give --http-allow or --http-deny)",
                flag="--http-tls",
            )
        self.has_hosts = any(rule.host is not None for rule in rules.allow)
        wildcards = rules.wildcards
        self.wildcards = bool(wildcards)
        default = self.has_hosts and resolver is None
        self.dns_on = options.dns_proxy if options.dns_proxy is not None else default
        if wildcards and not (self.dns_on or learn):
            raise PolicyError(
                f"{_ALLOW_FLAG}: `{wildcards[0]}` is a wildcard rule, which needs the DNS "
                "proxy (its addresses come from the command's lookups): drop --no-dns-proxy",
                flag=_ALLOW_FLAG,
                spec=wildcards[0],
            )
        upstream = None
        if options.dns_upstream:
            from .upstream import parse_upstream

            upstream = parse_upstream(options.dns_upstream)
        if self.dns_on and upstream is None:
            upstream = _system_upstream()
        self.upstream = upstream
        self.seeds: dict[str, list[tuple[str, int]]] = {}
        lookup = resolver if resolver is not None else _resolver(upstream, self.seeds)
        if interrupt is not None:
            lookup = _interruptible(lookup, interrupt)
        from .policy import Policy

        named = {r.host: () for r in rules.allow if r.host is not None}
        unresolved = Policy(rules.allow, rules.deny, named, rules.unix, http=self.http)
        self.notes: list[str] = []
        """One line each for what start-up resolution left out (denied names, answers
        the rebinding guard dropped); :func:`make` prints them, the daemon sends them to
        its client."""
        self.records: list[dict[str, object]] = []
        """Audit records (dns.py's form) of the answers the rebinding guard dropped."""
        self.shown: dict[str, tuple[str, ...]] = {}
        """Guarded answers an IP/CIDR rule allows: still in the virtual /etc/hosts."""
        found: dict[str, tuple[str, ...]] = {}
        for host, spec in rules.hostnames.items():
            denial = unresolved.denied_name(host)
            if denial is not None:
                self.notes.append(
                    f"sandlock: `{host}` in {_ALLOW_FLAG} `{spec}` is denied by "
                    f"{_DENY_FLAG} `{denial}`: deny wins, the name is not resolved"
                )
                continue
            found[host] = self._guard(unresolved, host, spec, _resolve(lookup, host, spec))
        self.policy = unresolved.with_hosts(found) if found else unresolved

    def _with_http(self, rules: Rules, options: NameOptions, interposed: bool) -> Rules:
        import os

        from .httprules import ALLOW_FLAG, HttpRules
        from .rules import parse_rule

        http = HttpRules.parse(
            options.http_allow, options.http_deny, options.http_ports, tls=options.http_tls
        )
        ca = options.http_upstream_ca
        if ca is not None and not interposed and not os.path.isfile(ca):
            raise PolicyError(
                f"--http-upstream-ca: no such file: {ca}",
                flag="--http-upstream-ca",
            )
        self.http = http
        implied = tuple(
            parse_rule(net, flag=ALLOW_FLAG)._replace(spec=rule.spec)
            for rule, net in zip(http.allow, http.implied_net_rules(), strict=True)
        )
        return Rules(rules.allow + implied, rules.deny, rules.unix)

    def _guard(
        self, policy: Policy, host: str, spec: str, addrs: tuple[str, ...]
    ) -> tuple[str, ...]:
        """The addresses of ``host`` its rule allows (:mod:`sandlock.rebinding`); the
        rest noted, and kept out of the forwarder's seeds too."""
        from .rebinding import RULE, sort_answers

        sorted_ = sort_answers(policy, host, addrs, on=not self.options.dns_allow_private)
        if sorted_.by_address:
            self.shown[host] = sorted_.by_address
        if self.seeds.get(host):
            self.seeds[host] = [(a, ttl) for a, ttl in self.seeds[host] if a in sorted_.allowed]
        if sorted_.dropped:
            dropped = ", ".join(sorted_.dropped)
            self.notes.append(
                f"sandlock: rebinding guard: `{host}` answered {dropped} (local or private "
                f"addresses), not allowed through `{spec}` (allow them with an IP rule, or "
                "--dns-allow-private)"
            )
            self.records.append(
                {"syscall": "dns", "proto": None, "host": host, "qtype": None}
                | {"action": "deny", "rule": RULE, "answers": list(sorted_.dropped), "rcode": None}
            )
        return sorted_.allowed

    @property
    def trap_open(self) -> bool:
        """Whether runs under this plan have virtual files (the filter must trap opens)."""
        return (
            self.dns_on
            or (self.has_hosts and self.options.virtual_hosts)
            or (self.http is not None and self.options.http_tls)  # (the CA bundles)
        )

    def start(self, policy: Policy) -> Names | None:
        """What one run under ``policy`` needs: virtual files, a bound forwarder; None if
        nothing. Raises SandlockError if the forwarder must run and cannot bind; else,
        without it, the run keeps the addresses resolved at start (with a warning)."""
        from .names import Names, bind_forwarder

        sockets = None
        if self.dns_on:
            try:
                sockets = bind_forwarder()
            except OSError as err:
                if self.wildcards or self.options.dns_proxy:
                    raise SandlockError(
                        f"cannot start the DNS proxy on port 53 of a loopback address: "
                        f"{err.strerror} (it needs root or CAP_NET_BIND_SERVICE)"
                    ) from None
                print(
                    f"sandlock: DNS proxy unavailable ({err.strerror}; port 53 needs root or "
                    "CAP_NET_BIND_SERVICE): hostnames are resolved once at start",
                    file=sys.stderr,
                )
        if not self.has_hosts and sockets is None and self.http is None:
            return None
        options = self.options
        if not self.has_hosts and sockets is None:  # (HTTP rules alone: no virtual file, so opens
            # are not trapped)
            options = NameOptions.from_wire(options.to_wire() | {"virtual_hosts": False})
        names = Names(policy, options, self.upstream, sockets, self.seeds, self.shown)
        names.startup_records = list(self.records)
        names.http_ports = self.http.ports if self.http is not None else None
        authority = self.authority()
        if authority is not None:
            names.use_tls(authority)
        return names

    def authority(self) -> Interceptor | None:
        """--http-tls: the run's CA (httptls.py), made once, on first use (the daemon
        gives it to its client before the command starts, for --http-ca-out); None
        without TLS interception. PolicyError if the upstream CA cannot be loaded."""
        if self.http is None or not self.options.http_tls:
            return None
        if self._authority is None:
            from .httptls import Interceptor

            ca, pem = self.options.http_upstream_ca, self.options.http_upstream_ca_pem
            try:
                self._authority = Interceptor(ca, pem)
            except (OSError, ValueError) as err:  # (ssl.SSLError is an OSError)
                what = ca if ca is not None else "the certificates sent"
                raise PolicyError(
                    f"--http-upstream-ca: cannot load {what}: {err}", flag="--http-upstream-ca"
                ) from None
        return self._authority


def swap_options(
    options: NameOptions,
    current: Policy,
    http_allow: Sequence[str] | None,
    http_deny: Sequence[str] | None,
) -> NameOptions:
    """The name options of a new policy for a running sandbox: the run's own ``options``
    (its hostname mode, HTTP ports and TLS, all fixed for the run) with the HTTP rules of
    the swap. Either list given replaces both (an omitted one is empty); neither keeps
    those of ``current``, the policy deciding now (an earlier swap's, if any).

    PolicyError if HTTP rules are given to a run that started without any: nothing
    interposes its HTTP ports (no relay, no CA in its bundles), so none could hold. Make
    the swap's plan with ``interposed=current.http_rules is not None``."""
    http = current.http_rules
    if http_allow is None and http_deny is None:
        if http is None:
            return options
        allow = [rule.spec for rule in http.allow]
        deny = [rule.spec for rule in http.deny]
    else:
        if isinstance(http_allow, str) or isinstance(http_deny, str):
            raise PolicyError("http_allow and http_deny must be lists of rules, not a string")
        allow, deny = list(http_allow or ()), list(http_deny or ())
        if http is None and (allow or deny):
            from .httprules import ALLOW_FLAG, DENY_FLAG

            flag = ALLOW_FLAG if allow else DENY_FLAG
            raise PolicyError(
                f"{flag}: this sandbox started without HTTP rules, so it cannot be given any "
                "while it runs (no relay interposes its HTTP ports): start it with some",
                flag=flag,
            )
    return NameOptions.from_wire(options.to_wire() | {"http_allow": allow, "http_deny": deny})


def resolve_host(host: str) -> list[str]:
    """The system resolver: every A and AAAA address of ``host``, deduplicated."""
    import socket

    found: dict[str, None] = {}
    for family, _type, _proto, _canon, sockaddr in socket.getaddrinfo(host, None):
        if family in (socket.AF_INET, socket.AF_INET6):
            found[str(sockaddr[0])] = None
    return list(found)


def _resolve(lookup: Resolver, host: str, spec: str) -> tuple[str, ...]:
    """``host``'s addresses as the policy keeps them; PolicyError quoting ``spec`` if it
    has none (or the lookup fails)."""
    from .policy import stored_addresses

    def fail(reason: str) -> PolicyError:
        message = f"{_ALLOW_FLAG}: cannot resolve `{host}` in `{spec}`: {reason}"
        return PolicyError(message, flag=_ALLOW_FLAG, spec=spec)

    try:
        found = lookup(host)
    except (OSError, UnicodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise fail(reason) from err
    try:
        addrs = stored_addresses(found)
    except ValueError as err:
        raise fail(str(err)) from err
    if not addrs:
        raise fail("no addresses")
    return addrs


def _resolver(
    upstream: dns_upstream.Upstream | None, seeds: dict[str, list[tuple[str, int]]]
) -> Resolver:
    """Start-up resolution: through ``upstream`` (recording TTLs in ``seeds``) when there
    is one, else the system resolver. ``localhost`` (RFC 6761) is always loopback, and
    never asked of an upstream."""
    if upstream is None:
        return resolve_host
    from .upstream import DnsLookupError, lookup

    where = upstream

    def resolve(name: str) -> list[str]:
        if name == "localhost" or name.endswith(".localhost"):
            return local_addresses(name)
        try:
            found = lookup(where, name)
        except DnsLookupError as err:
            import errno

            raise OSError(errno.EHOSTUNREACH, str(err)) from None
        seeds[name] = found
        return [address for address, _ttl in found]

    return resolve


SYSTEM_HOSTS = "/etc/hosts"
_RFC6761 = ["127.0.0.1", "::1"]


def local_addresses(name: str, hosts: str | None = None) -> list[str]:
    """``localhost`` or a name under ``.localhost`` (RFC 6761: loopback, never asked of
    an upstream): the loopback addresses the system's hosts file gives it, in its order,
    as the system resolver would (so the command sees what it sees without sandlock: a
    ``::1`` the system does not list would send clients there first), else 127.0.0.1
    and ::1."""
    import ipaddress

    found: dict[str, None] = {}
    try:
        with open(hosts or SYSTEM_HOSTS, encoding="utf-8", errors="replace") as f:
            for line in f:
                words = line.split("#", 1)[0].split()
                if len(words) < 2 or name not in (w.lower().rstrip(".") for w in words[1:]):
                    continue
                try:
                    address = ipaddress.ip_address(words[0].split("%", 1)[0])
                except ValueError:
                    continue
                if address.is_loopback:
                    found[str(address)] = None
    except OSError:
        pass
    return list(found) or list(_RFC6761)


def _interruptible(lookup: Resolver, interrupt: Callable[[], None]) -> Resolver:
    def resolve(name: str) -> Sequence[str]:
        interrupt()
        return lookup(name)

    return resolve


def _system_upstream() -> dns_upstream.Upstream:
    from .upstream import system_upstreams

    upstreams = system_upstreams()
    if not upstreams:
        raise PolicyError(
            "--dns-upstream: /etc/resolv.conf names no nameserver; give one "
            "(--dns-upstream IP[:PORT])",
            flag="--dns-upstream",
        )
    return upstreams[0]
