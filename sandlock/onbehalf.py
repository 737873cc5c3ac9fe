"""The trapped syscalls, decided on our copy and performed on our duplicate.

For each notification the handler copies what the call points at out of the child
(bounded, every length checked first), confirms with SECCOMP_IOCTL_NOTIF_ID_VALID that
the thread still waits (so the tid was not recycled under us), decides on the copy, and
performs the call itself on a duplicate of the child's socket with that copy. The
child's memory is never read again, so it cannot swap the address after the check.

What decides is the *socket*, as the kernel reports it on our duplicate (SO_DOMAIN,
SO_TYPE, SO_PROTOCOL), never what the child claims:

* a non-IP socket (AF_UNIX, AF_NETLINK) is not egress: the call continues untouched;
* a TCP socket ignores a destination unless MSG_FASTOPEN is set (a connect in
  disguise), so only then is the name decided;
* UDP and ICMP sends with a name are decided per message, sendmmsg per entry.

Nothing blocks the trio thread. A handler does the quick part synchronously and returns
the result; when the child's socket is blocking and the call would wait (a TCP handshake,
a full send buffer), it returns a ``Pending`` whose coroutine the supervisor runs as a
task: it waits for writability on our duplicate and finishes the call, so one slow
connect never delays the others.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from . import _msg
from . import _syscalls as sys_
from ._msg import Message, int32
from .policy import Decision, Policy
from .sockaddr import Dest, Invalid, NoDest, parse_sockaddr

SYS_CONNECT = 42
SYS_SENDTO = 44
SYS_SENDMSG = 46
SYS_SENDMMSG = 307
SYSCALL_NAMES = {
    SYS_CONNECT: "connect",
    SYS_SENDTO: "sendto",
    SYS_SENDMSG: "sendmsg",
    SYS_SENDMMSG: "sendmmsg",
}

MSG_DONTWAIT = socket.MSG_DONTWAIT
MSG_FASTOPEN = 0x2000_0000
_IP_DOMAINS = (socket.AF_INET, socket.AF_INET6)
_STREAM = socket.SOCK_STREAM
_PROTOS = {
    (socket.SOCK_STREAM, socket.IPPROTO_TCP): "tcp",
    (socket.SOCK_DGRAM, socket.IPPROTO_UDP): "udp",
    (socket.SOCK_DGRAM, socket.IPPROTO_ICMP): "icmp",
    (socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6): "icmp",
}
_WATCHDOG = 1.0  # seconds between "is the child still waiting?" checks while we wait


class Continue:
    """Let the kernel run the call itself: only for non-IP sockets."""


CONTINUE = Continue()


@dataclass(slots=True)
class Pending:
    """The call must wait; the supervisor runs ``finish`` as a task and answers with it."""

    finish: Callable[[], Awaitable[int]]


Result = int | Continue | Pending


@dataclass(frozen=True, slots=True)
class Event:
    """One decision, for whoever listens (the audit log, the denial report)."""

    pid: int
    syscall: str
    proto: str
    dest: Dest
    decision: Decision
    errno: int  # what the child got back: 0 on success


Listener = Callable[[Event], None]


class Handlers:
    """The on-behalf handlers of one sandbox. ``policy`` may be replaced at any time."""

    def __init__(self, listener: int, policy: Policy, on_event: Listener | None = None) -> None:
        self.listener = listener
        self.policy = policy
        self.on_event = on_event
        self._table: dict[int, Callable[[sys_.Notif], Result]] = {
            SYS_CONNECT: self.connect,
            SYS_SENDTO: self.sendto,
            SYS_SENDMSG: self.sendmsg,
            SYS_SENDMMSG: self.sendmmsg,
        }

    def handle(self, n: sys_.Notif) -> Result:
        """Decide and perform one trapped call: a result (>= 0 or -errno), or a Pending."""
        handler = self._table.get(n.nr)
        if handler is None:  # the filter traps nothing else; refuse whatever this is
            return -errno.ENOSYS
        return handler(n)

    # ---- the syscalls -----------------------------------------------------------------

    def connect(self, n: sys_.Notif) -> Result:
        fd, addr_p, addrlen = int32(n.args[0]), n.args[1], int32(n.args[2])
        return self._with_socket(n, fd, lambda dup, info: self._connect(n, dup, info, addr_p, addrlen))

    def sendto(self, n: sys_.Notif) -> Result:
        fd, buf_p, length, flags = int32(n.args[0]), n.args[1], n.args[2], int32(n.args[3])
        addr_p, addrlen = n.args[4], int32(n.args[5])

        def act(dup: int, info: sys_.SockInfo) -> Result:
            if length > _msg.MAX_DATA:
                return -errno.EMSGSIZE
            # A non-NULL name of length 0 is still a name to the kernel (EINVAL on UDP).
            name = b"" if addr_p and addrlen == 0 else _msg.read_name(n.pid, addr_p, addrlen)
            if isinstance(name, int):
                return name
            data = _msg.read_exact(n.pid, buf_p, length)
            if isinstance(data, int):
                return data
            if not self._still_waiting(n):
                return -errno.ENOENT
            return self._send(n, dup, info, "sendto", Message(name, data, b""), flags)

        return self._with_socket(n, fd, act)

    def sendmsg(self, n: sys_.Notif) -> Result:
        fd, msg_p, flags = int32(n.args[0]), n.args[1], int32(n.args[2])

        def act(dup: int, info: sys_.SockInfo) -> Result:
            hdr = _msg.read_exact(n.pid, msg_p, _msg.MSGHDR_SIZE)
            if isinstance(hdr, int):
                return hdr
            msg = _msg.read_msghdr(n.pid, hdr)
            if isinstance(msg, int):
                return msg
            if not self._still_waiting(n):
                return -errno.ENOENT
            return self._send(n, dup, info, "sendmsg", msg, flags)

        return self._with_socket(n, fd, act)

    def sendmmsg(self, n: sys_.Notif) -> Result:
        fd, vec_p, vlen, flags = int32(n.args[0]), n.args[1], n.args[2] & 0xFFFF_FFFF, int32(n.args[3])
        vlen = min(vlen, _msg.UIO_MAXIOV)  # the kernel clamps it too

        def act(dup: int, info: sys_.SockInfo) -> Result:
            if vlen == 0:
                return 0
            entries = _msg.read_mmsg_vector(n.pid, vec_p, vlen)
            if isinstance(entries, int):
                return entries
            msgs: list[Message] = []
            first_error = 0
            for raw in entries:
                msg = _msg.read_msghdr(n.pid, raw)
                if isinstance(msg, int):
                    first_error = msg
                    break
                msgs.append(msg)
            if not self._still_waiting(n):
                return -errno.ENOENT
            if not msgs:
                return first_error or -errno.EFAULT
            return self._sendmmsg(n, dup, info, vec_p, msgs, flags)

        return self._with_socket(n, fd, act)

    # ---- the shared steps -----------------------------------------------------------------

    def _with_socket(
        self, n: sys_.Notif, fd: int, act: Callable[[int, sys_.SockInfo], Result]
    ) -> Result:
        """Run ``act`` on a duplicate of the child's descriptor, closing it afterwards
        (or handing it to the Pending, which closes it when done)."""
        dup = sys_.getfd(n.pid, fd)
        if dup < 0:
            return -errno.EBADF if dup == -errno.EBADF else dup
        handed_over = False
        try:
            info = sys_.sock_info(dup)
            if isinstance(info, int):
                return -errno.ENOTSOCK if info == -errno.ENOTSOCK else info
            if info.domain not in _IP_DOMAINS:
                return CONTINUE
            result = act(dup, info)
            if isinstance(result, Pending):
                handed_over = True
                result = Pending(_closing(dup, result.finish))
            return result
        finally:
            if not handed_over:
                os.close(dup)

    def _still_waiting(self, n: sys_.Notif) -> bool:
        return sys_.notif_id_valid(self.listener, n.id)

    def _decide(self, n: sys_.Notif, syscall: str, info: sys_.SockInfo, dest: Dest) -> Event:
        proto = _PROTOS.get((info.type, info.protocol))
        if proto is None:  # the filter lets no such socket be made; fail closed anyway
            decision = Decision(allowed=False, rule=None, host=None)
            proto = f"proto-{info.protocol}"
        else:
            decision = self.policy.decide(proto, dest.addr, dest.port)
        return Event(n.pid, syscall, proto, dest, decision, 0 if decision.allowed else errno.ECONNREFUSED)

    def _report(self, event: Event, result: int) -> None:
        if self.on_event is not None:
            if event.decision.allowed and result < 0:
                event = Event(event.pid, event.syscall, event.proto, event.dest, event.decision, -result)
            self.on_event(event)

    def _check_name(
        self, n: sys_.Notif, info: sys_.SockInfo, syscall: str, msg: Message, flags: int
    ) -> Event | int | None:
        """Decide a message's destination: an allowed Event, a negative errno, or None
        when the message has no destination the kernel would use."""
        if msg.name is None:
            return None
        if info.type == _STREAM and not flags & MSG_FASTOPEN:
            return None  # a TCP socket ignores the name unless it is a fast-open connect
        udp4 = info.domain == socket.AF_INET and info.protocol == socket.IPPROTO_UDP
        dest = parse_sockaddr(msg.name, unspec_as_inet=udp4)
        if isinstance(dest, Invalid):
            return -dest.errno
        if isinstance(dest, NoDest):  # AF_UNSPEC on UDPv6: "no name", as the kernel reads it
            msg.name = None
            return None
        event = self._decide(n, syscall, info, dest)
        if not event.decision.allowed:
            self._report(event, -errno.ECONNREFUSED)
            return -errno.ECONNREFUSED
        return event

    # ---- connect ------------------------------------------------------------------------------

    def _connect(self, n: sys_.Notif, dup: int, info: sys_.SockInfo, addr_p: int, addrlen: int) -> Result:
        name = _msg.read_name(n.pid, addr_p, addrlen)
        if isinstance(name, int):
            return name
        if name is None:
            return -errno.EFAULT if addr_p == 0 and addrlen else -errno.EINVAL
        if not self._still_waiting(n):
            return -errno.ENOENT
        dest = parse_sockaddr(name)
        if isinstance(dest, Invalid):
            return -dest.errno
        if isinstance(dest, NoDest):  # AF_UNSPEC dissolves an association: not egress
            return sys_.connect(dup, name, nonblock=False)
        event = self._decide(n, "connect", info, dest)
        if not event.decision.allowed:
            self._report(event, -errno.ECONNREFUSED)
            return -errno.ECONNREFUSED
        if info.type != _STREAM or info.nonblocking:
            rc = sys_.connect(dup, name, nonblock=False)
            self._report(event, rc if rc != -errno.EINPROGRESS else 0)
            return rc
        # A blocking TCP connect: start it non-blocking, then wait off the loop.
        rc = sys_.connect(dup, name, nonblock=True)
        if rc == -errno.EINPROGRESS:
            if sys_.poll1(dup, select.POLLOUT) == 0:
                return Pending(lambda: self._finish_connect(n, dup, event))
            rc = sys_.sock_error(dup)
        self._report(event, rc)
        return rc

    async def _finish_connect(self, n: sys_.Notif, dup: int, event: Event) -> int:
        rc = await self._wait_writable(n, dup)
        if rc == 0:
            rc = sys_.sock_error(dup)
        self._report(event, rc)
        return rc

    async def _wait_writable(self, n: sys_.Notif, dup: int) -> int:
        """0 once ``dup`` is writable; -ENOENT if the child stopped waiting meanwhile."""
        while True:
            with trio.move_on_after(_WATCHDOG):
                await trio.lowlevel.wait_writable(dup)
                return 0
            if not self._still_waiting(n):
                return -errno.ENOENT

    # ---- sends ---------------------------------------------------------------------------------

    def _send(self, n: sys_.Notif, dup: int, info: sys_.SockInfo, syscall: str, msg: Message, flags: int) -> Result:
        rc = _msg.check_control(msg.control)
        if rc < 0:
            return rc
        event = self._check_name(n, info, syscall, msg, flags)
        if isinstance(event, int):
            return event
        blocking = not info.nonblocking and not flags & MSG_DONTWAIT
        rc = sys_.sendmsg(dup, msg.name, msg.data, msg.control, flags | MSG_DONTWAIT)
        if blocking and _must_wait(info, msg, rc):
            return Pending(lambda: self._finish_send(n, dup, info, msg, flags, rc, event))
        if event is not None:
            self._report(event, rc)
        return rc

    async def _finish_send(
        self, n: sys_.Notif, dup: int, info: sys_.SockInfo, msg: Message, flags: int,
        first: int, event: Event | None,
    ) -> int:
        rc = await self._send_blocking(n, dup, info, msg, flags, first)
        if event is not None:
            self._report(event, rc)
        return rc

    async def _send_blocking(
        self, n: sys_.Notif, dup: int, info: sys_.SockInfo, msg: Message, flags: int, rc: int
    ) -> int:
        """Finish a send the child made on a blocking socket: wait, then send the rest.

        A stream socket sends everything (as a blocking send does); a datagram is sent
        once. A fast-open connect that answered EINPROGRESS sends its data once the
        handshake is done."""
        stream = info.type == _STREAM
        sent = max(rc, 0)
        name, control = msg.name, msg.control
        while True:
            if rc >= 0 and (not stream or sent >= len(msg.data)):
                return sent if stream else rc
            if rc < 0 and rc not in (-errno.EAGAIN, -errno.EINPROGRESS):
                return sent or rc
            waited = await self._wait_writable(n, dup)
            if waited < 0:
                return sent or waited
            if rc == -errno.EINPROGRESS:
                err = sys_.sock_error(dup)
                if err < 0:
                    return sent or err
                flags &= ~MSG_FASTOPEN
                name = None
            rc = sys_.sendmsg(dup, name, msg.data[sent:], control, flags | MSG_DONTWAIT)
            if rc > 0:
                sent += rc
                control = b""

    def _sendmmsg(
        self, n: sys_.Notif, dup: int, info: sys_.SockInfo, vec_p: int, msgs: list[Message], flags: int
    ) -> Result:
        """Each entry decided on its own; stop at the first refused or failed one."""
        for i, msg in enumerate(msgs):
            rc = self._send(n, dup, info, "sendmmsg", msg, flags)
            if isinstance(rc, Pending):
                return Pending(
                    lambda i=i, rc=rc: self._finish_mmsg(n, dup, info, vec_p, msgs, flags, i, rc)
                )
            if isinstance(rc, Continue) or rc < 0:
                return i or (rc if isinstance(rc, int) else -errno.EINVAL)
            _write_msg_len(n.pid, vec_p, i, rc)
        return len(msgs)

    async def _finish_mmsg(
        self, n: sys_.Notif, dup: int, info: sys_.SockInfo, vec_p: int, msgs: list[Message],
        flags: int, start: int, pending: Pending,
    ) -> int:
        rc = await pending.finish()
        i = start
        while True:
            if rc < 0:
                return i or rc
            _write_msg_len(n.pid, vec_p, i, rc)
            i += 1
            if i == len(msgs):
                return i
            nxt = self._send(n, dup, info, "sendmmsg", msgs[i], flags)
            if isinstance(nxt, Pending):
                rc = await nxt.finish()
            elif isinstance(nxt, Continue):
                return i
            else:
                rc = nxt


def _must_wait(info: sys_.SockInfo, msg: Message, rc: int) -> bool:
    """Would a blocking socket still be waiting after this non-blocking attempt?"""
    if rc in (-errno.EAGAIN, -errno.EINPROGRESS):
        return True
    return info.type == _STREAM and 0 <= rc < len(msg.data)


def _write_msg_len(tid: int, vec_p: int, index: int, sent: int) -> None:
    sys_.write_mem(tid, vec_p + index * _msg.MMSGHDR_SIZE + _msg.MSG_LEN_OFFSET, struct.pack("<I", sent))


def _closing(dup: int, finish: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[int]]:
    """Wrap a Pending's coroutine so that it closes the duplicate when it ends."""

    async def run() -> int:
        try:
            return await finish()
        finally:
            trio.lowlevel.notify_closing(dup)
            os.close(dup)

    return run
