"""Verified names (``--verify-names``): a TCP connection that only a hostname rule
allows goes through a relay of the supervisor, which reads its first record, checks the
name it gives, and then gets out of the way (a C thread moves the bytes).

The handler (onbehalf.py) asks ``Relay.wants`` about each allowed TCP connect; for one
whose destination no IP/CIDR rule allows, it connects the child's socket (our duplicate)
to the relay's loopback listener instead, and ``expect`` notes the original destination
under the child socket's local address. The relay accepts, finds that note by the peer
address, and reads the first bytes (``firstbytes.read``: the TLS ClientHello's SNI or
the HTTP request's ``Host``), at most ``MAX_FIRST`` bytes within ``FIRST_TIMEOUT``. The
name must be one a rule allows on that port *and* one whose addresses (start-up
resolution, or the DNS mode's book) include the very address the command connected to
(``name_allowed``). Then the relay connects to that original destination (never to
anything the request names), writes the bytes it read, and hands both sockets to the
``Splicer`` (csrc/relay.h: one C thread, epoll, ``splice`` through a pipe per direction:
no copy into user space, no Python per byte, bounded memory, each half-close and reset
passed on, every pair reset when the sandbox ends; at most SANDLOCK_RELAY_MAX_PAIRS at
once: a connection past that, or one it cannot take for want of pipes, is reset).
Before that, at most ``MAX_SERVED`` connections are read, checked or relayed by HTTP
rules at once; one past that is reset at its accept (one line on stderr, once). With
``Relay(native=False)`` trio tasks do the same in Python (``_pump``: the reference the
tests compare it with). Otherwise, or if the upstream cannot be reached, the child's
connection is reset (SO_LINGER 0) and nothing it sent reaches the destination: the
refusal is reported like any denial (``"rule": "name-mismatch"``, the name seen as
``host``).

What the command can observe: ``getpeername`` on its socket gives the relay's loopback
address and port, not the destination (``getsockname`` a loopback address); its connect
succeeds at once, and a destination that refuses it shows as a reset after the first
bytes, not as ECONNREFUSED; a protocol in which the server speaks first gets no bytes
and is reset after ``FIRST_TIMEOUT``.

Python decides the first connection to each destination and the first use of each
name; then C repeats those decisions. Given the ``gate`` (which remembers), a relayed
destination is remembered as such: the gate connects later connects to it to the relay
itself, noting the destination (csrc/relaynotes.h; ``_gate_note`` takes it at accept).
With --verify-names alone, the C thread accepts too (``_front``, csrc/relay.h): a TLS
ClientHello naming a host this relay let through to that destination under the policy
deciding now (``approve``, emptied by the gate with each policy change) is let through
there; everything else comes here (``_take``) with the bytes read, and is served as if
accepted here.

HTTP rules plug into the same relay: with ``http`` (httprelay.py), every TCP connection
to an HTTP port is relayed, and handed whole to it (each request checked, h11 both
ways) instead of ``_serve``. ``verify`` False: only those (HTTP rules without
--verify-names). ``_splice`` is the one call that hands a checked pair to the data path
(csrc/relay.c; the trio pumps with ``native`` False).
trio is imported by ``run`` only.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import select
import socket
import struct
import sys
from collections.abc import Callable

from . import _syscalls as sys_
from .events import Event
from .firstbytes import MAX_FIRST, NEED_MORE, NOT_NAMED, First, read
from .policy import Decision, Policy
from .sockaddr import MAPPED_PREFIX, Dest, canonical, parse_sockaddr

TYPE_CHECKING = False
if TYPE_CHECKING:
    import trio

    from .httprelay import HttpHandler

__all__ = ["ECH", "MISMATCH", "Check", "Relay", "name_allowed", "names_check", "only_by_name"]

MISMATCH = "name-mismatch"
# An Encrypted ClientHello (firstbytes' kind), as the refusal's event says it (its
# ``detail``): the denial report says why, the audit record is MISMATCH's as any other.
ECH = "ech"
FIRST_TIMEOUT = 10.0  # seconds to wait for the first record
_ALIVE_EVERY = 1.0  # seconds between "is the caller still waiting?" while reaching
CONNECT_TIMEOUT = 30.0  # seconds to reach the original destination
# A non-blocking connect that must reach its destination first (``reaches_first``) waits
# this long at most for the destination's answer, where without the relay it would
# return at once: enough for a refusal from most of the world (an RTT), short enough not
# to stall a client's event loop for long. Past it the connect goes to the relay, which
# finishes the handshake (a destination that refuses then is a 502 for the request).
NONBLOCKING_PATIENCE = 0.25
PIPE_SIZE = sys_.RELAY_PIPE_SIZE  # each direction's pipe (F_SETPIPE_SZ; csrc/abi.h)
MAX_WAITING = 4096  # connections noted but not yet accepted
ACCEPT_BACKOFF = 0.05  # seconds between accepts while they fail for want of descriptors
# accept's errors that leave the connection queued (our descriptor table, the system's,
# or the kernel's memory is full: trio's serve_listeners sleeps on the same ones)
_EXHAUSTED = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
# Connections served here at once (read, checked, or relayed by HTTP rules), each two fds
# and a few trio tasks: past it a new one is reset, so that a command holding connections
# open without a byte (slowloris) cannot grow the supervisor without bound. (A pair handed
# to the C data path leaves this count: the Splicer has its own cap.)
MAX_SERVED = sys_.RELAY_MAX_PAIRS
_SPLICE = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_FAMILY = struct.Struct("=H")  # sa_family_t, host order
_LINGER0 = struct.pack("ii", 1, 0)


def only_by_name(policy: Policy, decision: Decision, dest: Dest) -> bool:
    """Whether an allowed TCP ``decision`` on ``dest`` rests on hostname rules alone:
    it was a hostname rule's, and no IP/CIDR (or any-address) allow rule covers it."""
    if not decision.allowed or decision.host is None:
        return False
    ip = ipaddress.ip_address(canonical(dest.addr))
    for rule in policy.allow_rules:
        if rule.proto != "tcp" or rule.host is not None:
            continue
        if rule.ports is not None and dest.port not in rule.ports:
            continue
        if rule.network is None or (rule.network.version == ip.version and ip in rule.network):
            return False
    return True


def name_allowed(policy: Policy, name: str, dest: Dest) -> bool:
    """Whether a TCP rule allows ``name`` on ``dest``'s port and the policy's addresses
    for it (of its host key) include ``dest``'s address."""
    key = policy.host_for_name(name)
    if key is None:
        return False
    shown = str(ipaddress.ip_address(canonical(dest.addr)))
    if shown not in policy.host_addresses.get(key, ()):
        return False
    return any(
        rule.host == key and rule.proto == "tcp" and (rule.ports is None or dest.port in rule.ports)
        for rule in policy.allow_rules
    )


Check = Callable[[Policy, First, Dest], bool]
"""Whether, under the policy deciding now, a connection to ``Dest`` whose first record is
``First`` may go on (``names_check`` by default; issue 14 passes its own)."""


def names_check(policy: Policy, first: First, dest: Dest) -> bool:
    """--verify-names: a TLS or HTTP first record naming a host ``name_allowed`` passes
    (no name, an IP literal, Encrypted ClientHello: refused)."""
    if first.kind not in ("tls", "http") or first.name is None:
        return False
    return name_allowed(policy, first.name, dest)


class _Noted:
    __slots__ = ("dest", "pid", "upstream")

    def __init__(self, pid: int, dest: Dest, upstream: socket.socket | None = None) -> None:
        self.pid = pid
        self.dest = dest
        self.upstream = upstream  # connected to dest already (``reaches_first``)


class Relay:
    """One sandbox's relay: ``run`` it in the supervisor's nursery (it opens and closes
    its listeners); ``policy`` gives the policy deciding now, ``report`` hears refusals,
    ``check`` decides on each connection's first record."""

    def __init__(
        self,
        policy: Callable[[], Policy],
        report: Callable[[Event], None] | None,
        check: Check = names_check,
        *,
        verify: bool = True,
        http: HttpHandler | None = None,
        native: bool = True,
        gate: sys_.Gate | None = None,
    ) -> None:
        self._policy = policy
        self._report = report
        self._check = check
        self._verify = verify  # --verify-names: connections only a hostname rule allows
        self._http = http  # HTTP rules (httprelay.py): every connection to an HTTP port
        self._native = native  # the C data path (False: trio tasks; tests compare both)
        self._gate = gate  # sends remembered relayed connects here itself, noted there
        self._fronted = False  # the C thread accepts (relay.h's front): approve names to it
        self._reaching = 0  # connects waiting for their destination (``reach_first``)
        self._splicer: sys_.Splicer | None = None
        self._listeners: dict[int, socket.socket] = {}
        self._targets: dict[int, bytes] = {}
        self._noted: dict[tuple[str, int], _Noted] = {}
        self._served = 0  # connections in _guarded now (MAX_SERVED)
        self._full_said = False

    def wants(self, policy: Policy, decision: Decision, dest: Dest) -> bool:
        """Whether this allowed TCP connect must go through the relay."""
        if self._http is not None and dest.port in self._http.ports:
            return True
        return self._verify and only_by_name(policy, decision, dest)

    def target(self, domain: int) -> bytes | None:
        """The relay's sockaddr for a socket of ``domain``; None while not running."""
        return self._targets.get(domain)

    def reaches_first(self, dest: Dest) -> bool:
        """Whether a connect to ``dest`` must reach it before it is answered (``reach``),
        so that the command sees the destination's own refusal as it would without the
        relay (and a client that tries the next address does): HTTP rules, where the
        relay opens the destination's connection before any request anyway, not
        --verify-names, where nothing reaches a destination before its name is checked.
        Not past MAX_WAITING of them at once (each holds a descriptor while it waits: a
        command must not use up the supervisor's, a daemon's shared by every sandbox);
        the next ones go to the relay at once, as remembered ones do."""
        return (
            self._http is not None
            and not self._verify
            and dest.port in self._http.ports
            and self._reaching < MAX_WAITING
        )

    async def reach_first(
        self, dest: Dest, alive: Callable[[], bool], patience: float = CONNECT_TIMEOUT
    ) -> socket.socket | int:
        """``reach``, counted against ``reaches_first``'s bound, waiting ``patience``
        seconds at most (``finish_reach``: the socket may be still connecting)."""
        self._reaching += 1
        try:
            return await reach(dest, alive, patience)
        finally:
            self._reaching -= 1

    def expect(self, fd: int, pid: int, dest: Dest, upstream: socket.socket | None = None) -> bool:
        """Note that the socket ``fd`` (connected, or connecting, to the relay) is
        ``pid``'s connection to ``dest`` (``upstream``: connected to it already, the
        relay's now). False if it cannot be (then reset it; ``upstream`` is closed)."""
        if len(self._noted) >= MAX_WAITING:
            if upstream is not None:
                upstream.close()
            return False
        sock = socket.socket(fileno=fd)
        try:
            local = sock.getsockname()
        finally:
            sock.detach()
        old = self._noted.pop((_unmapped(local[0]), local[1]), None)
        if old is not None and old.upstream is not None:  # (a note never taken: stale)
            old.upstream.close()
        self._noted[(_unmapped(local[0]), local[1])] = _Noted(pid, dest, upstream)
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None:  # type: ignore[assignment]
        """Listen, accept and relay until cancelled."""
        import trio

        try:
            if self._native:
                self._splicer = sys_.Splicer()
            self._listen()
            if self._gate is not None:
                for domain, target in self._targets.items():
                    self._gate.set_relay(domain, target)
            handed = self._front()
            self._fronted = handed is not None
            task_status.started()
            async with trio.open_nursery() as nursery:
                if handed is not None:  # (the C thread accepts: relay.h's front)
                    nursery.start_soon(self._take, handed, nursery)
                else:
                    for sock in self._listeners.values():
                        nursery.start_soon(self._accept, sock, nursery)
        finally:
            if self._gate is not None:
                for domain in self._targets:
                    self._gate.set_relay(domain, None)
            self._targets.clear()
            for noted in self._noted.values():  # (connects never accepted: their upstreams)
                if noted.upstream is not None:
                    noted.upstream.close()
            self._noted.clear()
            if self._splicer is not None:  # (every pair still open is reset; first: the
                self._splicer.close()  # front's thread must be gone before its listeners)
                self._splicer = None
            for sock in self._listeners.values():
                trio.lowlevel.notify_closing(sock)
                sock.close()
            self._listeners.clear()

    def _front(self) -> int | None:
        """With --verify-names alone (no HTTP rules, the default check) and the gate
        remembering, let the C thread accept and let through the TLS connections whose
        name Python approved for their destination (csrc/relay.h): the eventfd that says
        it handed connections over (``_take``); else None (``_accept`` accepts here)."""
        if (
            self._splicer is None
            or self._gate is None
            or self._http is not None
            or not self._verify
            or self._check is not names_check
        ):
            return None
        v4 = self._listeners[socket.AF_INET].fileno()
        v6 = self._listeners[socket.AF_INET6].fileno() if socket.AF_INET6 in self._listeners else -1
        return self._splicer.front(self._gate, v4, v6, FIRST_TIMEOUT, CONNECT_TIMEOUT)

    def _listen(self) -> None:
        v4 = _listener(socket.AF_INET, "127.0.0.1")
        self._listeners[socket.AF_INET] = v4
        port4 = v4.getsockname()[1]
        self._targets[socket.AF_INET] = _sockaddr4(port4)
        try:
            v6 = _listener(socket.AF_INET6, "::1")
        except OSError:  # no IPv6 loopback: an IPv6 socket reaches the IPv4 one, mapped
            mapped = MAPPED_PREFIX + bytes([127, 0, 0, 1])
            self._targets[socket.AF_INET6] = _sockaddr6(mapped, port4)
        else:
            self._listeners[socket.AF_INET6] = v6
            self._targets[socket.AF_INET6] = _sockaddr6(bytes(15) + b"\x01", v6.getsockname()[1])

    async def _accept(self, listener: socket.socket, nursery: trio.Nursery) -> None:
        import trio

        while True:
            await trio.lowlevel.wait_readable(listener)
            try:
                conn, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as err:
                # The listener stays readable while the connection waits in its queue: an
                # accept again at once would spin at full CPU for as long as the command
                # holds the descriptors it made us open (each relayed connection costs
                # two). Wait a little instead; other errors (ECONNABORTED: that one
                # connection is lost) go on at once.
                if err.errno in _EXHAUSTED:
                    await trio.sleep(ACCEPT_BACKOFF)
                continue
            noted = self._noted.pop((_unmapped(peer[0]), peer[1]), None) or self._gate_note(peer)
            self._admit(conn, noted, b"", False, nursery)

    async def _take(self, handed: int, nursery: trio.Nursery) -> None:
        """Serve what the front hands over (relay.h), as ``_accept`` serves what it
        accepts: with the gate's note, else Python's own (``expect``), and the bytes the
        front read already."""
        import trio

        assert self._splicer is not None
        while True:
            await trio.lowlevel.wait_readable(handed)
            try:
                os.read(handed, 8)  # (first: a connection handed from now on wakes us again)
            except BlockingIOError:
                pass
            while (h := self._splicer.next()) is not None:
                conn = socket.socket(fileno=h.fd)
                if h.dest is not None:
                    dest = parse_sockaddr(h.dest)
                    noted = _Noted(h.tid, dest) if isinstance(dest, Dest) else None
                else:
                    noted = self._noted.pop((_shown(h.local), h.port), None)
                self._admit(conn, noted, h.data, h.timed_out, nursery)

    def _admit(
        self,
        conn: socket.socket,
        noted: _Noted | None,
        data: bytes,
        timed_out: bool,
        nursery: trio.Nursery,
    ) -> None:
        """Serve an accepted connection of the sandbox's (``noted``) in a task of its own,
        ``data`` read from it already; reset it if it is not the sandbox's, or if
        ``MAX_SERVED`` are served already."""
        if noted is None:  # not one of the sandbox's: someone else on loopback
            _reset(conn)
            return
        if self._served >= MAX_SERVED:
            _reset(conn)
            if noted.upstream is not None:
                _reset(noted.upstream)
            if not self._full_said:
                self._full_said = True
                print(
                    f"sandlock: the relay serves {MAX_SERVED} connections at once;"
                    " more are reset",
                    file=sys.stderr,
                )
            return
        conn.setblocking(False)
        self._served += 1
        nursery.start_soon(self._guarded, conn, noted, data, timed_out)

    def _gate_note(self, peer: tuple[str, int] | tuple[str, int, int, int]) -> _Noted | None:
        """The note the gate made of a connect it sent here (a remembered relayed
        destination: csrc/relaynotes.h), taken; None if it made none."""
        if self._gate is None:
            return None
        host = _unmapped(peer[0])
        if ":" in host:
            local = socket.inet_pton(socket.AF_INET6, host)
        else:
            local = MAPPED_PREFIX + socket.inet_aton(host)
        note = self._gate.take_note(local, peer[1])
        if note is None:
            return None
        dest = parse_sockaddr(note[0])
        return _Noted(note[1], dest) if isinstance(dest, Dest) else None

    async def _guarded(
        self, conn: socket.socket, noted: _Noted, data: bytes = b"", timed_out: bool = False
    ) -> None:
        """``_serve``; a bug resets that one connection, never the run (fails closed)."""
        try:
            if self._http is not None and noted.dest.port in self._http.ports:
                # (it owns conn, and the destination's connection if one was made)
                await self._http.serve(conn, noted.pid, noted.dest, noted.upstream)
            else:
                await self._serve(conn, noted, data, timed_out)
        except Exception as err:
            if conn.fileno() >= 0:
                _reset(conn)
            print(f"sandlock: internal error in the relay: {err!r} (reset)", file=sys.stderr)
        finally:
            self._served -= 1

    async def _serve(
        self, conn: socket.socket, noted: _Noted, data: bytes = b"", timed_out: bool = False
    ) -> None:
        upstream: socket.socket | None = None
        try:
            first, data = await _first(conn, data, timed_out)
            if not data and first == _CLOSED:
                return  # closed before a byte was sent: nothing to refuse (a lost race)
            name = first.name if isinstance(first, First) else None
            if not isinstance(first, First) or not self._check(self._policy(), first, noted.dest):
                ech = isinstance(first, First) and first.kind == ECH
                self._refused(noted, name, ECH if ech else None)
                return
            if self._fronted and first.kind == "tls" and name is not None:
                assert self._gate is not None  # (the next one to it, in the C thread)
                self._gate.approve(name, noted.dest.addr, noted.dest.port)
            upstream = await _connect(noted.dest)
            if upstream is None:
                return
            await _send_all(upstream, data)
            if await self._splice(conn, upstream):
                conn.close()
                upstream.close()
        finally:  # refused, failed or cancelled: both reset
            for sock in (conn, upstream):
                if sock is not None and sock.fileno() >= 0:
                    _reset(sock)

    async def _splice(self, conn: socket.socket, upstream: socket.socket) -> bool:
        """Move bytes both ways between the checked ``conn`` and ``upstream`` until both
        end: True when both ended (close them), False after a failure (reset them).
        The C data path takes both sockets (they are detached here: closed by it)."""
        import trio

        if self._splicer is not None:  # (refused, at its limit: reset, never unbounded)
            trio.lowlevel.notify_closing(conn)  # (out of trio's epoll set: C owns them)
            trio.lowlevel.notify_closing(upstream)
            if self._splicer.join(conn.fileno(), upstream.fileno()) != 0:
                return False
            conn.detach()
            upstream.detach()
            return True
        failed: list[OSError] = []
        async with trio.open_nursery() as nursery:

            async def pump(src: socket.socket, dst: socket.socket) -> None:
                try:
                    await _pump(src, dst)
                except OSError as err:
                    failed.append(err)
                    nursery.cancel_scope.cancel()

            nursery.start_soon(pump, conn, upstream)
            nursery.start_soon(pump, upstream, conn)
        return not failed

    def _refused(self, noted: _Noted, name: str | None, detail: str | None = None) -> None:
        """Report a refused connection: ``name`` the host its first record named (an ECH
        ClientHello's outer name), ``detail`` ``ECH`` for an encrypted ClientHello."""
        if self._report is not None:
            decision = Decision(allowed=False, rule=MISMATCH, host=name)
            reset = errno.ECONNRESET
            self._report(Event(noted.pid, "connect", "tcp", noted.dest, decision, reset, detail))


# ---- the connection's parts --------------------------------------------------------------


async def _first(
    conn: socket.socket, data: bytes = b"", timed_out: bool = False
) -> tuple[First | str, bytes]:
    """Read until ``firstbytes.read`` decides, within the size cap and the time limit:
    the verdict and every byte read (``_CLOSED``: the end came before any verdict).
    ``data``: read already (by the front, relay.h), ``timed_out``: in its time."""
    import trio

    verdict: First | str = read(data) if data else NEED_MORE
    with trio.move_on_after(0 if timed_out else FIRST_TIMEOUT):
        while verdict == NEED_MORE and len(data) < MAX_FIRST:
            try:  # (first without waiting: the command often wrote before the accept)
                chunk = conn.recv(MAX_FIRST - len(data))
            except BlockingIOError:
                await trio.lowlevel.wait_readable(conn)
                continue
            except OSError:  # (reset by the command)
                verdict = _CLOSED
                break
            if not chunk:
                verdict = _CLOSED
                break
            data += chunk
            verdict = read(data)
    return (NOT_NAMED if verdict == NEED_MORE else verdict), data


_CLOSED = "closed"


async def _connect(dest: Dest) -> socket.socket | None:
    """A socket connected to ``dest`` (as the rules saw it), or None."""
    sock = await reach(dest)
    return None if isinstance(sock, int) else sock


async def reach(
    dest: Dest, alive: Callable[[], bool] = lambda: True, patience: float = CONNECT_TIMEOUT
) -> socket.socket | int:
    """A non-blocking socket connected to ``dest`` (as the rules saw it), or the errno of
    the attempt (ECONNREFUSED, ETIMEDOUT after CONNECT_TIMEOUT, EMFILE: the supervisor's
    descriptors used up...). ``alive`` is asked now and then while the handshake waits:
    False gives up (ECONNABORTED). ``patience``: as for ``finish_reach``."""
    started = start_reach(dest)
    return started if isinstance(started, int) else await finish_reach(started, alive, patience)


def start_reach(dest: Dest) -> socket.socket | int:
    """``reach``'s first half, at once: a socket whose handshake with ``dest`` has begun
    (or ended: loopback), for ``finish_reach``; or the errno."""
    seen = canonical(dest.addr)
    family = socket.AF_INET if len(seen) == 4 else socket.AF_INET6
    kind = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    try:
        sock = socket.socket(family, kind)
    except OSError as err:
        return err.errno or errno.ENOMEM
    try:
        rc = sock.connect_ex((socket.inet_ntop(family, seen), dest.port))
    except OSError as err:
        rc = err.errno or errno.ECONNABORTED
    if rc not in (0, errno.EINPROGRESS):
        sock.close()
        return rc
    return sock


async def finish_reach(
    sock: socket.socket,
    alive: Callable[[], bool] = lambda: True,
    patience: float = CONNECT_TIMEOUT,
) -> socket.socket | int:
    """``reach``'s second half: ``sock`` (from ``start_reach``) once connected, or the
    errno (it is closed then). With ``patience`` below CONNECT_TIMEOUT, a handshake not
    over after that many seconds is not an error: ``sock`` comes back still connecting
    (``connecting`` says so; a later ``finish_reach`` finishes it)."""
    import trio

    rc = errno.ECONNABORTED
    try:
        if sys_.poll1(sock.fileno(), select.POLLOUT) > 0:  # (loopback: often done)
            rc = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        else:
            with trio.move_on_after(min(patience, CONNECT_TIMEOUT)):
                while alive():
                    with trio.move_on_after(_ALIVE_EVERY):
                        await trio.lowlevel.wait_writable(sock)
                        break
            if sys_.poll1(sock.fileno(), select.POLLOUT) > 0:
                rc = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            elif not alive():
                rc = errno.ECONNABORTED
            elif patience < CONNECT_TIMEOUT:
                rc = 0  # (still connecting: the caller goes on without waiting)
            else:
                rc = errno.ETIMEDOUT
    except OSError as err:
        rc = err.errno or errno.ECONNABORTED
    finally:
        if rc != 0:  # (refused, timed out, or cancelled)
            sock.close()
    return sock if rc == 0 else rc


def connecting(sock: socket.socket) -> bool:
    """Whether ``sock``'s handshake (``start_reach``) is still going on."""
    return sys_.poll1(sock.fileno(), select.POLLOUT) == 0


async def _send_all(sock: socket.socket, data: bytes) -> None:
    import trio

    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)


async def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Move ``src``'s bytes to ``dst`` with splice until ``src``'s end, then half-close
    ``dst``. An error raises OSError (the caller resets both)."""
    import trio

    r, w = open_pipe()
    try:
        while True:
            try:
                n = os.splice(src.fileno(), w, PIPE_SIZE, flags=_SPLICE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(src)
                continue
            if n == 0:
                break
            while n:
                try:
                    n -= os.splice(r, dst.fileno(), n, flags=_SPLICE)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(dst)
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError as err:
            if err.errno != errno.ENOTCONN:
                raise
    finally:
        os.close(r)
        os.close(w)


def open_pipe() -> tuple[int, int]:
    """A pipe to splice through (read end, write end), non-blocking and close-on-exec,
    of PIPE_SIZE bytes where the system allows it."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # (pipe-max-size lower: the default size works, slower)
    return r, w


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a reset (SO_LINGER 0): the peer gets ECONNRESET, not an EOF."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
    except OSError:
        pass
    sock.close()


def _listener(family: int, host: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, 0))
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    return sock


def _sockaddr4(port: int) -> bytes:
    return _FAMILY.pack(socket.AF_INET) + port.to_bytes(2, "big") + bytes([127, 0, 0, 1]) + bytes(8)


def _sockaddr6(addr: bytes, port: int) -> bytes:
    return _FAMILY.pack(socket.AF_INET6) + port.to_bytes(2, "big") + bytes(4) + addr + bytes(4)


def _unmapped(host: str) -> str:
    return host.removeprefix("::ffff:")


def _shown(local: bytes) -> str:
    """A peer address as accept shows it (16 bytes, IPv4 mapped), as ``_noted`` keys it."""
    if local.startswith(MAPPED_PREFIX):
        return socket.inet_ntop(socket.AF_INET, local[12:])
    return socket.inet_ntop(socket.AF_INET6, local)
