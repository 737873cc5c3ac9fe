"""Hostname rules at run time: the three modes, and what each sandbox needs for them.

* **Resolve at start** (``--no-dns-proxy``, the Rust original's way): each hostname of
  an allow rule is resolved once, before the command runs; the command sees a virtual
  /etc/hosts naming exactly those addresses, so its own lookups agree with the policy.
* **DNS-following** (``--dns-proxy``, on by default whenever a rule names a host): the
  supervisor runs a forwarder (:mod:`sandlock.dns`) on a loopback address of its own,
  port 53. The command's /etc/resolv.conf points at it, and every TCP or UDP call the
  command makes to port 53 of any address is sent there instead, on its behalf. Names
  no rule covers get NXDOMAIN without leaving the machine; answers for covered names
  become allowed addresses for their TTL. The virtual /etc/hosts then has only
  localhost: names must go through the forwarder to stay fresh.
* **Wildcards** (``*.example.com``) need the DNS-following mode: there is nothing to
  resolve at start, addresses come only from the command's lookups.

Why the forwarder must listen on port 53: glibc (and most stub resolvers) accept a reply
only from the address *and port* they asked, and resolv.conf cannot name a port. So the
forwarder binds ``127.53.X.Y:53`` (a random address, to stay clear of local resolvers
and of other sandboxes), which needs root or CAP_NET_BIND_SERVICE. Without it the mode
falls back to resolving at start, with a warning; with a wildcard rule, or with
``--dns-proxy`` given explicitly, that is an error instead.

Every lookup the supervisor makes goes to ``--dns-upstream`` when it is given (the
start-up resolution included); without it, the forwarder asks the first nameserver of
the host's /etc/resolv.conf, and start-up resolution in DNS mode does too.
"""

from __future__ import annotations

import errno
import random
import socket
import struct
import sys
from collections.abc import Callable, Sequence

from .errors import PolicyError, SandlockError
from .policy import Policy
from .rules import parse_rule
from .sockaddr import MAPPED_PREFIX, Dest
from .vfiles import HOSTS, RESOLV_CONF, VirtualFiles, hosts_text, resolv_text

# dnspython and trio cost a launch ~190 ms: they are imported only where a run needs them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from . import dns

__all__ = ["NameOptions", "Names", "Plan"]

DNS_PORT = 53
_BIND_TRIES = 16
_FAMILY = struct.Struct("=H")  # sa_family_t, host order; the rest is network order


class NameOptions:
    """How hostname rules behave (the CLI's --[no-]dns-proxy, --dns-upstream, ...).

    ``dns_proxy`` None means: on when an allow rule names a host; ``dns_upstream`` None
    means the first nameserver of the host's /etc/resolv.conf. (A plain class: the
    dataclasses module costs the CLI's launch ~8 ms.)"""

    __slots__ = ("dns_proxy", "dns_upstream", "ttl_max", "ttl_min", "virtual_hosts")

    def __init__(
        self,
        *,
        virtual_hosts: bool = True,
        dns_proxy: bool | None = None,
        dns_upstream: str | None = None,
        ttl_min: float = 30.0,
        ttl_max: float = 3600.0,
    ) -> None:
        self.virtual_hosts = virtual_hosts
        self.dns_proxy = dns_proxy
        self.dns_upstream = dns_upstream
        self.ttl_min = ttl_min
        self.ttl_max = ttl_max

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"NameOptions({fields})"

    def to_wire(self) -> dict[str, object]:
        """A JSON-able form, for the daemon."""
        return {
            "virtual_hosts": self.virtual_hosts,
            "dns_proxy": self.dns_proxy,
            "dns_upstream": self.dns_upstream,
            "ttl_min": self.ttl_min,
            "ttl_max": self.ttl_max,
        }

    @classmethod
    def from_wire(cls, data: object) -> NameOptions:
        """The inverse of :meth:`to_wire`; a malformed value raises PolicyError."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise PolicyError("name options must be an object")
        try:
            options = cls(
                virtual_hosts=bool(data.get("virtual_hosts", True)),
                dns_proxy=_opt_bool(data.get("dns_proxy")),
                dns_upstream=_opt_str(data.get("dns_upstream")),
                ttl_min=float(data.get("ttl_min", 30.0)),
                ttl_max=float(data.get("ttl_max", 3600.0)),
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


def _opt_str(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError("dns_upstream must be a string")


class Plan:
    """The rules parsed and resolved once, and the mode decided: :meth:`start` makes the
    run-time part for each sandbox run under them (the API runs a Sandbox many times).

    ``resolver`` (tests, the API's hook) replaces the start-up resolution and, unless
    ``options.dns_proxy`` says otherwise, means resolving at start. ``interrupt`` is
    called before each lookup, and may raise to stop the rest (the daemon's, when the
    client that asked has gone)."""

    def __init__(
        self,
        allow: Sequence[str],
        deny: Sequence[str],
        options: NameOptions | None = None,
        *,
        resolver: Callable[[str], Sequence[str]] | None = None,
        unix_allow: Sequence[str] = (),
        interrupt: Callable[[], None] | None = None,
    ) -> None:
        options = options if options is not None else NameOptions()
        options.check()
        rules = [parse_rule(spec, flag="--net-allow") for spec in allow]
        self.options = options
        self.has_hosts = any(rule.host is not None for rule in rules)
        self.wildcards = [rule.spec for rule in rules if rule.wildcard]
        default = self.has_hosts and resolver is None
        self.dns_on = options.dns_proxy if options.dns_proxy is not None else default
        if self.wildcards and not self.dns_on:
            raise PolicyError(
                f"--net-allow: `{self.wildcards[0]}` is a wildcard rule, which needs the DNS "
                "proxy (its addresses come from the command's lookups): drop --no-dns-proxy",
                flag="--net-allow",
                spec=self.wildcards[0],
            )
        upstream = None
        if options.dns_upstream:
            from .dns import parse_upstream

            upstream = parse_upstream(options.dns_upstream)
        if self.dns_on and upstream is None:
            upstream = _system_upstream()
        self.upstream = upstream
        self.seeds: dict[str, list[tuple[str, int]]] = {}
        lookup = resolver if resolver is not None else _resolver(upstream, self.seeds)
        if interrupt is not None:
            lookup = _interruptible(lookup, interrupt)
        self.policy = Policy.from_specs(allow, deny, resolver=lookup, unix_allow=unix_allow)

    @property
    def trap_open(self) -> bool:
        """Whether runs under this plan have virtual files (the filter must trap opens)."""
        return self.dns_on or (self.has_hosts and self.options.virtual_hosts)

    def start(self, policy: Policy) -> Names | None:
        """What one run under ``policy`` needs: virtual files, a bound forwarder; None if
        nothing. Raises SandlockError if the forwarder must run and cannot bind."""
        sockets = None
        if self.dns_on:
            try:
                sockets = _bind_forwarder()
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
        if not self.has_hosts and sockets is None:
            return None
        return Names(policy, self.options, self.upstream, sockets, self.seeds)


def _resolver(
    upstream: dns.Upstream | None, seeds: dict[str, list[tuple[str, int]]]
) -> Callable[[str], list[str]] | None:
    """Start-up resolution: through ``upstream`` (recording TTLs in ``seeds``) when there
    is one, else None (the system resolver). ``localhost`` (RFC 6761) is always loopback,
    and never asked of anyone."""
    if upstream is None:
        return None
    from . import dns

    where = upstream

    def resolve(name: str) -> list[str]:
        if name == "localhost" or name.endswith(".localhost"):
            return ["127.0.0.1", "::1"]
        try:
            found = dns.lookup(where, name)
        except dns.DnsLookupError as err:
            raise OSError(errno.EHOSTUNREACH, str(err)) from None
        seeds[name] = found
        return [address for address, _ttl in found]

    return resolve


def _interruptible(
    lookup: Callable[[str], Sequence[str]] | None, interrupt: Callable[[], None]
) -> Callable[[str], Sequence[str]]:
    from .policy import resolve_host

    inner = lookup if lookup is not None else resolve_host

    def resolve(name: str) -> Sequence[str]:
        interrupt()
        return inner(name)

    return resolve


def _system_upstream() -> dns.Upstream:
    from .dns import system_upstreams

    upstreams = system_upstreams()
    if not upstreams:
        raise PolicyError(
            "--dns-upstream: /etc/resolv.conf names no nameserver; give one "
            "(--dns-upstream IP[:PORT])",
            flag="--dns-upstream",
        )
    return upstreams[0]


def _bind_forwarder() -> tuple[socket.socket, socket.socket]:
    """UDP and TCP sockets on a random 127.53.X.Y, port 53 (see the module docstring)."""
    last: OSError | None = None
    for _ in range(_BIND_TRIES):
        address = f"127.53.{random.randrange(256)}.{random.randrange(1, 255)}"
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            udp.bind((address, DNS_PORT))
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((address, DNS_PORT))
            tcp.listen(64)
            return udp, tcp
        except OSError as err:
            udp.close()
            tcp.close()
            if err.errno != errno.EADDRINUSE:
                raise
            last = err
    assert last is not None
    raise last


def _close_sockets(sockets: tuple[socket.socket, socket.socket] | None) -> None:
    if sockets is not None:
        for sock in sockets:
            sock.close()


class Names:
    """One sandbox's hostname machinery: its virtual files and, in DNS mode, its forwarder.

    ``attach`` wires it into a Supervisor before serving; ``run`` serves the forwarder
    (a task of the supervisor's nursery) until cancelled; ``close`` releases it all."""

    def __init__(
        self,
        policy: Policy,
        options: NameOptions,
        upstream: dns.Upstream | None,
        sockets: tuple[socket.socket, socket.socket] | None,
        seeds: dict[str, list[tuple[str, int]]],
    ) -> None:
        self.options = options
        self.upstream = upstream
        self._sockets = sockets
        self._seeds = seeds
        self.address = self._sockets[0].getsockname()[0] if self._sockets else None
        self.vfiles: VirtualFiles | None = None
        if self.address is not None:
            self.vfiles = VirtualFiles()
            self.vfiles.set(RESOLV_CONF, resolv_text(self.address))
            if options.virtual_hosts:  # localhost only: the rest must stay fresh
                addrs = policy.host_addresses
                local = {h: a for h, a in addrs.items() if h.lower() == "localhost"}
                self.vfiles.set(HOSTS, hosts_text(local))
        elif options.virtual_hosts:
            self.vfiles = VirtualFiles()
            self.vfiles.set(HOSTS, hosts_text(policy.host_addresses))

    @property
    def dns_mode(self) -> bool:
        """Whether the forwarder serves the command's lookups."""
        return self.address is not None

    @property
    def trap_open(self) -> bool:
        """Whether the filter must trap opens (some file is virtual)."""
        return self.vfiles is not None

    def redirect(self, domain: int, dest: Dest) -> bytes | None:
        """In DNS mode, the name to use instead of a port-53 destination; else None."""
        if self.address is None or dest.port != DNS_PORT:
            return None
        ip = socket.inet_aton(self.address)
        port = DNS_PORT.to_bytes(2, "big")
        if domain == socket.AF_INET6:  # flowinfo 0, the v4-mapped address, scope id 0
            return _FAMILY.pack(socket.AF_INET6) + port + bytes(4) + MAPPED_PREFIX + ip + bytes(4)
        return _FAMILY.pack(socket.AF_INET) + port + ip + bytes(8)

    async def run(
        self,
        policy: Callable[[], Policy],
        swap: Callable[[Policy], None],
        on_record: Callable[[dns.Record], None] | None,
    ) -> None:
        """Serve the forwarder until cancelled (returns at once outside DNS mode).

        ``policy`` gives the sandbox's current policy and ``swap`` replaces it: learned
        and expired addresses reach the policy that way."""
        if self._sockets is None or self.upstream is None:
            return
        import trio

        from . import dns

        book = dns.HostBook(ttl_min=self.options.ttl_min, ttl_max=self.options.ttl_max)
        now = trio.current_time()
        for host, answers in self._seeds.items():  # the start-up lookups follow TTLs too
            book.learn(host, answers, now)

        def on_learn() -> None:
            current = policy()
            known = current.host_addresses
            swap(current.with_hosts({h: a for h, a in book.as_mapping().items() if h in known}))

        fwd = dns.Forwarder(policy, self.upstream, book, on_learn=on_learn, on_record=on_record)
        udp, tcp = (trio.socket.from_stdlib_socket(s) for s in self._sockets)
        await dns.serve(fwd, udp, tcp)

    def close(self) -> None:
        """Close the virtual files and the forwarder's sockets (idempotent)."""
        if self.vfiles is not None:
            self.vfiles.close()
        _close_sockets(self._sockets)
        self._sockets = None
