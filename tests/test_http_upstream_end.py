"""HTTP rules: a destination that ends a kept-alive connection ends the command's too.

Without the relay, a server that closes its side after a keep-alive response (at once,
by a half-close, a while later, or after an unasked ``408``) gives the client its end of
file; a client reading to the end, or a pool probing an idle connection, relies on it.
Through the relay (httprelay.py) the command's connection must end the same way, plain
and with --http-tls, whether the body came through h11 or was spliced (httpbody.py).
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandlock.httptls import Interceptor

from .conftest import describe, run_plain, run_sandboxed
from .httpfake import accept_each

PY = sys.executable
TIMEOUT = 120
BIG = 1 << 20  # a body the relay splices (httpbody.MIN_SPLICE and more)


class EndingServer:
    """Answers one request per connection, keep-alive, then ends the connection as its
    path says: ``/close/N`` closes at once after N body bytes, ``/half/N`` half-closes
    (and waits for the client's end), ``/late/N`` closes 0.3 s later, ``/408/N`` sends
    an unasked ``408`` 0.2 s later, then closes."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        threading.Thread(target=accept_each, args=(self.sock, self._serve), daemon=True).start()

    def close(self) -> None:
        self.sock.close()

    def _serve(self, raw: socket.socket, _peer: tuple[str, int]) -> None:
        raw.settimeout(30)
        conn = raw
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(raw, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                head += data
            kind, n = head.split(b" ", 2)[1].decode().split("/")[1:3]
            body = b"x" * int(n)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            if kind == "half":
                (conn.unwrap() if self.tls else conn).shutdown(socket.SHUT_WR)
                while raw.recv(65536):
                    pass
            elif kind == "late":
                time.sleep(0.3)
            elif kind == "408":
                time.sleep(0.2)
                conn.sendall(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            pass
        finally:
            conn.close()
            raw.close()


CLIENT = r"""
import socket, ssl, sys
port, tls = int(sys.argv[1]), sys.argv[2] == "tls"
ctx = ssl.create_default_context()
for path in sys.argv[3:]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if tls:
        sock = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    got = b""
    try:
        while data := sock.recv(1 << 20):
            got += data
        end = "end"
    except TimeoutError:
        end = "no end in 5 s"
    except (ssl.SSLError, OSError) as err:
        end = type(err).__name__
    status = got.split(b"\r\n", 1)[0].decode()
    body = got.split(b"\r\n\r\n", 1)[-1] if got else b""
    print(path, status, len(body), end)
    sock.close()
"""

PATHS = [f"/{kind}/{n}" for kind in ("close", "half", "late", "408") for n in (2, BIG)]


def expected(paths: list[str]) -> list[str]:
    return [f"{p} HTTP/1.1 200 OK {p.split('/')[2]} end" for p in paths]


@pytest.fixture
def plain() -> Iterator[EndingServer]:
    server = EndingServer()
    try:
        yield server
    finally:
        server.close()


def test_the_client_sees_the_end_without_the_sandbox(plain: EndingServer) -> None:
    """The baseline: each way of ending gives the client its end of file (the 408's bytes
    come with the body of the answer: the count is the body's and the 408's)."""
    res = run_plain([PY, "-c", CLIENT, str(plain.port), "plain", *PATHS], timeout=TIMEOUT)
    assert res.returncode == 0, describe(res)
    lines = res.stdout.splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines] == ["end"] * len(PATHS), describe(res)


def test_a_destinations_end_reaches_the_command(plain: EndingServer) -> None:
    """Through the relay (HTTP rules on the port): the body arrives whole and then the end,
    for every way the server ends, small bodies (h11) and big ones (spliced). The old
    relay kept the command waiting for a next request: no end in 5 s."""
    rules = ["--http-ports", str(plain.port), "--http-allow", "GET 127.0.0.1/*"]
    cmd = [PY, "-c", CLIENT, str(plain.port), "plain", *PATHS]
    res = run_sandboxed(rules, cmd, timeout=TIMEOUT)
    assert res.returncode == 0, describe(res)
    assert res.stdout.splitlines() == expected(PATHS), describe(res)
    assert "internal error" not in res.stderr, describe(res)


def test_a_destinations_end_reaches_the_command_over_tls(
    server_ca: tuple[Interceptor, Path],
) -> None:
    """The same with --http-tls: the relay's TLS to the server ends, so does the
    command's (its client trusts the run's CA through the injected bundle)."""
    server = EndingServer(tls=server_ca[0].base_context("127.0.0.1"))
    try:
        rules = ["--http-tls", "--http-ports", str(server.port)]
        rules += ["--http-upstream-ca", str(server_ca[1]), "--http-allow", "GET 127.0.0.1/*"]
        paths = [p for p in PATHS if not p.startswith("/half/")]  # (TLS: no half-close)
        cmd = [PY, "-c", CLIENT, str(server.port), "tls", *paths]
        res = run_sandboxed(rules, cmd, timeout=TIMEOUT)
    finally:
        server.close()
    assert res.returncode == 0, describe(res)
    assert res.stdout.splitlines() == expected(paths), describe(res)
    assert "internal error" not in res.stderr, describe(res)
