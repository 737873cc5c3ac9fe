"""The Python API: ``Sandbox(net_allow=..., net_deny=...).run(cmd) -> Result``.

``run`` blocks and needs no trio (it runs its own loop, so any thread may call it, and
without pipes it waits and answers with no loop at all until a call must wait);
``run_async`` is the same for trio callers and is cancellable: cancelling kills the
command's whole process tree, waits for it, and re-raises ``Cancelled``.

A sandbox started by the API leads a process group of its own, so a timeout or a
cancellation can kill every process of it (the group, and any descendant that left it).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import select
import signal
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from . import launch
from ._fastrun import command_environ
from .audit import AuditLog, AuditSeal, DecisionRecord
from .errors import SandlockError, TimeoutExpired
from .names import NameOptions, Names, Plan
from .policy import Policy, Resolver
from .profile import load_profile
from .report import Observer
from .supervisor import Supervisor

__all__ = ["Result", "Sandbox"]

StrPath = str | os.PathLike[str]


@dataclass(slots=True)
class Result:
    """What a sandboxed run came to."""

    exit_code: int
    """The command's exit status; 128+N when signal N killed it."""
    signal: int | None
    """The signal that killed the command, if one did."""
    stdout: bytes | None
    """Captured standard output (None unless ``capture_output``)."""
    stderr: bytes | None
    """Captured standard error (None unless ``capture_output``)."""
    denied: list[DecisionRecord] = field(default_factory=list)
    """Every refused call, in order."""
    duration: float = 0.0
    """Wall time of the run, in seconds."""
    audit: AuditSeal | None = None
    """With ``audit``: how this run's part of the log ended (its head for
    ``sandlock audit verify --head``, and whether the file was removed or replaced
    meanwhile). None when the run wrote no record."""

    @property
    def success(self) -> bool:
        """True when the command exited with status 0."""
        return self.exit_code == 0


class Sandbox:
    """An egress policy to run commands under. Build once, ``run`` many times.

    The rules are the CLI's (``--net-allow``/``--net-deny``/``--unix-allow`` strings);
    hostnames are resolved here, so a bad rule raises :class:`~sandlock.PolicyError` before anything
    runs. ``audit`` names a JSON-lines file that receives every decision. ``names``
    chooses how hostname rules behave (the CLI's --dns-proxy, --dns-upstream, ...; see
    :class:`~sandlock.names.NameOptions`); each run gets its own DNS forwarder.
    """

    def __init__(
        self,
        net_allow: Sequence[str] = (),
        net_deny: Sequence[str] = (),
        audit: StrPath | None = None,
        *,
        unix_allow: Sequence[str] = (),
        names: NameOptions | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        options = names or NameOptions()
        self._plan = Plan(
            list(net_allow), list(net_deny), options, resolver=resolver, unix_allow=unix_allow
        )
        self.policy = self._plan.policy
        self.audit = os.fspath(audit) if audit is not None else None

    @classmethod
    def from_profile(cls, path: StrPath, *, audit: StrPath | None = None) -> Sandbox:
        """A sandbox from a TOML profile with ``net_allow``, ``net_deny`` and ``unix_allow``
        lists."""
        allow, deny, unix_allow = load_profile(path)
        return cls(allow, deny, audit, unix_allow=unix_allow)

    def run(
        self,
        cmd: Sequence[StrPath],
        *,
        timeout: float | None = None,
        capture_output: bool = False,
        input: bytes | None = None,
        cwd: StrPath | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Result:
        """Run ``cmd`` under this sandbox and wait for it (see ``run_async``)."""
        try:
            trio.lowlevel.current_trio_token()
        except RuntimeError:
            pass  # no trio loop in this thread: the normal case
        else:
            raise SandlockError(
                "Sandbox.run() blocks and cannot be called from a trio task; "
                "use `await sandbox.run_async(...)`"
            )
        run = _Run([os.fspath(c) for c in cmd], self.policy, self._plan, self.audit)
        return run.execute_blocking(timeout, capture_output, input, cwd, env)

    async def run_async(
        self,
        cmd: Sequence[StrPath],
        *,
        timeout: float | None = None,
        capture_output: bool = False,
        input: bytes | None = None,
        cwd: StrPath | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Result:
        """Run ``cmd`` and wait for it, from trio. Raises TimeoutExpired after ``timeout``
        seconds (the tree killed, partial output attached), LaunchError if it cannot start."""
        argv = [os.fspath(c) for c in cmd]
        run = _Run(argv, self.policy, self._plan, self.audit)
        return await run.execute(timeout, capture_output, input, cwd, env)


class _Run:
    """One run of one command: its pipes, its supervisor, its records."""

    def __init__(self, argv: list[str], policy: Policy, plan: Plan, audit: str | None) -> None:
        self.argv = argv
        self.policy = policy
        self.plan = plan
        self.audit_path = audit
        self.sandbox_id = uuid.uuid4().hex[:8]
        self.out = bytearray()
        self.err = bytearray()
        self.audit: AuditLog | None = None
        self.audit_seal: AuditSeal | None = None

    async def execute(
        self,
        timeout: float | None,
        capture: bool,
        input: bytes | None,
        cwd: StrPath | None,
        env: Mapping[str, str] | None,
    ) -> Result:
        started = time.monotonic()
        pipes = _Pipes(capture, input is not None)
        observer = self._observer()
        with self._running(cwd, env, pipes, observer) as (child, sup, _):
            status, timed_out = await self._supervise(child, sup, pipes, input, timeout)
        return self._result(status, timed_out, timeout, capture, observer, started)

    def execute_blocking(
        self,
        timeout: float | None,
        capture: bool,
        input: bytes | None,
        cwd: StrPath | None,
        env: Mapping[str, str] | None,
    ) -> Result:
        """``execute`` for a blocking run, which waits, answers and moves its pipes without
        trio until a call must wait (launch.wait_child, Supervisor.serve_now), as the CLI
        does: a command whose calls all return at once costs no event loop."""
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        pipes = _Pipes(capture, input is not None)
        observer = self._observer()
        with self._running(cwd, env, pipes, observer) as (child, sup, names):
            status: int | None = None
            streams = _PipeStreams(pipes, self.out, self.err, input)
            if names is None or not names.dns_mode:  # (trio serves the DNS forwarder)
                status = _wait_blocking(child, deadline, sup, streams)
            if status is None:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                rest = streams.unsent()
                call = functools.partial(self._supervise, child, sup, pipes, rest, left)
                status, timed_out = trio.run(call)
            else:
                timed_out = status == launch.TIMED_OUT
                if timed_out:
                    status = _kill_and_reap(child)
        return self._result(status, timed_out, timeout, capture, observer, started)

    def _observer(self) -> Observer:
        self.audit = AuditLog(self.audit_path) if self.audit_path is not None else None
        return Observer(self.sandbox_id, audit=self.audit, keep_denied=True)

    @contextlib.contextmanager
    def _running(
        self,
        cwd: StrPath | None,
        env: Mapping[str, str] | None,
        pipes: _Pipes,
        observer: Observer,
    ) -> Iterator[tuple[launch.Child, Supervisor, Names | None]]:
        """The command started under its supervisor; on leaving, everything closed."""
        names = None
        try:
            names = self.plan.start(self.policy)
            child = launch.start(
                self.argv,
                env=command_environ(os.environ if env is None else env),
                cwd=os.fspath(cwd) if cwd is not None else None,
                stdio=pipes.child_ends(),
                new_pgrp=True,
                trap_open=names is not None and names.trap_open,
                open_names=names.vfiles.names if names is not None and names.vfiles else None,
            )
            try:
                pipes.close_child_ends()
                yield child, self._supervisor(child, observer, names), names
            finally:
                child.close()
        finally:
            pipes.close()
            if names is not None:
                names.close()
            if self.audit is not None:
                self.audit_seal = self.audit.close()

    def _supervisor(
        self, child: launch.Child, observer: Observer, names: Names | None
    ) -> Supervisor:
        assert child.gate is not None
        sup = Supervisor(child.gate, self.policy, observer, remember=not observer.hears_every_call)
        if names is not None:
            sup.use_names(names, observer.dns)
        return sup

    def _result(
        self,
        status: int,
        timed_out: bool,
        timeout: float | None,
        capture: bool,
        observer: Observer,
        started: float,
    ) -> Result:
        out = bytes(self.out) if capture else None
        err = bytes(self.err) if capture else None
        if timed_out:
            assert timeout is not None
            raise TimeoutExpired(self.argv, timeout, out, err)
        killed_by = status - 128 if status > 128 else None
        denied = observer.denied or []
        duration = time.monotonic() - started
        return Result(status, killed_by, out, err, denied, duration, self.audit_seal)

    async def _supervise(
        self,
        child: launch.Child,
        sup: Supervisor,
        pipes: _Pipes,
        input: bytes | None,
        timeout: float | None,
    ) -> tuple[int, bool]:
        """Serve the sandbox until the command has exited and its output is drained.

        The timeout covers both: a descendant that keeps the output pipe open after the
        command exited cannot stretch a run past it."""
        reaped = False
        try:
            async with trio.open_nursery() as outer:
                await outer.start(sup.serve)
                with trio.move_on_after(math.inf if timeout is None else timeout) as deadline:
                    async with trio.open_nursery() as io:
                        if pipes.stdin >= 0 and input is not None:
                            io.start_soon(_feed, pipes.take_stdin(), input)
                        if pipes.stdout >= 0:
                            io.start_soon(_drain, pipes.stdout, self.out)
                        if pipes.stderr >= 0:
                            io.start_soon(_drain, pipes.stderr, self.err)
                        await trio.lowlevel.wait_readable(child.pidfd)
                if deadline.cancelled_caught:
                    kill_tree(child.pid)  # exited or not, it is not reaped yet: still ours
                    await trio.lowlevel.wait_readable(child.pidfd)
                status = launch.exit_status(child.pidfd)
                reaped = True
                outer.cancel_scope.cancel()
        except BaseException:
            if not reaped:  # never signal a pid that may already belong to someone else
                with trio.CancelScope(shield=True):
                    kill_tree(child.pid)
                    await trio.lowlevel.wait_readable(child.pidfd)
                    launch.exit_status(child.pidfd)
            raise
        return status, deadline.cancelled_caught


class _Pipes:
    """The parent's and the child's ends of the stdio pipes a run asked for."""

    def __init__(self, capture: bool, feed: bool) -> None:
        self.stdin = self.stdout = self.stderr = -1
        self._child = [-1, -1, -1]
        if feed:
            self._child[0], self.stdin = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(self.stdin, False)
        if capture:
            self.stdout, self._child[1] = os.pipe2(os.O_CLOEXEC)
            self.stderr, self._child[2] = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(self.stdout, False)
            os.set_blocking(self.stderr, False)

    def take_stdin(self) -> int:
        """Our end of the child's stdin, now owned by the caller (who closes it)."""
        fd, self.stdin = self.stdin, -1
        return fd

    def child_ends(self) -> list[int]:
        return list(self._child)

    def close_child_ends(self) -> None:
        for i, fd in enumerate(self._child):
            if fd >= 0:
                os.close(fd)
                self._child[i] = -1

    def close(self) -> None:
        self.close_child_ends()
        for name in ("stdin", "stdout", "stderr"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


class _PipeStreams:
    """A blocking run's pipes, moved by launch.wait_child's own poll loop: output read into
    the run's buffers, input written, each pipe closed (and taken out of ``pipes``) at its
    end, as _feed and _drain do under trio, which take over whatever is left."""

    def __init__(
        self, pipes: _Pipes, out: bytearray, err: bytearray, input: bytes | None
    ) -> None:
        self.pipes = pipes
        self.into = {pipes.stdout: out, pipes.stderr: err}
        self.into.pop(-1, None)
        self.input = memoryview(input if input is not None else b"")
        if pipes.stdin >= 0 and not self.input:
            os.close(pipes.take_stdin())  # nothing to write: end of file at once

    def watched(self) -> list[tuple[int, int]]:
        fds = [(fd, select.POLLIN) for fd in self.into]
        return fds + ([(self.pipes.stdin, select.POLLOUT)] if self.pipes.stdin >= 0 else [])

    def ready(self, fd: int) -> bool:
        if fd == self.pipes.stdin:
            return self._write()
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return False
        if chunk:
            self.into[fd] += chunk
            return False
        del self.into[fd]
        self._close(fd)
        return True

    def _write(self) -> bool:
        try:
            self.input = self.input[os.write(self.pipes.stdin, self.input) :]
        except BlockingIOError:
            return False
        except BrokenPipeError:
            self.input = self.input[:0]  # the command stopped reading: as _feed
        if self.input:
            return False
        self._close(self.pipes.stdin)
        return True

    def _close(self, fd: int) -> None:
        for name in ("stdin", "stdout", "stderr"):
            if getattr(self.pipes, name) == fd:
                setattr(self.pipes, name, -1)
        os.close(fd)

    def done(self) -> bool:
        return not self.into and self.pipes.stdin < 0

    def unsent(self) -> bytes | None:
        """The input not written yet, for _feed (None once stdin is closed)."""
        return bytes(self.input) if self.pipes.stdin >= 0 else None


async def _feed(fd: int, data: bytes) -> None:
    """Write ``data`` to the child's stdin, then close it (the child sees end of file)."""
    view = memoryview(data)
    try:
        while view:
            try:
                n = os.write(fd, view)
                view = view[n:]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(fd)
    except BrokenPipeError:
        pass  # the command stopped reading: like subprocess, not an error
    finally:
        trio.lowlevel.notify_closing(fd)
        os.close(fd)


async def _drain(fd: int, into: bytearray) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(fd)
            continue
        if not chunk:
            return
        into += chunk


def _wait_blocking(
    child: launch.Child, deadline: float | None, sup: Supervisor, streams: _PipeStreams
) -> int | None:
    """launch.wait_child, answering calls and moving the pipes without trio until a call
    must wait; on any exception (KeyboardInterrupt) the tree is killed and reaped first,
    as a cancelled run_async does."""
    try:
        return launch.wait_child(
            child, -1, until_notified=True, deadline=deadline, serve=sup.serve_now, streams=streams
        )
    except BaseException:
        _kill_and_reap(child)
        raise


def _kill_and_reap(child: launch.Child) -> int:
    """Kill the not yet reaped child's tree and wait for its status."""
    kill_tree(child.pid)  # exited or not, it is not reaped yet: still ours
    status = launch.wait_child(child, -1, until_notified=False)
    assert status is not None
    return status


def kill_tree(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` and every descendant of ``pid``."""
    for target in [pid, *_descendants(pid)]:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for kid in children.get(todo.pop(), []):
            found.append(kid)
            todo.append(kid)
    return found
