"""A decision as the supervisor reports it to whoever listens (no trio here)."""

from __future__ import annotations

import errno as _errno
from collections.abc import Callable

from .policy import Decision
from .sockaddr import Dest

__all__ = ["Event", "Listener"]


class Event:
    """One decision, for whoever listens (the audit log, the denial report). A plain class:
    the dataclasses module costs the first decision of a run ~7 ms of imports."""

    __slots__ = ("decision", "dest", "detail", "errno", "pid", "proto", "syscall")

    def __init__(
        self,
        pid: int,
        syscall: str,
        proto: str,
        dest: Dest,
        decision: Decision,
        errno: int,
        detail: str | None = None,
    ) -> None:
        self.pid = pid
        self.syscall = syscall
        self.proto = proto
        self.dest = dest
        self.decision = decision
        self.errno = errno  # what the child got back: 0 on success
        # What the decider saw that the decision does not say, for the denial report's
        # line only (not an audit field): the relay's "ech" (report.py, relay.py).
        self.detail = detail

    def with_result(self, result: int) -> Event:
        """This decision as reported once the call returned ``result``: an allowed call
        that failed reports its errno (EINPROGRESS is a call started, not one failed)."""
        if self.decision.allowed and result < 0 and result != -_errno.EINPROGRESS:
            return Event(
                self.pid, self.syscall, self.proto, self.dest, self.decision, -result, self.detail
            )
        return self

    def _fields(self) -> tuple[object, ...]:
        d = self.decision
        return (self.pid, self.syscall, self.proto, self.dest, d, self.errno, self.detail)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"Event(pid={self.pid!r}, syscall={self.syscall!r}, proto={self.proto!r}, "
            f"dest={self.dest!r}, decision={self.decision!r}, errno={self.errno!r}, "
            f"detail={self.detail!r})"
        )


Listener = Callable[[Event], None]
