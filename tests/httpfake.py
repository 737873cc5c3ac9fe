"""A loopback HTTP/1.1 server for the HTTP-rules tests: it logs every request it gets.

    with EchoServer() as web:
        ... requests to 127.0.0.1:{web.port} ...
        assert [(r.method, r.target) for r in web.log] == [("GET", "/ok/a")]

Each request is answered ``200`` with ``ok <METHOD> <target> <body bytes>``, keep-alive.
With ``tls`` (a server context) it speaks HTTPS. A request's body is read by its framing
(Content-Length or chunked, decoded here). A ``GET`` with
``Upgrade: websocket`` gets ``101`` and then every byte is echoed back (no frames: the
relay copies bytes, it does not parse WebSocket).
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
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
