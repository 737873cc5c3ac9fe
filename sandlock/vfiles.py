"""Virtual files: the command sees our /etc/hosts (or /etc/resolv.conf), the disk keeps its own.

With the filter variant built by ``filter_bpf(trap_open=True)``, open, openat (when their
flags could be a plain read) and openat2 wait for the supervisor. ``VirtualFiles.handle_open``
reads the path out of the child, resolves it as the child would, and when it names one of
our files answers the open with it (the supervisor installs it); everything else is
answered SECCOMP_USER_NOTIF_FLAG_CONTINUE so that the kernel performs the open as usual.

Why SECCOMP_IOCTL_NOTIF_ADDFD with SECCOMP_ADDFD_FLAG_SEND. Installing the descriptor
and answering the open are one step: the kernel puts our file in the child's table and
makes the open return its number atomically. With two steps (ADDFD, then SEND with the
number) a signal between them would interrupt the open, the child would restart it, and
the first descriptor would leak in its table; and no descriptor number we chose could
collide with one a sibling thread opens meanwhile. O_CLOEXEC of the child's flags becomes
``newfd_flags`` (the only flag ADDFD takes); O_NONBLOCK is set on our description.

Why a new open file description per open. A descriptor shares its file offset (and status
flags) with every descriptor that came from the same open. If every open got the one
memfd description, a second ``open("/etc/hosts")`` in the same process, or in any process
of the sandbox, would start reading where the first stopped (at end of file: an empty
/etc/hosts). So each open re-opens the memfd through /proc/self/fd/N: same contents, own
offset. The memfd is sealed (no write, grow, shrink, or further seals), because every
child shares its inode: a child that reopens its descriptor for writing cannot change what
the others read. ``set`` replaces the memfd; opens already answered keep the old contents.

Why CONTINUE is acceptable for every other open. This is not a security boundary: the
network decisions are made elsewhere, on the supervisor's own copies. The kernel re-reads
the path when it performs a continued open, so a child that changes the path between our
look and the kernel's gets the file the kernel finds, as it would without us; the worst it
can achieve is to read the real /etc/hosts, which it could read anyway. For the same
reason the path is resolved from the supervisor's point of view (/proc/TID/cwd,
/proc/TID/fd/N, os.path.realpath) without guarding against races.

What is served, and what is not (all of it CONTINUEs):

* only x86-64 calls (the filter traps no others);
* only read-only intent: an access mode other than O_RDONLY, or O_CREAT, O_TRUNC,
  O_APPEND, O_PATH, O_DIRECTORY, O_TMPFILE (``NOT_SERVED_FLAGS``) get the real file (the
  filter does not even trap them for open/openat). O_APPEND is counted as write intent
  even with O_RDONLY: nobody reads with it, and it asks for the real file's semantics;
* O_NOFOLLOW when the path's last component is a symlink (the real open fails with ELOOP);
* openat2 with any RESOLVE_* flag (their rules are not emulated), or an ``open_how``
  whose bytes beyond the known 24 are not zero (the kernel answers E2BIG);
* a path whose last component is not the last component of a virtual path (or of its
  realpath): the cheap test of ``maybe_virtual``; a symlink of another name that points
  to /etc/hosts therefore reads the real file. The gate applies the same test to the same
  names (``VirtualFiles.watch`` tells it them; csrc/fastpath.c) and CONTINUEs such opens
  itself, so every open gets the same answer with the gate's open filter on or off.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import struct
import threading
from collections.abc import Callable, Collection, Mapping, Sequence

from . import _syscalls as sys_
from .answer import Answer, Install, Reply

AUDIT_ARCH_X86_64 = sys_.AUDIT_ARCH
NR_OPEN = sys_.NR_OPEN
NR_OPENAT = sys_.NR_OPENAT
NR_OPENAT2 = sys_.NR_OPENAT2
OPEN_SYSCALLS = frozenset({NR_OPEN, NR_OPENAT, NR_OPENAT2})

HOSTS = "/etc/hosts"
RESOLV_CONF = "/etc/resolv.conf"
VIRTUAL_NAMES = frozenset({b"hosts", b"resolv.conf"})

# Flags that are never a plain read (see the module docstring); sandlock._filter's
# OPEN_NOT_TRAPPED must be the same value (tests/test_vfiles.py checks it).
NOT_SERVED_FLAGS = (
    os.O_ACCMODE | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_PATH | os.O_DIRECTORY | os.O_TMPFILE
)

_AT_FDCWD = -100
_PATH_MAX = sys_.PATH_MAX  # including the NUL (the gate reads no further either)
_PAGE = os.sysconf("SC_PAGESIZE")
_OPEN_HOW_SIZE_VER0 = 24  # struct open_how {u64 flags; u64 mode; u64 resolve;}
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


# ---- contents -----------------------------------------------------------------------


def hosts_text(host_addrs: Mapping[str, Sequence[str]]) -> bytes:
    """An /etc/hosts: localhost, then ``ADDR NAME`` per address of each hostname.

    Hostnames come sorted (case-insensitively), each with its addresses in the order
    given, duplicates dropped; wildcard keys (``*.example.com``) cannot be written in a
    hosts file and are skipped. When a rule names localhost itself, its lines are the
    rule's addresses only (a ``::1 localhost`` the policy did not resolve would send the
    command to a refused address first). An address that is not an IP address or a name
    that would break the line (empty, whitespace, ``#``) is a ValueError."""
    named = any(name.lower() == "localhost" for name in host_addrs)
    lines = [] if named else ["127.0.0.1 localhost", "::1 localhost"]
    for name in sorted(host_addrs, key=lambda h: (h.lower(), h)):
        if name.startswith("*"):
            continue
        if not name or "#" in name or any(c.isspace() or not c.isprintable() for c in name):
            raise ValueError(f"not a hostname for /etc/hosts: {name!r}")
        seen: set[str] = set()
        for addr in host_addrs[name]:
            text = str(ipaddress.ip_address(addr))
            if text not in seen:
                seen.add(text)
                lines.append(f"{text} {name}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def resolv_text(nameserver_ip: str) -> bytes:
    """An /etc/resolv.conf that sends every lookup to ``nameserver_ip``.

    ``options edns0`` lets the resolver take answers larger than 512 bytes over UDP. There
    is deliberately no ``search`` line (a short name is looked up as given, not expanded
    into names the rules never saw) and no ``trust-ad`` (the forwarder does not validate
    DNSSEC, so its AD bit must not be believed)."""
    ip = ipaddress.ip_address(nameserver_ip)
    return f"nameserver {ip}\noptions edns0\n".encode("ascii")


def maybe_virtual(path: bytes, names: Collection[bytes] = VIRTUAL_NAMES) -> bool:
    """Whether ``path`` can name a virtual file at all: its last component is one of
    ``names``. Pure and cheap: the fast test before any look at /proc."""
    return path.rpartition(b"/")[2] in names


def _sealed_memfd(name: str, content: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


# ---- reading the child ------------------------------------------------------------------


def read_path(tid: int, addr: int) -> bytes | int:
    """The NUL-terminated path at ``addr`` in thread ``tid``, or a negative errno.

    Read page by page: a path that ends near the end of a mapping must not be lost to
    a read that runs past it. -ENAMETOOLONG when no NUL comes within PATH_MAX bytes."""
    if addr == 0:
        return -errno.EFAULT
    out = b""
    while len(out) < _PATH_MAX:
        size = min(_PAGE - addr % _PAGE, _PATH_MAX - len(out))
        data = sys_.read_mem(tid, addr, size)
        if isinstance(data, int):
            return data
        nul = data.find(b"\0")
        if nul >= 0:
            return out + data[:nul]
        out += data
        addr += size
    return -errno.ENAMETOOLONG


class _Open:
    """The arguments of one open, openat or openat2 that matter here."""

    __slots__ = ("dirfd", "flags", "path")

    def __init__(self, dirfd: int, path: bytes, flags: int) -> None:
        self.dirfd = dirfd
        self.path = path
        self.flags = flags


def _flags_of(n: sys_.Notif) -> int | None:
    """The open flags, or None when the call is not one we would serve."""
    if n.nr == NR_OPEN:
        return n.args[1] & 0xFFFF_FFFF  # the kernel takes an int
    if n.nr == NR_OPENAT:
        return n.args[2] & 0xFFFF_FFFF
    size = n.args[3]
    if size < _OPEN_HOW_SIZE_VER0 or size > _PAGE:
        return None  # EINVAL / E2BIG from the kernel
    how = sys_.read_mem(n.pid, n.args[2], size)
    if isinstance(how, int):
        return None
    flags, mode, resolve = struct.unpack_from("=QQQ", how)
    if resolve or mode or flags >> 32 or how[_OPEN_HOW_SIZE_VER0:].strip(b"\0"):
        return None  # RESOLVE_* not emulated; the rest the kernel refuses
    return int(flags)


def _read_open(n: sys_.Notif, names: Collection[bytes]) -> _Open | None:
    """What the child asks to open, if it could be a read of a virtual file."""
    flags = _flags_of(n)
    if flags is None or flags & NOT_SERVED_FLAGS:
        return None
    if n.nr == NR_OPEN:
        dirfd, addr = _AT_FDCWD, n.args[0]
    else:
        dirfd, addr = sys_.int32(n.args[0]), n.args[1]
    path = read_path(n.pid, addr)
    if isinstance(path, int) or not maybe_virtual(path, names):
        return None
    return _Open(dirfd, path, flags)


def _resolve(tid: int, op: _Open) -> bytes | None:
    """The path the child opens, resolved (symlinks and all) from where we stand."""
    if op.path.startswith(b"/"):
        full = op.path
    elif op.dirfd == _AT_FDCWD:
        full = b"/proc/%d/cwd/%s" % (tid, op.path)
    elif op.dirfd >= 0:
        full = b"/proc/%d/fd/%d/%s" % (tid, op.dirfd, op.path)
    else:
        return None  # EBADF from the kernel
    if op.flags & os.O_NOFOLLOW:
        head, _, tail = full.rpartition(b"/")
        if os.path.islink(os.path.realpath(head or b"/") + b"/" + tail):
            return None  # ELOOP from the kernel
    return os.path.realpath(full)


# ---- the files -------------------------------------------------------------------------


class VirtualFiles:
    """Contents by absolute path, each in a sealed memfd, served to the child's opens.

    ``set`` and ``handle_open`` may be called from different threads. ``handle_open``
    makes a few quick blocking syscalls (/proc, process_vm_readv, the ADDFD ioctl)."""

    __slots__ = ("_aliases", "_fds", "_lock", "_names", "_watcher")

    def __init__(self) -> None:
        self._fds: dict[bytes, int] = {}  # normalised path -> sealed memfd
        self._aliases: dict[bytes, bytes] = {}  # path or its realpath -> normalised path
        self._names: frozenset[bytes] = frozenset()
        self._watcher: Callable[[frozenset[bytes]], object] | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> VirtualFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def paths(self) -> list[str]:
        """The virtual paths, sorted."""
        with self._lock:
            return sorted(os.fsdecode(p) for p in self._fds)

    @property
    def names(self) -> frozenset[bytes]:
        """Last components of the virtual paths and their realpaths (for maybe_virtual)."""
        return self._names

    def watch(self, watcher: Callable[[frozenset[bytes]], object] | None) -> None:
        """Tell ``watcher`` the names now and after every change (the gate's
        ``set_open_names``: Supervisor.use_names); None: nobody. Told under the lock, so
        the last names it hears are the names."""
        with self._lock:
            self._watcher = watcher
            if watcher is not None:
                watcher(self._names)

    def set(self, path: str, content: bytes) -> None:
        """Serve ``content`` for ``path`` from now on (replacing what was served before).

        Where ``path`` is a symlink, the file it points to (as of now) is served too."""
        if not os.path.isabs(path):
            raise ValueError(f"a virtual file needs an absolute path, not {path!r}")
        key = b"/" + os.fsencode(os.path.normpath(path)).lstrip(b"/")  # normpath keeps "//"
        memfd = _sealed_memfd(os.path.basename(path), bytes(content))
        with self._lock:
            old = self._fds.get(key)
            self._fds[key] = memfd
            self._rebuild()
        if old is not None:
            os.close(old)

    def close(self) -> None:
        """Close every memfd; nothing is served afterwards."""
        with self._lock:
            fds = list(self._fds.values())
            self._fds.clear()
            self._rebuild()
        for fd in fds:
            os.close(fd)

    def _rebuild(self) -> None:
        aliases: dict[bytes, bytes] = {}
        for key in self._fds:
            aliases[os.path.realpath(key)] = key
        for key in self._fds:
            aliases[key] = key  # a path named outright wins over another's realpath
        self._aliases = aliases
        self._names = frozenset(p.rpartition(b"/")[2] for p in aliases)
        if self._watcher is not None:
            self._watcher(self._names)

    def lookup(self, resolved: bytes) -> bytes | None:
        """The virtual path served for an opened path that resolved to ``resolved``."""
        return self._aliases.get(resolved)

    def handle_open(self, listener: int, n: sys_.Notif) -> Answer:
        """How to answer an open: with our file (answer.Install: ADDFD + SEND) when it
        opens a virtual file read-only, -ENOENT when the thread is gone meanwhile, else
        CONTINUE: not an open of a virtual file, not read-only, or anything unexpected
        on the way."""
        if n.arch != AUDIT_ARCH_X86_64 or n.nr not in OPEN_SYSCALLS or not self._fds:
            return Reply.CONTINUE
        try:
            op = _read_open(n, self._names)
            if op is None:
                return Reply.CONTINUE
            resolved = _resolve(n.pid, op)
            if resolved is None or self.lookup(resolved) is None:
                return Reply.CONTINUE
            # The path and the cwd were read from a thread that may have died and had
            # its tid reused: they count only if the notification is still alive.
            if not sys_.notif_id_valid(listener, n.id):
                return -errno.ENOENT
            return self._install(resolved, op.flags)
        except OSError:
            return Reply.CONTINUE

    def _install(self, resolved: bytes, flags: int) -> Answer:
        with self._lock:
            key = self._aliases.get(resolved)
            if key is None:  # closed meanwhile
                return Reply.CONTINUE
            # A description of our own for this open: its own offset (module docstring).
            # Opened under the lock, so set() cannot close the memfd (and the number be
            # reused by something else) in between.
            fd = os.open(
                f"/proc/self/fd/{self._fds[key]}",
                os.O_RDONLY | os.O_CLOEXEC | (flags & os.O_NONBLOCK),
            )
        # An install that fails for a reason not the child's own: the real file instead.
        return Install(fd, cloexec=bool(flags & os.O_CLOEXEC), fallback=Reply.CONTINUE)
