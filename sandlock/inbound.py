"""Inbound connections: accept and accept4, performed on our duplicate, the peer decided.

``send()`` on a connected socket is not trapped: its destination was decided at connect.
A connection the sandbox *accepted* was never connected from here, so its peer is
decided when it is accepted instead. The rule: a peer is allowed when a connect from the
sandbox to that *address* would be allowed on some port (``Policy.decide_peer``: a deny
rule covering the address refuses it whatever its ports).

The call is performed here, on a duplicate of the child's listening socket (letting the
kernel continue it would be a hole, as for every trapped call: the fd number could be
swapped in between). We accept without waiting and read the peer as the kernel reports
it, never from the child's memory:

* a refused peer is reset (SO_LINGER {1, 0}, then close: it sees RST, none of the
  server's bytes), reported, and we take the next queued connection (after 64 refused
  in a row, off the loop: a flood of them does not hold up the sandbox's other calls);
* when none is queued, a non-blocking socket answers EAGAIN; a blocking one waits for
  readability on our duplicate off the loop (a ``Pending``) and tries again, until
  SO_RCVTIMEO (then EAGAIN, as the kernel) or until the child stops waiting;
* an allowed connection (and any connection of an AF_UNIX socket: not egress, no
  decision) gets the peer's sockaddr written to the child's addr/addrlen as the kernel
  writes it, O_NONBLOCK if SOCK_NONBLOCK, and is the answer: installed in the child by
  the supervisor with ADDFD and SEND (answer.Install), which installs and answers in one
  step, O_CLOEXEC if SOCK_CLOEXEC. The peers refused on the way are reported with it, or
  before the call waits on (answer.Decided).

What the kernel does differently: a connection accepted when the child has stopped
waiting (it died meanwhile) is closed, not left queued; the child's listening socket is
non-blocking for the instant of our accept (sandlock_connect does the same).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

from . import _owned
from . import _syscalls as sys_
from ._msg import int32
from .answer import Answer, Install, Pending
from .events import Event
from .onbehalf import PROTOS, SYS_ACCEPT4, WATCHDOG, Call, Handlers
from .sockaddr import Dest, parse_sockaddr

_FLAGS = socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
_RESET = struct.pack("ii", 1, 0)  # struct linger: on, 0 seconds: close sends RST
_TIMEVAL = struct.Struct("qq")
_FAMILY = struct.Struct("=H")
_INT = struct.Struct("=i")
_BATCH = 64  # refused peers taken in one go


def accept(h: Handlers, n: sys_.Notif) -> Answer:
    """accept(fd, addr, addrlen) or accept4(fd, addr, addrlen, flags) for the child."""
    fd, addr_p, len_p = int32(n.args[0]), n.args[1], n.args[2]
    flags = int32(n.args[3]) if n.nr == SYS_ACCEPT4 else 0
    if flags & ~_FLAGS:
        return -errno.EINVAL
    call = _Accept(h, n, addr_p, len_p, flags)
    return h.on_socket(n, fd, call.start)


class _Accept:
    """One accept call of the child."""

    __slots__ = ("addr_p", "flags", "h", "len_p", "n")

    def __init__(self, h: Handlers, n: sys_.Notif, addr_p: int, len_p: int, flags: int) -> None:
        self.h = h
        self.n = n
        self.addr_p = addr_p
        self.len_p = len_p
        self.flags = flags

    @property
    def syscall(self) -> str:
        return "accept4" if self.n.nr == SYS_ACCEPT4 else "accept"

    def start(self, c: Call) -> Answer:
        return self._next(c, self._take(c), None)

    def _next(
        self, c: Call, got: tuple[socket.socket, bytes] | int | None, deadline: float | None
    ) -> Answer:
        """The answer to what ``_take`` got: the connection installed, an error, or a
        wait (after a batch of refused peers, or in a blocking accept with none queued)."""
        if isinstance(got, tuple):
            return self._deliver(got)
        if got is None or (got == -errno.EAGAIN and not c.info.nonblocking):
            flood = got is None
            return Pending(lambda: self._wait(c, flood, deadline))
        return got

    async def _wait(self, c: Call, flood: bool, deadline: float | None) -> Answer:
        """Wait off the loop, then take again: after a ``flood`` of refused peers only
        until the sandbox's other calls had their turn, else until our duplicate is
        readable; SO_RCVTIMEO after the first wait gives EAGAIN, as the kernel."""
        import trio

        if deadline is None:
            deadline = trio.current_time() + (_rcvtimeo(c.dup) or math.inf)
        with trio.move_on_at(deadline):
            if flood:
                await trio.lowlevel.checkpoint()
                rc = 0 if self.h.still_waiting(c.n) else -errno.ENOENT
            else:
                rc = await self._readable(c)
            if rc < 0:
                return rc
            return self._next(c, self._take(c), deadline)  # (waiting on: a new Pending)
        return -errno.EAGAIN  # SO_RCVTIMEO expired

    async def _readable(self, c: Call) -> int:
        """0 once our duplicate is readable and the child still waits; else -ENOENT."""
        import trio

        while True:
            with trio.move_on_after(WATCHDOG):
                await trio.lowlevel.wait_readable(c.dup)
                break
            if not self.h.still_waiting(c.n):
                return -errno.ENOENT
        return 0 if self.h.still_waiting(c.n) else -errno.ENOENT

    def _take(self, c: Call) -> tuple[socket.socket, bytes] | int | None:
        """The first queued connection the policy allows (each refused one reset on the
        way), -errno (-EAGAIN: none is queued), or None after _BATCH refused peers (a
        flood of them must not keep the supervisor from the sandbox's other calls)."""
        for _ in range(_BATCH):
            got = _accept_now(c.dup)
            if isinstance(got, int) or not c.ip:
                return got
            conn, peer = got
            allowed = False
            try:
                allowed = self._allowed(c, peer)
            finally:
                if not allowed:
                    with contextlib.suppress(OSError):
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                    conn.close()
            if allowed:
                return got
        return None

    def _allowed(self, c: Call, peer: bytes) -> bool:
        """Whether the policy allows this peer; a refusal is noted, for the report."""
        dest = parse_sockaddr(peer)
        if not isinstance(dest, Dest):  # the kernel gave no IP peer: fail closed
            return False
        proto = PROTOS.get((c.info.type, c.info.protocol), f"proto-{c.info.protocol}")
        decision = self.h.policy.decide_peer(proto, dest.addr)
        if not decision.allowed:
            event = Event(self.n.pid, self.syscall, proto, dest, decision, errno.ECONNREFUSED)
            c.note(event, -errno.ECONNREFUSED)
        return decision.allowed

    def _deliver(self, got: tuple[socket.socket, bytes]) -> Answer:
        """Write the peer to the child's addr/addrlen; the connection is the answer, to
        install in the child (the supervisor closes our descriptor of it then)."""
        conn, peer = got
        with conn:
            if self.addr_p:
                rc = self._write_peer(peer)
                if rc < 0:
                    return rc
            elif not self.h.still_waiting(self.n):
                return -errno.ENOENT
            conn.setblocking(not self.flags & socket.SOCK_NONBLOCK)  # shared with the child
            if sys_.owned_mode():  # our copy, before the child has it (_owned.py)
                rc = _owned.keep(self.h.listener, conn.fileno())
                if rc < 0:
                    return rc
            return Install(conn.detach(), cloexec=bool(self.flags & socket.SOCK_CLOEXEC))

    def _write_peer(self, peer: bytes) -> int:
        """As the kernel's move_addr_to_user: copy min(*addrlen, size) bytes of the peer's
        sockaddr, then store its size in *addrlen. 0 or -errno."""
        raw = sys_.read_mem(self.n.pid, self.len_p, _INT.size)
        if isinstance(raw, int):
            return raw
        if not self.h.still_waiting(self.n):  # the tid was the caller's while we read
            return -errno.ENOENT
        size = _INT.unpack(raw)[0]
        if size < 0:
            return -errno.EINVAL
        size = min(size, len(peer))
        if size and sys_.write_mem(self.n.pid, self.addr_p, peer[:size]) != size:
            return -errno.EFAULT
        if sys_.write_mem(self.n.pid, self.len_p, _INT.pack(len(peer))) != _INT.size:
            return -errno.EFAULT
        return 0


@contextlib.contextmanager
def _borrowed(fd: int) -> Iterator[socket.socket]:
    """A non-blocking socket object over our descriptor, for a moment: the descriptor
    stays open, and its O_NONBLOCK (the child's too) is as it was afterwards. (Making the
    object sets the flag when socket.setdefaulttimeout was called in this process.)"""
    blocking = os.get_blocking(fd)
    sock = socket.socket(fileno=fd)
    try:
        sock.setblocking(False)  # and a timeout of 0: the object never polls
        yield sock
    finally:
        sock.detach()
        if blocking:
            os.set_blocking(fd, True)


def _accept_now(dup: int) -> tuple[socket.socket, bytes] | int:
    """accept4 on our duplicate without waiting: the new connection (ours) and the
    peer's sockaddr as the kernel wrote it, or -errno."""
    try:
        with _borrowed(dup) as sock:
            conn, peer = sock.accept()
    except OSError as err:
        return -(err.errno or errno.EIO)
    try:
        return conn, _sockaddr(conn.family, peer)
    except (OSError, ValueError, TypeError):
        conn.close()
        return -errno.ECONNABORTED


def _sockaddr(family: int, peer: Any) -> bytes:
    """The sockaddr bytes the kernel wrote for ``peer`` (as the socket module parsed them:
    the parse loses nothing for AF_INET, AF_INET6 and AF_UNIX)."""
    fam = _FAMILY.pack(family)
    if family == socket.AF_INET:
        host, port = peer
        return fam + struct.pack("!H", port) + socket.inet_pton(family, host) + bytes(8)
    if family == socket.AF_INET6:
        host, port, flowinfo, scope_id = peer
        addr = socket.inet_pton(family, host.partition("%")[0])
        return fam + struct.pack("!HI", port, flowinfo) + addr + struct.pack("=I", scope_id)
    if family == socket.AF_UNIX:
        if isinstance(peer, bytes):  # an abstract name, its leading NUL included
            return fam + peer
        path = os.fsencode(peer)
        return fam + path + b"\0" if path else fam  # unnamed: the family alone
    raise ValueError(f"no peer address for family {family}")


def _rcvtimeo(fd: int) -> float:
    """The socket's SO_RCVTIMEO in seconds (0.0: none): a blocking accept's limit."""
    try:
        with _borrowed(fd) as sock:
            sec, usec = _TIMEVAL.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.size)
            )
    except OSError:
        return 0.0
    return max(float(sec + usec / 1e6), 0.0)
