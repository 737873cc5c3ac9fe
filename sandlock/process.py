"""Long-lived commands with a live policy: ``Sandbox.start`` (a Process) and, for trio,
``Sandbox.open_process`` (an AsyncProcess).

An agent keeps one shell alive across its tool calls and changes what it may reach per
step. Both kinds start the command as ``run`` does (a Session, its own process group)
and differ only in where the session is served:

* ``Process``: by session.Background, a thread of its own running the session's trio
  loop, so the caller needs no event loop and may block on the pipes. ``set_policy`` and
  ``kill`` run in that loop (``Background.call``): a swap lands between two answers, and
  a kill never reaches a reaped pid. ``send_signal`` goes through the pidfd, which
  cannot name another process.
* ``AsyncProcess``: by a task in the caller's nursery; its pipes are trio streams.

Leaving either (``close``, the end of the ``with`` block) kills the tree of a command
still running, waits for it, and closes everything the run held: pipes, the gate's
thread, the serving thread (tests/test_process.py counts descriptors and threads).

``decisions()`` gives the run's decision records as they are made, the audit log's own
(DecisionRecord): every refusal, and of the allowed calls those decided in Python (the
first to each destination; the later ones are answered by the gate, unless the sandbox
has an audit log, which hears of every call). At most ``FEED_LIMIT`` wait unread; past
that the oldest are dropped and counted (``decisions_dropped``).
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, TypedDict, Unpack

from ._fastrun import command_environ
from .api import DEVNULL, PIPE, Sandbox, StrPath
from .audit import AuditLog, AuditSeal, DecisionRecord
from .errors import SupervisorError, TimeoutExpired, UsageError
from .plan import swap_options
from .report import Observer
from .session import Background, Session

if TYPE_CHECKING:
    import trio

__all__ = ["FEED_LIMIT", "AsyncProcess", "Process", "StartOptions", "open_process"]

FEED_LIMIT = 10_000  # decision records kept unread; the oldest go first


class StartOptions(TypedDict, total=False):
    """Sandbox.start's and open_process's options, as subprocess.Popen's."""

    stdin: int | None  # PIPE (the default), None (inherited), DEVNULL or a descriptor
    stdout: int | None
    stderr: int | None
    cwd: StrPath | None
    env: Mapping[str, str] | None


class _Feed:
    """Decision records as they are made, for readers in any thread or a trio task."""

    def __init__(self) -> None:
        self._records: collections.deque[DecisionRecord] = collections.deque()
        self._cond = threading.Condition()
        self._ended = False
        self._wakeup: trio.Event | None = None  # a trio reader waits on it (same thread)
        self.dropped = 0

    def put(self, record: DecisionRecord) -> None:
        with self._cond:
            if len(self._records) >= FEED_LIMIT:
                self._records.popleft()
                self.dropped += 1
            self._records.append(record)
            self._cond.notify_all()
        self._wake()

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def take(self, timeout: float | None) -> Iterator[DecisionRecord]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                while not self._records and not self._ended:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return
                    self._cond.wait(left)
                if not self._records:
                    return
                record = self._records.popleft()
            yield record

    def pop(self) -> DecisionRecord | None:
        """The oldest unread record; None if there is none (``ended`` then says why)."""
        with self._cond:
            return self._records.popleft() if self._records else None

    @property
    def ended(self) -> bool:
        return self._ended

    def atake(self) -> _AsyncRecords:
        return _AsyncRecords(self)


class _AsyncRecords:
    """``async for`` over a feed, until the run is over (a class, not an async generator:
    a ``break`` out of it leaves nothing to finalize)."""

    def __init__(self, feed: _Feed) -> None:
        self._feed = feed

    def __aiter__(self) -> _AsyncRecords:
        return self

    async def __anext__(self) -> DecisionRecord:
        import trio

        while True:
            record = self._feed.pop()
            if record is not None:
                return record
            if self._feed.ended:
                raise StopAsyncIteration
            wakeup = self._feed._wakeup = trio.Event()
            await wakeup.wait()


class _Started:
    """A command started in its session with the pipes it asked for (both kinds)."""

    def __init__(self, sandbox: Sandbox, cmd: Sequence[StrPath], options: StartOptions) -> None:
        stdio = (
            options.get("stdin", PIPE),
            options.get("stdout", PIPE),
            options.get("stderr", PIPE),
        )
        cwd, env = options.get("cwd"), options.get("env")
        self.args = [os.fspath(c) for c in cmd]
        if not self.args:
            raise UsageError("no command to start")
        self.sandbox = sandbox
        self.feed = _Feed()
        self.seal: AuditSeal | None = None
        self.ours: list[int] = [-1, -1, -1]  # our ends of the pipes, to wrap
        child = [-1, -1, -1]
        closing: list[int] = []  # the child's ends (and /dev/null): closed once it has them
        try:
            for i, how in enumerate(stdio):
                if how == PIPE:
                    r, w = os.pipe2(os.O_CLOEXEC)
                    self.ours[i], child[i] = (w, r) if i == 0 else (r, w)
                    closing.append(child[i])
                elif how == DEVNULL:
                    child[i] = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                    closing.append(child[i])
                elif how is not None:
                    child[i] = how
            audit = sandbox.audit

            def observe() -> Observer:
                log = AuditLog(audit) if audit is not None else None
                return Observer(uuid.uuid4().hex[:8], audit=log, tap=self.feed.put)

            names = sandbox._plan.start(sandbox.policy)
            self.session = Session(
                sandbox.policy, names=names, observe=observe, asker=sandbox.asker()
            )
            try:
                self.session.observer()  # (the audit log opens before the start)
                self.child = self.session.start(
                    self.args,
                    env=command_environ(os.environ if env is None else env),
                    cwd=os.fspath(cwd) if cwd is not None else None,
                    stdio=child,
                    new_pgrp=True,
                )
            except BaseException:
                self.session.close()
                raise
        except BaseException:
            for fd in self.ours:
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in closing:
                os.close(fd)

    def new_policy(
        self,
        net_allow: Sequence[str],
        net_deny: Sequence[str],
        unix_allow: Sequence[str],
        http_allow: Sequence[str] | None,
        http_deny: Sequence[str] | None,
    ) -> Callable[[], None]:
        """The swap to these rules, built here (PolicyError if one is bad: nothing changes);
        the HTTP rules as plan.swap_options says (None and None: those in force now)."""
        current = self.session.policy
        options = swap_options(self.sandbox._options, current, http_allow, http_deny)
        interposed = current.http_rules is not None  # (the run has an HTTP relay)
        plan = self.sandbox._make_plan(
            net_allow, net_deny, unix_allow, options, interposed=interposed
        )
        policy = plan.policy

        def swap() -> None:
            self.session.policy = policy

        return swap

    def close(self) -> None:
        """The run is over (reaped): the session's teardown, once."""
        self.seal = self.session.close()
        self.feed.end()


class _Controls:
    """What both kinds of process share: the run, its ids, its policy, its decisions."""

    def __init__(self, run: _Started) -> None:
        self._run = run
        self.args = run.args
        self.pid = run.child.pid

    @property
    def audit(self) -> AuditSeal | None:
        """With an audit log, how the run's part ended (once it is closed)."""
        return self._run.seal

    @property
    def decisions_dropped(self) -> int:
        """Decision records dropped unread (more than FEED_LIMIT were waiting)."""
        return self._run.feed.dropped

    def set_policy(
        self,
        net_allow: Sequence[str] = (),
        net_deny: Sequence[str] = (),
        *,
        unix_allow: Sequence[str] = (),
        http_allow: Sequence[str] | None = None,
        http_deny: Sequence[str] | None = None,
    ) -> None:
        """Replace the rules at once (as ``sandlock policy``): the command's next call, and
        its next HTTP request (on a keep-alive connection already open too), is decided by
        the new ones. ``net_allow``, ``net_deny`` and ``unix_allow`` are always replaced
        (omitted: none). ``http_allow`` and ``http_deny``: giving either replaces both HTTP
        lists (an omitted one becomes empty); giving neither keeps the HTTP rules in force.

        The HTTP ports and TLS interception stay those the run started with: which
        connections go through the HTTP relay is decided when each one is made. So a run
        started without HTTP rules (no relay, no CA) cannot be given any: PolicyError.
        A bad rule, net or HTTP, raises PolicyError and every old rule stays."""
        run = self._run
        self._apply(run.new_policy(net_allow, net_deny, unix_allow, http_allow, http_deny))

    def _apply(self, swap: Callable[[], None]) -> None:
        raise NotImplementedError

    def _signal(self, sig: int) -> None:
        """``sig`` to the command through its pidfd (never another process; nothing once
        it has exited)."""
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._run.child.pidfd, sig)


class Process(_Controls):
    """A command running under a sandbox, served by a thread of its own (``Sandbox.start``).

    ``stdin``, ``stdout`` and ``stderr`` are binary file objects for the streams started
    with PIPE (stdin unbuffered: each write goes to the command at once), else None."""

    def __init__(
        self, sandbox: Sandbox, cmd: Sequence[StrPath], **options: Unpack[StartOptions]
    ) -> None:
        super().__init__(_Started(sandbox, cmd, options))
        ours = self._run.ours
        self.stdin: IO[bytes] | None = open(ours[0], "wb", buffering=0) if ours[0] >= 0 else None
        self.stdout: IO[bytes] | None = open(ours[1], "rb") if ours[1] >= 0 else None
        self.stderr: IO[bytes] | None = open(ours[2], "rb") if ours[2] >= 0 else None
        self._lock = threading.Lock()
        self._closed = False
        self._serving = Background(self._run.session, f"sandlock-{self.pid}", self._run.feed.end)

    @property
    def returncode(self) -> int | None:
        """The exit status once the command has exited (128+N: killed by signal N)."""
        return self._serving.status

    def poll(self) -> int | None:
        """The exit status if the command has exited, else None."""
        return self._status() if self._serving.join(0) else None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the command to exit and return its status. TimeoutExpired after
        ``timeout`` seconds; the command goes on running."""
        if not self._serving.join(timeout):
            assert timeout is not None
            raise TimeoutExpired(self.args, timeout, None, None)
        return self._status()

    def _status(self) -> int:
        if self._serving.error is not None:
            raise SupervisorError(f"the supervisor failed: {self._serving.error}") from (
                self._serving.error
            )
        assert self._serving.status is not None
        return self._serving.status

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the command (not its descendants); nothing once it has exited."""
        with self._lock:
            if not self._closed:  # (the pidfd is open)
                self._signal(sig)

    def terminate(self) -> None:
        """SIGTERM the command."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the command and every process of its tree; nothing once it has exited."""
        self._serving.call(self._run.session.kill)

    def _apply(self, swap: Callable[[], None]) -> None:
        self._serving.call(swap)  # (in the serving loop: between two answers)

    def decisions(self, timeout: float | None = 0) -> Iterator[DecisionRecord]:
        """The decision records made since the last taken: with ``timeout`` 0, those
        already made; else waiting for more until the run is over (None) or ``timeout``
        seconds have passed."""
        return self._run.feed.take(timeout)

    def close(self) -> None:
        """Kill the tree of a command still running, wait for it, close its pipes and
        everything the run held. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.kill()
        self._serving.join()
        for f in (self.stdin, self.stdout, self.stderr):
            if f is not None:
                with contextlib.suppress(OSError):  # (stdin: a command that stopped reading)
                    f.close()
        self._run.close()

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncProcess(_Controls):
    """A command running under a sandbox, served in the caller's trio loop
    (``Sandbox.open_process``). Its streams are trio streams (None unless PIPE)."""

    def __init__(self, run: _Started) -> None:
        import trio

        super().__init__(run)
        streams = [trio.lowlevel.FdStream(fd) if fd >= 0 else None for fd in run.ours]
        run.ours = [-1, -1, -1]  # the streams own them now
        self._streams = [s for s in streams if s is not None]
        self.stdin: trio.abc.SendStream | None = streams[0]
        self.stdout: trio.abc.ReceiveStream | None = streams[1]
        self.stderr: trio.abc.ReceiveStream | None = streams[2]
        self.returncode: int | None = None
        self._error: Exception | None = None
        self._done = trio.Event()
        self._scope = trio.CancelScope()

    async def _serve(self, task_status: trio.TaskStatus[None]) -> None:
        with self._scope:
            task_status.started()
            try:
                self.returncode = await self._run.session.run_async()
            except Exception as err:  # (the tree is dead: run_async killed it)
                self._error = err
            finally:
                self._done.set()
                self._run.feed.end()

    async def wait(self) -> int:
        """Wait for the command to exit and return its status (128+N: signal N)."""
        await self._done.wait()
        if self._error is not None:
            raise SupervisorError(f"the supervisor failed: {self._error}") from self._error
        assert self.returncode is not None
        return self.returncode

    def poll(self) -> int | None:
        """The exit status if the command has exited, else None."""
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the command (not its descendants); nothing once it has exited."""
        if not self._done.is_set():
            self._signal(sig)

    def kill(self) -> None:
        """SIGKILL the command and every process of its tree; nothing once it has exited."""
        self._run.session.kill()

    def _apply(self, swap: Callable[[], None]) -> None:
        swap()  # (this is the serving loop's thread)

    def decisions(self) -> AsyncIterator[DecisionRecord]:
        """``async for d in proc.decisions():`` each record as it is made, until the run
        is over."""
        return self._run.feed.atake()

    def _close_streams(self) -> None:
        for stream in self._streams:
            stream.close()


@contextlib.asynccontextmanager
async def open_process(
    sandbox: Sandbox, cmd: Sequence[StrPath], **options: Unpack[StartOptions]
) -> AsyncIterator[AsyncProcess]:
    """Sandbox.open_process: the command served by a task while the body runs; on
    leaving (also by an error or a cancellation), the tree of a command still running is
    killed and reaped, and the body's exception goes on as it was raised."""
    import trio

    proc = AsyncProcess(_Started(sandbox, cmd, options))
    raised: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(proc._serve)
            try:
                yield proc
            except BaseException as err:  # re-raised below, not wrapped in a group
                raised = err
            finally:
                proc._scope.cancel()  # the session kills the tree, if it runs, and reaps it
    finally:
        proc._close_streams()
        proc._run.close()
    if raised is not None:
        raise raised
