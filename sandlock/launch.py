"""Starting a command under the filter, with its listener in our hands before it execs.

The fork/exec path is in C (``sandlock_spawn``): a short-lived thread of ours enters the
Landlock domain and installs the filter on itself (a filter without TSYNC, no_new_privs
and a domain are the calling thread's only), so the listener lands in our own descriptor
table; that thread forks the child, which inherits all three, and ends. No pidfd_getfd
(a default container refuses it without CAP_SYS_PTRACE; README, "Containers"). The
child's copy of the listener is closed before exec (it is close-on-exec anyway). This
module only starts (the environment, the executable's path, Landlock, the spawn);
waiting and serving are session.py's. Nothing here imports trio: it is the lean part of
the launch path.
"""

from __future__ import annotations

import errno
import os
import sys
from _thread import get_ident  # (threading costs a launch ~1 ms)

from . import _owned
from . import _syscalls as sys_
from ._bpf import filter_bpf
from ._gatemode import gate_answers
from .errors import LaunchError, SupervisorError, UsageError

# signal (its enums) and collections.abc cost a launch ~2 ms; annotations need no import.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence

_SIGKILL = 9  # signal.SIGKILL on Linux

_FILTER_FLAGS = sys_.FILTER_FLAG_WAIT_KILLABLE_RECV

# Landlock ABIs: from 2 a domain that leaves files alone can be made (REFER granted
# beneath /; see csrc/sandlock.c), from 6 it scopes signals and abstract unix sockets too.
LANDLOCK_REFER = 2
LANDLOCK_SCOPES = 6
# A test and debugging switch: SANDLOCK_LANDLOCK=off makes sandlock behave as on a kernel
# without Landlock (the filter's refusals stand in; the warning says what is lost), and
# SANDLOCK_LANDLOCK=N as on one whose Landlock ABI is at most N.
LANDLOCK_ENV = "SANDLOCK_LANDLOCK"
_LOST = "signals and /proc/PID/mem of processes outside the sandbox are not contained"
_landlock: list[int] = []  # the ABI the sandboxes of this process get, once known


def landlock() -> int:
    """The Landlock ABI the sandbox's domain is made with (0: none).

    A domain keeps the sandbox out of processes outside it: no ptrace, /proc/PID/mem,
    process_vm_* or pidfd_getfd, and from ABI 6 no signals. Without one, the filter
    refuses what it can (ptrace attach, process_vm_*, pidfd_getfd). What is then not
    contained is said in one line on stderr, once per process."""
    if not _landlock:
        setting = os.environ.get(LANDLOCK_ENV, "")
        kernel = sys_.landlock_abi()
        cap = 0 if setting == "off" else int(setting) if setting.isdigit() else kernel
        abi = min(kernel, cap)
        _landlock.append(abi if abi >= LANDLOCK_REFER else 0)
        warning = None
        if abi < LANDLOCK_REFER:
            why = "unavailable" if abi == 0 else f"ABI {abi} unused (no REFER)"
            if cap < kernel and cap < LANDLOCK_REFER:
                why = f"off ({LANDLOCK_ENV}={setting})"
            warning = f"Landlock {why}: {_LOST}"
        elif abi < LANDLOCK_SCOPES:
            warning = (
                f"Landlock ABI {abi} has no scopes: signals to processes outside the "
                "sandbox are not contained"
            )
        if warning is not None:
            sys.stderr.write(f"sandlock: warning: {warning}\n")
            sys.stderr.flush()
    return _landlock[0]


class Child:
    """A started command: its pid, a pidfd for it, the listener of its filter, and the
    gate reading that listener (None when another process will serve it)."""

    __slots__ = ("gate", "listener", "pid", "pidfd")

    def __init__(self, pid: int, pidfd: int, listener: int, gate: sys_.Gate | None) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.listener = listener
        self.gate = gate

    def close(self) -> None:
        """Stop the gate, close our descriptors of the child (the listener and the pidfd)
        and our copies of its sockets (_owned.py)."""
        if self.gate is not None:
            self.gate.close()
        sys_.owned_forget(self.listener)
        for fd in (self.pidfd, self.listener):
            try:
                os.close(fd)
            except OSError:
                pass


def original_environ() -> dict[str, str]:
    """The environment this process was started with, before Python touched it.

    Python may add LC_CTYPE at start-up (PEP 538 locale coercion); a command run by the
    CLI must get the caller's environment exactly, so read it from /proc/self/environ."""
    try:
        with open("/proc/self/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return dict(os.environ)
    env = {}
    for entry in raw.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep and key:
            env[os.fsdecode(key)] = os.fsdecode(value)
    return env


def find_executable(name: str, env: Mapping[str, str]) -> str:
    """The path execve should get for ``name``, searched in the child's own PATH."""
    if "/" in name:
        return name
    for directory in env.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    raise LaunchError(f"{name}: command not found", exit_code=127)


def start(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    keep_fds: Sequence[int] = (),
    unblock_signals: Sequence[int] = (),
    stdio: Sequence[int] = (-1, -1, -1),
    new_pgrp: bool = False,
    gate: bool = True,
    trap_open: bool = False,
    open_names: Collection[bytes] | None = None,
) -> Child:
    """Start ``argv`` under the filter; raise LaunchError or SupervisorError if it cannot,
    UsageError if ``argv`` is empty.

    ``stdio`` gives descriptors for the child's 0, 1, 2 (-1: inherit ours); with
    ``new_pgrp`` the child leads its own process group (its pid is the group id). With
    ``gate`` a gate starts reading the listener at once; without, the listener is left
    for another process (the daemon) to serve. With ``trap_open`` the filter also
    traps opens, for the virtual files (vfiles.py), and the gate hands Python those whose
    last path component is one of ``open_names`` (VirtualFiles.names; None: every one)."""
    if not argv:
        raise UsageError("no command given")
    environ = dict(os.environ if env is None else env)
    path = find_executable(argv[0], environ)
    flags = sys_.GATE_OPEN if gate_answers() and trap_open else 0  # (checked before spawning)
    # The supervisor is this process (or a daemon that does the same): the sandbox, which
    # runs under our uid, must not be able to ptrace it or write its memory.
    sys_.protect_self()
    abi = landlock()
    own = _owned.enabled()
    spawning = -2 - get_ident() % (1 << 30)  # the sockets' owner until there is a listener
    if own:  # the sockets the command inherits from us, kept before it can use them
        inherited = [fd if fd >= 0 else i for i, fd in enumerate(stdio)]
        _owned.keep_inherited(spawning, [*inherited, *keep_fds])
    try:
        spawned = sys_.spawn(
            os.fsencode(path),
            [os.fsencode(a) for a in argv],
            [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in environ.items()],
            cwd=os.fsencode(cwd) if cwd is not None else None,
            stdio=stdio,
            new_pgrp=new_pgrp,
            bpf=filter_bpf(trap_open=trap_open, refuse_reach=abi == 0, own=own),
            filter_flags=_FILTER_FLAGS,
            landlock_abi=abi,
            keep_fds=keep_fds,
            unblock=unblock_signals,
        )
    except sys_.SpawnError as err:
        sys_.owned_forget(spawning)
        raise _launch_error(argv[0], cwd, err) from err
    pid, pidfd, listener = spawned
    sys_.owned_rekey(spawning, listener)
    try:
        return Child(pid, pidfd, listener, sys_.Gate(listener, flags, open_names) if gate else None)
    except OSError as err:
        sys_.pidfd_send_signal(pidfd, _SIGKILL)
        Child(pid, pidfd, listener, None).close()
        raise SupervisorError(f"starting the gate failed: {err.strerror}") from err


def _launch_error(name: str, cwd: str | None, err: sys_.SpawnError) -> Exception:
    reason = os.strerror(err.errno or 0)
    if err.stage == sys_.STAGE_EXEC:
        code = 127 if err.errno == errno.ENOENT else 126
        return LaunchError(f"cannot run {name}: {reason}", exit_code=code)
    if (
        err.stage == sys_.STAGE_SETUP
        and cwd is not None
        and err.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES)
    ):
        return LaunchError(f"cannot change directory to {cwd}: {reason}", exit_code=126)
    what = {
        sys_.STAGE_PARENT: "starting the child",
        sys_.STAGE_SETUP: "preparing the child",
        sys_.STAGE_FILTER: "installing the seccomp filter",
        sys_.STAGE_LANDLOCK: "entering the Landlock domain",
    }.get(err.stage, "starting the child")
    return SupervisorError(f"{what} failed: {reason}")
