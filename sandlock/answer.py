"""What a handler returns: how its notification is to be answered, and what it decided.

A handler (onbehalf.py, sends.py, inbound.py, vfiles.py) decides and performs a call,
but never answers the kernel and never tells a listener: it returns one of these, and
the supervisor (supervisor.py) alone makes the answer (one ioctl) and reports what was
decided (``on_event``). The kinds of answer:

* an ``int``: the call's return value (>= 0) or a -errno. The common case, and a plain
  int: no object is made for it;
* ``Reply.CONTINUE``: the kernel performs the call itself, as usual (an open of a file
  that is not virtual, a bind that is not AF_UNIX);
* ``Reply.PARKED``: a blocking connect in progress, handed to the gate's connecting
  thread (csrc/connecting.h), which answers when the handshake ends: nothing to send;
* ``Install``: our descriptor installed in the child as the call's result (an open of a
  virtual file, an accepted connection). The supervisor uses SECCOMP_IOCTL_NOTIF_ADDFD
  with SECCOMP_ADDFD_FLAG_SEND, which installs the descriptor and answers with its
  number in one step: no signal can come in between, and no number is ever chosen by
  us (vfiles.py has the whole argument);
* ``Pending``: the call must wait (a TCP handshake, a full send buffer, a blocking
  accept). The supervisor runs ``finish`` as a task of its nursery and answers with
  what it returns, which may be another Pending: the call waits on, and the decisions
  it carries are reported in the meantime (a flood of refused peers at an accept);
* ``Decided``: any of the above with the decisions made on the way to it, which the
  supervisor reports before it answers. A decision whose outcome is known only later
  (a blocking connect's) travels with the answer that ends the wait.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Generic, TypeAlias, TypeVar

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .events import Event

__all__ = ["Answer", "Decided", "Install", "Pending", "Ready", "Reply"]

T_co = TypeVar("T_co", covariant=True)


class Reply(enum.Enum):
    """An answer that is not a return value."""

    CONTINUE = "continue"  # the kernel performs the call as usual
    PARKED = "parked"  # the gate's connecting thread answers it (csrc/connecting.h)


class Install:
    """Our descriptor ``fd`` installed in the child as the call's result (ADDFD + SEND);
    the supervisor closes ``fd`` afterwards, whatever happened.

    ``cloexec``: the child's new descriptor gets O_CLOEXEC. If the install fails, an
    error that is the child's own (its table is full: EMFILE, ENFILE, ENOMEM) is the
    call's result; any other answers ``fallback``, or is the result itself when
    ``fallback`` is None."""

    __slots__ = ("cloexec", "fallback", "fd")

    def __init__(self, fd: int, cloexec: bool, fallback: Reply | None = None) -> None:
        self.fd = fd
        self.cloexec = cloexec
        self.fallback = fallback


class Pending(Generic[T_co]):
    """The call must wait: the supervisor runs ``finish`` as a task and answers with what
    it returns (inside a handler, a step that waits, finishing with a result)."""

    __slots__ = ("finish",)

    def __init__(self, finish: Callable[[], Awaitable[T_co]]) -> None:
        self.finish = finish


class Decided:
    """``answer``, and the decisions made on the way to it, for the supervisor to report
    (before it answers, or, for a Pending, before it lets the call wait)."""

    __slots__ = ("answer", "events")

    def __init__(self, answer: Ready | Pending[Answer], events: list[Event]) -> None:
        self.answer = answer
        self.events = events


Ready: TypeAlias = "int | Reply | Install"
"""An answer the supervisor can send at once."""

Answer: TypeAlias = "Ready | Pending[Answer] | Decided"
"""What a handler returns, and what a Pending finishes with."""
