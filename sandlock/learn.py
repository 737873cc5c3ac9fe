"""Learn mode: run with everything allowed, then say which rules the run needed.

The policy is the user's rules plus an allow-everything rule per protocol (the user's
--net-deny rules still apply). Every call that only the allow-everything rules allowed is
recorded; at the end those destinations are folded into the smallest rule list: one
rule per (protocol, target) with its ports joined, the hostname of a hostname rule where
the address came from one, the IP otherwise.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from .audit import seen_address
from .events import Event
from .policy import Policy, Resolver

__all__ = ["Learner"]

_EVERYTHING = ("*", "udp://*", "icmp://*")


class Learner:
    """Collects what a run needed beyond the given rules (an event listener)."""

    def __init__(
        self, allow: Sequence[str], deny: Sequence[str], resolver: Resolver | None = None
    ) -> None:
        self.given = list(allow)
        self.policy = Policy.from_specs([*allow, *_EVERYTHING], list(deny), resolver=resolver)
        self._ports: defaultdict[tuple[str, str], set[int]] = defaultdict(set)

    def __call__(self, event: Event) -> None:
        """Record a call that only the allow-everything rules allowed."""
        d = event.decision
        if not d.allowed or d.rule not in _EVERYTHING:
            return
        target = d.host or seen_address(event.dest.addr)
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

    def render(self) -> str:
        """The rules as flags, one per line, grouped per protocol."""
        rules = self.rules()
        if not rules:
            return "sandlock learn: the command made no network calls; it needs no --net-allow rule"
        lines = ["sandlock learn: the command needs:"]
        lines += [f"  --net-allow {r}" for r in rules]
        return "\n".join(lines)
