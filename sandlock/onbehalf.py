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

Here are the dispatch, the steps every call shares, connect and bind; the sends are in
sends.py, accept in inbound.py. A handler answers nothing itself and tells no listener:
it returns an answer (answer.py), and the decisions made on the way (``_Call.note``)
travel with it to the supervisor, which alone answers and reports.

Nothing blocks the trio thread. A handler does the quick part synchronously and returns
the answer; when the child's socket is blocking and the call would wait (a TCP
handshake, a full send buffer), it returns a ``Pending`` whose coroutine the supervisor
runs as a task: it waits for writability on our duplicate and finishes the call, so one
slow connect never delays the others. Only those coroutines need trio, and only they
import it: the quick part runs before the supervisor has started trio, or without it.
"""

from __future__ import annotations

import errno
import functools
import math
import os
import select
import socket
from collections.abc import Callable

from . import _caller, _local, _msg, _owned
from . import _syscalls as sys_
from ._msg import Message, int32
from .answer import Answer, Decided, Pending, Reply
from .events import Event
from .policy import Decision, Policy
from .sockaddr import MAPPED_PREFIX, Dest, Invalid, canonical, parse_sockaddr
from .vfiles import OPEN_SYSCALLS, VirtualFiles

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from .ask import Asker
    from .relay import Relay
    from .sends import Budget

    class GateCache(Protocol):
        """What the handlers ask of the gate (sys_.Gate) when it may repeat decisions."""

        def allow(
            self, domain: int, type: int, protocol: int, addr: bytes, port: int, relay: bool = ...
        ) -> None:
            """Answer calls to this destination, sent to as named (with ``relay``: TCP
            connects sent to the relay instead), from now on."""

        def park_connect(self, notif_id: int, fd: int) -> bool:
            """Take a blocking connect in progress and answer it when the handshake ends."""


SYS_CONNECT = sys_.NR_CONNECT
SYS_BIND = sys_.NR_BIND
SYS_SENDTO = sys_.NR_SENDTO
SYS_SENDMSG = sys_.NR_SENDMSG
SYS_SENDMMSG = sys_.NR_SENDMMSG
SYS_ACCEPT = sys_.NR_ACCEPT
SYS_ACCEPT4 = sys_.NR_ACCEPT4

_IP_DOMAINS = (socket.AF_INET, socket.AF_INET6)
_LOCAL_DOMAINS = (socket.AF_UNIX, socket.AF_NETLINK)
PROTOS: dict[tuple[int, int], str] = {
    (socket.SOCK_STREAM, socket.IPPROTO_TCP): "tcp",
    (socket.SOCK_DGRAM, socket.IPPROTO_UDP): "udp",
    (socket.SOCK_DGRAM, socket.IPPROTO_ICMP): "icmp",
    (socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6): "icmp",
}
_DNS_PROTOCOLS = (socket.IPPROTO_TCP, socket.IPPROTO_UDP)
WATCHDOG = 1.0  # seconds between "is the child still waiting?" checks while we wait
_BACKOFF_MAX = 0.05  # retry interval ceiling when readiness cannot be polled (AF_UNIX)

Redirect = Callable[[int, Dest], "bytes | None"]
"""In DNS mode, the forwarder's name for a port-53 destination of a socket of that domain
(names.Names.redirect), or None: sent as named."""


class MustAsk(Exception):
    """Raised by ``Handlers.decide`` when only an answer can decide the call (ask.py);
    ``Handlers.handle`` makes the call wait for it. Raised before anything is done for
    the call, so handling it again from the start is sound."""

    def __init__(self, proto: str, dest: Dest, syscall: str) -> None:
        super().__init__(proto, dest, syscall)
        self.proto, self.dest, self.syscall = proto, dest, syscall


class Call:
    """One notification in hand: the thread, our duplicate of its socket, what the kernel
    says the socket is, every descriptor we opened for the call (closed at the end), and
    the decisions made for it that the supervisor has not been handed yet."""

    __slots__ = ("caller", "dup", "events", "info", "ip", "n", "owned", "who")

    def __init__(self, n: sys_.Notif, dup: int, info: sys_.SockInfo) -> None:
        self.n = n
        self.dup = dup
        self.info = info
        self.ip = info.domain in _IP_DOMAINS
        self.owned = [dup]
        self.caller: _caller.Caller | None = None
        self.who: sys_.Creds | None = None  # whose credentials the call runs with
        self.events: list[Event] | None = None

    def note(self, event: Event | None, result: int) -> None:
        """Keep the decision ``event`` (None: none was needed), made for a call whose
        result is ``result``, to go with the answer (Event.with_result)."""
        if event is None:
            return
        if result < 0:
            event = event.with_result(result)
        if self.events is None:
            self.events = [event]
        else:
            self.events.append(event)

    def answer(self, answer: Answer) -> Answer:
        """``answer`` with the decisions noted since the last one was handed over."""
        events = self.events
        if events is None:
            return answer
        self.events = None
        if isinstance(answer, Decided):  # (decisions of its own: they came after ours)
            events += answer.events
            answer = answer.answer
        return Decided(answer, events)


class Handlers:
    """The on-behalf handlers of one sandbox. ``policy`` may be replaced at any time.

    Their collaborators are given here, once: ``gate`` when it may repeat decisions (it
    is told each allowed destination sent to as named, and takes blocking connects in
    progress: see Supervisor), ``vfiles`` to serve opens from, ``redirect`` in DNS mode."""

    def __init__(
        self,
        listener: int,
        policy: Policy,
        *,
        gate: GateCache | None = None,
        vfiles: VirtualFiles | None = None,
        redirect: Redirect | None = None,
        relay: Relay | None = None,
        asker: Asker | None = None,
    ) -> None:
        from . import sends  # (sends.py builds on this module)

        self.listener = listener
        self.policy = policy
        self.gate = gate
        self.vfiles = vfiles
        self.redirect = redirect
        self.relay = relay  # --verify-names (relay.py)
        self.asker = asker  # on_unlisted, --ask (ask.py)
        self.budget: Budget = sends.Budget()
        self.unix = _local.UnixGuard()
        self._table: dict[int, Callable[[Handlers, sys_.Notif], Answer]] = {
            SYS_CONNECT: Handlers.connect,
            SYS_BIND: Handlers.bind,
            SYS_SENDTO: sends.sendto,
            SYS_SENDMSG: sends.sendmsg,
            SYS_SENDMMSG: sends.sendmmsg,
            SYS_ACCEPT: Handlers.accept,
            SYS_ACCEPT4: Handlers.accept,
            sys_.NR_SOCKET: _owned.socket_call,  # (trapped only where _owned.enabled())
            sys_.NR_SOCKETPAIR: _owned.socketpair_call,
        }

    def handle(self, n: sys_.Notif) -> Answer:
        """Decide and perform one trapped call, and say how to answer it (answer.py)."""
        if n.nr in OPEN_SYSCALLS:
            if self.vfiles is None:
                return Reply.CONTINUE
            return self.vfiles.handle_open(self.listener, n)
        handler = self._table.get(n.nr)
        if handler is None:  # the filter traps nothing else; refuse whatever this is
            return -errno.ENOSYS
        if self.asker is None:
            return handler(self, n)
        try:
            return handler(self, n)
        except MustAsk as must:
            return self.ask(n, must)

    def ask(self, n: sys_.Notif, must: MustAsk) -> Pending[Answer]:
        """The call waits for an answer about its destination (ask.py), then is handled
        again from the start, the answer taking part in the decision."""
        asker = self.asker
        assert asker is not None
        request = asker.request(must.proto, must.dest, must.syscall, n.pid, self.policy)
        key = asker.key(must.proto, request.dst, must.dest.port, request.host)

        async def then() -> Answer:
            if not await asker.answer(n.id, request, key, lambda: self.still_waiting(n)):
                return -errno.ENOENT  # the thread went away: nobody to answer
            try:
                return self.handle(n)
            finally:
                asker.forget(n.id)  # (unused if the call failed before its decision)

        return Pending(then)

    # ---- the trapped syscalls ----------------------------------------------------------

    def bind(self, n: sys_.Notif) -> Answer:
        """bind(fd, addr, addrlen): an AF_UNIX one is performed here and recorded (see
        _local.py); any other is left to the kernel. That is sound although the child may
        swap the descriptor meanwhile: a bind sends nothing, and an AF_UNIX socket bound
        behind our back is only one that is not recorded, so connects to it are refused."""
        fd, addr_p, addrlen = int32(n.args[0]), n.args[1], int32(n.args[2])
        dup = _owned.getfd(n.pid, fd)
        if dup < 0:
            return Reply.CONTINUE  # not a descriptor: the kernel says so itself
        info = sys_.sock_info(dup)
        if isinstance(info, int) or info.domain != socket.AF_UNIX:
            os.close(dup)
            return Reply.CONTINUE
        c = Call(n, dup, info)
        try:
            name = _msg.read_name(n.pid, addr_p, addrlen)
            if isinstance(name, int):
                return name
            if name is None:
                return -errno.EFAULT if addr_p == 0 and addrlen else -errno.EINVAL
            if not self.still_waiting(n):
                return -errno.ENOENT
            if isinstance(who := self.who(c), int):
                return who
            return self.unix.bind(n.pid, dup, name, c.owned, c.who)
        finally:
            close_all(c.owned)

    def connect(self, n: sys_.Notif) -> Answer:
        """connect(fd, addr, addrlen) on our duplicate with our copy of addr."""
        fd, addr_p, addrlen = int32(n.args[0]), n.args[1], int32(n.args[2])
        return self.on_socket(n, fd, lambda c: self._connect(c, addr_p, addrlen))

    def accept(self, n: sys_.Notif) -> Answer:
        """accept/accept4: the peer decided (sandlock.inbound, loaded on first use)."""
        from . import inbound

        return inbound.accept(self, n)

    def resume_connect(self, n: sys_.Notif, dup: int, rc: int) -> Answer:
        """Finish a blocking connect the gate started on ``dup`` (now ours to close)."""
        info = sys_.sock_info(dup)
        if isinstance(info, int):
            os.close(dup)
            return info
        c = Call(n, dup, info)
        return _handed_on(c, Pending(lambda: self._finish_connect(c, b"", None, rc)))

    # ---- the shared steps ------------------------------------------------------------------

    def on_socket(self, n: sys_.Notif, fd: int, act: Callable[[Call], Answer]) -> Answer:
        """Run ``act`` on a duplicate of the child's descriptor; close what the call
        opened when it is answered (a Pending closes it when it finishes)."""
        dup = _owned.getfd(n.pid, fd)
        if dup < 0:
            return dup
        info = sys_.sock_info(dup)
        if isinstance(info, int):
            os.close(dup)
            return info
        c = Call(n, dup, info)
        handed_over = False
        try:
            if not c.ip and info.domain not in _LOCAL_DOMAINS:
                return -errno.ECONNREFUSED  # a family the filter never lets be created
            result = act(c)
            if isinstance(result, Pending):
                handed_over = True
                return c.answer(_handed_on(c, result))
            return c.answer(result)
        finally:
            if not handed_over:
                close_all(c.owned)

    def still_waiting(self, n: sys_.Notif) -> bool:
        """Whether the thread still waits for this answer (its tid is still its own)."""
        return sys_.notif_id_valid(self.listener, n.id)

    def who(self, c: Call, msg: Message | None = None) -> sys_.Creds | int | None:
        """Set ``c.who``: the caller's credentials where ours would give it more than it
        has (AF_UNIX, netlink, control data: see _caller.py); or -errno."""
        if c.caller is None:
            c.caller = _caller.Caller(c.n.pid, lambda: self.still_waiting(c.n))
        who = c.caller.switch(msg)
        if not isinstance(who, int):
            c.who = who
        return who

    def decide(self, c: Call, syscall: str, dest: Dest) -> Event:
        """The policy's decision on ``dest``; a refusal is noted (the call is refused)."""
        proto = PROTOS.get((c.info.type, c.info.protocol))
        if proto is None:  # the filter lets no such socket be made; fail closed anyway
            decision = Decision(allowed=False, rule=None, host=None)
            proto = f"proto-{c.info.protocol}"
        else:
            decision = self.policy.decide(proto, dest.addr, dest.port)
            if decision.rule is None and self.asker is not None:  # unlisted: ask (ask.py)
                answered = self.asker.decided(c.n.id, proto, dest, self.policy)
                if answered is None:
                    raise MustAsk(proto, dest, syscall)
                decision = answered
        refused = 0 if decision.allowed else errno.ECONNREFUSED
        event = Event(c.n.pid, syscall, proto, dest, decision, refused)
        if refused:
            c.note(event, -refused)
        return event

    def unix_name(self, c: Call, syscall: str, name: bytes) -> tuple[bytes, Event | None] | int:
        """The name to use for an AF_UNIX call and the event of its decision, if one was
        needed (a socket not bound by the sandbox), or -errno (refused: noted here)."""
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
            c.note(event, -refused)
            return -refused
        return verdict.name, event

    def redirected(self, c: Call, dest: Dest) -> bytes | None:
        """The forwarder's name for a TCP or UDP call to port 53, in DNS mode; else None.
        The forwarder decides on the query itself (names.py)."""
        if self.redirect is None or c.info.protocol not in _DNS_PROTOCOLS:
            return None
        return self.redirect(c.info.domain, dest)

    def destination(self, c: Call, name: bytes, dest: Dest, remember: bool = True) -> bytes:
        """The name we send to for an allowed ``dest``: the child's, unless it must be
        pinned. Only a name used as given is remembered (not with ``remember`` False: a
        call allowed once), as the gate sends as given."""
        pinned = pin_unspecified(name, dest)
        if pinned is name and self.gate is not None and remember:
            self.gate.allow(c.info.domain, c.info.type, c.info.protocol, dest.addr, dest.port)
        return pinned

    def remember_relayed(self, c: Call, name: bytes, dest: Dest, event: Event) -> None:
        """Let the gate send the next connects to ``dest`` to the relay itself (noting each
        for it: csrc/relaynotes.h), as this one is: only a name used as given, as in
        ``destination``."""
        if self.gate is not None and rememberable(event) and pin_unspecified(name, dest) is name:
            info = c.info
            self.gate.allow(info.domain, info.type, info.protocol, dest.addr, dest.port, True)

    def relay_for(self, c: Call, event: Event, dest: Dest) -> bytes | None:
        """With --verify-names or HTTP rules, the relay's name for an allowed TCP connect
        that must go through it (relay.py: ``Relay.wants``); else None."""
        relay = self.relay
        if relay is None or c.info.protocol != socket.IPPROTO_TCP:
            return None
        if (event.decision.rule or "").startswith("ask:"):
            return None  # (asked about: a person allowed this address, not a name)
        if not relay.wants(self.policy, event.decision, dest):
            return None
        target = relay.target(c.info.domain)
        return b"" if target is None else target  # (b"": not running)

    def relayed_to(self, c: Call, relayed: Dest | None, rc: int) -> int:
        """``rc`` of a connect to the relay once noted there (relay.expect)."""
        if relayed is None or rc not in (0, -errno.EINPROGRESS):
            return rc
        assert self.relay is not None
        return rc if self.relay.expect(c.dup, c.n.pid, relayed) else -errno.ECONNREFUSED

    async def wait_writable(self, c: Call) -> int:
        """0 once our duplicate is writable; -ENOENT if the child stopped waiting."""
        import trio

        while True:
            with trio.move_on_after(WATCHDOG):
                await trio.lowlevel.wait_writable(c.dup)
                return 0
            if not self.still_waiting(c.n):
                return -errno.ENOENT

    async def backoff(self, c: Call, attempt: int) -> int:
        """Sleep before a retry where readiness cannot be polled (a full AF_UNIX peer)."""
        import trio

        await trio.sleep(min(0.001 * 2**attempt, _BACKOFF_MAX))
        return 0 if self.still_waiting(c.n) else -errno.ENOENT

    # ---- connect ---------------------------------------------------------------------------

    def _connect(self, c: Call, addr_p: int, addrlen: int) -> Answer:
        name = _msg.read_name(c.n.pid, addr_p, addrlen)
        if isinstance(name, int):
            return name
        if name is None:
            return -errno.EFAULT if addr_p == 0 and addrlen else -errno.EINVAL
        if not self.still_waiting(c.n):
            return -errno.ENOENT
        event = None
        relayed: Dest | None = None  # (--verify-names: the child connects to the relay)
        if c.ip:
            dest = parse_sockaddr(name)
            if isinstance(dest, Invalid):
                return -dest.errno
            if isinstance(dest, Dest):  # (AF_UNSPEC dissolves an association: not egress)
                redirected = self.redirected(c, dest)
                if redirected is not None:
                    name = redirected
                else:
                    event = self.decide(c, "connect", dest)
                    if not event.decision.allowed:
                        return -errno.ECONNREFUSED
                    relay = self.relay_for(c, event, dest)
                    if relay is None:
                        name = self.destination(c, name, dest, rememberable(event))
                    elif not relay:  # (the relay is not running: fail closed)
                        c.note(event, -errno.ECONNREFUSED)
                        return -errno.ECONNREFUSED
                    elif self.relay is not None and self.relay.reaches_first(dest):
                        return Pending(
                            functools.partial(self._connect_reached, c, name, relay, dest, event)
                        )
                    else:
                        self.remember_relayed(c, name, dest, event)
                        name, relayed = relay, dest
        elif c.info.domain == socket.AF_UNIX:
            decided = self.unix_name(c, "connect", name)
            if isinstance(decided, int):
                return decided
            name, event = decided
        if not c.ip and isinstance(who := self.who(c), int):
            return who
        if c.info.nonblocking or c.info.type == socket.SOCK_DGRAM:
            rc = sys_.connect(c.dup, name, nonblock=False, who=c.who)  # returns at once
            rc = self.relayed_to(c, relayed, rc)
            c.note(event, rc)
            return rc
        # A blocking connect: start it non-blocking, finish it off the loop if it waits.
        rc = self.relayed_to(c, relayed, sys_.connect(c.dup, name, nonblock=True, who=c.who))
        if rc == -errno.EINPROGRESS and sys_.poll1(c.dup, select.POLLOUT) != 0:
            rc = sys_.sock_error(c.dup)
        if rc == -errno.EINPROGRESS and self.gate is not None:
            if self.gate.park_connect(c.n.id, c.dup):
                c.owned.remove(c.dup)  # the gate's now: it answers when the handshake ends
                c.note(event, rc)  # (an allowed call that started: its outcome unheard)
                return Reply.PARKED
        if rc in (-errno.EINPROGRESS, -errno.EAGAIN):
            return Pending(lambda: self._finish_connect(c, name, event, rc))
        c.note(event, rc)
        return rc

    async def _connect_reached(
        self, c: Call, name: bytes, target: bytes, dest: Dest, event: Event
    ) -> int:
        """A relayed connect answered once the destination is reached (relay.py
        ``reaches_first``): its refusal (or time-out) is the command's, as without the
        relay, so a client that tries the next address does; else the child's socket is
        connected to the relay, which gets the destination's connection with the note.
        Then the gate sends the next connects to ``dest`` to the relay itself: a
        destination that went away since is a 502 from the relay, not a refusal.

        The wait is bounded as the command's own connect would be: a non-blocking one
        by relay.NONBLOCKING_PATIENCE (it returns at once without the relay), a blocking
        one by its SO_SNDTIMEO (then EINPROGRESS, as the kernel says). Past the bound
        the child's socket goes to the relay with the handshake still going on."""
        from .relay import NONBLOCKING_PATIENCE, connecting

        assert self.relay is not None
        if c.info.nonblocking:
            patience = NONBLOCKING_PATIENCE
        else:
            patience = sys_.sock_sndtimeo(c.dup) or math.inf
        upstream = await self.relay.reach_first(dest, lambda: self.still_waiting(c.n), patience)
        if isinstance(upstream, int):
            c.note(event, -upstream)
            return -upstream
        waited_out = connecting(upstream)
        rc = sys_.connect(c.dup, target, nonblock=True, who=c.who)
        if rc not in (0, -errno.EINPROGRESS):
            upstream.close()
        elif not self.relay.expect(c.dup, c.n.pid, dest, upstream):
            rc = -errno.ECONNREFUSED
        else:
            if not waited_out:  # (an address that answered: the gate's from now on)
                self.remember_relayed(c, name, dest, event)
            if rc == -errno.EINPROGRESS and not c.info.nonblocking:  # (loopback: at once)
                rc = await self.wait_writable(c) or sys_.sock_error(c.dup)
            if rc == 0 and waited_out and not c.info.nonblocking:
                rc = -errno.EINPROGRESS  # (SO_SNDTIMEO ran out: connect(2)'s answer then)
        c.note(event, rc)
        return rc

    async def _finish_connect(self, c: Call, name: bytes, event: Event | None, rc: int) -> int:
        import trio

        attempt = 0
        # A blocking connect gives up after SO_SNDTIMEO with the error it has then
        # (EINPROGRESS for TCP, EAGAIN for a full AF_UNIX backlog); the attempt goes on.
        with trio.move_on_after(sys_.sock_sndtimeo(c.dup) or math.inf):
            while rc in (-errno.EINPROGRESS, -errno.EAGAIN):
                if rc == -errno.EINPROGRESS:  # a TCP handshake: wait for its end
                    rc = await self.wait_writable(c) or sys_.sock_error(c.dup)
                else:  # AF_UNIX with a full backlog: the kernel would wait for room; retry
                    rc = await self.backoff(c, attempt) or sys_.connect(
                        c.dup, name, nonblock=True, who=c.who
                    )
                    attempt += 1
        c.note(event, rc)  # the outcome, known now: it goes with the answer
        return rc


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


def rememberable(event: Event) -> bool:
    """Whether an allowed decision may be remembered by the gate: not one allowed for
    one call only (ask.py's ``ask:once``)."""
    return event.decision.rule != "ask:once"


def close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _handed_on(c: Call, pending: Pending[Answer]) -> Pending[Answer]:
    """``pending`` as the supervisor runs it: what was decided meanwhile goes with its
    answer, and the call's descriptors are closed once it is answered. A Pending that
    finishes with another waits on: the descriptors stay open for that one."""

    async def run() -> Answer:
        import trio

        waits_on = False
        try:
            answer = await pending.finish()
            if isinstance(answer, Pending):
                waits_on = True
                answer = _handed_on(c, answer)
            return c.answer(answer)
        finally:
            if not waits_on:
                for fd in c.owned:
                    trio.lowlevel.notify_closing(fd)
                close_all(c.owned)

    return Pending(run)
