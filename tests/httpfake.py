"""Loopback HTTP/1.1 servers for the HTTP-rules tests. ``EchoServer`` logs every request
it gets; ``ScriptedServer`` answers each as a script says (test_http_transparency.py).

    with EchoServer() as web:
        ... requests to 127.0.0.1:{web.port} ...
        assert [(r.method, r.target) for r in web.log] == [("GET", "/ok/a")]

``EchoServer`` answers each request ``200`` with ``ok <METHOD> <target> <body bytes>``,
keep-alive. With ``tls`` (a server context) either speaks HTTPS. A request's body is read
by its framing (Content-Length or chunked, decoded here). A ``GET`` with ``Upgrade:
websocket`` gets ``101`` and then every byte is echoed back (no frames: the relay copies
bytes, it does not parse WebSocket).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import NamedTuple


def accept_each(
    sock: socket.socket, serve: Callable[[socket.socket, tuple[str, int]], None]
) -> None:
    """Accept on ``sock`` until it is closed; each connection is served by ``serve``
    (the connection, its peer) in a thread of its own."""
    while True:
        try:
            conn, peer = sock.accept()
        except OSError:
            return
        threading.Thread(target=serve, args=(conn, peer), daemon=True).start()


class Seen(NamedTuple):
    """One request as the server read it."""

    method: str
    target: str
    host: str | None
    body: bytes
    peer: tuple[str, int]
    chunked: bool


class EchoServer:
    """A threaded HTTP/1.1 server on ``host`` (127.0.0.1, or ::1), port 0; ``log`` lists
    what it got."""

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.log: list[Seen] = []
        self.accepted = 0
        self.handshakes = 0  # (TLS: the ones that completed, each with a ClientHello)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> EchoServer:
        self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True).start()

    def _serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        conn.settimeout(30)
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (OSError, ValueError):
                conn.close()
                return
            with self._lock:
                self.handshakes += 1
        reader = conn.makefile("rb")
        try:
            while True:
                line = reader.readline(65536)
                if not line:
                    return
                method, target, _version = line.decode("latin-1").split()
                headers: dict[str, str] = {}
                while (h := reader.readline(65536)) not in (b"\r\n", b"\n", b""):
                    name, _, value = h.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                chunked = headers.get("transfer-encoding", "").lower() == "chunked"
                if chunked:
                    body = b""
                    while size := int(reader.readline().split(b";")[0], 16):
                        body += reader.read(size)
                        reader.readline()
                    while reader.readline() not in (b"\r\n", b"\n", b""):
                        pass  # (trailers)
                else:
                    body = reader.read(int(headers.get("content-length", "0")))
                with self._lock:
                    self.log.append(Seen(method, target, headers.get("host"), body, peer, chunked))
                if headers.get("upgrade", "").lower() == "websocket":
                    conn.sendall(
                        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\n\r\n"
                    )
                    while data := reader.read1(65536):
                        conn.sendall(data)
                    return
                reply = f"ok {method} {target} {len(body)}".encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    + f"Content-Length: {len(reply)}\r\n\r\n".encode()
                    + reply
                )
        except (OSError, ValueError):
            return
        finally:
            reader.close()
            conn.close()


Head = tuple[str, str, str, dict[str, str]]  # method, target, version, headers (lower-cased)
Script = Callable[[socket.socket, Head, bytes], "bytes | None"]


def read_body(conn: socket.socket, head: Head, rest: bytes) -> tuple[bytes, bytes]:
    """The request's body (Content-Length framing) and the bytes past it."""
    n = int(head[3].get("content-length", "0"))
    while len(rest) < n and (data := conn.recv(65536)):
        rest += data
    return rest[:n], rest[n:]


def linger(conn: socket.socket) -> None:
    """End as a careful server does before closing: half-close, then read and drop what
    still comes (a close with unread bytes would reset the connection)."""
    try:
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass
    except OSError:
        pass


def canned(answer: bytes, then: float = 0.0, end: bool = False) -> Script:
    """A script that waits ``then`` seconds, writes ``answer``, and with ``end`` (a body
    cut short) or when the request asks ``Connection: close`` ends the connection."""

    def script(conn: socket.socket, head: Head, rest: bytes) -> bytes | None:
        time.sleep(then)
        conn.sendall(answer)
        if end or head[3].get("connection", "").lower() == "close":
            linger(conn)
            return None
        return rest

    return script


class ScriptedServer:
    """A threaded loopback server (TLS with ``tls``) answering each request as the script
    ``scripts`` names by its path's first segment says: a request's head is read here,
    its body by the script, which answers and gives back the bytes past the request (the
    next one's) or None to end the connection."""

    def __init__(self, scripts: Mapping[str, Script], tls: ssl.SSLContext | None = None) -> None:
        self.scripts = scripts
        self.tls = tls
        self.idle: float | None = None  # (seconds: a connection silent so long is dropped)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(30)
        conn = raw
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(raw, server_side=True)
            if self.idle is not None:
                conn.settimeout(self.idle)
            rest: bytes | None = b""
            while rest is not None:
                while b"\r\n\r\n" not in rest:
                    data = conn.recv(65536)
                    if not data:
                        return
                    rest += data
                text, rest = rest.split(b"\r\n\r\n", 1)
                lines = text.decode("latin-1").split("\r\n")
                method, target, version = lines[0].split(" ")
                fields = dict(line.split(":", 1) for line in lines[1:])
                headers = {k.strip().lower(): v.strip() for k, v in fields.items()}
                script = self.scripts[target.split("/")[1]]
                rest = script(conn, (method, target, version, headers), rest)
        except (OSError, ValueError):
            pass
        finally:
            conn.close()
            raw.close()
