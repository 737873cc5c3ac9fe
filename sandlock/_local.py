"""Non-IP sockets (AF_UNIX, AF_NETLINK): performed on our duplicate, AF_UNIX decided.

Letting the kernel continue such a call would be a hole: between our look at fd N and
the kernel resuming the call, another thread of the child can dup2() an AF_INET socket
onto N, and the kernel would then read an address we never saw. So these calls are
performed on behalf of the child too, after two translations that make the
supervisor's call mean what the child's would have meant:

* an AF_UNIX path is resolved where the child stands: a relative path against the
  child's working directory and an absolute one against its root, through
  ``/proc/self/fd/N/...`` on an O_PATH descriptor of that directory;
* descriptors passed with SCM_RIGHTS are the child's numbers: each is duplicated into
  the supervisor (pidfd_getfd) and the message carries our duplicates.

The call runs with the child's credentials where ours are more (_caller.py). What cannot
be made identical: a peer that asks for credentials (SO_PEERCRED, SO_PASSCRED) sees the
supervisor's pid (with the child's uid and gid).

AF_UNIX is egress too: a socket served outside the sandbox (docker.sock, an ssh-agent,
the sandlock daemon) is a way out. ``UnixGuard`` decides every AF_UNIX connect, and every
send that names a socket: reachable are the sockets the sandbox bound during this run
(its ``bind`` calls are trapped and performed here, and the socket recorded by its
inode and sock_diag cookie, which is never reused), and what a ``--unix-allow`` rule
allows (unixrules.py); netlink stays unrestricted. A path is opened O_PATH first and the
call made to ``/proc/self/fd/N``: the inode decided on is the one reached, whatever the
child renames meanwhile. A socket recorded as bound inside counts only while it is alive
and still bound to that inode or name (sock_diag says), so an inode number or an
abstract name that an outside socket takes over later is not inside.
"""

from __future__ import annotations

import errno
import os
import queue
import socket
import stat
import struct
import threading
from collections.abc import Callable
from typing import NamedTuple

from . import _owned
from . import _syscalls as sys_
from ._msg import CMSG_HEADER, cmsgs
from .policy import Decision
from .unixrules import DAEMON_RULE, MARKER_PREFIX, UnixRules, is_daemon_socket

_SUN_OFFSET = 2  # sun_path follows sa_family
_SOL_SOCKET = socket.SOL_SOCKET
_SCM_RIGHTS = socket.SCM_RIGHTS


def child_path(tid: int, path: bytes, keep: list[int]) -> bytes | int:
    """The path of the child's sun_path ``path`` (no NUL) as the supervisor must open it,
    or a negative errno. Descriptors opened for it are appended to ``keep``."""
    if path.startswith(b"/"):
        if _root_is_ours(tid):
            # /proc/self is the child to the child, not us (its descriptors, its cwd)
            for own in (b"/proc/self/", b"/proc/thread-self/"):
                if path.startswith(own):
                    return b"/proc/%d/%s" % (tid, path[len(own) :])
            return path
        base, rel = f"/proc/{tid}/root", path.lstrip(b"/")
    else:
        base, rel = f"/proc/{tid}/cwd", path
    try:
        dirfd = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        return -(err.errno or errno.ENOENT)
    keep.append(dirfd)
    return b"/proc/self/fd/%d/%s" % (dirfd, rel)


def _sun_path(name: bytes) -> bytes:
    """The file-system path of a sockaddr_un, as the kernel reads it (up to a NUL)."""
    path = name[_SUN_OFFSET:]
    end = path.find(b"\0")
    return path if end < 0 else path[:end]


def _root_is_ours(tid: int) -> bool:
    try:
        return os.readlink(f"/proc/{tid}/root") == "/" and os.readlink("/proc/self/root") == "/"
    except OSError:
        return False


def translate_rights(tid: int, control: bytes, keep: list[int]) -> bytes | int:
    """Control data with every SCM_RIGHTS descriptor replaced by our duplicate of it."""
    found = cmsgs(control)
    if isinstance(found, int):
        return found
    out = bytearray(control)
    for m in found:
        if m.level != _SOL_SOCKET or m.kind != _SCM_RIGHTS:
            continue
        start = m.offset + CMSG_HEADER
        count = (m.length - CMSG_HEADER) // 4
        for i, fd in enumerate(struct.unpack_from(f"<{count}i", control, start)):
            dup = _owned.getfd(tid, fd)
            if dup < 0:
                return -errno.EBADF
            keep.append(dup)
            struct.pack_into("<i", out, start + 4 * i, dup)
    return bytes(out)


# ---- deciding AF_UNIX destinations --------------------------------------------------------

_SOCKADDR_UN_MAX = 110  # sizeof(struct sockaddr_un)
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLMSG_ERROR = 2
_UDIAG_SHOW = 0x1 | 0x2  # UDIAG_SHOW_NAME | UDIAG_SHOW_VFS
_UNIX_DIAG_NAME, _UNIX_DIAG_VFS = 0, 1
_NO_COOKIE = (0xFFFF_FFFF, 0xFFFF_FFFF)
_INO32 = 0xFFFF_FFFF
_PRUNE_AT = 4096  # recorded binds before the closed ones are looked for and forgotten
_DENY = Decision(allowed=False, rule=None, host=None)


class Verdict(NamedTuple):
    """What to do with an AF_UNIX name: the name to use (or a -errno to answer with at
    once), and, for a socket not bound inside, how it is shown and the decision."""

    name: bytes | int
    shown: bytes | None = None
    decision: Decision | None = None


class _Bound(NamedTuple):
    ino: int  # the socket's own inode (sockfs)
    cookie: tuple[int, int]


class _Diag(NamedTuple):
    name: bytes | None  # sun_path as bound (abstract: with its leading NUL)
    vfs: tuple[int, int] | None  # (st_dev, st_ino & 0xffffffff) of the socket file


class UnixGuard:
    """The AF_UNIX side of one sandbox: the sockets it bound, and the decisions."""

    def __init__(self) -> None:
        # (st_dev, st_ino) of a socket file, or an abstract name: the socket bound to it
        self._bound: dict[tuple[int, int] | bytes, _Bound] = {}
        self._nl: socket.socket | None = None

    # -- bind

    def bind(
        self, tid: int, dup: int, name: bytes, keep: list[int], who: sys_.Creds | None = None
    ) -> int:
        """bind(2) on our duplicate with the child's name (as ``who``), recorded if it
        succeeds."""
        if len(name) < 2 or len(name) > _SOCKADDR_UN_MAX:
            return -errno.EINVAL
        path = name[2:]
        if path[:1] == b"\0":
            if path[1:].startswith(MARKER_PREFIX):
                return -errno.EPERM  # a daemon's mark (unixrules.py) is not for sandboxes
            return self._record(_bind(dup, path, who), dup)
        if not path:  # autobind: the kernel picks an abstract name, visible to all
            return self._record(_bind(dup, b"", who), dup)
        given = _sun_path(name)
        fs = child_path(tid, given, keep)
        if isinstance(fs, int):
            return fs
        # Bound where the child stands, under its umask, by a thread with a working
        # directory and umask of its own: the socket keeps the very name the child gave
        # (getsockname, the peer's accept), translated only for a child in a chroot.
        at = fs if given.startswith(b"/") else given  # (fs is given when root is ours)
        rc = _binder().bind(dup, at, tid, _umask(tid), who)
        if rc < 0:
            return rc
        try:
            pin = os.open(fs, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return 0  # renamed away already: nothing recorded, a later connect is refused
        keep.append(pin)
        st = os.fstat(pin)
        return self._record(0, dup, (st.st_dev, st.st_ino))

    def _record(self, rc: int, dup: int, file: tuple[int, int] | None = None) -> int:
        """Remember the socket just bound on ``dup`` (``rc``: the bind's result)."""
        if rc < 0:
            return rc
        ino = os.fstat(dup).st_ino
        got = self._diag(ino, _NO_COOKIE)
        if got is None:
            return rc  # cannot tell what it is bound to: nothing recorded (fail closed)
        cookie, diag = got
        if len(self._bound) >= _PRUNE_AT:  # forget the sockets closed since
            for key, rec in list(self._bound.items()):
                if self._diag(rec.ino, rec.cookie) is None:
                    del self._bound[key]
        if file is not None:
            # The inode we opened must be the one the socket is bound to: if the child
            # renamed another file there meanwhile, nothing is recorded.
            if diag.vfs == (file[0], file[1] & _INO32):
                self._bound[file] = _Bound(ino, cookie)
        elif diag.name:
            self._bound[diag.name[1:]] = _Bound(ino, cookie)
        return rc

    # -- connect, and sends with a name

    def destination(
        self, tid: int, name: bytes, keep: list[int], rules: UnixRules | None
    ) -> Verdict:
        """Where the child's AF_UNIX ``name`` leads, and whether it may go there."""
        path = name[2:]
        if not path or len(name) > _SOCKADDR_UN_MAX:
            return Verdict(name)  # unnamed, or too long: the kernel says what is wrong
        if path[0] == 0:
            abstract = path[1:]
            if self._inside(abstract, b"\0" + abstract):
                return Verdict(name)
            decision = rules.decide_abstract(abstract) if rules is not None else _DENY
            return Verdict(name, b"@" + abstract, decision)
        fs = child_path(tid, _sun_path(name), keep)
        if isinstance(fs, int):
            return Verdict(fs)
        try:
            pin = os.open(fs, os.O_PATH | os.O_CLOEXEC)
        except OSError as err:
            return Verdict(-(err.errno or errno.ENOENT))  # what the kernel's lookup says
        keep.append(pin)
        st = os.fstat(pin)
        if not stat.S_ISSOCK(st.st_mode):
            return Verdict(-errno.ECONNREFUSED)  # as the kernel answers a non-socket
        pinned = name[:_SUN_OFFSET] + b"/proc/self/fd/%d\0" % pin
        if self._inside((st.st_dev, st.st_ino)):
            return Verdict(pinned)
        real = os.readlink(f"/proc/self/fd/{pin}")
        if rules is None:
            decision = _DENY
        else:
            decision = rules.decide_path(real, st.st_nlink)
            if decision.allowed and is_daemon_socket(st.st_dev, st.st_ino):
                decision = Decision(allowed=False, rule=DAEMON_RULE, host=None)
        return Verdict(pinned, os.fsencode(real), decision)

    def _inside(self, key: tuple[int, int] | bytes, bound_name: bytes | None = None) -> bool:
        """Whether ``key`` was bound by the sandbox, by a socket still alive and bound to
        it (a file's inode number, an abstract name, may pass to an outside socket)."""
        rec = self._bound.get(key)
        if rec is None:
            return False
        got = self._diag(rec.ino, rec.cookie)
        if got is None:
            del self._bound[key]  # closed: gone for good (cookies are never reused)
            return False
        diag = got[1]
        if isinstance(key, bytes):
            return diag.name == bound_name
        return diag.vfs == (key[0], key[1] & _INO32)

    def _diag(self, ino: int, cookie: tuple[int, int]) -> tuple[tuple[int, int], _Diag] | None:
        """(cookie, name and file) of the AF_UNIX socket with inode ``ino`` (and that
        cookie), from sock_diag; None if it is gone (or sock_diag fails)."""
        try:
            if self._nl is None:
                self._nl = socket.socket(
                    socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, _NETLINK_SOCK_DIAG
                )
            req = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 0, ino, _UDIAG_SHOW, *cookie)
            self._nl.send(struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY, 1, 0, 0) + req)
            data = self._nl.recv(4096)
        except OSError:
            return None
        length, kind = struct.unpack_from("=IH", data)
        if kind == _NLMSG_ERROR or length < 32:
            return None
        got_ino, c0, c1 = struct.unpack_from("=III", data, 20)
        if got_ino != ino:
            return None
        name = vfs = None
        off = 32
        while off + 4 <= length:
            alen, atype = struct.unpack_from("=HH", data, off)
            if alen < 4:
                break
            if atype == _UNIX_DIAG_NAME:
                name = data[off + 4 : off + alen]
            elif atype == _UNIX_DIAG_VFS and alen >= 12:
                vino, vdev = struct.unpack_from("=II", data, off + 4)
                vfs = (os.makedev(vdev >> 20, vdev & 0xFFFFF), vino)  # kernel dev_t: 12:20
            off += (alen + 3) & ~3
        return (c0, c1), _Diag(name, vfs)

    def close(self) -> None:
        if self._nl is not None:
            self._nl.close()
            self._nl = None


def _bind(dup: int, path: bytes, who: sys_.Creds | None) -> int:
    """bind(2) of our duplicate to ``path`` (b"": autobind; a leading NUL: abstract), as
    ``who`` (the child's credentials where ours are more: _caller.py)."""
    if path and path[0] != 0:
        path += b"\0"  # a pathname's length counts its terminating NUL, as libc's does
    return sys_.bind(dup, struct.pack("<H", socket.AF_UNIX) + path, who)


def _umask(tid: int) -> int:
    """The thread's umask (its /proc status); 0o777 if unreadable: born closed."""
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o777


class _Binder:
    """A thread that performs binds in the child's working directory and under its umask:
    it has a working directory and umask of its own (unshare(CLONE_FS)), so the rest of
    the process (other supervisors, the API's caller) never sees them change."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], int], queue.SimpleQueue[int]]]
        self._jobs = queue.SimpleQueue()
        threading.Thread(target=self._run, name="sandlock-bind", daemon=True).start()

    def _run(self) -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        own = libc.unshare(_CLONE_FS) == 0
        while True:
            job, done = self._jobs.get()
            done.put(job() if own else -errno.ENOSYS)

    def bind(self, dup: int, path: bytes, tid: int, umask: int, who: sys_.Creds | None) -> int:
        """bind(2) of ``dup`` to ``path`` from the thread ``tid``'s working directory (as
        ``who``: the switch is this thread's own)."""

        def job() -> int:
            try:
                cwd = os.open(f"/proc/{tid}/cwd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fchdir(cwd)
                finally:
                    os.close(cwd)
                os.umask(umask)
            except OSError as err:
                return -(err.errno or errno.ENOENT)
            return _bind(dup, path, who)

        done: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._jobs.put((job, done))
        return done.get()


_CLONE_FS = 0x200
_binders: list[_Binder] = []
_binders_lock = threading.Lock()


def _binder() -> _Binder:
    with _binders_lock:
        if not _binders:
            _binders.append(_Binder())
        return _binders[0]
