"""Sockets made on behalf, where pidfd_getfd is refused (a default container).

Every on-behalf call acts on the supervisor's own duplicate of the child's socket, so
that what the child does to its descriptor table meanwhile changes nothing. Normally the
duplicate is copied with pidfd_getfd when the call comes. A default Docker container
(and Kubernetes ``RuntimeDefault``) refuses pidfd_getfd without CAP_SYS_PTRACE; there,
probed once per process (csrc/owned.h), the filter traps socket() and socketpair() too,
and this module makes the child's sockets itself:

* ``socket``/``socketpair``: the filter's refusals (``_filter.socket_refusal``, the same
  tables), then the call made **with the caller's credentials** (csrc/caller.h: a root
  supervisor makes no raw or netlink socket an unprivileged caller could not), our copy
  kept in the table before the child gets its descriptor (SECCOMP_IOCTL_NOTIF_ADDFD; for
  a pair, both installed and their numbers written into the child), close-on-exec as
  the caller asked with SOCK_CLOEXEC. Sockets accepted on behalf (inbound.py) are kept
  the same way (supervisor.send_answer).
* a later call names descriptor N of thread T: /proc/T/fd/N says which socket
  ("socket:[INODE]"), and the call is made on our copy of that socket;
* a socket the sandbox has that we did not make (received with SCM_RIGHTS from outside
  the sandbox, or inherited from a daemon's client) cannot be acted on: the call is
  refused (EPERM) and one line says why and what the user can grant. Descriptors the
  command inherits from us (``--keep-fds``, stdio) are kept at start (``keep_inherited``).
* ``reap``: our copy would keep a socket open after the sandbox closed it (no FIN for the
  peer, a listening socket that goes on accepting), so a task of the session drops,
  every ``SWEEP_INTERVAL`` seconds, the copies no process of the sandbox holds any more.

What degrades (README, "Containers"): a socket closed by the sandbox stays open on our
side up to ``SWEEP_INTERVAL``; a socket held only by a process that left the sandbox's
process tree (re-parented to init), or only in flight in an SCM_RIGHTS message, is
dropped and can no longer be used for trapped calls; a thread that unshared its
descriptor table is not looked at by the sweep.
"""

from __future__ import annotations

import errno
import os
import sys

from . import _syscalls as sys_
from ._syscalls import int32

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from ._syscalls import Notif
    from .answer import Answer
    from .onbehalf import Handlers

# A test and debugging switch: SANDLOCK_OWN_SOCKETS=1 makes the sockets on behalf even
# where pidfd_getfd works (to test and measure this path outside a container), =0 never.
OWN_ENV = "SANDLOCK_OWN_SOCKETS"
SWEEP_INTERVAL = 0.2  # seconds
_SOCK_CLOEXEC = os.O_CLOEXEC  # SOCK_CLOEXEC is O_CLOEXEC (no `import socket` on the launch path)
_warned: set[str] = set()

GRANT = (
    "grant it (docker run --cap-add SYS_PTRACE, or a seccomp profile allowing "
    "pidfd_getfd) to use such sockets"
)


def enabled() -> bool:
    """Whether this process makes the sandbox's sockets (decided once)."""
    setting = os.environ.get(OWN_ENV, "")
    if setting in ("0", "1"):
        sys_.owned_set_mode(setting == "1")
    return sys_.owned_mode()


def _say(kind: str, line: str) -> int:
    """One line on stderr (once per process for each ``kind``); -EPERM for the call."""
    if kind not in _warned:
        _warned.add(kind)
        sys.stderr.write(f"sandlock: {line}\n")
        sys.stderr.flush()
    return -errno.EPERM


def _other_user(tid: int) -> int:
    return _say(
        "user",
        f"pid {tid} runs as another user than sandlock, and without CAP_SYS_PTRACE (refused "
        "here: pidfd_getfd and ptrace access to other users' processes) sandlock cannot "
        "act for it, so its call was refused: grant it (docker run --cap-add SYS_PTRACE) "
        "or run sandlock as the command's user",
    )


def getfd(tid: int, fd: int) -> int:
    """Our duplicate of the thread's socket ``fd``, or a negative errno for the call; a
    socket we did not make, or a thread we may not look at, is refused with one line on
    stderr (once per process)."""
    dup = sys_.getfd(tid, fd)
    if dup == sys_.OWNED_UNKNOWN:
        return _say(
            "unknown",
            f"pid {tid} used a socket that was not made under sandlock (received from "
            f"outside the sandbox); pidfd_getfd is refused here, so the call was refused: "
            f"{GRANT}",
        )
    if dup == -errno.EACCES and sys_.owned_mode():
        return _other_user(tid)
    return dup


def keep_inherited(owner: int, fds: Iterable[int]) -> None:
    """Keep copies of those of our ``fds`` that are sockets, which the command inherits."""
    for fd in set(fds):
        if fd < 0:
            continue
        try:
            dup = os.dup(fd)
        except OSError:
            continue
        if sys_.owned_add(owner, dup) < 0:
            os.close(dup)


def keep(owner: int, fd: int) -> int:
    """Keep a copy of our new socket ``fd`` for ``owner``: 0 or a negative errno."""
    try:
        dup = os.dup(fd)
    except OSError as err:
        return -(err.errno or errno.ENOMEM)
    rc = sys_.owned_add(owner, dup)
    if rc < 0:
        os.close(dup)
    return rc


def socket_call(h: Handlers, n: Notif) -> Answer:
    """socket(family, type, protocol), made here as the caller and installed in it."""
    from .answer import Install

    family, kind, protocol = n.args[0], n.args[1], n.args[2]
    refused = _refusal(family, kind, protocol)
    if refused:
        return -refused
    who = _who(h, n)
    if isinstance(who, int):
        return who
    # (the kernel takes each argument as an int; the refusals saw all 64 bits, as the filter)
    fd = sys_.socket_as(int32(family), int32(kind) | _SOCK_CLOEXEC, int32(protocol), who)
    if fd < 0:
        return fd
    rc = keep(h.listener, fd)
    if rc < 0:
        os.close(fd)
        return rc
    return Install(fd, cloexec=bool(kind & _SOCK_CLOEXEC))


def socketpair_call(h: Handlers, n: Notif) -> Answer:
    """socketpair(family, type, protocol, sv): both made here, installed, numbers written."""
    family, kind, protocol = int32(n.args[0]), int32(n.args[1]), int32(n.args[2])
    sv = n.args[3]
    who = _who(h, n)
    if isinstance(who, int):
        return who
    pair = sys_.socketpair_as(family, kind | _SOCK_CLOEXEC, protocol, who)
    if isinstance(pair, int):
        return pair
    try:
        numbers = []
        for fd in pair:
            rc = keep(h.listener, fd)
            if rc < 0:
                return rc
            flags = os.O_CLOEXEC if kind & _SOCK_CLOEXEC else 0
            child_fd = sys_.notif_addfd(h.listener, n.id, fd, flags)
            if child_fd < 0:
                return child_fd
            numbers.append(child_fd)
        data = b"".join(x.to_bytes(4, sys.byteorder, signed=True) for x in numbers)
        if sys_.write_mem(n.pid, sv, data) != len(data):
            return -errno.EFAULT  # (as the kernel: the pair stays installed)
        return 0
    finally:
        for fd in pair:
            os.close(fd)


def _refusal(family: int, kind: int, protocol: int) -> int:
    from ._filter import socket_refusal

    return socket_refusal(family, kind, protocol)


def _who(h: Handlers, n: Notif) -> sys_.Creds | int | None:
    """The caller's credentials to make its socket with; one line if we may not read them
    (a root supervisor without CAP_SYS_PTRACE, a command of another uid)."""
    from . import _caller

    who = _caller.Caller(n.pid, lambda: h.still_waiting(n)).switch()
    if isinstance(who, int):
        try:
            os.readlink(f"/proc/{n.pid}/ns/user")
        except PermissionError:
            return _other_user(n.pid)
        except OSError:
            pass
    return who


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (by their parent, from /proc)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for kid in children.get(todo.pop(), []):
            found.append(kid)
            todo.append(kid)
    return found


def live_sockets(pids: Sequence[int]) -> list[int]:
    """The inodes of the sockets the processes ``pids`` hold."""
    live = []
    for pid in pids:
        base = f"/proc/{pid}/fd"
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            try:
                link = os.readlink(f"{base}/{name}")
            except OSError:
                continue
            if link.startswith("socket:["):
                live.append(int(link[8:-1]))
    return live


def sweep(owner: int, pid: int) -> int:
    """Drop ``owner``'s copies of sockets no process of the sandbox rooted at ``pid``
    holds any more; how many are left."""
    return sys_.owned_sweep(owner, live_sockets([pid, *descendants(pid)]))


async def reap(owner: int, pid: int) -> None:
    """``sweep`` every SWEEP_INTERVAL seconds, until cancelled."""
    import trio

    while True:
        await trio.sleep(SWEEP_INTERVAL)
        if sys_.owned_count(owner):
            sweep(owner, pid)
