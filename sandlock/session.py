"""One run of one command under its supervisor: the composition root that the CLI, the
API and the daemon adapt, each in a few lines.

A Session owns everything a run is made of, from the moment it is handed over until
``close``: the run's names (names.py: virtual files, the DNS forwarder), its observer
(report.py: audit log, denial report, summary, learn mode), the started command
(launch.Child: pid, pidfd, listener, gate), the signalfd that forwards signals to it,
and the Supervisor. ``close`` is the one teardown, whatever happened before it.

Waiting comes in two phases, so that a command pays only for what it uses:

1. **without trio** (``run``, blocking): ``wait_child`` polls the child's pidfd, the
   gate, the signalfd and the caller's streams (the API's pipes). The Supervisor and the
   observer are made on the gate's first handoff, and ``Supervisor.serve_now`` answers
   what it hands over right there. A command that makes no trapped call never loads the
   supervisor; one whose calls all return at once never loads trio (~120 ms of imports,
   bench/RESULTS.md row 10).
2. **with trio** (``run_async``; ``run`` moves there as soon as a call must wait, or, in
   DNS mode, at the first handoff, as the forwarder is a trio task): the supervisor's
   ``serve``, the signals and the streams are tasks of one nursery, until the command
   has exited and its streams are finished. The same code serves the trio callers (the
   API's ``run_async``, the daemon): the blocking run just enters it with ``trio.run``.

A run is cut short by its deadline (the tree is killed; the status is TIMED_OUT) or by
an error or a cancellation: a command started in a process group of its own (the API's)
then has its whole tree killed and reaped before the error goes on; the CLI's, which
shares our group, is left to fail closed once its listener is gone, as ever. A child the
session adopted (the daemon's: another process started it) is never signalled nor
reaped: its parent does both.

A Process (process.py) runs while its caller does other things: ``Background`` serves
its session with the same ``run_async`` from a thread of its own.

The daemon's client (client.py, _watchdog.py) waits with ``wait_child`` too, with no
supervisor: so nothing here imports trio, the supervisor or the observer at load time.
"""

from __future__ import annotations

import math
import os
import select
import time

from . import _owned, launch
from . import _syscalls as sys_
from ._signals import FORWARDED_SIGNALS, forward_pending, open_signalfd
from .errors import SupervisorError

# typing, trio and the supervisor's modules would cost every launch: annotations only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Protocol

    import trio
    from _typeshed import SupportsWrite

    from .ask import Asker
    from .audit import AuditSeal
    from .names import Names
    from .policy import Policy
    from .report import Observer
    from .supervisor import Supervisor

    class Streams(Protocol):
        """Descriptors a run serves besides the command (the API's pipes, the daemon
        client's connection). ``watched`` gives (fd, poll events) pairs; ``ready`` serves
        one, without blocking, and says whether that fd is finished (closed); ``done``
        whether the run's exit status may come. Under trio each watched fd is served
        until it is finished."""

        def watched(self) -> list[tuple[int, int]]: ...
        def ready(self, fd: int) -> bool: ...
        def done(self) -> bool: ...


__all__ = ["TIMED_OUT", "Background", "Session", "exit_status", "kill_tree", "wait_child"]

TIMED_OUT = -1  # the status of a run whose deadline passed first (no exit status is < 0)
_SIGKILL = 9  # signal.SIGKILL on Linux (the signal module loads enum)


class Session:
    """One command under its supervisor, from start to teardown.

    ``names`` (Plan.start's) and what ``observe`` makes are the session's to close from
    here on. ``observe`` makes the run's observer (None: nobody listens): once, when
    the supervisor is made or ``observer()`` is first called, whichever comes first.
    At ``close`` the observer finishes on ``report_to`` (the report's count, the
    summary, the audit seal's lines; None: say nothing). ``asker``: the run's answers
    to calls no rule allows (ask.py); a call that must be asked about waits for one,
    which moves ``run`` to trio like any call that waits."""

    def __init__(
        self,
        policy: Policy,
        *,
        names: Names | None = None,
        observe: Callable[[], Observer | None] | None = None,
        report_to: SupportsWrite[str] | None = None,
        asker: Asker | None = None,
    ) -> None:
        self._policy = policy
        self.asker = asker
        self.names = names
        self._observe = observe
        self._observer: Observer | None = None
        self._observed = observe is None
        self._report_to = report_to
        self.child: launch.Child | None = None
        self._ours = False  # started here, so ours to reap (and to signal until then)
        self._contain = False  # the whole tree is killed when the run is cut short
        self._reaped = False
        self._signal_fd = -1
        self._supervisor: Supervisor | None = None

    # ------------------------------------------------------------------ the parts

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        keep_fds: Sequence[int] = (),
        stdio: Sequence[int] = (-1, -1, -1),
        new_pgrp: bool = False,
        forward_signals: bool = False,
    ) -> launch.Child:
        """Start ``argv`` under the filter (launch.start; its errors as there).

        With ``new_pgrp`` the command leads a process group of its own, and its whole
        tree is killed when the run is cut short. With ``forward_signals`` SIGINT, TERM,
        HUP and QUIT sent to this process reach the command (_signals.py): they are
        blocked in this thread from now on, and read from a signalfd while it runs."""
        assert self.child is None, "a session runs one command"
        if forward_signals:
            self._signal_fd = open_signalfd()
        if self.names is not None:  # (--http-tls: NODE_EXTRA_CA_CERTS)
            env = self.names.command_environ(env)
        self.child = launch.start(
            argv,
            env=env,
            cwd=cwd,
            keep_fds=keep_fds,
            unblock_signals=FORWARDED_SIGNALS if forward_signals else (),
            stdio=stdio,
            new_pgrp=new_pgrp,
            trap_open=self.names is not None and self.names.trap_open,
            open_names=self.names.vfiles.names if self.names and self.names.vfiles else None,
        )
        self._ours, self._contain = True, new_pgrp
        return self.child

    def adopt(
        self, child: launch.Child, *, reap: bool = False, supervisor: Supervisor | None = None
    ) -> None:
        """Supervise a command started elsewhere: the daemon's, which another process
        started and reaps; with ``reap`` a child of this process, whose status ``run``
        returns. ``supervisor``: one the caller made, to use instead of making one
        (tests drive the Supervisor's own options that way)."""
        assert self.child is None and child.gate is not None, "a session runs one command"
        self.child = child
        self._ours = reap
        self._supervisor = supervisor

    def observer(self) -> Observer | None:
        """The run's observer, made now if it was not yet."""
        if not self._observed:
            assert self._observe is not None
            self._observed = True
            self._observer = self._observe()
            if self._observer is not None and self.names is not None:
                for record in self.names.startup_records:  # said on stderr at start
                    self._observer.dns(record, reported=True)
        return self._observer

    @property
    def supervisor(self) -> Supervisor:
        """The command's supervisor, made on first use, with the observer and names."""
        if self._supervisor is None:
            from .supervisor import Supervisor

            child = self._started()
            assert child.gate is not None
            observer = self.observer()
            # The one place that decides whether the gate may answer calls to allowed
            # destinations on its own: not when someone must hear of every call (the
            # audit log, the summary, learn mode), which the gate would keep from them.
            remember = observer is None or not observer.hears_every_call
            sup = Supervisor(
                child.gate, self._policy, observer, remember=remember, asker=self.asker
            )
            if self.names is not None:
                sup.use_names(self.names, observer.dns if observer is not None else None)
            self._supervisor = sup
        return self._supervisor

    @property
    def policy(self) -> Policy:
        """The policy deciding the command's calls now."""
        return self._supervisor.policy if self._supervisor is not None else self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        """Replace the policy (the daemon's ``policy`` request): it decides from the
        command's next call on."""
        self._policy = policy
        if self._supervisor is not None:
            self._supervisor.policy = policy

    @property
    def answered_by_gate(self) -> int:
        """Calls the gate answered itself under remembered decisions (all allowed)."""
        return self._supervisor.answered_by_gate if self._supervisor is not None else 0

    def kill(self) -> None:
        """SIGKILL the tree of a command started here, unless reaped (call it where it runs)."""
        if self.child is not None and self._ours and not self._reaped:
            kill_tree(self.child.pid)

    # ------------------------------------------------------------------ waiting

    def run(self, *, deadline: float | None = None, streams: Streams | None = None) -> int:
        """Wait for the command, serving it, and return its exit status: without trio
        for as long as no call must wait, then under trio (see the module docstring).

        With ``streams``, the status comes once every stream is done too; with a
        ``deadline`` (time.monotonic()), TIMED_OUT once it has passed, the tree killed
        and reaped. Blocking: call it from a thread with no trio loop."""
        child = self._started()
        names = self.names
        trio_first = names is not None and (
            names.dns_mode or names.options.verify_names or names.http_ports is not None
        )
        status = wait_child(
            child,
            self._signal_fd,
            until_notified=True,
            deadline=deadline,
            serve=None if trio_first else self._serve_now,  # (the forwarder, the relay: trio)
            streams=streams,
        )
        if status is None:  # a call must wait
            import trio

            return trio.run(lambda: self.run_async(deadline=deadline, streams=streams))
        if status == TIMED_OUT:
            kill_tree(child.pid)  # exited or not, it is not reaped yet: still ours
            self._reap()
            return TIMED_OUT
        self._reaped = True
        return status

    def _serve_now(self, handed: list[sys_.Handoff]) -> bool:
        return self.supervisor.serve_now(handed)

    async def run_async(
        self, *, deadline: float | None = None, streams: Streams | None = None
    ) -> int:
        """``run`` for trio callers (and for ``run`` once a call must wait): cancellable.
        Cancelled, or failing, it kills the tree of a command in its own process group,
        waits for it, and re-raises."""
        if await self._serve(deadline, streams):
            return TIMED_OUT
        return self._reap()

    async def supervise(self) -> None:
        """Serve an adopted command until it exits (the daemon's: its parent reaps it)."""
        await self._serve(None, None)

    async def _serve(self, deadline: float | None, streams: Streams | None) -> bool:
        """Serve until the command has exited and its streams are finished, or the
        deadline passed (then True, the tree killed and reaped)."""
        import trio

        from ._signals import forward

        child = self._started()
        timeout = math.inf if deadline is None else deadline - time.monotonic()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.supervisor.serve)
                if self._signal_fd >= 0:
                    nursery.start_soon(forward, self._signal_fd, child.pidfd)
                if sys_.owned_mode():  # our copies of the sockets it closed, dropped
                    nursery.start_soon(_owned.reap, child.listener, child.pid)
                # The deadline covers the streams too: a descendant that keeps the output
                # open after the command exited cannot stretch a run past it.
                with trio.move_on_after(timeout) as waiting:
                    async with trio.open_nursery() as io:
                        if streams is not None:
                            for fd, events in streams.watched():
                                io.start_soon(_pump, streams, fd, events)
                        await trio.lowlevel.wait_readable(child.pidfd)
                if waiting.cancelled_caught:
                    kill_tree(child.pid)  # exited or not, it is not reaped yet: still ours
                    await trio.lowlevel.wait_readable(child.pidfd)
                    self._reap()
                nursery.cancel_scope.cancel()
        except BaseException:
            if self._contain and not self._reaped:  # never signal a pid we reaped
                with trio.CancelScope(shield=True):
                    kill_tree(child.pid)
                    await trio.lowlevel.wait_readable(child.pidfd)
                    self._reap()
            raise
        finally:  # no task of ours waits on them any more: close() may close them
            assert child.gate is not None
            for fd in (child.gate.fd, child.listener, child.pidfd):
                trio.lowlevel.notify_closing(fd)
        return waiting.cancelled_caught

    def _started(self) -> launch.Child:
        assert self.child is not None, "start or adopt the command first"
        return self.child

    def _reap(self) -> int:
        assert self.child is not None and self._ours
        status = exit_status(self.child.pidfd)
        self._reaped = True
        return status

    # ------------------------------------------------------------------ teardown

    def close(self) -> AuditSeal | None:
        """End the run, whatever state it is in: a command of its own process group that
        was started but not reaped killed with its tree (and reaped); the gate stopped,
        the command's descriptors, the signalfd and the names closed; the observer
        finished on ``report_to``. Returns the run's audit seal, if it has one."""
        child, self.child = self.child, None
        observer, self._observer = self._observer, None
        seal = None
        try:
            if child is not None:
                if self._contain and not self._reaped:
                    kill_tree(child.pid)  # (a run cut short before it waited)
                    exit_status(child.pidfd)
                    self._reaped = True
                child.close()
        finally:
            if self._signal_fd >= 0:
                os.close(self._signal_fd)
                self._signal_fd = -1
            if self.names is not None:
                self.names.close()
            if observer is not None:
                seal = observer.finish(self._report_to)
        return seal


class Background:
    """A session served by a thread's trio loop (``run_async``, then ``on_end``); ``call``
    runs a function in that loop: between two answers, never after the reap."""

    def __init__(self, session: Session, name: str, on_end: Callable[[], None]) -> None:
        import threading
        self._session, self._on_end = session, on_end
        self._token: trio.lowlevel.TrioToken | None = None  # (set before __init__ returns)
        self._ready = threading.Event()
        self.status: int | None = None  # the exit status,
        self.error: Exception | None = None  # or why the run failed
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        import trio

        try:
            self.status = trio.run(self._serve)
        except Exception as err:  # (the tree is dead: run_async killed it)
            self.error = err
        finally:
            self._on_end()
            self._ready.set()

    async def _serve(self) -> int:
        import trio

        self._token = trio.lowlevel.current_trio_token()
        self._ready.set()
        return await self._session.run_async()

    def call(self, fn: Callable[[], None]) -> bool:
        """Run ``fn`` in the run's loop and wait for it; False (not run) if the run is over."""
        import trio

        try:
            trio.from_thread.run_sync(fn, trio_token=self._token)
        except trio.RunFinishedError:
            return False
        return True

    def join(self, timeout: float | None = None) -> bool:
        """Wait at most ``timeout`` seconds for the run to be over; whether it is."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


async def _pump(streams: Streams, fd: int, events: int) -> None:
    """Serve one of the streams under trio until it is finished: try, else wait."""
    import trio

    wait = trio.lowlevel.wait_writable if events & select.POLLOUT else trio.lowlevel.wait_readable
    while not streams.ready(fd):
        await wait(fd)


def wait_child(
    child: launch.Child,
    signal_fd: int,
    *,
    until_notified: bool,
    deadline: float | None = None,
    serve: Callable[[list[sys_.Handoff]], bool] | None = None,
    streams: Streams | None = None,
) -> int | None:
    """Wait for the child without trio, forwarding signals from ``signal_fd`` (-1: none).

    Returns its exit status; or, with ``until_notified`` (and a gate), None as soon as the
    gate hands a notification over (the caller then starts the supervisor). A command that
    never needs a decision thus never pays for the supervisor's start-up. With ``serve``
    (Supervisor.serve_now), what the gate hands over goes to it, and the wait goes on
    while it answers everything: None only once a call must wait, which needs trio.
    With ``streams``, the exit status comes once the child has exited and every stream
    is done, as subprocess.communicate waits for the end of the output. With a
    ``deadline`` (time.monotonic()), TIMED_OUT once it has passed, the child not reaped
    (it may have exited: still ours to signal until reaped). Where sockets are made on
    behalf, our copies of those the sandbox closed are dropped on the way (_owned.py)."""
    poller = select.poll()
    poller.register(child.pidfd, select.POLLIN)
    if signal_fd >= 0:
        poller.register(signal_fd, select.POLLIN)
    gate = child.gate if until_notified else None
    if gate is not None:
        poller.register(gate.fd, select.POLLIN)
    own: dict[int, int] = {}
    if streams is not None:
        own = dict(streams.watched())
        for fd, events in own.items():
            poller.register(fd, events)
    exited = False
    sweep_ms = math.ceil(_owned.SWEEP_INTERVAL * 1000) if sys_.owned_mode() else None
    swept = time.monotonic()
    while True:
        wait_ms = None
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return TIMED_OUT
            wait_ms = math.ceil(left * 1000)
        if sweep_ms is not None:
            wait_ms = sweep_ms if wait_ms is None else min(wait_ms, sweep_ms)
        ready = dict(poller.poll(wait_ms))
        if sweep_ms is not None and time.monotonic() - swept >= _owned.SWEEP_INTERVAL:
            swept = time.monotonic()
            if sys_.owned_count(child.listener):
                _owned.sweep(child.listener, child.pid)
        if gate is not None and ready.get(gate.fd, 0) & select.POLLIN:
            handed = gate.read()
            if handed is None:
                poller.unregister(gate.fd)  # the gate saw the sandbox go: wait for the status
                gate = None
            elif serve is None:
                gate.hold(handed)  # the supervisor answers them first
                return None
            elif not serve(handed):
                return None
        if signal_fd in ready:
            forward_pending(signal_fd, child.pidfd)
        if streams is not None:
            for fd in [fd for fd in ready if fd in own]:
                if streams.ready(fd):
                    poller.unregister(fd)
                    del own[fd]
        if child.pidfd in ready and not exited:
            exited = True
            poller.unregister(child.pidfd)  # (stays readable: reaped below)
        if exited and (streams is None or streams.done()):
            return exit_status(child.pidfd)


def exit_status(pidfd: int) -> int:
    """Reap the exited child: its exit code, or 128+N when signal N killed it."""
    info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
    if info is None:  # pragma: no cover - only with WNOHANG
        raise SupervisorError("waitid found no exited child")
    if info.si_code == os.CLD_EXITED:
        return info.si_status
    return 128 + info.si_status


def kill_tree(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` and every descendant of ``pid``."""
    for target in [pid, *_owned.descendants(pid)]:
        try:
            os.kill(target, _SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(pid, _SIGKILL)
    except ProcessLookupError:
        pass
