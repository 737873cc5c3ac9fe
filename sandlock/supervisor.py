"""The supervisor: one trio task per sandbox that answers its seccomp notifications.

The listener is read by the sandbox's gate (csrc/gate.h), a C thread that answers on its
own what Python already decided: calls to destinations Python allowed and asked it to
remember (when nobody needs to hear of every allowed call), and opens of files that
cannot be virtual. Everything else it hands over, and ``serve`` answers it here:

* most calls are answered right away, in the loop, by ``Handlers.handle``;
* a call that must wait (a blocking TCP handshake, a full send buffer) becomes a task
  of the supervisor's nursery, so it never delays the others. A blocking connect the
  gate already started arrives with its duplicate, to be finished the same way.

Python stays the authority: the gate only repeats decisions made here, and forgets them
all when the policy is replaced. If a handler raises (a bug), the call is refused: a
supervisor fails closed. If the supervisor itself goes away, the kernel answers every
pending and future call of the sandbox with ENOSYS: the network fails, it never opens.
"""

from __future__ import annotations

import errno
import sys

import trio

from . import _syscalls as sys_
from .events import Listener
from .onbehalf import Handlers, Outcome, Pending, Reply
from .policy import Policy

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .dns import Record
    from .names import Names


class Supervisor:
    """Answers the notifications of one gate's listener under a policy that may be swapped.

    With ``remember`` (the default), allowed destinations are handed to the gate, which
    then answers further calls to them itself: ``on_event`` no longer hears of those.
    Pass ``remember=False`` when every allowed call must be seen (audit, summary, learn).
    """

    def __init__(
        self,
        gate: sys_.Gate,
        policy: Policy,
        on_event: Listener | None = None,
        *,
        remember: bool = True,
    ) -> None:
        self.gate = gate
        self.listener = gate.listener
        self.handlers = Handlers(gate.listener, policy, on_event)
        self.names: Names | None = None
        self._on_dns: Callable[[Record], None] | None = None
        if remember:
            self.handlers.remember = gate.allow
            gate.set_flags(gate.flags | sys_.GATE_CACHE)
        else:
            gate.set_flags(gate.flags & ~sys_.GATE_CACHE)

    @property
    def policy(self) -> Policy:
        """The policy deciding this sandbox's calls now."""
        return self.handlers.policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        """Replace the policy; it decides from the next notification on."""
        self.handlers.policy = policy
        self.gate.clear()  # what the old one allowed is no longer known to be allowed

    def use_names(self, names: Names, on_dns: Callable[[Record], None] | None = None) -> None:
        """Serve the sandbox's virtual files and, in DNS mode, its forwarder (names.py);
        ``on_dns`` hears of every DNS decision."""
        self.names = names
        self._on_dns = on_dns
        self.handlers.vfiles = names.vfiles
        self.handlers.redirect = names.redirect

    def _swap(self, policy: Policy) -> None:
        self.policy = policy

    @property
    def answered_by_gate(self) -> int:
        """Calls the gate answered itself under remembered decisions (all allowed)."""
        connects, sends, _opens, _handoffs = self.gate.stats()
        return connects + sends

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Answer notifications until every task of the sandbox is gone."""
        async with trio.open_nursery() as nursery:
            if self.names is not None:
                nursery.start_soon(self.names.run, lambda: self.policy, self._swap, self._on_dns)
            task_status.started()
            while True:
                handed = self.gate.read()  # first what wait_child may have read already
                if handed is None:
                    break  # every task of the sandbox is gone
                if not handed:
                    await trio.lowlevel.wait_readable(self.gate.fd)
                    continue
                for h in handed:
                    self._dispatch(h, nursery)
                await trio.lowlevel.checkpoint()  # let waiting calls finish meanwhile
            nursery.cancel_scope.cancel()

    def _dispatch(self, h: sys_.Handoff, nursery: trio.Nursery) -> None:
        n = h.notif
        result: Outcome
        try:
            if h.fd >= 0:
                result = self.handlers.resume_connect(n, h.fd, h.rc)
            else:
                result = self.handlers.handle(n)
        except Exception as err:  # a bug must refuse the call, never allow it
            _internal_error(n, err)
            result = -errno.ECONNREFUSED
        if isinstance(result, Pending):
            nursery.start_soon(self._finish, n, result)
        else:
            self._answer(n, result)

    async def _finish(self, n: sys_.Notif, pending: Pending) -> None:
        try:
            result = await pending.finish()
        except Exception as err:
            _internal_error(n, err)
            result = -errno.ECONNREFUSED
        self._answer(n, result)

    def _answer(self, n: sys_.Notif, result: int | Reply) -> None:
        # -ENOENT: the thread is gone, or was interrupted by a fatal signal: nothing to do.
        if result is Reply.ANSWERED:
            return
        if result is Reply.CONTINUE:
            sys_.notif_continue(self.listener, n.id)
        elif result >= 0:
            sys_.notif_send(self.listener, n.id, result, 0)
        else:
            sys_.notif_send(self.listener, n.id, 0, result)


def _internal_error(n: sys_.Notif, err: Exception) -> None:
    print(
        f"sandlock: internal error on syscall {n.nr} of pid {n.pid}: {err!r} "
        "(the call was refused)",
        file=sys.stderr,
    )
