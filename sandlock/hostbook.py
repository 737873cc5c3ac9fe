"""The book of learned addresses: what the DNS forwarder (dns.py) learned for each
hostname rule, each address until its TTL (clamped to --dns-ttl-min/--dns-ttl-max) runs
out. Pure: the caller passes the clock."""

from __future__ import annotations

from collections.abc import Iterable

from .plan import TTL_MAX, TTL_MIN
from .policy import stored_address

__all__ = ["HostBook"]


class HostBook:
    """Addresses learned per host key, each with an expiry time.

    Times are whatever clock the caller passes as ``now`` (the forwarder uses
    ``trio.current_time()``). An address is held until :meth:`expire` drops it;
    a TTL is clamped to ``[ttl_min, ttl_max]`` seconds.
    """

    def __init__(self, *, ttl_min: float = TTL_MIN, ttl_max: float = TTL_MAX) -> None:
        if not 0 < ttl_min <= ttl_max:
            raise ValueError(f"need 0 < ttl_min <= ttl_max, got {ttl_min} and {ttl_max}")
        self.ttl_min = ttl_min
        self.ttl_max = ttl_max
        self._expiry: dict[str, dict[str, float]] = {}

    def learn(self, host: str, answers: Iterable[tuple[str, float]], now: float) -> bool:
        """Hold each (address, ttl) under ``host``; True if an address was not held yet.

        An address held already keeps the later of its two expiry times.
        """
        held = self._expiry.setdefault(host, {})
        changed = False
        for address, ttl in answers:
            until = now + min(max(ttl, self.ttl_min), self.ttl_max)
            key = stored_address(address)
            if key not in held:
                changed = True
            held[key] = max(until, held.get(key, until))
        return changed

    def addresses(self, host: str) -> tuple[str, ...]:
        """The addresses held under ``host``, in the order first learned."""
        return tuple(self._expiry.get(host, ()))

    def expire(self, now: float) -> bool:
        """Drop every address whose time is up (expiry <= now); True if any was dropped."""
        changed = False
        for held in self._expiry.values():
            for address in [a for a, until in held.items() if until <= now]:
                del held[address]
                changed = True
        return changed

    def next_expiry(self) -> float | None:
        """The earliest expiry time held, or None when nothing is held."""
        return min(
            (until for held in self._expiry.values() for until in held.values()), default=None
        )

    def as_mapping(self) -> dict[str, tuple[str, ...]]:
        """Every host key ever learned and its held addresses, for ``Policy.with_hosts``."""
        return {host: tuple(held) for host, held in self._expiry.items()}
