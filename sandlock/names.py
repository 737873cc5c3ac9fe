"""Hostname rules at run time: the three modes, and what each sandbox needs for them.

The plan (:mod:`sandlock.plan`) chooses the mode and resolves the names before anything
starts; here is what a run needs for it: the virtual /etc/hosts and /etc/resolv.conf,
the forwarder and its sockets, the port-53 redirect.

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
from collections.abc import Callable, Mapping

from .sockaddr import MAPPED_PREFIX, Dest
from .vfiles import HOSTS, RESOLV_CONF, VirtualFiles, hosts_text, resolv_text

# dnspython and trio cost a launch ~190 ms: they are imported only where a run needs them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from . import dns
    from .ask import Asker
    from .httptls import Interceptor
    from .plan import NameOptions
    from .policy import Policy
    from .upstream import Upstream

__all__ = ["DNS_PORT", "Names", "bind_forwarder"]

DNS_PORT = 53
_BIND_TRIES = 16
_FAMILY = struct.Struct("=H")  # sa_family_t, host order; the rest is network order


def bind_forwarder() -> tuple[socket.socket, socket.socket]:
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
        upstream: Upstream | None,
        sockets: tuple[socket.socket, socket.socket] | None,
        seeds: dict[str, list[tuple[str, int]]],
        shown: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.options = options
        self.http_ports: frozenset[int] | None = None
        """With HTTP rules (plan.py), the ports whose connections the relay interposes,
        fixed for the run; the rules themselves are the policy's (Policy.http_rules), which
        a swap replaces."""
        self.tls: Interceptor | None = None
        """--http-tls: this run's CA (httptls.py), in the bundles of ``vfiles``."""
        self.tls_bundles: list[str] = []
        self.startup_records: list[dns.Record] = []
        """What start-up resolution decided that the audit log must hear (plan.py)."""
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
            # with the answers the rebinding guard left to IP/CIDR rules (plan.py)
            shown = shown or {}
            addrs = {h: (*a, *shown.get(h, ())) for h, a in policy.host_addresses.items()}
            self.vfiles.set(HOSTS, hosts_text(addrs))

    def use_tls(self, authority: Interceptor) -> None:
        """--http-tls: put this run's CA (made by the plan) in the CA bundles the command
        opens (virtual files)."""
        import os

        self.tls = authority
        if self.vfiles is None:
            self.vfiles = VirtualFiles()
        self.tls_bundles = self.tls.inject(self.vfiles.set, os.environ)

    def command_environ(self, env: Mapping[str, str] | None) -> Mapping[str, str] | None:
        """The command's environment (None: ours), with --http-tls: node, which keeps a CA
        list of its own, told of an injected bundle (NODE_EXTRA_CA_CERTS, unless set)."""
        if self.tls is None or not self.tls_bundles:
            return env
        import os

        out = dict(os.environ if env is None else env)
        out.setdefault("NODE_EXTRA_CA_CERTS", self.tls_bundles[0])
        return out

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
        asker: Asker | None = None,
    ) -> None:
        """Serve the forwarder until cancelled (returns at once outside DNS mode).

        ``policy`` gives the sandbox's current policy and ``swap`` replaces it: learned
        and expired addresses reach the policy that way, and so does the hostname rule
        an ``asker``'s Allow.RUN on a lookup adds (``tcp://NAME``, ask.py)."""
        if self._sockets is None or self.upstream is None:
            return
        import trio

        from . import dns
        from .hostbook import HostBook

        book = HostBook(ttl_min=self.options.ttl_min, ttl_max=self.options.ttl_max)
        now = trio.current_time()
        for host, answers in self._seeds.items():  # the start-up lookups follow TTLs too
            book.learn(host, answers, now)

        def on_learn() -> None:
            current = policy()
            known = current.host_addresses
            swap(current.with_hosts({h: a for h, a in book.as_mapping().items() if h in known}))

        def add_host(name: str) -> None:
            from .rules import parse_rule

            current = policy()
            if current.host_for_name(name) is None:
                swap(current.with_allow(parse_rule(name, flag="--ask")))

        fwd = dns.Forwarder(
            policy,
            self.upstream,
            book,
            on_learn=on_learn,
            on_record=on_record,
            guard=not self.options.dns_allow_private,
            asker=asker,
            add_host=add_host,
        )
        udp, tcp = (trio.socket.from_stdlib_socket(s) for s in self._sockets)
        await dns.serve(fwd, udp, tcp)

    def close(self) -> None:
        """Close the virtual files and the forwarder's sockets (idempotent)."""
        if self.vfiles is not None:
            self.vfiles.close()
        _close_sockets(self._sockets)
        self._sockets = None
