"""Learn mode: run with everything allowed, then say which rules the run needed.

The policy is the user's rules plus an allow-everything rule per protocol (the user's
--net-deny rules still apply). Every call that only the allow-everything rules allowed is
recorded; at the end those destinations are folded into the smallest rule list: one
rule per (protocol, target) with its ports joined, the hostname of a hostname rule where
the address came from one, the IP otherwise. AF_UNIX sockets served outside the sandbox
are allowed too (a sandlock daemon's still refused), and each one reached becomes a
``--unix-allow`` line: the socket's real path, or ``@name``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from .events import Event
from .plan import make
from .sockaddr import shown
from .unixrules import EVERYTHING as _UNIX_EVERYTHING

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from .names import Names
    from .plan import Resolver

__all__ = ["Learner"]

_EVERYTHING = ("*", "udp://*", "icmp://*")


class Learner:
    """Collects what a run needed beyond the given rules (an event listener)."""

    def __init__(
        self,
        allow: Sequence[str],
        deny: Sequence[str],
        resolver: Resolver | None = None,
        unix_allow: Sequence[str] = (),
    ) -> None:
        self.given = list(allow)
        self.given_unix = list(unix_allow)
        self.policy = make(
            [*allow, *_EVERYTHING],
            list(deny),
            resolver=resolver,
            unix_allow=[*unix_allow, *_UNIX_EVERYTHING],
            learn=True,
        ).policy
        self._ports: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
        self._unix: dict[str, None] = {}
        self._http: dict[str, None] = {}  # --http-allow lines, in the order first seen
        self._http_ports: tuple[int, ...] = ()

    def http_names(self, ports: Sequence[int]) -> Names | None:
        """With HTTP ports (learn --http-ports), what makes the run pass their connections
        through the HTTP relay with no rule (every request passes, each one recorded);
        None without. Call it before taking ``policy``: the relay reads the (empty) HTTP
        rules there."""
        if not ports:
            return None
        from .httprules import HttpRules
        from .names import Names
        from .plan import NameOptions
        from .policy import Policy

        self._http_ports = tuple(ports)
        p = self.policy
        self.policy = Policy(
            p.allow_rules,
            p.deny_rules,
            p.host_addresses,
            p.unix_rules,
            http=HttpRules([], [], ports),
        )
        names = Names(self.policy, NameOptions(virtual_hosts=False), None, None, {})
        names.http_ports = frozenset(ports)
        return names

    def http_record(self, record: Mapping[str, object]) -> None:
        """Record an HTTP request the relay passed (httprelay.py's record)."""
        from .httprules import normalise_path

        if record.get("syscall") != "http" or record.get("action") != "allow":
            return
        path = normalise_path(str(record.get("path")))
        if path is None:
            return
        host, port = str(record.get("host")), record.get("port")
        shown = f"[{host}]" if ":" in host else host
        if len(self._http_ports) > 1:
            shown += f":{port}"
        self._http[f"{record.get('method')} {shown}{path}"] = None

    def http_rules(self) -> list[str]:
        """An --http-allow line per method, host and path seen (learn --http-ports)."""
        return list(self._http)

    def __call__(self, event: Event) -> None:
        """Record a call that only the allow-everything rules allowed."""
        d = event.decision
        if event.proto == "unix":
            if d.allowed and d.rule in _UNIX_EVERYTHING and b"\0" not in event.dest.addr:
                self._unix[event.dest.addr.decode("utf-8", "surrogateescape")] = None
            return
        if not d.allowed or d.rule not in _EVERYTHING:
            return
        target = d.host or shown(event.dest.addr)
        self._ports[(event.proto, target)].add(event.dest.port)

    def rules(self) -> list[str]:
        """The given allow rules, then one rule per new (protocol, target)."""
        out = list(self.given)
        for proto in ("tcp", "udp", "icmp"):
            for (p, target), ports in sorted(self._ports.items()):
                if p != proto:
                    continue
                scheme = "" if proto == "tcp" else f"{proto}://"
                host = f"[{target}]" if ":" in target else target
                if proto == "icmp":
                    out.append(f"icmp://{host}")
                else:
                    out.append(f"{scheme}{host}:{','.join(str(n) for n in sorted(ports))}")
        return out

    def unix_rules(self) -> list[str]:
        """The given --unix-allow rules, then each outside socket reached (sorted)."""
        return self.given_unix + [t for t in sorted(self._unix) if t not in self.given_unix]

    def render(self) -> str:
        """The rules as flags, one per line, grouped per protocol."""
        rules, unix = self.rules(), self.unix_rules()
        if not rules and not unix:
            return "sandlock learn: the command made no network calls; it needs no --net-allow rule"
        lines = ["sandlock learn: the command needs:"]
        lines += [f"  --net-allow {r}" for r in rules]
        lines += [f"  --unix-allow {r}" for r in unix]
        if self._http_ports:
            ports = ",".join(str(p) for p in self._http_ports)
            lines.append(f"  --http-ports {ports}")
            lines += [f"  --http-allow '{r}'" for r in self.http_rules()]
        return "\n".join(lines)
