"""Bodies through the HTTP relay (httprelay.py, httpbody.py): every byte arrives, in both
directions, whether a response body is spliced by the kernel or carried by h11.

In process, the relay (relay.py with the HTTP handler) runs in this test's nursery with
``splice_bodies`` on and off: the same exchanges give the same bytes, and only the
spliced run moves bodies with ``httpbody.move``. End to end, a sandboxed client does the
same over one kept-alive connection and fresh ones.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import sys
import threading
from collections.abc import Iterator

import pytest
import trio

from sandlock import httpbody
from sandlock.httprelay import HttpHandler
from sandlock.httprules import HttpRules
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
    sha256 of the body it read (Content-Length). ``HEAD`` gets the head of the GET."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.targets: list[str] = []
        threading.Thread(target=accept_each, args=(self.sock, self._serve), daemon=True).start()

    def close(self) -> None:
        self.sock.close()

    def _serve(self, conn: socket.socket, _peer: tuple[str, int]) -> None:
        conn.settimeout(30)
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


@pytest.fixture
def server() -> Iterator[BodyServer]:
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
    real_move = httpbody.move

    async def counting(src: int, dst: int, count: int) -> None:
        moved.append(count)
        await real_move(src, dst, count)

    monkeypatch.setattr(httpbody, "move", counting)
    rules = HttpRules.parse(*RULES, [server.port])
    policy = Policy((), (), {}, http=rules)  # (an IP-literal Host is bound without hosts)
    handler = HttpHandler(rules.ports, lambda: policy, None)
    handler.splice_bodies = splice
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
        return sock

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
import json, socket, sys
sys.path.insert(0, sys.argv[2])
from tests.test_http_bodies import exchanges
port = int(sys.argv[1])
print(json.dumps(exchanges(port, lambda: socket.create_connection(("127.0.0.1", port), 30))))
"""


def test_bodies_end_to_end(server: BodyServer) -> None:
    """The same exchanges from a sandboxed client (the relay of a real run, HTTP rules on
    the server's port): every byte both ways, keep-alive after a spliced body, a body cut
    short seen as cut short."""
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    args = ["--http-ports", str(server.port)]
    args += [a for rule in RULES[0] for a in ("--http-allow", rule)]
    args += [a for rule in RULES[1] for a in ("--http-deny", rule)]
    res = run_sandboxed(args, [PY, "-c", CLIENT, str(server.port), root], timeout=TIMEOUT)
    assert res.returncode == 0, describe(res)
    assert json.loads(res.stdout) == json.loads(json.dumps(expected(server.port))), describe(res)
    assert "internal error" not in res.stderr, describe(res)
    assert "GET /ok/secret" not in server.targets
