"""The daemon's rules requests made into Plans: parsed at once, hostnames resolved in a
pool of the daemon's own.

Every request is parsed on the event loop (plan.parse: no thread, no wait), and its
hostnames counted from the parsed rules. A request naming no hostname becomes its Plan
there too. One that names hosts is resolved in a thread, at most ``per_uid`` at once per
uid and ``total`` at once in all: a request beyond is refused, never queued, so slow
lookups cannot starve other clients. A getaddrinfo in progress cannot be stopped; when
the client that asked leaves, its thread is abandoned and stops before its next lookup
(plan.Plan's ``interrupt``), and its slot is released only once it has really ended.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import trio

from ._request import MAX_HOSTS, RequestError
from .errors import PolicyError
from .plan import NameOptions, Plan, parse

__all__ = ["Resolvers"]


class _Abandoned(Exception):
    """Raised in a resolver thread whose client has gone: stop before the next lookup."""


class _Slots:
    """Two CapacityLimiters taken together, without waiting (trio.to_thread's limiter
    protocol): a resolution beyond either is refused. trio releases them only when the
    thread has really finished, abandoned or not."""

    def __init__(self, *limiters: trio.CapacityLimiter) -> None:
        self.limiters = limiters

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        taken: list[trio.CapacityLimiter] = []
        try:
            for limiter in self.limiters:
                limiter.acquire_on_behalf_of_nowait(borrower)
                taken.append(limiter)
        except trio.WouldBlock:
            for limiter in taken:
                limiter.release_on_behalf_of(borrower)
            raise RequestError(
                "too many hostname resolutions in progress; try again shortly"
            ) from None

    def release_on_behalf_of(self, borrower: object) -> None:
        for limiter in self.limiters:
            limiter.release_on_behalf_of(borrower)


class Resolvers:
    """The daemon's bounded resolver pool (see the module docstring)."""

    def __init__(self, total: int, per_uid: int) -> None:
        self._total = trio.CapacityLimiter(total)
        self.per_uid = per_uid
        self._per_uid: dict[int, trio.CapacityLimiter] = {}

    async def plan(
        self,
        req: dict[str, Any],
        uid: int,
        *,
        options: NameOptions | None = None,
        interposed: bool = False,
    ) -> Plan:
        """The rules (and hostname options) a request describes (see plan.Plan): parsed
        here, resolved in a thread of the daemon's own bounded pool. ``options`` and
        ``interposed``: a policy swap's (plan.swap_options), instead of the request's
        ``names``."""
        try:
            rules = parse(req.get("allow", []), req.get("deny", []), req.get("unix_allow", []))
            hosts = len(rules.hostnames)
            if hosts > MAX_HOSTS:
                raise RequestError(
                    f"--net-allow: {hosts} hostnames in one request (the daemon's limit is "
                    f"{MAX_HOSTS})",
                    policy_error=True,
                )
            if options is None:
                options = NameOptions.from_wire(req.get("names"))
            if not hosts:
                return Plan(rules, options, interposed=interposed)  # no lookup: no thread
            gone = threading.Event()

            def interrupt() -> None:
                if gone.is_set():
                    raise _Abandoned

            limiter = self._per_uid.setdefault(uid, trio.CapacityLimiter(self.per_uid))
            try:
                return await trio.to_thread.run_sync(
                    functools.partial(
                        Plan, rules, options, interrupt=interrupt, interposed=interposed
                    ),
                    abandon_on_cancel=True,
                    limiter=_Slots(self._total, limiter),  # type: ignore[arg-type]
                )
            finally:
                gone.set()
        except PolicyError as err:
            raise RequestError(str(err), policy_error=True) from None
