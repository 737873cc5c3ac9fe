"""The supervisor: one trio task per sandbox that answers its seccomp notifications.

The listener is pollable: readable when a notification waits, POLLHUP once every task
that carries the filter is gone. ``serve`` waits for readability, then drains what is
pending without blocking (``sandlock_notif_recv`` polls before it asks the kernel, so a
notification withdrawn in between never leaves us stuck in RECV) and answers each one:

* most calls are answered right away, in the loop, by ``Handlers.handle``;
* a call that must wait (a blocking TCP handshake, a full send buffer) becomes a task
  of the supervisor's nursery, so it never delays the others.

If a handler raises (a bug), the call is refused: a supervisor fails closed. If the
supervisor itself goes away, the kernel answers every pending and future call of the
sandbox with ENOSYS: the network fails, it never opens.
"""

from __future__ import annotations

import errno
import sys

import trio

from . import _syscalls as sys_
from .events import Listener
from .onbehalf import Handlers, Pending
from .policy import Policy

_DRAIN_BATCH = 64  # notifications answered before yielding to other tasks


class Supervisor:
    """Answers the notifications of one listener under a policy that may be swapped."""

    def __init__(self, listener: int, policy: Policy, on_event: Listener | None = None) -> None:
        self.listener = listener
        self.handlers = Handlers(listener, policy, on_event)
        self._receiver = sys_.Receiver(listener)

    @property
    def policy(self) -> Policy:
        """The policy deciding this sandbox's calls now."""
        return self.handlers.policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        """Replace the policy; it decides from the next notification on."""
        self.handlers.policy = policy

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Answer notifications until every task of the sandbox is gone."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(self.listener)
                if not self._drain(nursery):
                    break
            nursery.cancel_scope.cancel()

    def _drain(self, nursery: trio.Nursery) -> bool:
        """Answer what is pending; False once the sandbox is gone."""
        for _ in range(_DRAIN_BATCH):
            n = self._receiver.recv()
            if isinstance(n, int):
                if n == -errno.EAGAIN:
                    return True
                if n == -errno.EPIPE:
                    return False
                if n in (-errno.ENOENT, -errno.EINTR):
                    continue  # withdrawn: the thread was killed before we took it
                raise OSError(-n, f"SECCOMP_IOCTL_NOTIF_RECV: {errno.errorcode.get(-n, -n)}")
            self._dispatch(n, nursery)
        return True

    def _dispatch(self, n: sys_.Notif, nursery: trio.Nursery) -> None:
        try:
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

    def _answer(self, n: sys_.Notif, result: int) -> None:
        # -ENOENT: the thread is gone, or was interrupted by a fatal signal: nothing to do.
        if result >= 0:
            sys_.notif_send(self.listener, n.id, result, 0)
        else:
            sys_.notif_send(self.listener, n.id, 0, result)


def _internal_error(n: sys_.Notif, err: Exception) -> None:
    print(
        f"sandlock: internal error on syscall {n.nr} of pid {n.pid}: {err!r} "
        "(the call was refused)",
        file=sys.stderr,
    )
