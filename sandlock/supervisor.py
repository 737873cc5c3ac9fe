"""The supervisor: one trio task per sandbox that answers its seccomp notifications.

The listener is read by the sandbox's gate (csrc/gate.h), a C thread that answers on its
own what Python already decided: calls to destinations Python allowed and asked it to
remember (when nobody needs to hear of every allowed call), and opens of files that
cannot be virtual. Everything else it hands over, and ``serve`` answers it here:

* most calls are decided and performed right away by ``Handlers.handle`` and answered:
  by ``serve_now``, with no event loop, for as long as no call has had to wait
  (session.py calls it), then in ``serve``'s trio loop;
* a blocking TCP connect still in progress is parked with the gate's second thread
  (csrc/connecting.h), which answers it when the handshake ends, whenever nobody needs
  each call's outcome (the same condition as ``remember``);
* any other call that must wait (a handshake whose outcome is logged, a full send
  buffer) becomes a task of the supervisor's nursery, so it never delays the others. A
  blocking connect the gate started but could not park arrives with its duplicate, to
  be finished the same way.

The handlers only decide and perform: each returns an answer (answer.py), and this
module alone answers the kernel (``send_answer``) and reports the decisions that come
with the answers to ``on_event``, in the order they were made.

Python stays the authority: the gate only repeats decisions made here, and forgets them
all when the policy is replaced. If a handler raises (a bug), the call is refused: a
supervisor fails closed. If the supervisor itself goes away, the kernel answers every
pending and future call of the sandbox with ENOSYS: the network fails, it never opens.
"""

from __future__ import annotations

import errno
import os
import sys

from . import _syscalls as sys_
from ._gatemode import gate_answers
from .answer import Answer, Decided, Install, Pending, Ready, Reply
from .events import Listener
from .onbehalf import Handlers
from .policy import Policy

# trio is imported by serve(), when a call first has to wait: ``serve_now`` answers the
# others without it (importing trio costs ~120 ms; bench/RESULTS.md, row 10).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    import trio

    from .ask import Asker
    from .dns import Record
    from .events import Event
    from .names import Names
    from .relay import Relay


class Supervisor:
    """Answers the notifications of one gate's listener under a policy that may be swapped.

    With ``remember`` (the default), allowed destinations are handed to the gate, which
    then answers further calls to them itself, and so are blocking connects in progress:
    ``on_event`` no longer hears of those, nor of such a connect's outcome. Pass
    ``remember=False`` when every allowed call and its result must be seen (audit,
    summary, learn). ``names`` and ``on_dns``: as for ``use_names``. ``asker``: the
    run's answers to calls no rule allows (ask.py), which then wait for one.
    """

    def __init__(
        self,
        gate: sys_.Gate,
        policy: Policy,
        on_event: Listener | None = None,
        *,
        remember: bool = True,
        names: Names | None = None,
        on_dns: Callable[[Record], None] | None = None,
        asker: Asker | None = None,
    ) -> None:
        self.gate = gate
        self.asker = asker
        self.listener = gate.listener
        self.on_event = on_event
        self._remember = remember and gate_answers()  # (not under SANDLOCK_GATE=python)
        self._serving = False
        self._waiting: list[tuple[sys_.Notif, Pending[Answer]]] = []  # from serve_now
        if self._remember:
            gate.set_flags(gate.flags | sys_.GATE_CACHE)
        else:
            gate.set_flags(gate.flags & ~sys_.GATE_CACHE)
        self.names = names
        self._on_dns = on_dns
        self.handlers = self._handlers(policy)

    def _handlers(self, policy: Policy) -> Handlers:
        """The handlers, given everything they work with; the gate told which opens may
        be of a virtual file (it CONTINUEs the opens of any other name)."""
        names = self.names
        if names is not None and names.vfiles is not None:
            names.vfiles.watch(self.gate.set_open_names)
        return Handlers(
            self.listener,
            policy,
            gate=self.gate if self._remember else None,
            vfiles=names.vfiles if names is not None else None,
            redirect=names.redirect if names is not None else None,
            relay=self._relay(names),
            asker=self.asker,
        )

    def _relay(self, names: Names | None) -> Relay | None:
        """With --verify-names, the relay that checks names (relay.py), and with HTTP
        rules, HTTP requests (httprelay.py); it runs in serve."""
        ports = names.http_ports if names is not None else None
        if names is None or not (names.options.verify_names or ports is not None):
            return None
        from .relay import Relay

        http = None
        if ports is not None:  # (the rules: the policy's, read per request)
            from .httprelay import HttpHandler

            verify = names.options.verify_names
            http = HttpHandler(
                ports, lambda: self.policy, self._tell_http, verify=verify, tls=names.tls
            )
        gate = self.gate if self._remember else None  # (it sends remembered ones itself)
        verify = names.options.verify_names
        return Relay(lambda: self.policy, self._tell, verify=verify, http=http, gate=gate)

    def _tell_http(self, record: Record) -> None:
        if self._on_dns is not None:  # (records of the names' machinery: dns.py, httprelay.py)
            self._on_dns(record)

    def _tell(self, event: Event) -> None:
        if self.on_event is not None:
            self.on_event(event)

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
        ``on_dns`` hears of every DNS decision. Before the first call is served (or pass
        ``names`` to the constructor): the handlers are made anew with them."""
        if self._serving:
            raise RuntimeError("use_names: the supervisor is serving already")
        self.names = names
        self._on_dns = on_dns
        self.handlers = self._handlers(self.policy)

    def _swap(self, policy: Policy) -> None:
        self.policy = policy

    @property
    def answered_by_gate(self) -> int:
        """Calls the gate answered itself under remembered decisions (all allowed)."""
        connects, sends, _opens, _handoffs = self.gate.stats()
        return connects + sends

    def serve_now(self, handed: list[sys_.Handoff]) -> bool:
        """Answer what the gate handed over, without trio (the session calls this
        until a call must wait, and serve for each batch). False if one must wait: it is
        kept for ``serve``, which runs it as a task."""
        self._serving = True
        for h in handed:
            answer = self._outcome(h)
            if isinstance(answer, Pending):
                self._waiting.append((h.notif, answer))
            else:
                send_answer(self.listener, h.notif.id, answer)
        return not self._waiting

    async def serve(self, *, task_status: trio.TaskStatus[None] | None = None) -> None:
        """Answer notifications until every task of the sandbox is gone."""
        import trio

        self._serving = True
        async with trio.open_nursery() as nursery:
            if self.names is not None:
                nursery.start_soon(
                    self.names.run, lambda: self.policy, self._swap, self._on_dns, self.asker
                )
            if self.handlers.relay is not None:
                await nursery.start(self.handlers.relay.run)
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

    def _outcome(self, h: sys_.Handoff) -> Ready | Pending[Answer]:
        """The handler's answer to one call handed over, its decisions reported."""
        n = h.notif
        try:
            if h.fd >= 0:
                answer = self.handlers.resume_connect(n, h.fd, h.rc)
            else:
                answer = self.handlers.handle(n)
            return self._report(answer) if isinstance(answer, Decided) else answer
        except Exception as err:  # a bug must refuse the call, never allow it
            _internal_error(n, err)
            return -errno.ECONNREFUSED

    async def _finish(self, n: sys_.Notif, pending: Pending[Answer]) -> None:
        """Run a call that waits until it has an answer (reporting on the way), and send it."""
        answer: Ready | Pending[Answer] = pending
        while isinstance(answer, Pending):  # (a Pending may finish with another)
            try:
                got = await answer.finish()
                answer = self._report(got) if isinstance(got, Decided) else got
            except Exception as err:
                _internal_error(n, err)
                answer = -errno.ECONNREFUSED
        send_answer(self.listener, n.id, answer)

    def _report(self, decided: Decided) -> Ready | Pending[Answer]:
        """Hand the decisions that came with an answer to ``on_event``: the one place that
        reports them. The answer."""
        if self.on_event is not None:
            for event in decided.events:
                self.on_event(event)
        return decided.answer


# Errors of an install that are the child's own (its table is full): the call gets them.
_CHILDS_OWN = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


def send_answer(listener: int, notif_id: int, answer: Ready) -> None:
    """Answer one notification: the one place where the kernel is (tests/test_vfiles.py
    answers with it too). -ENOENT from the kernel (the thread is gone, or was
    interrupted by a fatal signal) leaves nothing to do."""
    if type(answer) is int:
        if answer >= 0:
            sys_.notif_send(listener, notif_id, answer, 0)
        else:
            sys_.notif_send(listener, notif_id, 0, answer)
    elif answer is Reply.CONTINUE:
        sys_.notif_continue(listener, notif_id)
    elif isinstance(answer, Install):
        try:
            flags = os.O_CLOEXEC if answer.cloexec else 0
            rc = sys_.notif_addfd(listener, notif_id, answer.fd, flags, sys_.ADDFD_FLAG_SEND)
        finally:
            os.close(answer.fd)
        if rc >= 0 or rc == -errno.ENOENT:
            return  # installed and answered (or the thread is gone)
        if answer.fallback is None or -rc in _CHILDS_OWN:
            sys_.notif_send(listener, notif_id, 0, rc)  # (on failure it is still waiting)
        else:
            send_answer(listener, notif_id, answer.fallback)
    # else Reply.PARKED: the gate's connecting thread answers it


def _internal_error(n: sys_.Notif, err: Exception) -> None:
    print(
        f"sandlock: internal error on syscall {n.nr} of pid {n.pid}: {err!r} "
        "(the call was refused)",
        file=sys.stderr,
    )
