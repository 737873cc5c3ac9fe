"""sendto, sendmsg and sendmmsg: copied, each destination decided, sent on our duplicate.

The steps every call shares (the duplicate, the decision, whose credentials) are the
handlers' (onbehalf.py); here is what is particular to a send:

* what is copied: the data (a stream send at most STREAM_CHUNK of it, the rest left for
  a short count; a datagram at most MAX_DATA), the name, the control data, each entry
  of a sendmmsg;
* what is decided: the name of a UDP or ICMP message, of a TCP fast-open connect; an
  AF_UNIX datagram's name (and any SCM_RIGHTS descriptors translated to ours);
* a send that would wait on a blocking socket: a ``Pending`` that waits for
  writability and sends the rest (a stream) or the datagram once. Its data is held in
  the supervisor meanwhile, HELD_MAX for the whole sandbox (``Budget``): a send that
  would go over it holds nothing, waits for room, and is made again from the start.

Each entry of a sendmmsg is decided and sent on its own, as the kernel sends them; the
first that is refused or fails ends the call (a short count, or its error if first).
"""

from __future__ import annotations

import errno
import functools
import math
import socket
import struct
from collections.abc import Callable

from . import _local, _msg
from . import _syscalls as sys_
from ._msg import Message, int32
from .answer import Answer, Pending
from .events import Event
from .onbehalf import WATCHDOG, Call, Handlers, MustAsk, rememberable
from .sockaddr import Invalid, NoDest, parse_sockaddr

TYPE_CHECKING = False
if TYPE_CHECKING:
    from trio.lowlevel import ParkingLot

MSG_DONTWAIT = socket.MSG_DONTWAIT
MSG_FASTOPEN = 0x2000_0000
_STREAM = socket.SOCK_STREAM
HELD_MAX = 32 << 20  # data one sandbox's waiting sends may hold in the supervisor, in all


async def _unused() -> int:  # pragma: no cover - OVER_BUDGET is never run
    return -errno.ENOBUFS


OVER_BUDGET = Pending(_unused)
"""What a send answers when it would wait but its data would take the sandbox over
HELD_MAX, and nothing of it was sent: the call then waits for room, holding nothing,
and is made again from the start (a fresh copy, a fresh decision). Never an answer:
``_within_budget`` turns it into that wait."""

_Sent = int | Pending[int]  # a send's result: sent (or -errno), or a wait that ends so


def sendto(h: Handlers, n: sys_.Notif) -> Answer:
    """sendto(fd, buf, len, flags, addr, addrlen) with copies of buf and addr."""
    fd, buf_p, length, flags = int32(n.args[0]), n.args[1], n.args[2], int32(n.args[3])
    addr_p, addrlen = n.args[4], int32(n.args[5])

    def act(c: Call) -> Answer:
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
        if not h.still_waiting(n):
            return -errno.ENOENT
        sent = _send(h, c, "sendto", Message(name, data, b""), flags)
        return _within_budget(h, c, act, sent)

    return h.on_socket(n, fd, act)


def sendmsg(h: Handlers, n: sys_.Notif) -> Answer:
    """sendmsg(fd, msg, flags): the msghdr, name, iovecs and control copied."""
    fd, msg_p, flags = int32(n.args[0]), n.args[1], int32(n.args[2])

    def act(c: Call) -> Answer:
        hdr = sys_.read_mem(n.pid, msg_p, _msg.MSGHDR_SIZE)
        if isinstance(hdr, int):
            return hdr
        msg = _msg.read_msghdr(n.pid, hdr, c.info.type == _STREAM)
        if isinstance(msg, int):
            return msg
        if not h.still_waiting(n):
            return -errno.ENOENT
        return _within_budget(h, c, act, _send(h, c, "sendmsg", msg, flags))

    return h.on_socket(n, fd, act)


def sendmmsg(h: Handlers, n: sys_.Notif) -> Answer:
    """sendmmsg(fd, vec, vlen, flags): each entry decided and sent on its own."""
    fd, vec_p, flags = int32(n.args[0]), n.args[1], int32(n.args[3])
    vlen = min(n.args[2] & 0xFFFF_FFFF, _msg.UIO_MAXIOV)  # the kernel clamps it too

    def act(c: Call) -> Answer:
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
        if not h.still_waiting(n):
            return -errno.ENOENT
        if not msgs:
            return first_error
        return _within_budget(h, c, act, _sendmmsg(h, c, vec_p, msgs, flags, 0))

    return h.on_socket(n, fd, act)


# ---- one message ---------------------------------------------------------------------------


def _prepare(h: Handlers, c: Call, syscall: str, msg: Message, flags: int) -> Event | int | None:
    """Make ``msg`` ready to send: decide its destination (IP), or translate its path
    and descriptors (AF_UNIX). An allowed Event, None (nothing to decide), or -errno."""
    if not c.ip:
        event = None
        if c.info.domain == socket.AF_UNIX:
            # Only a datagram socket sends to a name (stream: an error; seqpacket: ignored)
            if msg.name is not None and c.info.type == socket.SOCK_DGRAM:
                decided = h.unix_name(c, syscall, msg.name)
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
    redirected = h.redirected(c, dest)
    if redirected is not None:
        msg.name = redirected
        return None
    event = h.decide(c, syscall, dest)
    if not event.decision.allowed:
        return -errno.ECONNREFUSED
    if h.relay_for(c, event, dest) is not None:  # (--verify-names: no fast-open past the relay)
        c.note(event, -errno.EOPNOTSUPP)
        return -errno.EOPNOTSUPP
    msg.name = h.destination(c, msg.name, dest, rememberable(event))
    return event


def _send(h: Handlers, c: Call, syscall: str, msg: Message, flags: int) -> _Sent:
    event = _prepare(h, c, syscall, msg, flags)
    if isinstance(event, int):
        return event
    c.who = None  # (each message of a sendmmsg asks again)
    if (not c.ip or _msg.privileged(msg.control)) and isinstance(who := h.who(c, msg), int):
        return who
    rc = sys_.sendmsg(c.dup, msg.name, msg.data, msg.control, flags | MSG_DONTWAIT, c.who)
    blocking = not c.info.nonblocking and not flags & MSG_DONTWAIT
    if blocking and _must_wait(c, len(msg.data), rc, max(rc, 0)):
        size = len(msg.data) - max(rc, 0)
        if h.budget.held + size <= HELD_MAX or rc == -errno.EINPROGRESS:
            h.budget.hold(size)
            return Pending(lambda: _finish_send(h, c, msg, flags, rc, event, size))
        if rc == -errno.EAGAIN:
            return OVER_BUDGET  # nothing sent: the call is made again when there is room
        # (a stream send that sent part of its chunk: that short count is the answer)
    c.note(event, rc)
    return rc


async def _finish_send(
    h: Handlers, c: Call, msg: Message, flags: int, rc: int, event: Event | None, held: int
) -> int:
    """Finish a send the child made on a blocking socket: wait, then send the rest.

    A stream socket sends everything (as a blocking send does); a datagram is sent
    once. A fast-open connect that answered EINPROGRESS sends its data once the
    handshake is done."""
    import trio

    p = _Progress(rc, max(rc, 0), msg.name, msg.control, flags)
    try:
        with trio.move_on_after(sys_.sock_sndtimeo(c.dup) or math.inf) as scope:
            await _send_loop(h, c, msg.data, p)
    finally:
        msg.data = b""
        h.budget.release(held)
    rc = p.rc
    if scope.cancelled_caught and not p.sent:
        rc = -errno.EAGAIN  # SO_SNDTIMEO expired with nothing sent
    if c.info.type == _STREAM and p.sent:
        rc = p.sent  # bytes already sent are the result, whatever came after
    c.note(event, rc)  # the outcome, known now: it goes with the answer
    return rc


async def _send_loop(h: Handlers, c: Call, data: bytes, p: _Progress) -> None:
    """Wait and resend until done; ``p`` holds the progress even if cancelled."""
    attempt = 0
    while _must_wait(c, len(data), p.rc, p.sent):
        polled = c.ip or attempt == 0
        waited = await (h.wait_writable(c) if polled else h.backoff(c, attempt))
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
        p.rc = sys_.sendmsg(c.dup, p.name, data[p.sent :], p.control, p.flags | MSG_DONTWAIT, c.who)
        if p.rc > 0:
            p.sent += p.rc
            p.control = b""


class _Progress:
    """Where a blocking send stands: last result, bytes sent, what the next try sends."""

    __slots__ = ("control", "flags", "name", "rc", "sent")

    def __init__(self, rc: int, sent: int, name: bytes | None, control: bytes, flags: int) -> None:
        self.rc = rc
        self.sent = sent
        self.name = name
        self.control = control
        self.flags = flags


def _must_wait(c: Call, total: int, rc: int, sent: int) -> bool:
    """Would a blocking socket still be waiting after this non-blocking attempt?"""
    if rc in (-errno.EAGAIN, -errno.EINPROGRESS):
        return True
    return rc >= 0 and c.info.type == _STREAM and sent < total


# ---- sendmmsg ------------------------------------------------------------------------------


def _sendmmsg(
    h: Handlers, c: Call, vec_p: int, msgs: list[Message], flags: int, start: int
) -> int | Pending[Answer]:
    """The entries from ``start`` on, each decided on its own; stop at the first refused
    or failed one. One that must wait is finished by a Pending that goes on from there."""
    for i in range(start, len(msgs)):
        if i:
            try:
                rc = _send(h, c, "sendmmsg", msgs[i], flags)
            except MustAsk:  # (entries sent already: the next call, from this one, asks)
                return i
        else:
            rc = _send(h, c, "sendmmsg", msgs[i], flags)
        if rc is OVER_BUDGET:
            return i or rc  # a short count: the program sends the rest with its next call
        if isinstance(rc, Pending):
            return Pending(functools.partial(_finish_mmsg, h, c, vec_p, msgs, flags, i, rc))
        if rc < 0:
            return i or rc
        _write_msg_len(c.n.pid, vec_p, i, rc)
    return len(msgs)


async def _finish_mmsg(
    h: Handlers, c: Call, vec_p: int, msgs: list[Message], flags: int, i: int, sent: Pending[int]
) -> Answer:
    rc = await sent.finish()
    if rc < 0:
        return i or rc
    _write_msg_len(c.n.pid, vec_p, i, rc)
    return _sendmmsg(h, c, vec_p, msgs, flags, i + 1)


def _write_msg_len(tid: int, vec_p: int, index: int, sent: int) -> None:
    addr = vec_p + index * _msg.MMSGHDR_SIZE + _msg.MSG_LEN_OFFSET
    sys_.write_mem(tid, addr, struct.pack("<I", sent))


# ---- the budget ----------------------------------------------------------------------------


class Budget:
    """The data one sandbox's waiting sends hold in the supervisor (HELD_MAX in all)."""

    __slots__ = ("_room", "held")

    def __init__(self) -> None:
        self.held = 0
        self._room: ParkingLot | None = None  # once a send waits for room

    def hold(self, size: int) -> None:
        self.held += size

    def release(self, size: int) -> None:
        self.held -= size
        if self._room is not None:
            self._room.unpark_all()

    async def released(self) -> None:
        """Return once a waiting send released what it held."""
        import trio

        if self._room is None:
            self._room = trio.lowlevel.ParkingLot()
        await self._room.park()


def _within_budget(h: Handlers, c: Call, act: Callable[[Call], Answer], sent: Answer) -> Answer:
    """``sent``; or, when it is OVER_BUDGET, a Pending that waits, holding no data, until
    the sandbox's waiting sends leave room, and then makes the call again (``act``)."""
    if sent is not OVER_BUDGET:
        return sent

    async def when_room() -> Answer:
        import trio

        while True:
            with trio.move_on_after(WATCHDOG):
                await h.budget.released()
            if not h.still_waiting(c.n):
                return -errno.ENOENT
            if h.budget.held < HELD_MAX:
                try:
                    return act(c)  # (over budget again: it waits again)
                except MustAsk as must:  # (the child changed its call meanwhile)
                    return h.ask(c.n, must)

    return Pending(when_room)
