"""Bodies through the HTTP relay (httprelay.py, httpbody.py, tlsbody.py): every byte
arrives, in both directions, whether a response body is moved past h11 (spliced by the
kernel over plain HTTP, decrypted and encrypted in batches over TLS) or carried by h11.

In process, the relay (relay.py with the HTTP handler) runs in this test's nursery with
``splice_bodies`` on and off, over plain HTTP and over TLS (``--http-tls``, the server
with a CA of its own): the same exchanges give the same bytes, and only the run with it
on moves bodies with ``httpbody.move`` (plain) or ``tlsbody.move`` (TLS). End to end, a
sandboxed client does the same over one kept-alive connection and fresh ones.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from sandlock import httpbody, tlsbody
from sandlock.httprelay import HttpHandler
from sandlock.httprules import HttpRules
from sandlock.httptls import Interceptor
from sandlock.policy import Policy
from sandlock.relay import Relay
from sandlock.sockaddr import Dest

from .conftest import describe, run_sandboxed
from .httpfake import accept_each

PY = sys.executable
TIMEOUT = 90
MIB = 1 << 20


def body_of(n: int) -> bytes:
    """``n`` bytes that differ from one offset to the next (a lost or doubled piece shows)."""
    block = hashlib.sha256(str(n).encode()).digest() * 2048  # 64 KiB
    return (block * (n // len(block) + 1))[:n]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BodyServer:
    """A threaded HTTP/1.1 server on 127.0.0.1: ``GET /ok/big/N`` answers N bytes
    (Content-Length, keep-alive), ``/ok/close/N`` the same with ``Connection: close``,
    ``/ok/short/N`` declares N and sends half, then closes; ``POST /ok/up`` answers the
    sha256 of the body it read (Content-Length). ``HEAD`` gets the head of the GET. With
    ``tls``, each connection is TLS with that server context."""

    def __init__(self, ca: Interceptor | None = None, ca_file: Path | None = None) -> None:
        self.ca, self.ca_file = ca, ca_file
        self.tls = None if ca is None else ca.base_context("127.0.0.1")
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.targets: list[str] = []
        threading.Thread(target=accept_each, args=(self.sock, self._serve), daemon=True).start()

    def close(self) -> None:
        self.sock.close()

    def _serve(self, conn: socket.socket, _peer: tuple[str, int]) -> None:
        conn.settimeout(30)
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except OSError:
                conn.close()
                return
        reader = conn.makefile("rb")
        with conn, reader:
            try:
                while self._one(conn, reader):
                    pass
            except OSError:
                pass

    def _one(self, conn: socket.socket, reader: object) -> bool:
        assert hasattr(reader, "readline") and hasattr(reader, "read")
        line = reader.readline(65536)
        if not line:
            return False
        method, target, _ = line.decode().split(" ", 2)
        length = 0
        while (header := reader.readline(65536)) not in (b"\r\n", b""):
            name, _, value = header.decode().partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        self.targets.append(f"{method} {target}")
        if method == "POST":
            answer = digest(reader.read(length)).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(answer) + answer)
            return True
        kind, n = target.split("/")[2], int(target.split("/")[3])
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % n
        if kind == "close":
            head += b"Connection: close\r\n"
        conn.sendall(head + b"\r\n")
        if method == "HEAD":
            return True
        data = body_of(n)
        if kind == "short":
            conn.sendall(data[: n // 2])
            return False
        conn.sendall(data)
        return kind != "close"


@pytest.fixture(params=["http", "https"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BodyServer]:
    """The server over plain HTTP, then over TLS (``s.ca``: its CA, ``s.ca_file``: as a
    file; None over plain HTTP)."""
    if request.param == "https":
        ca, ca_file = Interceptor(), tmp_path / "server-ca.pem"
        ca_file.write_bytes(ca.ca_pem)
        s = BodyServer(ca, ca_file)
    else:
        s = BodyServer()
    try:
        yield s
    finally:
        s.close()


RULES = ["* 127.0.0.1/ok/*"], ["* */ok/secret*"]


def exchanges(port: int, connect: object) -> list[object]:
    """The client's side (blocking, in a thread): one kept-alive connection with big
    bodies both ways, a refusal between them, a HEAD, a Connection: close; a body cut
    short; then a fresh connection. What each gave, as plain values."""
    assert callable(connect)
    out: list[object] = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.sock = connect()
    first = conn.sock
    for method, path, body in [
        ("GET", f"/ok/big/{8 * MIB + 3}", None),
        ("GET", "/ok/secret", None),
        ("GET", f"/ok/big/{3 * MIB // 2}", None),
        ("POST", "/ok/up", body_of(8 * MIB + 5)),
        ("HEAD", f"/ok/big/{4 * MIB}", None),
        ("GET", f"/ok/big/{100}", None),
        ("GET", f"/ok/close/{3 * MIB}", None),
    ]:
        conn.request(method, path, body=body)
        r = conn.getresponse()
        got = r.read()
        out.append([method, path, r.status, len(got), digest(got), conn.sock is first])
    conn.close()
    short = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    short.sock = connect()
    short.request("GET", f"/ok/short/{4 * MIB}")
    r = short.getresponse()
    try:
        r.read()
        out.append("read all of a short body")
    except http.client.IncompleteRead as err:
        out.append(["short", len(err.partial), digest(err.partial)])
    r.close()
    short.close()
    again = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    again.sock = connect()
    again.request("GET", f"/ok/big/{2 * MIB}")
    r = again.getresponse()
    got = r.read()
    out.append(["again", r.status, len(got), digest(got)])
    again.close()
    return out


def expected(port: int) -> list[object]:
    def ok(method: str, path: str, data: bytes, same: bool = True) -> list[object]:
        return [method, path, 200, len(data), digest(data), same]

    denied = b"sandlock: refused by HTTP rule `* */ok/secret*`\n"
    return [
        ok("GET", f"/ok/big/{8 * MIB + 3}", body_of(8 * MIB + 3)),
        ["GET", "/ok/secret", 403, len(denied), digest(denied), True],
        ok("GET", f"/ok/big/{3 * MIB // 2}", body_of(3 * MIB // 2)),
        ok("POST", "/ok/up", digest(body_of(8 * MIB + 5)).encode()),
        ["HEAD", f"/ok/big/{4 * MIB}", 200, 0, digest(b""), True],
        ok("GET", "/ok/big/100", body_of(100)),
        ok("GET", f"/ok/close/{3 * MIB}", body_of(3 * MIB), same=False),  # (closed after it)
        ["short", 2 * MIB, digest(body_of(4 * MIB)[: 2 * MIB])],
        ["again", 200, 2 * MIB, digest(body_of(2 * MIB))],
    ]


@pytest.mark.parametrize("splice", [True, False], ids=["spliced", "h11"])
async def test_bodies_in_process(
    server: BodyServer, splice: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Big bodies both ways, keep-alive after a spliced body (and a refusal between), a
    HEAD, Connection: close and a body cut short give the same bytes with the splice on
    and off; only the spliced run moves the big response bodies by httpbody.move."""
    moved: list[int] = []
    moves = {"plain": httpbody.move, "tls": tlsbody.move}

    def counting(kind: str) -> Callable[..., object]:
        async def move(src: object, dst: object, count: int) -> None:
            moved.append(count)
            if kind != ("plain" if server.ca is None else "tls"):
                moved.append(-1)  # (the other kind's mover: wrong)
            await moves[kind](src, dst, count)  # type: ignore[arg-type]

        return move

    monkeypatch.setattr(httpbody, "move", counting("plain"))
    monkeypatch.setattr(tlsbody, "move", counting("tls"))
    rules = HttpRules.parse(*RULES, [server.port])
    policy = Policy((), (), {}, http=rules)  # (an IP-literal Host is bound without hosts)
    tls = None if server.ca_file is None else Interceptor(upstream_ca=str(server.ca_file))
    handler = HttpHandler(rules.ports, lambda: policy, None, tls=tls)
    handler.splice_bodies = splice
    trusting = None if tls is None else ssl.create_default_context(cadata=tls.ca_pem.decode())
    relay = Relay(lambda: policy, None, verify=False, http=handler)
    dest = Dest(socket.AF_INET, bytes([127, 0, 0, 1]), server.port)

    def connect() -> socket.socket:
        target = relay.target(socket.AF_INET)
        assert target is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))  # (noted before the connect: the relay accepts at once)
        assert relay.expect(sock.fileno(), 4242, dest)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", int.from_bytes(target[2:4], "big")))
        if trusting is None:
            return sock
        return trusting.wrap_socket(sock, server_hostname="127.0.0.1")  # (no SNI: an IP)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.run)
            got = await trio.to_thread.run_sync(exchanges, server.port, connect)
            nursery.cancel_scope.cancel()
    assert got == expected(server.port)
    # (the 8 MiB, 1.5 MiB, 3 MiB and 2 MiB bodies past what h11 had read with the head;
    # the cut-short one too; not the 100 bytes, the HEAD, the 403 or the upload's answer)
    assert len(moved) == (5 if splice else 0), moved
    assert all(n >= httpbody.MIN_SPLICE for n in moved), moved
    assert "GET /ok/secret" not in server.targets


CLIENT = r"""
import json, socket, ssl, sys
sys.path.insert(0, sys.argv[2])
from tests.test_http_bodies import exchanges
port, tls = int(sys.argv[1]), sys.argv[3] == "https"
ctx = ssl.create_default_context()  # (the run's CA, injected into the system's bundle)
def connect():
    sock = socket.create_connection(("127.0.0.1", port), 30)
    return ctx.wrap_socket(sock, server_hostname="127.0.0.1") if tls else sock
print(json.dumps(exchanges(port, connect)))
"""


def test_bodies_end_to_end(server: BodyServer) -> None:
    """The same exchanges from a sandboxed client (the relay of a real run, HTTP rules on
    the server's port; over TLS with --http-tls): every byte both ways, keep-alive after
    a body moved past h11, a body cut short seen as cut short."""
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    args = ["--http-ports", str(server.port)]
    if server.ca_file is not None:
        args += ["--http-tls", "--http-upstream-ca", str(server.ca_file)]
    args += [a for rule in RULES[0] for a in ("--http-allow", rule)]
    args += [a for rule in RULES[1] for a in ("--http-deny", rule)]
    res = run_sandboxed(
        args,
        [PY, "-c", CLIENT, str(server.port), root, "https" if server.ca else "http"],
        timeout=TIMEOUT,
    )
    assert res.returncode == 0, describe(res)
    assert json.loads(res.stdout) == json.loads(json.dumps(expected(server.port))), describe(res)
    assert "internal error" not in res.stderr, describe(res)
    assert "GET /ok/secret" not in server.targets
