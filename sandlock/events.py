"""A decision as the supervisor reports it to whoever listens (no trio here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .policy import Decision
from .sockaddr import Dest

__all__ = ["Event", "Listener"]


@dataclass(frozen=True, slots=True)
class Event:
    """One decision, for whoever listens (the audit log, the denial report)."""

    pid: int
    syscall: str
    proto: str
    dest: Dest
    decision: Decision
    errno: int  # what the child got back: 0 on success


Listener = Callable[[Event], None]
