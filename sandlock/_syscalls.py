"""The only module that touches the compiled ``sandlock._native`` (cffi).

Two kinds of wrapper live here:

* control-path calls (spawning, pidfds, signalfd) raise ``OSError`` naming the
  syscall, like psutil does;
* hot-path calls made on behalf of a sandboxed child return a negative errno
  instead of raising, because that errno is *data*: it goes back to the child as the
  result of its own syscall.

Everything else in the package stays free of ``ffi``/``lib``, so ``Any`` lives here.
"""

from __future__ import annotations

import errno as _errno
import os
import struct

from ._native import ffi, lib

# typing costs a launch ~7 ms, collections.abc ~1 ms (it loads collections): the launch
# path does without them at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Sequence
    from typing import Any

_lib: Any = lib
_ffi: Any = ffi

# ---- the numbers C and Python share: csrc/abi.h's, read from lib, never retyped -------
AUDIT_ARCH: int = _lib.SANDLOCK_AUDIT_ARCH  # x86-64, the only arch answered; the calls:
NR_OPEN: int = _lib.SANDLOCK_NR_OPEN  # the opens: the virtual files (vfiles.py)
NR_OPENAT: int = _lib.SANDLOCK_NR_OPENAT
NR_OPENAT2: int = _lib.SANDLOCK_NR_OPENAT2
NR_CONNECT: int = _lib.SANDLOCK_NR_CONNECT  # connect and the sends (onbehalf.py)
NR_SENDTO: int = _lib.SANDLOCK_NR_SENDTO
NR_SENDMSG: int = _lib.SANDLOCK_NR_SENDMSG
NR_SENDMMSG: int = _lib.SANDLOCK_NR_SENDMMSG
NR_BIND: int = _lib.SANDLOCK_NR_BIND  # what the command binds is its own (_local.py)
NR_ACCEPT: int = _lib.SANDLOCK_NR_ACCEPT  # accepts: the peer decided (inbound.py)
NR_ACCEPT4: int = _lib.SANDLOCK_NR_ACCEPT4
NR_SOCKET: int = _lib.SANDLOCK_NR_SOCKET  # only where sockets are made on behalf (_owned.py)
NR_SOCKETPAIR: int = _lib.SANDLOCK_NR_SOCKETPAIR
# seccomp(2): the filter's mode and flags, and the answers' flags.
SET_MODE_FILTER: int = _lib.SANDLOCK_SET_MODE_FILTER
FILTER_FLAG_NEW_LISTENER: int = _lib.SANDLOCK_FILTER_FLAG_NEW_LISTENER
FILTER_FLAG_WAIT_KILLABLE_RECV: int = _lib.SANDLOCK_FILTER_FLAG_WAIT_KILLABLE_RECV
NOTIF_FLAG_CONTINUE: int = _lib.SANDLOCK_NOTIF_FLAG_CONTINUE  # the kernel runs the call itself
ADDFD_FLAG_SEND: int = _lib.SANDLOCK_ADDFD_FLAG_SEND  # install and answer with the fd, atomically
# What is copied out of the child, and how much of it at most.
SOCKADDR_MAX: int = _lib.SANDLOCK_SOCKADDR_MAX  # sizeof(struct sockaddr_storage)
SOCKADDR_IN_SIZE: int = _lib.SANDLOCK_SOCKADDR_IN_SIZE
SIN6_LEN_RFC2133: int = _lib.SANDLOCK_SIN6_LEN_RFC2133  # an AF_INET6 name without scope id
MSGHDR_SIZE: int = _lib.SANDLOCK_MSGHDR_SIZE
MMSGHDR_SIZE: int = _lib.SANDLOCK_MMSGHDR_SIZE  # a msghdr, its msg_len, padding
MSG_LEN_OFFSET: int = _lib.SANDLOCK_MSG_LEN_OFFSET
UIO_MAXIOV: int = _lib.SANDLOCK_UIO_MAXIOV
PATH_MAX: int = _lib.SANDLOCK_PATH_MAX  # a path read out of the child, its NUL included
# What the spawned child reports when a step before exec fails (SpawnError.stage).
STAGE_PARENT: int = _lib.SANDLOCK_STAGE_PARENT  # pipe/fork/pidfd in the parent
STAGE_SETUP: int = _lib.SANDLOCK_STAGE_SETUP  # chdir, no_new_privs, close_range in the child
STAGE_FILTER: int = _lib.SANDLOCK_STAGE_FILTER  # seccomp(2) refused the filter
STAGE_EXEC: int = _lib.SANDLOCK_STAGE_EXEC  # execve failed
STAGE_LANDLOCK: int = _lib.SANDLOCK_STAGE_LANDLOCK  # entering the Landlock domain failed
# What the gate may answer itself (Gate flags).
GATE_CACHE: int = _lib.SANDLOCK_GATE_CACHE  # answer calls to destinations Python remembered
GATE_OPEN: int = _lib.SANDLOCK_GATE_OPEN  # CONTINUE opens that cannot name a virtual file
GATE_POLL: int = _lib.SANDLOCK_GATE_POLL  # wait in poll() even where RECV could (tests)
# The relay's data path (Splicer): each direction's pipe, and the pairs it takes at once.
RELAY_PIPE_SIZE: int = _lib.SANDLOCK_RELAY_PIPE_SIZE
RELAY_MAX_PAIRS: int = _lib.SANDLOCK_RELAY_MAX_PAIRS
_RELAY_NAME: int = _lib.SANDLOCK_RELAY_NOTE_NAME
FIRST_MAX: int = _lib.SANDLOCK_FIRST_MAX  # a connection's first record, read at most
FIRST_NAME_MAX: int = _lib.SANDLOCK_FIRST_NAME_MAX
FIRST_NEED_MORE: int = _lib.SANDLOCK_FIRST_NEED_MORE
FIRST_NAMED: int = _lib.SANDLOCK_FIRST_NAMED
FIRST_OTHER: int = _lib.SANDLOCK_FIRST_OTHER

_CODES = {"uint64_t": "Q", "uint32_t": "I", "int32_t": "i"}  # the field types of our structs


def _struct_of(ctype: str) -> struct.Struct:
    """``ctype`` as the compiler laid it out (ffi's offsets): its fields in order, an array
    as its items. (struct unpacks a handoff ~2x faster than a cdata's fields are read.)"""
    fmt, at = "=", 0
    for _name, field in _ffi.typeof(ctype).fields:
        t = field.type
        code = f"{t.length}{_CODES[t.item.cname]}" if t.kind == "array" else _CODES[t.cname]
        fmt += "x" * (field.offset - at) + code
        at = field.offset + _ffi.sizeof(t)
    return struct.Struct(fmt + "x" * (_ffi.sizeof(ctype) - at))


MSGHDR = _struct_of("struct sandlock_msghdr")  # name, namelen, iov, iovlen, control, ...


def _oserror(name: str, neg_errno: int) -> OSError:
    code = -neg_errno
    return OSError(code, f"{name}: {os.strerror(code)}")


# ---- spawning ----------------------------------------------------------------------


class SpawnError(OSError):
    """sandlock_spawn failed; ``stage`` says where (a STAGE_* value)."""

    def __init__(self, code: int, stage: int) -> None:
        super().__init__(code, os.strerror(code))
        self.stage = stage


def spawn(
    path: bytes,
    argv: Sequence[bytes],
    envp: Sequence[bytes],
    *,
    cwd: bytes | None,
    stdio: Sequence[int] = (-1, -1, -1),
    new_pgrp: bool = False,
    bpf: bytes,
    filter_flags: int,
    landlock_abi: int = 0,
    keep_fds: Sequence[int],
    unblock: Sequence[int],
) -> tuple[int, int, int]:
    """Start ``path`` under the filter: a short-lived thread installs it on itself (the
    listener is ours), forks the child, which inherits it, and ends (csrc/sandlock.c).

    With ``landlock_abi`` >= 2 (``landlock_abi()``'s answer) that thread first enters a
    Landlock domain of its own, which the child inherits. Returns (pid, pidfd, listener)."""
    argv_keep = [_ffi.new("char[]", a) for a in argv]
    argv_c = _ffi.new("char *[]", [*argv_keep, _ffi.NULL])
    env_keep = [_ffi.new("char[]", e) for e in envp]
    envp_c = _ffi.new("char *[]", [*env_keep, _ffi.NULL])
    listener = _ffi.new("int *")
    pidfd = _ffi.new("int *")
    stage = _ffi.new("int *")
    rc = _lib.sandlock_spawn(
        path,
        argv_c,
        envp_c,
        cwd if cwd is not None else _ffi.NULL,
        list(stdio),
        1 if new_pgrp else 0,
        bpf,
        len(bpf),
        filter_flags,
        landlock_abi,
        list(keep_fds),
        len(keep_fds),
        list(unblock),
        len(unblock),
        listener,
        pidfd,
        stage,
    )
    if rc < 0:
        raise SpawnError(-rc, stage[0])
    return rc, pidfd[0], listener[0]


def landlock_abi() -> int:
    """This kernel's Landlock ABI version; 0 when Landlock is missing or disabled."""
    rc: int = _lib.sandlock_landlock_abi()
    return rc if rc > 0 else 0


def protect_self() -> None:
    """Make this process non-dumpable (no ptrace or memory access by its own uid)."""
    rc = _lib.sandlock_protect_self()
    if rc < 0:
        raise _oserror("prctl(PR_SET_DUMPABLE)", rc)


# ---- the listener --------------------------------------------------------------------


class Notif:
    """One seccomp notification, as the gate hands it over (struct sandlock_handoff)."""

    __slots__ = ("arch", "args", "id", "nr", "pid")

    def __init__(self, id: int, pid: int, nr: int, arch: int, args: tuple[int, ...]) -> None:
        self.id = id
        self.pid = pid
        self.nr = nr
        self.arch = arch
        self.args = args

    def __repr__(self) -> str:
        return f"Notif(id={self.id}, pid={self.pid}, nr={self.nr})"


def int32(value: int) -> int:
    """A syscall argument register read as the C int the kernel sees."""
    value &= 0xFFFF_FFFF
    return value - (1 << 32) if value & 0x8000_0000 else value


def notif_send(listener: int, notif_id: int, val: int, error: int) -> int:
    """Answer a notification; -ENOENT when the thread is gone or was interrupted."""
    rc: int = _lib.sandlock_notif_send(listener, notif_id, val, error, 0)
    return rc


def notif_continue(listener: int, notif_id: int) -> int:
    """Answer "run it as usual" (SECCOMP_USER_NOTIF_FLAG_CONTINUE): 0 or -ENOENT."""
    rc: int = _lib.sandlock_notif_send(listener, notif_id, 0, 0, NOTIF_FLAG_CONTINUE)
    return rc


def notif_addfd(
    listener: int, notif_id: int, srcfd: int, newfd_flags: int = 0, flags: int = 0
) -> int:
    """SECCOMP_IOCTL_NOTIF_ADDFD: our ``srcfd`` installed in the notifying thread.

    Returns the thread's new fd number or a negative errno (-ENOENT: the notification is
    gone). ``newfd_flags`` is O_CLOEXEC or 0; with ``flags=ADDFD_FLAG_SEND`` the
    notification is answered with the new fd in the same step, and on any failure it is
    still waiting for an answer. EINTR is retried: an interrupted request was withdrawn
    before the thread saw it."""
    while True:
        rc: int = _lib.sandlock_notif_addfd(listener, notif_id, srcfd, newfd_flags, flags)
        if rc != -_errno.EINTR:
            return rc


def notif_id_valid(listener: int, notif_id: int) -> bool:
    """True while the notifying thread still waits for this answer (the pid is its own)."""
    return bool(_lib.sandlock_notif_id_valid(listener, notif_id) == 0)


# ---- pidfds and descriptors ------------------------------------------------------------


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    rc = _lib.sandlock_pidfd_send_signal(pidfd, sig)
    if rc < 0:
        raise _oserror("pidfd_send_signal", rc)


def getfd(tid: int, fd: int) -> int:
    """A duplicate of the thread's descriptor, or a negative errno."""
    rc: int = _lib.sandlock_getfd(tid, fd)
    return rc


class SockInfo:
    """A socket as the kernel has it: SO_DOMAIN, SO_TYPE, SO_PROTOCOL, O_NONBLOCK."""

    __slots__ = ("domain", "nonblocking", "protocol", "type")

    def __init__(self, domain: int, type: int, protocol: int, nonblocking: bool) -> None:
        self.domain = domain
        self.type = type
        self.protocol = protocol
        self.nonblocking = nonblocking


def sock_info(fd: int) -> SockInfo | int:
    """Family, type and protocol as the kernel has them, or a negative errno."""
    # A buffer per call: cffi releases the GIL during the call, and supervisors in other
    # threads (Sandbox.run from threads) call this concurrently.
    b = _ffi.new("int[4]")
    rc: int = _lib.sandlock_sock_info(fd, b, b + 1, b + 2, b + 3)
    if rc < 0:
        return rc
    return SockInfo(b[0], b[1], b[2], bool(b[3] & os.O_NONBLOCK))


def sock_error(fd: int) -> int:
    """SO_ERROR as a negative errno (0 when the socket has none)."""
    rc: int = _lib.sandlock_sock_error(fd)
    return -rc if rc > 0 else rc


def sock_sndtimeo(fd: int) -> float:
    """The socket's SO_SNDTIMEO in seconds; 0.0 when it has none (or on error)."""
    us: int = _lib.sandlock_sock_sndtimeo(fd)
    return us / 1e6 if us > 0 else 0.0


# ---- child memory -----------------------------------------------------------------------


def read_mem(tid: int, addr: int, size: int) -> bytes | int:
    """Exactly ``size`` bytes at ``addr`` in the thread, or -EFAULT/-ESRCH/..."""
    if size == 0:
        return b""
    if addr == 0:
        return -_errno.EFAULT
    buf = _ffi.new("char[]", size)
    n: int = _lib.sandlock_read_mem(tid, addr, buf, size)
    if n < 0:
        return n
    if n != size:
        return -_errno.EFAULT
    data: bytes = _ffi.buffer(buf, size)[:]
    return data


def write_mem(tid: int, addr: int, data: bytes) -> int:
    """Write ``data`` at ``addr`` in the thread; bytes written or a negative errno."""
    n: int = _lib.sandlock_write_mem(tid, addr, data, len(data))
    return n


# ---- the on-behalf syscalls ---------------------------------------------------------------


class Creds:
    """Credentials to perform a call with (struct sandlock_creds, csrc/caller.h): real,
    effective and fs uid and gid, groups, effective capabilities."""

    __slots__ = ("_c", "_groups")

    def __init__(
        self, uid: Sequence[int], gid: Sequence[int], groups: Sequence[int], caps: int
    ) -> None:
        self._groups = _ffi.new("uint32_t[]", list(groups) or [0])
        self._c = _ffi.new(
            "struct sandlock_creds *",
            {
                "uid": list(uid),
                "gid": list(gid),
                "caps": caps,
                "groups": self._groups,
                "ngroups": len(groups),
            },
        )


def connect(fd: int, addr: bytes, *, nonblock: bool, who: Creds | None = None) -> int:
    """connect(2) on our duplicate with our copy of the address: 0 or a negative errno.
    With ``who``, performed with those credentials (csrc/caller.h)."""
    if who is not None:
        rc: int = _lib.sandlock_connect_as(who._c, fd, addr, len(addr), 1 if nonblock else 0)
        return rc
    rc = _lib.sandlock_connect(fd, addr, len(addr), 1 if nonblock else 0)
    return rc


def socket_as(domain: int, type: int, protocol: int, who: Creds | None = None) -> int:
    """socket(2) in this process, as ``who`` if given: the fd or a negative errno."""
    rc: int = _lib.sandlock_socket_as(
        _ffi.NULL if who is None else who._c, domain, type, protocol
    )
    return rc


def socketpair_as(
    domain: int, type: int, protocol: int, who: Creds | None = None
) -> tuple[int, int] | int:
    """socketpair(2) in this process, as ``who`` if given: both fds or a negative errno."""
    sv = _ffi.new("int[2]")
    rc: int = _lib.sandlock_socketpair_as(
        _ffi.NULL if who is None else who._c, domain, type, protocol, sv
    )
    return rc if rc < 0 else (sv[0], sv[1])


# ---- sockets made on behalf (csrc/owned.h) --------------------------------------------

OWNED_UNKNOWN: int = _lib.SANDLOCK_OWNED_UNKNOWN  # owned_find: a socket we did not make
OWNED_MAX: int = _lib.SANDLOCK_OWNED_MAX  # sockets kept per sandbox (then EMFILE)


def owned_mode() -> bool:
    """Whether sockets are made on behalf here (pidfd_getfd refused; probed once)."""
    return bool(_lib.sandlock_owned_mode())


def owned_set_mode(on: bool) -> None:
    _lib.sandlock_owned_set_mode(1 if on else 0)


def owned_add(owner: int, fd: int) -> int:
    """Keep ``fd`` (ours from now on) in the table for ``owner``: 0 or a negative errno."""
    rc: int = _lib.sandlock_owned_add(owner, fd)
    return rc


def owned_sweep(owner: int, live: Sequence[int]) -> int:
    """Drop ``owner``'s sockets whose inode is not in ``live``; how many are left."""
    rc: int = _lib.sandlock_owned_sweep(owner, _ffi.new("uint64_t[]", list(live) or [0]), len(live))
    return rc


def owned_rekey(owner: int, new_owner: int) -> None:
    _lib.sandlock_owned_rekey(owner, new_owner)


def owned_forget(owner: int) -> None:
    _lib.sandlock_owned_forget(owner)


def owned_count(owner: int) -> int:
    rc: int = _lib.sandlock_owned_count(owner)
    return rc


def bind(fd: int, addr: bytes, who: Creds | None = None) -> int:
    """bind(2) of our duplicate to our copy of the address: 0 or a negative errno (as
    ``who``, if given: csrc/caller.h)."""
    rc: int = _lib.sandlock_bind_as(_ffi.NULL if who is None else who._c, fd, addr, len(addr))
    return rc


def sendmsg(
    fd: int, name: bytes | None, data: bytes, control: bytes, flags: int, who: Creds | None = None
) -> int:
    """sendmsg(2) with one iovec: bytes sent or a negative errno (as ``who``, if given)."""
    args = (
        fd,
        name if name is not None else _ffi.NULL,
        len(name) if name is not None else 0,
        data,
        len(data),
        control if control else _ffi.NULL,
        len(control),
        flags,
    )
    if who is not None:
        n: int = _lib.sandlock_sendmsg_as(who._c, *args)
        return n
    n = _lib.sandlock_sendmsg(*args)
    return n


def poll1(fd: int, events: int, timeout_ms: int = 0) -> int:
    rc: int = _lib.sandlock_poll1(fd, events, timeout_ms)
    return rc


# ---- signals --------------------------------------------------------------------------------


def signalfd(signals: Sequence[int]) -> int:
    """Block ``signals`` in this thread and read them from the returned descriptor."""
    rc: int = _lib.sandlock_signalfd(list(signals), len(signals))
    if rc < 0:
        raise _oserror("signalfd", rc)
    return rc


# ---- the gate (csrc/gate.h) ----------------------------------------------------------

_HANDOFF = _struct_of("struct sandlock_handoff")  # id, pid, nr, arch, fd, args[6], rc


def _names_arg(names: Collection[bytes] | None) -> tuple[Any, int]:
    """Open names as the gate takes them: each NUL-terminated, end to end; None: NULL."""
    if names is None:
        return _ffi.NULL, 0
    if any(b"\0" in name or b"/" in name for name in names):
        raise ValueError(f"not last path components: {sorted(names)!r}")
    joined = b"".join(name + b"\0" for name in sorted(names))
    return joined, len(joined)


class Handoff:
    """A notification handed over: untouched (``fd`` -1), or a blocking connect the gate
    started on its duplicate ``fd`` (now ours) with result ``rc``."""

    __slots__ = ("fd", "notif", "rc")

    def __init__(self, notif: Notif, fd: int, rc: int) -> None:
        self.notif = notif
        self.fd = fd
        self.rc = rc


class Gate:
    """The C thread that receives a listener's notifications and answers what Python
    already decided (see csrc/gate.h). ``fd`` is readable when it hands one over, and
    reads end-of-file once the sandbox is gone.

    ``flags``: GATE_*; ``open_names`` as for ``set_open_names``, from the first
    notification on. Once closed, the C side is freed: ``allow``, ``clear`` and the setters
    do nothing, ``park_connect`` takes nothing, and ``stats`` gives the counters as the gate
    stopped (a policy swap may land just after its sandbox ended: the daemon awaits)."""

    __slots__ = ("_final", "_g", "_held", "fd", "flags", "listener")

    def __init__(
        self, listener: int, flags: int = 0, open_names: Collection[bytes] | None = None
    ) -> None:
        out = _ffi.new("int[2]")
        names, size = _names_arg(open_names)
        g = _lib.sandlock_gate_start(listener, flags, names, size, out, out + 1)
        if g == _ffi.NULL:
            raise _oserror("sandlock_gate_start", out[1])
        self._g = g
        self._final = (0, 0, 0, 0)
        self.fd: int = out[0]
        self._held: list[Handoff] = []
        self.flags = flags
        self.listener = listener

    def set_flags(self, flags: int) -> None:
        """Replace the GATE_* flags; the thread sees them from its next notification."""
        self.flags = flags
        if self._g != _ffi.NULL:
            _lib.sandlock_gate_set_flags(self._g, flags)

    def set_open_names(self, names: Collection[bytes] | None) -> None:
        """With GATE_OPEN, hand over only opens whose last path component is one of
        ``names`` (VirtualFiles.names), CONTINUE the rest (csrc/fastpath.c says why that is
        Python's answer); None: hand over every open (so too if the names do not fit)."""
        arg, size = _names_arg(names)
        if self._g != _ffi.NULL:
            _lib.sandlock_gate_set_open_names(self._g, arg, size)

    def allow(
        self, domain: int, type: int, protocol: int, addr: bytes, port: int, relay: bool = False
    ) -> None:
        """Remember an allowed destination (``addr``: the packed 4 or 16 bytes); with
        ``relay``, a TCP connect to it goes to the relay's listener (``set_relay``) and is
        noted for the relay (``take_note``) instead."""
        if self._g != _ffi.NULL:
            _lib.sandlock_gate_allow(
                self._g, domain, type, protocol, addr, len(addr), port, int(relay)
            )

    def set_relay(self, domain: int, target: bytes | None) -> None:
        """The relay's listener sockaddr for sockets of ``domain`` (None: the relay
        stopped; connects remembered as relayed are handed over)."""
        if self._g != _ffi.NULL:
            arg = target or b""
            err = _lib.sandlock_gate_set_relay(self._g, domain, arg, len(arg))
            if err < 0:
                raise _oserror("sandlock_gate_set_relay", -err)

    def approve(self, name: str, addr: bytes, port: int) -> None:
        """Let the relay's C thread let a TLS connection to ``addr`` (4 or 16 bytes)
        ``port`` naming ``name`` through on its own until the policy changes (``clear``)."""
        if self._g != _ffi.NULL:
            raw = name.encode("ascii")
            _lib.sandlock_gate_approve(self._g, raw, len(raw), addr, len(addr), port)

    def take_note(self, local: bytes, port: int) -> tuple[bytes, int] | None:
        """The destination name and tid the gate noted for the relay's connection from
        ``local`` (16 bytes, IPv4 mapped) ``port``, taken; None if it sent none."""
        if self._g == _ffi.NULL:
            return None
        name = _ffi.new("uint8_t[]", _RELAY_NAME)
        out = _ffi.new("uint32_t[2]")
        if not _lib.sandlock_gate_take_note(self._g, local, port, name, out, out + 1):
            return None
        return bytes(_ffi.buffer(name, out[0])), int(out[1])

    def park_connect(self, notif_id: int, fd: int) -> bool:
        """Hand a blocking connect in progress on our duplicate ``fd`` to the gate, which
        answers the call when the handshake ends (csrc/connecting.h). True: ``fd`` is the
        gate's now; False: it could not take it, ``fd`` is still ours."""
        if self._g == _ffi.NULL:
            return False
        return bool(_lib.sandlock_gate_park_connect(self._g, notif_id, fd) == 0)

    def clear(self) -> None:
        """Forget every remembered destination (the policy changed)."""
        if self._g != _ffi.NULL:
            _lib.sandlock_gate_clear(self._g)

    def stats(self) -> tuple[int, int, int, int]:
        """What the gate answered itself: (connects, sends, opens), and its handoffs."""
        if self._g == _ffi.NULL:
            return self._final
        s = _ffi.new("struct sandlock_gate_stats *")
        _lib.sandlock_gate_stats(self._g, s)
        return (s.connects, s.sends, s.opens, s.handoffs)

    def read(self) -> list[Handoff] | None:
        """What was handed over so far ([] for nothing yet); None once the sandbox is gone."""
        out, self._held = self._held, []
        while True:
            try:
                raw = os.read(self.fd, _HANDOFF.size)
            except BlockingIOError:
                return out
            if not raw:
                return out or None
            id_, pid, nr, arch, fd, a0, a1, a2, a3, a4, a5, rc = _HANDOFF.unpack(raw)
            out.append(Handoff(Notif(id_, pid, nr, arch, (a0, a1, a2, a3, a4, a5)), fd, rc))

    def hold(self, handed: list[Handoff]) -> None:
        """Put back what ``read`` returned: the next ``read`` returns it first."""
        self._held = handed + self._held

    def close(self) -> None:
        """Stop the thread and close the handoff socket; the listener stays open."""
        if self.fd < 0:
            return
        os.close(self.fd)  # first: a thread blocked handing over gets EPIPE and stops
        self.fd = -1
        g, self._g = self._g, _ffi.NULL
        s = _ffi.new("struct sandlock_gate_stats *")
        _lib.sandlock_gate_stop(g, s)
        self._final = (s.connects, s.sends, s.opens, s.handoffs)


# ---- the relay's data path ---------------------------------------------------------


def first_tls(data: bytes) -> tuple[int, str | None]:
    """What the relay's C reader (csrc/clienthello.h) says of a connection's first bytes:
    FIRST_NEED_MORE, FIRST_OTHER, or FIRST_NAMED and the host name."""
    name = _ffi.new("char[]", FIRST_NAME_MAX)
    size = _ffi.new("size_t *")
    verdict = int(_lib.sandlock_first_tls(data, len(data), name, size))
    if verdict == FIRST_NAMED:
        return verdict, bytes(_ffi.buffer(name, size[0])).decode("ascii")
    return verdict, None


class Handed:
    """A connection the relay's front hands to Python (csrc/relay.h): ``fd``, the peer
    address it was accepted from (``local``: 16 bytes, IPv4 mapped; ``port``), the
    destination name the gate noted for it (None: none) and the thread that connected,
    whether its first record's time ran out, and the bytes read from it so far.
    (A plain class: typing stays off the launch path.)"""

    __slots__ = ("data", "dest", "fd", "local", "port", "tid", "timed_out")

    def __init__(
        self,
        fd: int,
        local: bytes,
        port: int,
        dest: bytes | None,
        tid: int,
        timed_out: bool,
        data: bytes,
    ) -> None:
        self.fd, self.local, self.port, self.dest = fd, local, port, dest
        self.tid, self.timed_out, self.data = tid, timed_out, data


class Splicer:
    """The C thread that moves bytes both ways between pairs of connected sockets
    (csrc/relay.h; --verify-names, relay.py). The thread starts with the first ``join``;
    ``close`` stops it and resets every pair still open. Once closed, ``join`` takes
    nothing and ``pairs`` is 0."""

    __slots__ = ("_handed", "_r")

    def __init__(self) -> None:
        err = _ffi.new("int *")
        r = _lib.sandlock_relay_new(err)
        if r == _ffi.NULL:
            raise _oserror("sandlock_relay_new", err[0])
        self._r = r
        self._handed = _ffi.new("struct sandlock_relay_handed *")

    def front(self, gate: Gate, l4: int, l6: int, first: float, connect: float) -> int:
        """Let the thread accept on the listeners ``l4`` and ``l6`` (-1: none; still the
        caller's, to close after ``close``) and let through the TLS connections the gate
        noted and approved (csrc/relay.h); the rest wait in ``next``, those whose first
        record took over ``first`` seconds marked timed out; a destination not reached
        in ``connect`` seconds is given up. The eventfd that is readable when some wait
        (the thread's: never close it)."""
        if self._r == _ffi.NULL or gate._g == _ffi.NULL:
            raise _oserror("sandlock_relay_front", _errno.ESHUTDOWN)
        first_ms, connect_ms = round(first * 1000), round(connect * 1000)
        rc = _lib.sandlock_relay_front(self._r, gate._g, l4, l6, first_ms, connect_ms)
        if rc < 0:
            raise _oserror("sandlock_relay_front", -rc)
        return int(rc)

    def next(self) -> Handed | None:
        """The next connection the front hands over (its fd now the caller's), or None."""
        if self._r == _ffi.NULL or not _lib.sandlock_relay_next(self._r, self._handed):
            return None
        h = self._handed
        dest = bytes(_ffi.buffer(h.dest, h.destlen)) if h.noted else None
        data = bytes(_ffi.buffer(h.data, h.len))
        return Handed(h.fd, bytes(h.local), h.port, dest, h.tid, bool(h.timed_out), data)

    def fast(self) -> int:
        """Connections the front let through itself."""
        return 0 if self._r == _ffi.NULL else int(_lib.sandlock_relay_fast(self._r))

    def join(self, a: int, b: int) -> int:
        """Hand the connected sockets ``a`` and ``b`` over: 0, and both fds are the
        thread's now (closed by it); -errno, and both are still the caller's."""
        if self._r == _ffi.NULL:
            return -_errno.ESHUTDOWN
        return int(_lib.sandlock_relay_join(self._r, a, b))

    def pairs(self) -> int:
        """Pairs still open."""
        return 0 if self._r == _ffi.NULL else int(_lib.sandlock_relay_pairs(self._r))

    def close(self) -> None:
        """Stop the thread and reset every pair still open (the sandbox ended)."""
        r, self._r = self._r, _ffi.NULL
        if r != _ffi.NULL:
            _lib.sandlock_relay_free(r)
