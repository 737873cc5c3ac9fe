"""The Python API: ``Sandbox(net_allow=..., net_deny=...).run(cmd) -> Result``.

``run`` blocks and needs no trio loop of the caller's, so any thread may call it: it
waits, answers and moves its pipes with no event loop at all until a call must wait, and
only then loads trio and runs a loop of its own (session.py does both, for the CLI too);
``run_async`` is the same for trio callers and is cancellable: cancelling kills the
command's whole process tree, waits for it, and re-raises ``Cancelled``.

A sandbox started by the API leads a process group of its own, so a timeout or a
cancellation can kill every process of it (the group, and any descendant that left it).
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from ._fastrun import command_environ
from .audit import AuditLog, AuditSeal, DecisionRecord
from .errors import PolicyError, SandlockError, TimeoutExpired
from .plan import NameOptions, Plan, make
from .policy import Policy
from .profile import read_profile
from .report import Observer
from .session import TIMED_OUT, Session

TYPE_CHECKING = False
if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager
    from typing import Unpack

    from .ask import Asker, OnUnlisted
    from .plan import Resolver
    from .process import AsyncProcess, Process, StartOptions

PIPE = -1  # subprocess.PIPE: a pipe to the command's stream, ours to use
DEVNULL = -3  # subprocess.DEVNULL: /dev/null

__all__ = ["DEVNULL", "PIPE", "Result", "Sandbox"]

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
    :class:`~sandlock.plan.NameOptions`); each run gets its own DNS forwarder.
    ``dns_allow_private`` turns the rebinding guard off (``--dns-allow-private``; or
    ``NameOptions(dns_allow_private=True)``).
    ``verify_names``: the CLI's --verify-names (experimental; README, verified names).
    ``on_unlisted``: ask before refusing (README, asking; sandlock.ask): called with an
    :class:`~sandlock.AskRequest` for each call no rule allows (an explicit
    ``net_deny`` match is refused without asking), it returns ``Allow.ONCE``,
    ``Allow.RUN`` or ``Deny``; a plain function (run in a worker thread) or a coroutine
    function (awaited in the run's trio loop). Unanswered within ``ask_timeout``
    seconds: refused. Each run has answers of its own.
    ``http_allow``, ``http_deny``, ``http_ports``, ``http_tls``, ``http_upstream_ca``: the
    CLI's --http-allow, --http-deny, --http-ports, --http-tls and --http-upstream-ca
    (README: HTTP rules); they join those of ``names``.
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
        dns_allow_private: bool = False,
        verify_names: bool = False,
        on_unlisted: OnUnlisted | None = None,
        ask_timeout: float = 30.0,
        http_allow: Sequence[str] = (),
        http_deny: Sequence[str] = (),
        http_ports: Sequence[int] = (),
        http_tls: bool = False,
        http_upstream_ca: StrPath | None = None,
    ) -> None:
        if on_unlisted is not None and not callable(on_unlisted):
            raise TypeError(f"on_unlisted: {on_unlisted!r} is not callable")
        if not ask_timeout > 0:
            raise ValueError(f"ask_timeout: must be more than 0 seconds, not {ask_timeout!r}")
        self.on_unlisted, self.ask_timeout = on_unlisted, float(ask_timeout)
        options = names or NameOptions()
        wanted = {"dns_allow_private": dns_allow_private, "verify_names": verify_names}
        changed: dict[str, object] = {
            key: True for key, on in wanted.items() if on and not getattr(options, key)
        }
        if http_allow or http_deny or http_ports:
            if isinstance(http_allow, str) or isinstance(http_deny, str):
                raise PolicyError("http_allow and http_deny must be lists of rules, not a string")
            changed["http_allow"] = [*options.http_allow, *http_allow]
            changed["http_deny"] = [*options.http_deny, *http_deny]
            changed["http_ports"] = sorted({*options.http_ports, *http_ports})
        if http_tls and not options.http_tls:
            changed["http_tls"] = True
        if http_upstream_ca is not None:
            changed["http_upstream_ca"] = os.fspath(http_upstream_ca)
        if changed:  # (a copy: ``names`` stays the caller's)
            options = NameOptions.from_wire(options.to_wire() | changed)
        self._options, self._resolver = options, resolver
        self._plan = self._make_plan(net_allow, net_deny, unix_allow)
        self.policy = self._plan.policy
        self.audit = os.fspath(audit) if audit is not None else None

    def _make_plan(
        self,
        net_allow: Sequence[str],
        net_deny: Sequence[str],
        unix_allow: Sequence[str],
        options: NameOptions | None = None,
        *,
        interposed: bool = False,
    ) -> Plan:
        """These rules' plan, with this sandbox's name options or ``options`` (a swap's:
        plan.swap_options), PolicyError if one is bad."""
        return make(
            list(net_allow),
            list(net_deny),
            options if options is not None else self._options,
            resolver=self._resolver,
            unix_allow=unix_allow,
            interposed=interposed,
        )

    @classmethod
    def from_profile(cls, path: StrPath, *, audit: StrPath | None = None) -> Sandbox:
        """A sandbox from a TOML profile with ``net_allow``, ``net_deny`` and ``unix_allow``
        lists (and the name options ``dns_allow_private``, ``verify_names``)."""
        profile = read_profile(path)
        return cls(
            profile.net_allow,
            profile.net_deny,
            audit,
            unix_allow=profile.unix_allow,
            dns_allow_private=profile.dns_allow_private,
            verify_names=profile.verify_names,
            http_allow=profile.http_allow,
            http_deny=profile.http_deny,
        )

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
        if _trio_running():
            raise SandlockError(
                "Sandbox.run() blocks and cannot be called from a trio task; "
                "use `await sandbox.run_async(...)`"
            )
        run = _Run([os.fspath(c) for c in cmd], self.policy, self._plan, self.audit)
        run.asker = self.asker()
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
        run.asker = self.asker()
        return await run.execute(timeout, capture_output, input, cwd, env)

    def start(self, cmd: Sequence[StrPath], **options: Unpack[StartOptions]) -> Process:
        """Start ``cmd`` and return at once: a :class:`~sandlock.Process`, served by a
        thread of its own, whose policy ``set_policy`` replaces while it runs. Options:
        ``stdin``, ``stdout``, ``stderr`` (PIPE, the default; None, DEVNULL or a
        descriptor), ``cwd``, ``env``."""
        from .process import Process

        return Process(self, cmd, **options)

    def open_process(
        self, cmd: Sequence[StrPath], **options: Unpack[StartOptions]
    ) -> AbstractAsyncContextManager[AsyncProcess]:
        """``async with sb.open_process(cmd) as proc:`` the trio form of ``start``, served
        in the caller's loop, its pipes trio streams; leaving kills the tree."""
        from .process import open_process

        return open_process(self, cmd, **options)


    def asker(self) -> Asker | None:
        """A run's own answers to ``on_unlisted`` asks (None without a callback)."""
        if self.on_unlisted is None:
            return None
        from .ask import Asker

        return Asker(self.on_unlisted, self.ask_timeout)


def _trio_running() -> bool:
    """Whether this thread runs a trio loop (none can while trio is not even loaded: a
    blocking run loads it only if a call must wait)."""
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True


class _Run:
    """One run of one command: its pipes and its session, then its Result."""

    def __init__(self, argv: list[str], policy: Policy, plan: Plan, audit: str | None) -> None:
        self.argv = argv
        self.policy = policy
        self.plan = plan
        self.audit_path = audit
        self.sandbox_id = uuid.uuid4().hex[:8]
        self.out = bytearray()
        self.err = bytearray()
        self.observer: Observer | None = None
        self.audit_seal: AuditSeal | None = None
        self.asker: Asker | None = None

    def execute_blocking(
        self,
        timeout: float | None,
        capture: bool,
        input: bytes | None,
        cwd: StrPath | None,
        env: Mapping[str, str] | None,
    ) -> Result:
        """Run and wait for the command; without trio until a call must wait (session.py),
        as the CLI does: a command whose calls all return at once costs no event loop."""
        started = time.monotonic()
        with self._session(capture, input, cwd, env) as (session, streams):
            deadline = None if timeout is None else started + timeout
            status = session.run(deadline=deadline, streams=streams)
        return self._result(status, timeout, capture, started)

    async def execute(
        self,
        timeout: float | None,
        capture: bool,
        input: bytes | None,
        cwd: StrPath | None,
        env: Mapping[str, str] | None,
    ) -> Result:
        started = time.monotonic()
        with self._session(capture, input, cwd, env) as (session, streams):
            deadline = None if timeout is None else time.monotonic() + timeout
            status = await session.run_async(deadline=deadline, streams=streams)
        return self._result(status, timeout, capture, started)

    def _observer(self) -> Observer:
        audit = AuditLog(self.audit_path) if self.audit_path is not None else None
        return Observer(self.sandbox_id, audit=audit, keep_denied=True)

    @contextlib.contextmanager
    def _session(
        self,
        capture: bool,
        input: bytes | None,
        cwd: StrPath | None,
        env: Mapping[str, str] | None,
    ) -> Iterator[tuple[Session, _PipeStreams]]:
        """The command started in its session, its pipes ours; on leaving, all closed."""
        pipes = _Pipes(capture, input is not None)
        try:
            session = Session(
                self.policy,
                names=self.plan.start(self.policy),
                observe=self._observer,
                asker=self.asker,
            )
            try:
                self.observer = session.observer()  # (the audit log opens before the start)
                session.start(
                    self.argv,
                    env=command_environ(os.environ if env is None else env),
                    cwd=os.fspath(cwd) if cwd is not None else None,
                    stdio=pipes.child_ends(),
                    new_pgrp=True,
                )
                pipes.close_child_ends()
                yield session, _PipeStreams(pipes, self.out, self.err, input)
            finally:
                self.audit_seal = session.close()
        finally:
            pipes.close()

    def _result(self, status: int, timeout: float | None, capture: bool, started: float) -> Result:
        out = bytes(self.out) if capture else None
        err = bytes(self.err) if capture else None
        if status == TIMED_OUT:
            assert timeout is not None
            raise TimeoutExpired(self.argv, timeout, out, err)
        killed_by = status - 128 if status > 128 else None
        denied = (self.observer.denied if self.observer is not None else None) or []
        duration = time.monotonic() - started
        return Result(status, killed_by, out, err, denied, duration, self.audit_seal)


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
    """A run's pipes, moved by the session (the Streams of session.py), in wait_child's
    poll loop or under trio, which takes over whatever is left: output read into the
    run's buffers, input written, each pipe closed (and taken out of ``pipes``) at its
    end."""

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
            self.input = self.input[:0]  # the command stopped reading: as subprocess
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
