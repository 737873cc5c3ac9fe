"""HTTP rules at run time: the relay's handler for connections to the HTTP ports.

With HTTP rules (httprules.py) the relay (relay.py) takes every TCP connection the
command makes to an HTTP port (``--http-ports``) and hands it here. Each connection is
parsed with h11 on both sides, one request at a time (keep-alive, pipelining held back
by h11 until the previous exchange ends):

1. The request's method, path (normalised) and host are read: the absolute URI's
   authority if the target is one (a Host header must then agree), else the Host
   header, else the address connected to. A port in it must be the one connected to.
2. ``bound``: the host is that very address, or a name whose addresses under the policy
   (start-up resolution or the DNS mode's book) include it. A rule naming a host
   matches only a bound request; an unbound one gets ``http-host-mismatch``. With
   ``--verify-names``, a destination allowed only by hostname rules needs a bound host
   whatever the rules.
3. Refused: ``403`` with one line naming the rule, and the connection stays usable for
   the next request (a refused request that has a body is answered with
   ``Connection: close``: its body is not read). Allowed: the request is re-serialised by
   h11 (what the server reads is what was checked: no smuggling through framing) to
   **the address and port the command connected to**, never to what the request names;
   its body streamed as it comes (to its end, also past an early answer such as a
   ``413``: the server reads on or ends the connection), the response streamed back.
4. ``Upgrade: websocket`` on an allowed ``GET``: after the server's ``101`` the bytes are
   copied both ways, unparsed. Any other upgrade (``h2c``: requests no longer checked),
   also as a second Upgrade header, and ``CONNECT`` are refused.

Every request's decision is one record (``syscall: "http"``, with method, host, path,
status and rule) for the audit log and the denial report.

The rules are read for each request from the policy deciding now (``Policy.http_rules``):
a swap (``Process.set_policy``, ``sandlock policy``) decides the next request, on an open
keep-alive connection too. The ports, and whether TLS is intercepted, are the run's: which
connections come here is decided when each one is made.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable

import h11
import trio

from . import httpbody, tlsbody
from .httprules import (
    BAD_PATH,
    DEFAULT_DENY,
    HOST_MISMATCH,
    HttpDecision,
    normalise_host,
    normalise_path,
)
from .policy import Policy
from .relay import finish_reach, only_by_name, reach, start_reach
from .sockaddr import Dest, canonical

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .httptls import Interceptor

__all__ = ["UPGRADE", "HttpHandler"]

UPGRADE = "http-upgrade"
HANDSHAKE_TIMEOUT = 30.0
_REASONS = {400: b"Bad Request", 403: b"Forbidden", 502: b"Bad Gateway"}
_PLAIN = "\0plain"  # (the ``sni`` of a connection without TLS)
_CHUNK = 1 << 20  # bytes read at a time (h11 hands them on as one Data event)
_MAX_PATH_SHOWN = 512
_DRAIN = 1 << 20  # bytes read (and dropped) of a refused request's body before closing
# The longest head (request or response line and headers) h11 waits for. Its default,
# 16 KiB, is below what clients and servers take (curl 100 KiB, Python 64 KiB a line,
# Go 1 MiB): the relay must not be the one to refuse a head the other side would read.
# Not a memory bound: a read of _CHUNK may already sit in h11's buffer.
MAX_HEAD = 1 << 18

Record = dict[str, object]


class HttpHandler:
    """Checks and relays each request of a connection to one of ``ports``, under the HTTP
    rules of the policy ``policy`` gives at that moment."""

    def __init__(
        self,
        ports: Iterable[int],
        policy: Callable[[], Policy],
        record: Callable[[Record], None] | None,
        *,
        verify: bool = False,
        tls: Interceptor | None = None,
    ) -> None:
        self._ports = frozenset(ports)
        self._policy = policy
        self._record = record
        self._verify = verify
        self.tls = tls  # --http-tls (httptls.py)
        self.splice_bodies = True  # (httpbody.py, tlsbody.py; False: all through h11, tests)

    @property
    def ports(self) -> frozenset[int]:
        """The TCP ports whose connections come here (the run's: fixed)."""
        return self._ports

    async def serve(
        self, conn: socket.socket, pid: int, dest: Dest, reached: socket.socket | None = None
    ) -> None:
        """Serve the command's connection ``conn`` to ``dest`` until either side ends;
        ``reached``: a connection to ``dest`` made before the command's connect was
        answered (relay.py ``reaches_first``), used for its first request."""
        try:
            await self._serve(conn, pid, dest, reached)
        finally:
            if reached is not None and reached.fileno() >= 0:  # (never taken: closed here)
                reached.close()

    async def _serve(
        self, conn: socket.socket, pid: int, dest: Dest, reached: socket.socket | None
    ) -> None:
        plain = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
        client: trio.abc.Stream = plain
        sni: str | None = None
        tls = self.tls is not None and await _starts_tls(conn)
        if tls:
            assert self.tls is not None
            shown = _text(dest.addr)
            wrapped = trio.SSLStream(
                plain, self.tls.base_context(shown), server_side=True, https_compatible=True
            )
            try:
                with trio.fail_after(HANDSHAKE_TIMEOUT):
                    await wrapped.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError, ValueError):
                await plain.aclose()
                return
            client = wrapped
            sni = self.tls.sni_of(wrapped.context)
        exchange = _Exchange(self, client, pid, dest, sni if tls else _PLAIN, reached)
        try:
            async with trio.open_nursery() as nursery:
                if self._prefetch(dest, sni if tls else _PLAIN):
                    if exchange.reached is None:  # (its handshake begun now, not when
                        started = start_reach(dest)  # the task first runs: after the request)
                        exchange.reached = started if not isinstance(started, int) else None
                    nursery.start_soon(exchange.prefetch)
                else:
                    exchange.no_prefetch()
                try:
                    await exchange.run()
                except (_Closed, h11.ProtocolError):
                    pass  # (a side went away, or broke HTTP: the connection is over)
                nursery.cancel_scope.cancel()
        finally:
            await exchange.close()

    def _prefetch(self, dest: Dest, sni: str | None) -> bool:
        """Whether the destination's connection may be opened while the first request
        comes, before any check: the address was allowed already, but the SNI sent to it
        must be one the policy gives it (not any text the command chose), and with
        --verify-names nothing reaches a destination before a name is checked."""
        if self._verify:
            return False
        if sni is _PLAIN or sni is None:
            return True
        return _bound(self._policy(), sni, _text(dest.addr))

    def decide(
        self, request: h11.Request, dest: Dest, sni: str | None = _PLAIN
    ) -> tuple[HttpDecision, str, str]:
        """The verdict on ``request`` to ``dest``, with the host and path to record;
        ``sni``: the TLS SNI (None: a TLS connection without one; ``_PLAIN``: no TLS)."""
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace")
        shown = _text(dest.addr)
        host_header = _header(request, b"host")
        authority: str | None = None
        path_text = target
        if target.startswith("/"):
            authority = host_header
        elif target.lower().startswith(("http://", "https://")):
            try:
                parts = urllib.parse.urlsplit(target)
            except ValueError:  # (``http://[::1/``: no authority a server would agree on)
                return HttpDecision(False, HOST_MISMATCH), shown, target[:_MAX_PATH_SHOWN]
            if parts.fragment or target.endswith("#"):  # (normalise_path refuses it too)
                return HttpDecision(False, BAD_PATH), parts.netloc, target[:_MAX_PATH_SHOWN]
            authority = parts.netloc
            path_text = parts.path or "/"
            if host_header is not None and normalise_host(host_header) != normalise_host(authority):
                return HttpDecision(False, HOST_MISMATCH), authority, path_text
        else:  # (CONNECT's authority, OPTIONS *)
            return HttpDecision(False, BAD_PATH), host_header or shown, target[:_MAX_PATH_SHOWN]
        named = normalise_host(authority) if authority is not None else (shown, None)
        if named is None:
            return HttpDecision(False, HOST_MISMATCH), authority or "", path_text
        host, port = named
        if port is not None and port != dest.port:
            return HttpDecision(False, HOST_MISMATCH), host, path_text
        if sni is not _PLAIN and sni is not None and sni != host:  # (the leaf said SNI)
            return HttpDecision(False, HOST_MISMATCH), host, path_text
        policy = self._policy()
        bound = _bound(policy, host, shown)
        if not bound and self._verify:
            decision = policy.decide("tcp", dest.addr, dest.port)
            if only_by_name(policy, decision, dest):
                return HttpDecision(False, HOST_MISMATCH), host, path_text
        upgrade = _upgrade(request)
        if upgrade is not None and (upgrade != "websocket" or method != "GET"):
            return HttpDecision(False, UPGRADE), host, path_text
        path = normalise_path(path_text)
        rules = policy.http_rules
        if rules is None:  # (a policy made without the run's HTTP rules: a bug; closed)
            return HttpDecision(False, DEFAULT_DENY), host, path_text
        return rules.decide(method, host, dest.port, path, bound=bound), host, path_text

    def report(
        self,
        tls: bool,
        pid: int,
        dest: Dest,
        request: h11.Request,
        host: str,
        path: str,
        status: int,
        decision: HttpDecision,
    ) -> None:
        if self._record is None:
            return
        extra: dict[str, object] = {"tls": True} if tls else {}  # (the request came in TLS)
        self._record(
            extra
            | {
                "pid": pid,
                "syscall": "http",
                "proto": "tcp",
                "dst": _text(dest.addr),
                "port": dest.port,
                "host": host,
                "method": request.method.decode("ascii", "replace"),
                "path": path[:_MAX_PATH_SHOWN],
                "status": status,
                "action": "allow" if decision.allowed else "deny",
                "rule": decision.rule if decision.rule is not None else "http-no-allow-rules",
            }
        )


def _framed(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers to send on: with Transfer-Encoding (which h11 framed the body by),
    no Content-Length, so that the next reader cannot frame it otherwise (smuggling)."""
    items = list(headers)
    if any(k.lower() == b"transfer-encoding" for k, _ in items):
        return [(k, v) for k, v in items if k.lower() != b"content-length"]
    return items


def _header(request: h11.Request, name: bytes) -> str | None:
    for key, value in request.headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _upgrade(request: h11.Request) -> str | None:
    """The protocols ``request`` proposes, every Upgrade header joined (a server may read
    a second one, or the last: ``h2c`` after ``websocket``), lower-cased; None: none."""
    values = [v.decode("latin-1").strip() for k, v in request.headers if k == b"upgrade"]
    return ", ".join(values).lower() if values else None


@functools.lru_cache(maxsize=256)
def _text(addr: bytes) -> str:
    """A destination's packed address as text (IPv4-mapped shown as IPv4); cached: asked
    several times per request, of a handful of addresses."""
    return str(ipaddress.ip_address(canonical(addr)))


@functools.lru_cache(maxsize=1024)
def _literal(host: str) -> str | None:
    """``host`` as an IP address's text if it is one (cached: parsing a name as an address
    fails twice, IPv4 then IPv6, on every request)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _bound(policy: Policy, host: str, shown: str) -> bool:
    """Whether ``host`` (normalised) is the address ``shown`` or a name the policy gives
    that address."""
    literal = _literal(host)
    if literal is not None:
        return literal == shown
    key = policy.host_for_name(host)
    return key is not None and shown in policy.host_addresses.get(key, ())


class _Closed(Exception):
    """A side ended or broke the protocol: the connection is over."""


class _Exchange:
    """One connection of the command: its requests, one after another."""

    def __init__(
        self,
        handler: HttpHandler,
        client: trio.abc.Stream,
        pid: int,
        dest: Dest,
        sni: str | None,
        reached: socket.socket | None = None,
    ) -> None:
        self.handler = handler
        self.reached = reached  # (the destination's connection, made already: taken once)
        self.client = client
        self.pid = pid
        self.dest = dest
        self.sni = sni  # _PLAIN without TLS
        # the command's side: we serve it
        self.down = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.up: h11.Connection | None = None  # the destination's side: we are its client
        self.upstream: trio.abc.Stream | None = None
        self._opened: trio.Event | None = trio.Event()  # (prefetch: set when tried)
        # The destination's connection carries no next request (HTTP/1.0, ``Connection:
        # close``, a body framed by its end) but is kept until one comes: its end, which
        # the server sends now, is the command's (_next_request), as without the relay.
        self._spent = False
        self._down_out: list[bytes] = []  # (for the command, not written yet: _flush_down)
        self._why = ""

    async def run(self) -> None:
        while True:
            try:
                event = await self._next_request()
            except h11.RemoteProtocolError:
                await self._answer(400, "sandlock: malformed HTTP request", close=True)
                return
            if not isinstance(event, h11.Request):
                return  # (ConnectionClosed, or the destination ended its side)
            decision, host, path = self.handler.decide(event, self.dest, self.sni)
            if not decision.allowed:
                self.handler.report(
                    self.sni is not _PLAIN, self.pid, self.dest, event, host, path, 403, decision
                )
                if not await self._refuse(event, decision):
                    return
            elif not await self._relay(event, host, path, decision):
                return
            if self.down.our_state is h11.MUST_CLOSE:  # (``Connection: close``, HTTP/1.0)
                await self._drain()  # (a next request sent meanwhile: a close would reset)
                return
            if self.down.our_state is not h11.DONE or self.down.their_state is not h11.DONE:
                return
            self.down.start_next_cycle()

    async def _next_request(self) -> h11.Event | type[h11.PAUSED] | None:
        """The command's next event. While it is awaited with the destination's connection
        open and idle (or spent), the destination ending that connection (or speaking
        unasked: a ``408``, dropped) ends this one: None. Without the relay the command
        would see that end; a client reading to the end of a keep-alive answer or of an
        HTTP/1.0 one, or a pool testing an idle connection, waits for it. So with the
        one the prefetch opens before the first request (a server's idle timeout)."""
        opened = self._opened
        if self.down.trailing_data[0] or (self.upstream is None and opened is None):
            return await _next(self.down, self.client)  # (a request came, or none open)
        if _read_now(self.down, self.client):  # (it came already, as a first request
            event = self.down.next_event()  # mostly has: no watch needed, no tasks)
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
        got: list[h11.Event | type[h11.PAUSED]] = []
        failed: list[BaseException] = []
        async with trio.open_nursery() as nursery:

            async def command() -> None:
                try:
                    got.append(await _next(self.down, self.client))
                except (_Closed, h11.RemoteProtocolError) as err:
                    failed.append(err)  # (raised below: not as a group from the nursery)
                nursery.cancel_scope.cancel()

            async def destination() -> None:
                if opened is not None:
                    await opened.wait()  # (the prefetch's connection: once open)
                upstream = self.upstream
                if upstream is None:
                    return  # (none: the request will get the 502)
                try:
                    await upstream.receive_some(_CHUNK)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
                nursery.cancel_scope.cancel()  # (its end, an error, or bytes unasked)

            nursery.start_soon(command)
            nursery.start_soon(destination)
        if failed:
            raise failed[0]
        if got:
            return got[0]
        await self._close_upstream()
        return None

    async def _refuse(self, request: h11.Request, decision: HttpDecision) -> bool:
        """Answer 403; whether the connection goes on."""
        has_body = any(
            k == b"transfer-encoding" or (k == b"content-length" and v.strip() != b"0")
            for k, v in request.headers
        )
        line = f"sandlock: refused by HTTP rule `{decision.rule}`"
        await self._answer(403, line, close=has_body)
        if has_body:
            await self._drain()
            return False
        event = await _next(self.down, self.client)  # its EndOfMessage
        return isinstance(event, h11.EndOfMessage)

    async def _answer(self, status: int, line: str, *, close: bool) -> None:
        body = (line + "\n").encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ]
        if close:
            headers.append((b"connection", b"close"))
        try:
            reason = _REASONS.get(status, b"")
            await self._send_down(
                h11.Response(status_code=status, headers=headers, reason=reason),
                h11.Data(data=body),
                h11.EndOfMessage(),
            )
        except h11.LocalProtocolError:
            pass  # (the request was too broken for any answer)

    async def _send_eof(self) -> None:
        """End the command's side of its connection, keeping the other open. With TLS the
        bare end of the transport (no close_notify, as trio's aclose with
        ``https_compatible`` ends it too): nothing more is sent on it."""
        client = self.client
        if isinstance(client, trio.SSLStream):
            client = client.transport_stream
        try:
            if isinstance(client, trio.abc.HalfCloseableStream):
                await client.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def _drain(self) -> None:
        """After a final answer with ``Connection: close``: half-close, read and drop
        what the command still sends (a reset would lose the answer), then end."""
        await self._send_eof()
        try:
            with trio.move_on_after(1.0):
                left = _DRAIN
                while left > 0 and (data := await self.client.receive_some(_CHUNK)):
                    left -= len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def _relay(
        self, request: h11.Request, host: str, path: str, decision: HttpDecision
    ) -> bool:
        """Forward ``request`` and its answer; whether the connection goes on."""
        why = ""
        if self._opened is not None:  # (the prefetch's outcome, once)
            await self._opened.wait()
            self._opened, why = None, self._why
        elif self.upstream is None or self._spent:  # (the last one had to close)
            await self._close_upstream()
            self.upstream, why = await self._open_upstream()
            self.up = _client()
        if self.upstream is None:
            await self._answer(502, f"sandlock: {why}", close=True)
            self.handler.report(
                self.sni is not _PLAIN, self.pid, self.dest, request, host, path, 502, decision
            )
            return False
        assert self.up is not None
        headers = _framed(request.headers.raw_items())
        if not any(k.lower() == b"host" for k, _ in headers):  # (HTTP/1.0 without one)
            headers.append((b"Host", host.encode("ascii", "replace")))  # (as it came: ASCII)
        try:
            head = self.up.send(
                h11.Request(method=request.method, target=request.target, headers=headers)
            )
        except h11.LocalProtocolError:
            await self._answer(400, "sandlock: cannot forward this request", close=True)
            return False
        switched = False
        first = self.down.next_event()
        if isinstance(first, h11.EndOfMessage):  # (no body, or all of it read: no task)
            try:  # (the head and the end in one write)
                end = h11.EndOfMessage(headers=list(first.headers.raw_items()))
                await self._write_up(head + (self.up.send(end) or b""))
                if self._command_ended():
                    await self._pass_half_close()
                switched = await self._forward_response(request, host, path, decision)
            except (_Closed, h11.ProtocolError):
                return False
            return await self._after(switched)
        try:
            await self._write_up(head or b"")
        except _Closed:
            return False
        body_done, failed = trio.Event(), []
        async with trio.open_nursery() as nursery:

            async def body() -> None:
                try:
                    await self._forward_body(first)
                except (_Closed, h11.ProtocolError) as err:
                    failed.append(err)
                    nursery.cancel_scope.cancel()
                finally:
                    body_done.set()

            nursery.start_soon(body)
            try:
                switched = await self._forward_response(request, host, path, decision)
            except (_Closed, h11.ProtocolError) as err:
                failed.append(err)
            if failed or (switched and not body_done.is_set()):
                nursery.cancel_scope.cancel()
                return False
            # Answered before the body ended (a 413, an early 200): the body goes on to the
            # destination, which reads it (RFC 9110 15.1: a server that does not close
            # reads the rest) or ends the connection (the command's ends with it), as
            # without the relay. Closing the command's connection now would reset it,
            # its body unread, and the answer with it.
            if not body_done.is_set() and self.down.our_state is h11.MUST_CLOSE:
                await self._pass_end(body_done)
        if failed:
            return False
        return await self._after(switched)

    def _command_ended(self) -> bool:
        """Whether the command has ended its (plain) side with nothing after the request
        just sent: a half-close (``shutdown(SHUT_WR)``) that came with the request. It
        is looked for once, at once; one that comes later reaches the server after its
        answer (when the relay reads for the next request)."""
        buffered, closed = self.down.trailing_data
        if buffered:
            return False  # (a pipelined request: the end, if any, comes after it)
        if closed:
            return True
        if type(self.client) is not trio.SocketStream:
            return False  # (TLS: its end is a close_notify record, not read here)
        sock = self.client.socket  # (a view of it, told what it is: no getsockopt calls)
        view = socket.socket(sock.family, socket.SOCK_STREAM, 0, sock.fileno())
        try:
            return view.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except OSError:  # (nothing yet: EAGAIN; a reset: the next read says so)
            return False
        finally:
            view.detach()

    async def _pass_half_close(self) -> None:
        """The command's half-close, to the destination: a server that answers once the
        request's end is known (HTTP/1.0 style, ``nc -N``) answers, as without the relay."""
        upstream = self.upstream
        if isinstance(upstream, trio.SocketStream):
            try:
                await upstream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass  # (its answer, or its end, says the rest)
            self._spent = True  # (half-closed: never used for another request)

    async def _pass_end(self, body_done: trio.Event) -> None:
        """An answer that ends the connection sent while the request's body still goes
        on: until the body ends, the destination's end of its side (a careful server
        half-closes after a ``413``, or a ``417`` to a client waiting for ``100
        Continue``, which then sends no body) is passed to the command as its own end."""
        # Watched on its socket, nothing read: the end, or bytes past a closing answer (a
        # TLS close_notify), make it readable. Over TLS, reading that end would stop the
        # TLS object writing (OpenSSL writes nothing once it read the peer's end), and
        # the body still has to go on.
        stream = self.upstream
        if isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        assert isinstance(stream, trio.SocketStream)
        sock = stream.socket
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                try:
                    await trio.lowlevel.wait_readable(sock)
                except trio.ClosedResourceError:
                    return  # (closed under it: the connection is over anyway)
                await self._send_eof()

            nursery.start_soon(watch)
            await body_done.wait()
            nursery.cancel_scope.cancel()

    async def _after(self, switched: bool) -> bool:
        """The exchange done: a switched protocol copied to its end, or the destination's
        side made ready for the next request; whether the connection goes on."""
        if switched:
            await self._splice()
            return False
        if self.up is None or self.up.our_state is h11.IDLE:  # (after a spliced body)
            return True
        if self.up.our_state is h11.DONE and self.up.their_state is h11.DONE:
            self.up.start_next_cycle()
        else:
            self._spent = True
        return True

    def no_prefetch(self) -> None:
        """The connection is opened for the first allowed request instead."""
        self._opened = None

    async def prefetch(self) -> None:
        """Open the destination's connection ahead of the first request."""
        assert self._opened is not None
        try:
            self.upstream, self._why = await self._open_upstream()
            if self.upstream is not None:
                self.up = _client()
        finally:
            self._opened.set()

    async def _open_upstream(self) -> tuple[trio.abc.Stream | None, str]:
        """The connection to the destination (TLS if the command's was), or None and
        why not."""
        reached, self.reached = self.reached, None
        sock = await (finish_reach(reached) if reached is not None else reach(self.dest))
        if isinstance(sock, int):
            return None, f"cannot reach {_shown(self.dest)}"
        plain = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        tls = self.handler.tls
        if self.sni is _PLAIN or tls is None:
            return plain, ""
        shown = _text(self.dest.addr)
        wrapped = trio.SSLStream(
            plain, tls.upstream, server_hostname=self.sni or shown, https_compatible=True
        )
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await wrapped.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError) as err:
            await plain.aclose()
            cause = err.__cause__ if err.__cause__ is not None else err
            return None, f"TLS to {_shown(self.dest)} failed: {cause}"
        return wrapped, ""

    async def _forward_body(self, first: object) -> None:
        """The request's body to the destination, ``first`` the event read already."""
        event = await _next(self.down, self.client) if first is h11.NEED_DATA else first
        while isinstance(event, h11.Data):
            await self._send_up(h11.Data(data=event.data))
            event = await _next(self.down, self.client)
        if not isinstance(event, h11.EndOfMessage):
            raise _Closed
        await self._send_up(h11.EndOfMessage(headers=list(event.headers.raw_items())))

    async def _forward_response(
        self, request: h11.Request, host: str, path: str, decision: HttpDecision
    ) -> bool:
        """The destination's answer, to the command; whether the protocol switched."""
        assert self.up is not None and self.upstream is not None
        while True:
            event = self.up.next_event()
            if event is h11.NEED_DATA:  # (what h11 gave so far goes down in one write)
                await self._flush_down()
                await _receive(self.up, self.upstream)
                continue
            if isinstance(event, h11.InformationalResponse):
                if event.status_code != 101 and self.down.their_http_version != b"1.1":
                    continue  # (RFC 9110 15.2: no 1xx to HTTP/1.0, which the server never saw)
                await self._send_down(
                    h11.InformationalResponse(
                        status_code=event.status_code,
                        headers=list(event.headers.raw_items()),
                        reason=event.reason,
                    )
                )
                if event.status_code == 101:
                    self.handler.report(
                        self.sni is not _PLAIN,
                        self.pid,
                        self.dest,
                        request,
                        host,
                        path,
                        101,
                        decision,
                    )
                    return True
            elif isinstance(event, h11.Response):
                self.handler.report(
                    self.sni is not _PLAIN,
                    self.pid,
                    self.dest,
                    request,
                    host,
                    path,
                    event.status_code,
                    decision,
                )
                self._queue_down(
                    h11.Response(
                        status_code=event.status_code,
                        headers=_framed(event.headers.raw_items()),
                        reason=event.reason,
                    )
                )
                if await self._spliced_body(request, event):
                    return False
            elif isinstance(event, h11.Data):
                self._queue_down(h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                await self._send_down(h11.EndOfMessage(headers=list(event.headers.raw_items())))
                return False
            else:
                await self._flush_down()  # (what came before the end is the command's)
                raise _Closed

    async def _spliced_body(self, request: h11.Request, response: h11.Response) -> bool:
        """The response's body moved past h11 (spliced by the kernel, httpbody.py, or in
        batches of TLS records, tlsbody.py) if it can be: whether it was (the exchange
        is then over on both sides)."""
        assert self.up is not None and self.upstream is not None
        if not (
            self.handler.splice_bodies
            and self.up.our_state in (h11.DONE, h11.MUST_CLOSE)  # (the request all sent)
            and (move := self._body_mover()) is not None
        ):
            return False
        buffered, _ = self.up.trailing_data
        left = httpbody.counted(request, response, len(buffered))
        if not left:
            return False
        if buffered:
            self._queue_down(h11.Data(data=buffered))
        await self._flush_down()  # (the head and what came with it, before the splice)
        # h11 counts the stand-in's length against Content-Length and hands it back
        # (Content-Length framing adds no bytes of its own):
        stand_in = h11.Data(data=httpbody.Sized(left))  # type: ignore[arg-type]
        pieces = self.down.send_with_data_passthrough(stand_in)
        assert pieces is not None and len(pieces) == 1
        try:
            await move(left)
        except httpbody.Short as err:
            raise _Closed from err  # (the command sees the body cut short, then the end)
        await self._send_down(h11.EndOfMessage())
        if httpbody.keeps_alive(request, response):
            self.up = _client()  # (it never saw the body: start afresh)
        else:
            self._spent = True
        return True

    def _body_mover(self) -> Callable[[int], Awaitable[None]] | None:
        """How a response body of N bytes can go past h11 on this connection: spliced
        by the kernel (plain HTTP), in batches of TLS records (--http-tls), or not."""
        client, upstream = self.client, self.upstream
        if isinstance(client, trio.SocketStream) and isinstance(upstream, trio.SocketStream):
            return functools.partial(
                httpbody.move, upstream.socket.fileno(), client.socket.fileno()
            )
        src, dst = tlsbody.parts(upstream), tlsbody.parts(client)
        if src is None or dst is None:
            return None
        return functools.partial(tlsbody.move, src, dst)

    async def _splice(self) -> None:
        """After a 101: the bytes each side sent past the handshake, then a copy both ways."""
        assert self.up is not None and self.upstream is not None
        upstream = self.upstream
        down_left, _ = self.down.trailing_data
        up_left, _ = self.up.trailing_data

        async def copy(src: trio.abc.Stream, dst: trio.abc.Stream, head: bytes) -> None:
            try:
                if head:
                    await dst.send_all(head)
                while data := await src.receive_some(_CHUNK):
                    await dst.send_all(data)
                if isinstance(dst, trio.abc.HalfCloseableStream):
                    await dst.send_eof()
                else:
                    await dst.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(copy, self.client, upstream, down_left)
            nursery.start_soon(copy, upstream, self.client, up_left)

    def _queue_down(self, event: h11.Event) -> None:
        """``event`` for the command, written with the next ``_flush_down``: the pieces of
        an answer that come together go in one write (one wake-up of the command)."""
        data = self.down.send(event)
        if data:
            self._down_out.append(data)

    async def _flush_down(self) -> None:
        if self._down_out:
            data, self._down_out = b"".join(self._down_out), []
            await _send_all(self.client, data)

    async def _send_down(self, *events: h11.Event) -> None:
        for event in events:
            self._queue_down(event)
        await self._flush_down()

    async def _send_up(self, event: h11.Event) -> None:
        assert self.up is not None
        await self._write_up(self.up.send(event) or b"")

    async def _write_up(self, data: bytes) -> None:
        assert self.upstream is not None
        if data:
            await _send_all(self.upstream, data)

    async def _close_upstream(self) -> None:
        if self.upstream is not None:
            try:
                await self.upstream.aclose()
            except (trio.BrokenResourceError, OSError):
                pass  # (closed all the same)
        self.upstream = None
        self.up = None
        self._spent = False

    async def close(self) -> None:
        """The command's side first (its EOF is what it waits for), then the destination's;
        both closed even when cancelled at the first one's checkpoint (the run ends)."""
        try:
            await self.client.aclose()
        except (trio.BrokenResourceError, OSError):
            pass  # (closed all the same)
        finally:
            if self.reached is not None:  # (begun, never used)
                self.reached.close()
                self.reached = None
            await self._close_upstream()


def _client() -> h11.Connection:
    """The destination's side of a connection: we are its client."""
    return h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)


async def _starts_tls(conn: socket.socket) -> bool:
    """Whether the command's first byte opens a TLS handshake record (0x16)."""
    with trio.move_on_after(HANDSHAKE_TIMEOUT):
        while True:
            await trio.lowlevel.wait_readable(conn)
            try:
                first = conn.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                continue
            except OSError:
                return False
            return first == b"\x16"
    return False


async def _next(conn: h11.Connection, stream: trio.abc.Stream) -> h11.Event | type[h11.PAUSED]:
    """The next event of ``conn``, reading ``stream`` as it needs; _Closed on a broken
    connection."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]
        await _receive(conn, stream)


async def _receive(conn: h11.Connection, stream: trio.abc.Stream) -> None:
    """What ``stream`` has now, given to ``conn`` (b"": its end); _Closed on a broken
    connection. A plain socket is read at once if it holds bytes (no wait in trio's
    loop), waited for only if not; either way other tasks get their turn (a loop of
    reads that never wait must not hold the supervisor's thread)."""
    if type(stream) is trio.SocketStream:
        if _read_now(conn, stream):
            await trio.lowlevel.checkpoint()
            return
        while True:
            try:
                await trio.lowlevel.wait_readable(stream.socket)
            except trio.ClosedResourceError as err:  # (closed by another task meanwhile)
                raise _Closed from err
            if _read_now(conn, stream):
                return
    try:
        data = await stream.receive_some(_CHUNK)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as err:
        raise _Closed from err
    conn.receive_data(data if isinstance(data, bytes) else bytes(data))


def _read_now(conn: h11.Connection, stream: trio.abc.Stream) -> bool:
    """What a plain ``stream`` holds now (its end included), given to ``conn`` without
    waiting: whether anything was. False for other streams (TLS: not without waiting)."""
    if type(stream) is not trio.SocketStream:
        return False
    try:
        conn.receive_data(os.read(stream.socket.fileno(), _CHUNK))
    except BlockingIOError:
        return False
    except OSError as err:  # (a reset; EBADF: closed under us by a cancel)
        raise _Closed from err
    return True


async def _send_all(stream: trio.abc.Stream, data: bytes) -> None:
    """``data`` to ``stream``; _Closed on a broken connection. A plain socket that takes
    it all at once is written without a trip through trio's loop."""
    if type(stream) is trio.SocketStream:
        try:
            data = data[os.write(stream.socket.fileno(), data) :]
        except BlockingIOError:
            pass
        except OSError as err:  # (EPIPE, a reset)
            raise _Closed from err
        if not data:
            return
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as err:
        raise _Closed from err


def _shown(dest: Dest) -> str:
    ip = ipaddress.ip_address(canonical(dest.addr))
    return f"[{ip}]:{dest.port}" if ip.version == 6 else f"{ip}:{dest.port}"
