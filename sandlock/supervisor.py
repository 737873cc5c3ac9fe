"""The supervisor: one trio task per sandbox that answers its seccomp notifications.

The listener is read by the sandbox's gate (csrc/gate.h), a C thread that answers on its
own what Python already decided: calls to destinations Python allowed and asked it to
remember (when nobody needs to hear of every allowed call), and opens of files that
cannot be virtual. Everything else it hands over, and ``serve`` answers it here:

* most calls are answered right away by ``Handlers.handle``: by ``serve_now``, with no
  event loop, for as long as no call has had to wait (launch.wait_child calls it), then
  in ``serve``'s trio loop;
* a blocking TCP connect still in progress is parked with the gate's second thread
  (csrc/connecting.h), which answers it when the handshake ends, whenever nobody needs
  each call's outcome (the same condition as ``remember``);
* any other call that must wait (a handshake whose outcome is logged, a full send
  buffer) becomes a task of the supervisor's nursery, so it never delays the others. A
  blocking connect the gate started but could not park arrives with its duplicate, to
  be finished the same way.

Python stays the authority: the gate only repeats decisions made here, and forgets them
all when the policy is replaced. If a handler raises (a bug), the call is refused: a
supervisor fails closed. If the supervisor itself goes away, the kernel answers every
pending and future call of the sandbox with ENOSYS: the network fails, it never opens.
"""

from __future__ import annotations

import errno
import sys

from . import _syscalls as sys_
from ._gatemode import gate_answers
from .events import Listener
from .onbehalf import Handlers, Outcome, Pending, Reply
from .policy import Policy

# trio is imported by serve(), when a call first has to wait: ``serve_now`` answers the
# others without it (importing trio costs ~120 ms; bench/RESULTS.md, row 10).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    import trio

    from .dns import Record
    from .names import Names


class Supervisor:
    """Answers the notifications of one gate's listener under a policy that may be swapped.

    With ``remember`` (the default), allowed destinations are handed to the gate, which
    then answers further calls to them itself, and so are blocking connects in progress:
    ``on_event`` no longer hears of those, nor of such a connect's outcome. Pass
    ``remember=False`` when every allowed call and its result must be seen (audit,
    summary, learn).
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
        self._waiting: list[tuple[sys_.Notif, Pending]] = []  # from serve_now, for serve
        if remember and gate_answers():  # (not under SANDLOCK_GATE=python: _gatemode.py)
            self.handlers.remember = gate.allow
            self.handlers.park = gate.park_connect
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
        if names.vfiles is not None:  # the gate CONTINUEs the opens of no other name
            names.vfiles.watch(self.gate.set_open_names)
        self.handlers.redirect = names.redirect

    def _swap(self, policy: Policy) -> None:
        self.policy = policy

    @property
    def answered_by_gate(self) -> int:
        """Calls the gate answered itself under remembered decisions (all allowed)."""
        connects, sends, _opens, _handoffs = self.gate.stats()
        return connects + sends

    def serve_now(self, handed: list[sys_.Handoff]) -> bool:
        """Answer what the gate handed over, without trio (launch.wait_child calls this
        until a call must wait, and serve for each batch). False if one must wait: it is
        kept for ``serve``, which runs it as a task."""
        for h in handed:
            result = self._outcome(h)
            if isinstance(result, Pending):
                self._waiting.append((h.notif, result))
            else:
                self._answer(h.notif, result)
        return not self._waiting

    async def serve(self, *, task_status: trio.TaskStatus[None] | None = None) -> None:
        """Answer notifications until every task of the sandbox is gone."""
        import trio

        async with trio.open_nursery() as nursery:
            if self.names is not None:
                nursery.start_soon(self.names.run, lambda: self.policy, self._swap, self._on_dns)
            if task_status is not None:
                task_status.started()
            while True:
                for n, pending in self._waiting:  # (first those serve_now left waiting)
                    nursery.start_soon(self._finish, n, pending)
                self._waiting.clear()
                handed = self.gate.read()  # first what wait_child may have read already
                if handed is None:
                    break  # every task of the sandbox is gone
                if not handed:
                    await trio.lowlevel.wait_readable(self.gate.fd)
                    continue
                self.serve_now(handed)
                await trio.lowlevel.checkpoint()  # let waiting calls finish meanwhile
            nursery.cancel_scope.cancel()

    def _outcome(self, h: sys_.Handoff) -> Outcome:
        n = h.notif
        try:
            if h.fd >= 0:
                return self.handlers.resume_connect(n, h.fd, h.rc)
            return self.handlers.handle(n)
        except Exception as err:  # a bug must refuse the call, never allow it
            _internal_error(n, err)
            return -errno.ECONNREFUSED

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
