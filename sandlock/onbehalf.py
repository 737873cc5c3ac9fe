"""The trapped syscalls, decided on our copy and performed on our duplicate.

For each notification the handler copies what the call points at out of the child
(bounded, every length checked first), confirms with SECCOMP_IOCTL_NOTIF_ID_VALID that
the thread still waits (so the tid was not recycled under us), decides on the copy, and
performs the call itself on a duplicate of the child's socket with that copy. The
child's memory is never read again, so it cannot swap the address after the check.

What decides is the *socket*, as the kernel reports it on our duplicate (SO_DOMAIN,
SO_TYPE, SO_PROTOCOL), never what the child claims:

* a non-IP socket is performed here too (see _local.py for why "continue" would be a
  hole): netlink with no decision; AF_UNIX decided by _local.UnixGuard (a socket the
  sandbox bound, or a --unix-allow rule), whose ``bind`` calls are trapped for that;
  sockets of any other family (only reachable if passed in from outside) are refused;
* a TCP socket ignores a destination unless MSG_FASTOPEN is set (a connect in
  disguise), so only then is the name decided;
* UDP and ICMP sends with a name are decided per message, sendmmsg per entry.

Nothing blocks the trio thread. A handler does the quick part synchronously and returns
the result; when the child's socket is blocking and the call would wait (a TCP handshake,
a full send buffer), it returns a ``Pending`` whose coroutine the supervisor runs as a
task: it waits for writability on our duplicate and finishes the call, so one slow
connect never delays the others. Only those coroutines need trio, and only they import
it: the quick part runs before the supervisor has started trio, or without it at all.
"""

from __future__ import annotations

import enum
import errno
import functools
import math
import os
import select
import socket
import struct
from collections.abc import Awaitable, Callable

from . import _caller, _local, _msg
from . import _syscalls as sys_
from ._msg import Message, int32
from .events import Event, Listener
from .policy import Decision, Policy
from .sockaddr import MAPPED_PREFIX, Dest, Invalid, NoDest, canonical, parse_sockaddr
from .vfiles import OPEN_SYSCALLS, VirtualFiles

TYPE_CHECKING = False
if TYPE_CHECKING:
    from trio.lowlevel import ParkingLot

SYS_CONNECT = sys_.NR_CONNECT
SYS_BIND = sys_.NR_BIND
SYS_SENDTO = sys_.NR_SENDTO
SYS_SENDMSG = sys_.NR_SENDMSG
SYS_SENDMMSG = sys_.NR_SENDMMSG
SYS_ACCEPT = sys_.NR_ACCEPT
SYS_ACCEPT4 = sys_.NR_ACCEPT4

MSG_DONTWAIT = socket.MSG_DONTWAIT
MSG_FASTOPEN = 0x2000_0000
_IP_DOMAINS = (socket.AF_INET, socket.AF_INET6)
_LOCAL_DOMAINS = (socket.AF_UNIX, socket.AF_NETLINK)
_STREAM = socket.SOCK_STREAM
_PROTOS: dict[tuple[int, int], str] = {
    (socket.SOCK_STREAM, socket.IPPROTO_TCP): "tcp",
    (socket.SOCK_DGRAM, socket.IPPROTO_UDP): "udp",
    (socket.SOCK_DGRAM, socket.IPPROTO_ICMP): "icmp",
    (socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6): "icmp",
}
_DNS_PROTOCOLS = (socket.IPPROTO_TCP, socket.IPPROTO_UDP)
_WATCHDOG = 1.0  # seconds between "is the child still waiting?" checks while we wait
_BACKOFF_MAX = 0.05  # retry interval ceiling when readiness cannot be polled (AF_UNIX)
HELD_MAX = 32 << 20  # data one sandbox's waiting sends may hold in the supervisor, in all


class Pending:
    """The call must wait; the supervisor runs ``finish`` as a task and answers with it."""

    __slots__ = ("finish",)

    def __init__(self, finish: Callable[[], Awaitable[int]]) -> None:
        self.finish = finish


async def _unused() -> int:  # pragma: no cover - OVER_BUDGET is never run
    return -errno.ENOBUFS


OVER_BUDGET = Pending(_unused)
"""What a send answers when it would wait but its data would take the sandbox over
HELD_MAX, and nothing of it was sent: _on_socket then waits for room, holding nothing,
and makes the call again from the start (a fresh copy, a fresh decision)."""


class Reply(enum.Enum):
    """A result that is not a return value."""

    ANSWERED = "answered"  # the handler answered the call itself (ADDFD with SEND)
    CONTINUE = "continue"  # the kernel performs the call as usual (an open of a real file)


Result = int | Pending
Outcome = Result | Reply


class _Call:
    """One notification in hand: the thread, our duplicate of its socket, what the kernel
    says the socket is, and every descriptor we opened for the call (closed at the end)."""

    __slots__ = ("caller", "dup", "info", "ip", "n", "owned", "who")

    def __init__(self, n: sys_.Notif, dup: int, info: sys_.SockInfo) -> None:
        self.n = n
        self.dup = dup
        self.info = info
        self.ip = info.domain in _IP_DOMAINS
        self.owned = [dup]
        self.caller: _caller.Caller | None = None
        self.who: sys_.Creds | None = None  # whose credentials the call runs with


Remember = Callable[[int, int, int, bytes, int], None]
"""Told (domain, type, protocol, packed address, port) of each allowed destination that
was sent to as the child named it (see Supervisor: the gate then answers it itself)."""

Park = Callable[[int, int], bool]
"""Takes (notification id, our duplicate) of a blocking connect in progress and answers
the call when the handshake ends (Gate.park_connect): True if it took the duplicate."""


class Handlers:
    """The on-behalf handlers of one sandbox. ``policy`` may be replaced at any time."""

    def __init__(self, listener: int, policy: Policy, on_event: Listener | None = None) -> None:
        self.listener = listener
        self.policy = policy
        self.on_event = on_event
        self.remember: Remember | None = None
        # Set when no listener needs each call's outcome, as remember is (Supervisor).
        self.park: Park | None = None
        self.vfiles: VirtualFiles | None = None
        # In DNS mode, the name to send a port-53 destination to instead (names.py).
        self.redirect: Callable[[int, Dest], bytes | None] | None = None
        self._held = 0  # bytes held by sends that wait (HELD_MAX)
        self._room: ParkingLot | None = None  # once a send waits for room
        self.unix = _local.UnixGuard()
        self._table: dict[int, Callable[[sys_.Notif], Outcome]] = {
            SYS_CONNECT: self.connect,
            SYS_BIND: self.bind,
            SYS_SENDTO: self.sendto,
            SYS_SENDMSG: self.sendmsg,
            SYS_SENDMMSG: self.sendmmsg,
            SYS_ACCEPT: self.accept,
            SYS_ACCEPT4: self.accept,
        }

    def handle(self, n: sys_.Notif) -> Outcome:
        """Decide and perform one trapped call: a result (>= 0 or -errno), a Pending, or
        a Reply (opens: served from a virtual file, or left to the kernel)."""
        if n.nr in OPEN_SYSCALLS:
            if self.vfiles is not None and self.vfiles.handle_open(self.listener, n):
                return Reply.ANSWERED
            return Reply.CONTINUE
        handler = self._table.get(n.nr)
        if handler is None:  # the filter traps nothing else; refuse whatever this is
            return -errno.ENOSYS
        return handler(n)

    # ---- the trapped syscalls ----------------------------------------------------------

    def bind(self, n: sys_.Notif) -> Outcome:
        """bind(fd, addr, addrlen): an AF_UNIX one is performed here and recorded (see
        _local.py); any other is left to the kernel. That is sound although the child may
        swap the descriptor meanwhile: a bind sends nothing, and an AF_UNIX socket bound
        behind our back is only one that is not recorded, so connects to it are refused."""
        fd, addr_p, addrlen = int32(n.args[0]), n.args[1], int32(n.args[2])
        dup = sys_.getfd(n.pid, fd)
        if dup < 0:
            return Reply.CONTINUE  # not a descriptor: the kernel says so itself
        info = sys_.sock_info(dup)
        if isinstance(info, int) or info.domain != socket.AF_UNIX:
            os.close(dup)
            return Reply.CONTINUE
        c = _Call(n, dup, info)
        try:
            name = _msg.read_name(n.pid, addr_p, addrlen)
            if isinstance(name, int):
                return name
            if name is None:
                return -errno.EFAULT if addr_p == 0 and addrlen else -errno.EINVAL
            if not self._still_waiting(n):
                return -errno.ENOENT
            if isinstance(who := self._who(c), int):
                return who
            return self.unix.bind(n.pid, dup, name, c.owned, c.who)
        finally:
            _close_all(c.owned)

    def connect(self, n: sys_.Notif) -> Outcome:
        """connect(fd, addr, addrlen) on our duplicate with our copy of addr."""
        fd, addr_p, addrlen = int32(n.args[0]), n.args[1], int32(n.args[2])
        return self._on_socket(n, fd, lambda c: self._connect(c, addr_p, addrlen))

    def sendto(self, n: sys_.Notif) -> Outcome:
        """sendto(fd, buf, len, flags, addr, addrlen) with copies of buf and addr."""
        fd, buf_p, length, flags = int32(n.args[0]), n.args[1], n.args[2], int32(n.args[3])
        addr_p, addrlen = n.args[4], int32(n.args[5])

        def act(c: _Call) -> Result:
            size = length
            if c.info.type == _STREAM:
                size = min(length, _msg.STREAM_CHUNK)  # the rest: a short count
            elif length > _msg.MAX_DATA:
                return -errno.EMSGSIZE
            # A non-NULL name of length 0 is still a name to the kernel (EINVAL on UDP).
            name = b"" if addr_p and addrlen == 0 else _msg.read_name(n.pid, addr_p, addrlen)
            if isinstance(name, int):
                return name
            data = sys_.read_mem(n.pid, buf_p, size)
            if isinstance(data, int):
                return data
            if not self._still_waiting(n):
                return -errno.ENOENT
            return self._send(c, "sendto", Message(name, data, b""), flags)

        return self._on_socket(n, fd, act)

    def sendmsg(self, n: sys_.Notif) -> Outcome:
        """sendmsg(fd, msg, flags): the msghdr, name, iovecs and control copied."""
        fd, msg_p, flags = int32(n.args[0]), n.args[1], int32(n.args[2])

        def act(c: _Call) -> Result:
            hdr = sys_.read_mem(n.pid, msg_p, _msg.MSGHDR_SIZE)
            if isinstance(hdr, int):
                return hdr
            msg = _msg.read_msghdr(n.pid, hdr, c.info.type == _STREAM)
            if isinstance(msg, int):
                return msg
            if not self._still_waiting(n):
                return -errno.ENOENT
            return self._send(c, "sendmsg", msg, flags)

        return self._on_socket(n, fd, act)

    def sendmmsg(self, n: sys_.Notif) -> Outcome:
        """sendmmsg(fd, vec, vlen, flags): each entry decided and sent on its own."""
        fd, vec_p, flags = int32(n.args[0]), n.args[1], int32(n.args[3])
        vlen = min(n.args[2] & 0xFFFF_FFFF, _msg.UIO_MAXIOV)  # the kernel clamps it too

        def act(c: _Call) -> Result:
            if vlen == 0:
                return 0
            entries = _msg.read_mmsg_vector(n.pid, vec_p, vlen)
            if isinstance(entries, int):
                return entries
            msgs: list[Message] = []
            first_error = 0
            copied = 0
            for raw in entries:
                if copied >= _msg.STREAM_CHUNK:
                    break  # the rest is a short count: the program sends it next
                msg = _msg.read_msghdr(n.pid, raw, c.info.type == _STREAM)
                if isinstance(msg, int):
                    first_error = msg
                    break
                msgs.append(msg)
                copied += len(msg.data)
            if not self._still_waiting(n):
                return -errno.ENOENT
            if not msgs:
                return first_error
            return self._sendmmsg(c, vec_p, msgs, flags)

        return self._on_socket(n, fd, act)

    def accept(self, n: sys_.Notif) -> Outcome:
        """accept/accept4: the peer decided (sandlock.inbound, loaded on first use)."""
        from . import inbound

        return inbound.accept(self, n)

    def resume_connect(self, n: sys_.Notif, dup: int, rc: int) -> Result:
        """Finish a blocking connect the gate started on ``dup`` (now ours to close)."""
        info = sys_.sock_info(dup)
        if isinstance(info, int):
            os.close(dup)
            return info
        c = _Call(n, dup, info)
        return Pending(_closing(c.owned, lambda: self._finish_connect(c, b"", None, rc)))

    # ---- the shared steps ------------------------------------------------------------------

    def _on_socket(self, n: sys_.Notif, fd: int, act: Callable[[_Call], Outcome]) -> Outcome:
        """Run ``act`` on a duplicate of the child's descriptor; close what the call
        opened when it is answered (a Pending closes it when it finishes)."""
        dup = sys_.getfd(n.pid, fd)
        if dup < 0:
            return dup
        info = sys_.sock_info(dup)
        if isinstance(info, int):
            os.close(dup)
            return info
        c = _Call(n, dup, info)
        handed_over = False
        try:
            if not c.ip and info.domain not in _LOCAL_DOMAINS:
                return -errno.ECONNREFUSED  # a family the filter never lets be created
            result = act(c)
            if result is OVER_BUDGET:
                handed_over = True
                return Pending(_closing(c.owned, lambda: self._when_room(c, act)))
            if isinstance(result, Pending):
                handed_over = True
                return Pending(_closing(c.owned, result.finish))
            return result
        finally:
            if not handed_over:
                _close_all(c.owned)

    def _still_waiting(self, n: sys_.Notif) -> bool:
        return sys_.notif_id_valid(self.listener, n.id)

    def _who(self, c: _Call, msg: Message | None = None) -> sys_.Creds | int | None:
        """Set ``c.who``: the caller's credentials where ours would give it more than it
        has (AF_UNIX, netlink, control data: see _caller.py); or -errno."""
        if c.caller is None:
            c.caller = _caller.Caller(c.n.pid, lambda: self._still_waiting(c.n))
        who = c.caller.switch(msg)
        if not isinstance(who, int):
            c.who = who
        return who

    def _decide(self, c: _Call, syscall: str, dest: Dest) -> Event:
        proto = _PROTOS.get((c.info.type, c.info.protocol))
        if proto is None:  # the filter lets no such socket be made; fail closed anyway
            decision = Decision(allowed=False, rule=None, host=None)
            proto = f"proto-{c.info.protocol}"
        else:
            decision = self.policy.decide(proto, dest.addr, dest.port)
        refused = 0 if decision.allowed else errno.ECONNREFUSED
        event = Event(c.n.pid, syscall, proto, dest, decision, refused)
        if refused:
            self._report(event, -refused)
        return event

    def _unix(self, c: _Call, syscall: str, name: bytes) -> tuple[bytes, Event | None] | int:
        """The name to use for an AF_UNIX call and the event of its decision, if one was
        needed (a socket not bound by the sandbox), or -errno (refused: reported here)."""
        verdict = self.unix.destination(c.n.pid, name, c.owned, self.policy.unix_rules)
        if isinstance(verdict.name, int):
            return verdict.name
        if verdict.decision is None or verdict.shown is None:
            return verdict.name, None
        allowed = verdict.decision.allowed
        dest = Dest(socket.AF_UNIX, verdict.shown, 0)
        refused = 0 if allowed else errno.ECONNREFUSED
        event = Event(c.n.pid, syscall, "unix", dest, verdict.decision, refused)
        if not allowed:
            self._report(event, -refused)
            return -refused
        return verdict.name, event

    def _redirected(self, c: _Call, dest: Dest) -> bytes | None:
        """The forwarder's name for a TCP or UDP call to port 53, in DNS mode; else None.
        The forwarder decides on the query itself (names.py)."""
        if self.redirect is None or c.info.protocol not in _DNS_PROTOCOLS:
            return None
        return self.redirect(c.info.domain, dest)

    def _destination(self, c: _Call, name: bytes, dest: Dest) -> bytes:
        """The name we send to for an allowed ``dest``: the child's, unless it must be
        pinned. Only a name used as given is remembered: the gate sends as given."""
        pinned = pin_unspecified(name, dest)
        if pinned is name and self.remember is not None:
            self.remember(c.info.domain, c.info.type, c.info.protocol, dest.addr, dest.port)
        return pinned

    def _report(self, event: Event | None, result: int) -> None:
        if event is None or self.on_event is None:
            return
        if event.decision.allowed and result < 0 and result != -errno.EINPROGRESS:
            event = Event(
                event.pid, event.syscall, event.proto, event.dest, event.decision, -result
            )
        self.on_event(event)

    async def _wait_writable(self, c: _Call) -> int:
        """0 once our duplicate is writable; -ENOENT if the child stopped waiting."""
        import trio

        while True:
            with trio.move_on_after(_WATCHDOG):
                await trio.lowlevel.wait_writable(c.dup)
                return 0
            if not self._still_waiting(c.n):
                return -errno.ENOENT

    async def _when_room(self, c: _Call, act: Callable[[_Call], Outcome]) -> int:
        """Wait, holding no data, until the sandbox's waiting sends leave room; then make
        the call again (OVER_BUDGET)."""
        import trio

        if self._room is None:
            self._room = trio.lowlevel.ParkingLot()
        room = self._room
        while True:
            with trio.move_on_after(_WATCHDOG):
                await room.park()
            if not self._still_waiting(c.n):
                return -errno.ENOENT
            if self._held >= HELD_MAX:
                continue
            result = act(c)
            if result is OVER_BUDGET:
                continue
            if isinstance(result, Pending):
                return await result.finish()
            assert isinstance(result, int)
            return result

    def _hold(self, size: int) -> None:
        self._held += size

    def _release(self, size: int) -> None:
        self._held -= size
        if self._room is not None:
            self._room.unpark_all()

    async def _backoff(self, c: _Call, attempt: int) -> int:
        """Sleep before a retry where readiness cannot be polled (a full AF_UNIX peer)."""
        import trio

        await trio.sleep(min(0.001 * 2**attempt, _BACKOFF_MAX))
        return 0 if self._still_waiting(c.n) else -errno.ENOENT

    # ---- connect ---------------------------------------------------------------------------

    def _connect(self, c: _Call, addr_p: int, addrlen: int) -> Outcome:
        name = _msg.read_name(c.n.pid, addr_p, addrlen)
        if isinstance(name, int):
            return name
        if name is None:
            return -errno.EFAULT if addr_p == 0 and addrlen else -errno.EINVAL
        if not self._still_waiting(c.n):
            return -errno.ENOENT
        event = None
        if c.ip:
            dest = parse_sockaddr(name)
            if isinstance(dest, Invalid):
                return -dest.errno
            if isinstance(dest, Dest):  # (AF_UNSPEC dissolves an association: not egress)
                redirected = self._redirected(c, dest)
                if redirected is not None:
                    name = redirected
                else:
                    event = self._decide(c, "connect", dest)
                    if not event.decision.allowed:
                        return -errno.ECONNREFUSED
                    name = self._destination(c, name, dest)
        elif c.info.domain == socket.AF_UNIX:
            decided = self._unix(c, "connect", name)
            if isinstance(decided, int):
                return decided
            name, event = decided
        if not c.ip and isinstance(who := self._who(c), int):
            return who
        if c.info.nonblocking or c.info.type == socket.SOCK_DGRAM:
            rc = sys_.connect(c.dup, name, nonblock=False, who=c.who)  # returns at once
            self._report(event, rc)
            return rc
        # A blocking connect: start it non-blocking, finish it off the loop if it waits.
        rc = sys_.connect(c.dup, name, nonblock=True, who=c.who)
        if rc == -errno.EINPROGRESS and sys_.poll1(c.dup, select.POLLOUT) != 0:
            rc = sys_.sock_error(c.dup)
        if rc == -errno.EINPROGRESS and self.park is not None and self.park(c.n.id, c.dup):
            c.owned.remove(c.dup)  # the gate's now: it answers when the handshake ends
            self._report(event, rc)  # (an allowed call that started: its outcome unheard)
            return Reply.ANSWERED
        if rc in (-errno.EINPROGRESS, -errno.EAGAIN):
            return Pending(lambda: self._finish_connect(c, name, event, rc))
        self._report(event, rc)
        return rc

    async def _finish_connect(self, c: _Call, name: bytes, event: Event | None, rc: int) -> int:
        import trio

        attempt = 0
        # A blocking connect gives up after SO_SNDTIMEO with the error it has then
        # (EINPROGRESS for TCP, EAGAIN for a full AF_UNIX backlog); the attempt goes on.
        with trio.move_on_after(sys_.sock_sndtimeo(c.dup) or math.inf):
            while rc in (-errno.EINPROGRESS, -errno.EAGAIN):
                if rc == -errno.EINPROGRESS:  # a TCP handshake: wait for its end
                    rc = await self._wait_writable(c) or sys_.sock_error(c.dup)
                else:  # AF_UNIX with a full backlog: the kernel would wait for room; retry
                    rc = await self._backoff(c, attempt) or sys_.connect(
                        c.dup, name, nonblock=True, who=c.who
                    )
                    attempt += 1
        self._report(event, rc)
        return rc

    # ---- sends ------------------------------------------------------------------------------

    def _prepare(self, c: _Call, syscall: str, msg: Message, flags: int) -> Event | int | None:
        """Make ``msg`` ready to send: decide its destination (IP), or translate its path
        and descriptors (AF_UNIX). An allowed Event, None (nothing to decide), or -errno."""
        if not c.ip:
            event = None
            if c.info.domain == socket.AF_UNIX:
                # Only a datagram socket sends to a name (stream: an error; seqpacket: ignored)
                if msg.name is not None and c.info.type == socket.SOCK_DGRAM:
                    decided = self._unix(c, syscall, msg.name)
                    if isinstance(decided, int):
                        return decided
                    msg.name, event = decided
                control = _local.translate_rights(c.n.pid, msg.control, c.owned)
                if isinstance(control, int):
                    return control
                msg.control = control
            return event
        rc = _msg.check_control(msg.control)
        if rc < 0:
            return rc
        if msg.name is None:
            return None
        if c.info.type == _STREAM and not flags & MSG_FASTOPEN:
            return None  # TCP ignores the name unless it is a fast-open connect
        udp4 = c.info.domain == socket.AF_INET and c.info.protocol == socket.IPPROTO_UDP
        dest = parse_sockaddr(msg.name, unspec_as_inet=udp4)
        if isinstance(dest, Invalid):
            return -dest.errno
        if isinstance(dest, NoDest):  # AF_UNSPEC on UDPv6: "no name", as the kernel reads it
            msg.name = None
            return None
        redirected = self._redirected(c, dest)
        if redirected is not None:
            msg.name = redirected
            return None
        event = self._decide(c, syscall, dest)
        if not event.decision.allowed:
            return -errno.ECONNREFUSED
        msg.name = self._destination(c, msg.name, dest)
        return event

    def _send(self, c: _Call, syscall: str, msg: Message, flags: int) -> Result:
        event = self._prepare(c, syscall, msg, flags)
        if isinstance(event, int):
            return event
        c.who = None  # (each message of a sendmmsg asks again)
        if (not c.ip or _msg.privileged(msg.control)) and isinstance(who := self._who(c, msg), int):
            return who
        rc = sys_.sendmsg(c.dup, msg.name, msg.data, msg.control, flags | MSG_DONTWAIT, c.who)
        blocking = not c.info.nonblocking and not flags & MSG_DONTWAIT
        if blocking and _must_wait(c, len(msg.data), rc, max(rc, 0)):
            size = len(msg.data) - max(rc, 0)
            if self._held + size <= HELD_MAX or rc == -errno.EINPROGRESS:
                self._hold(size)
                return Pending(lambda: self._finish_send(c, msg, flags, rc, event, size))
            if rc == -errno.EAGAIN:
                return OVER_BUDGET  # nothing sent: the call is made again when there is room
            # (a stream send that sent part of its chunk: that short count is the answer)
        self._report(event, rc)
        return rc

    async def _finish_send(
        self, c: _Call, msg: Message, flags: int, rc: int, event: Event | None, held: int
    ) -> int:
        """Finish a send the child made on a blocking socket: wait, then send the rest.

        A stream socket sends everything (as a blocking send does); a datagram is sent
        once. A fast-open connect that answered EINPROGRESS sends its data once the
        handshake is done."""
        import trio

        p = _Progress(rc, max(rc, 0), msg.name, msg.control, flags)
        try:
            with trio.move_on_after(sys_.sock_sndtimeo(c.dup) or math.inf) as scope:
                await self._send_loop(c, msg.data, p)
        finally:
            msg.data = b""
            self._release(held)
        rc = p.rc
        if scope.cancelled_caught and not p.sent:
            rc = -errno.EAGAIN  # SO_SNDTIMEO expired with nothing sent
        if c.info.type == _STREAM and p.sent:
            rc = p.sent  # bytes already sent are the result, whatever came after
        self._report(event, rc)
        return rc

    async def _send_loop(self, c: _Call, data: bytes, p: _Progress) -> None:
        """Wait and resend until done; ``p`` holds the progress even if cancelled."""
        attempt = 0
        while _must_wait(c, len(data), p.rc, p.sent):
            polled = c.ip or attempt == 0
            waited = await (self._wait_writable(c) if polled else self._backoff(c, attempt))
            attempt += 1
            if waited < 0:
                p.rc = waited
                return
            if p.rc == -errno.EINPROGRESS:  # the fast-open handshake ended
                p.rc = sys_.sock_error(c.dup)
                if p.rc < 0:
                    return
                p.flags &= ~MSG_FASTOPEN
                p.name = None
            p.rc = sys_.sendmsg(
                c.dup, p.name, data[p.sent :], p.control, p.flags | MSG_DONTWAIT, c.who
            )
            if p.rc > 0:
                p.sent += p.rc
                p.control = b""

    def _sendmmsg(self, c: _Call, vec_p: int, msgs: list[Message], flags: int) -> Result:
        """Each entry decided on its own; stop at the first refused or failed one."""
        for i, msg in enumerate(msgs):
            rc = self._send(c, "sendmmsg", msg, flags)
            if rc is OVER_BUDGET:
                return i or rc  # a short count: the program sends the rest with its next call
            if isinstance(rc, Pending):
                return Pending(functools.partial(self._finish_mmsg, c, vec_p, msgs, flags, i, rc))
            if rc < 0:
                return i or rc
            _write_msg_len(c.n.pid, vec_p, i, rc)
        return len(msgs)

    async def _finish_mmsg(
        self, c: _Call, vec_p: int, msgs: list[Message], flags: int, i: int, pending: Pending
    ) -> int:
        rc = await pending.finish()
        while rc >= 0:
            _write_msg_len(c.n.pid, vec_p, i, rc)
            i += 1
            if i == len(msgs):
                return i
            nxt = self._send(c, "sendmmsg", msgs[i], flags)
            if nxt is OVER_BUDGET:
                return i
            rc = await nxt.finish() if isinstance(nxt, Pending) else nxt
        return i or rc


def pin_unspecified(name: bytes, dest: Dest) -> bytes:
    """Our copy of a name, with an unspecified destination made the loopback address the
    policy decided on (sockaddr.canonical), in the name's own form: 0.0.0.0 -> 127.0.0.1,
    :: -> ::1, ::ffff:0.0.0.0 -> ::ffff:127.0.0.1. Any other name is returned as is.

    The kernel sends "unspecified" to the socket's own bound address, or to 127.0.0.1 from
    a v4-mapped IPv6 socket: not necessarily the loopback the decision was about."""
    addr = dest.addr
    seen = canonical(addr)
    if len(seen) < len(addr):  # decided as IPv4: the name stays IPv4-mapped
        seen = MAPPED_PREFIX + seen
    if seen == addr:
        return name
    start = 4 if len(addr) == 4 else 8  # sin_addr, sin6_addr
    return name[:start] + seen + name[start + len(addr) :]


class _Progress:
    """Where a blocking send stands: last result, bytes sent, what the next try sends."""

    __slots__ = ("control", "flags", "name", "rc", "sent")

    def __init__(self, rc: int, sent: int, name: bytes | None, control: bytes, flags: int) -> None:
        self.rc = rc
        self.sent = sent
        self.name = name
        self.control = control
        self.flags = flags


def _must_wait(c: _Call, total: int, rc: int, sent: int) -> bool:
    """Would a blocking socket still be waiting after this non-blocking attempt?"""
    if rc in (-errno.EAGAIN, -errno.EINPROGRESS):
        return True
    return rc >= 0 and c.info.type == _STREAM and sent < total


def _write_msg_len(tid: int, vec_p: int, index: int, sent: int) -> None:
    addr = vec_p + index * _msg.MMSGHDR_SIZE + _msg.MSG_LEN_OFFSET
    sys_.write_mem(tid, addr, struct.pack("<I", sent))


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _closing(fds: list[int], finish: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[int]]:
    """Wrap a Pending's coroutine so that it closes the call's descriptors when it ends."""

    async def run() -> int:
        import trio

        try:
            return await finish()
        finally:
            for fd in fds:
                trio.lowlevel.notify_closing(fd)
            _close_all(fds)

    return run
