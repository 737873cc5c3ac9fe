"""Attacks on the HTTP relay (httprelay.py) by the sandboxed command: raw requests that
try to get a denied path, another protocol or a crash past the rules.

The loopback server's log (tests/httpfake.py) is the proof that a refused request never
reached it; ``internal error`` on stderr is a bug in the relay that a command can cause.
"""

from __future__ import annotations

import resource
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandlock.httptls import Interceptor
from sandlock.relay import MAX_SERVED

from .conftest import TcpSink, describe, run_command, run_sandboxed
from .httpfake import EchoServer
from .test_containment import LANDLOCK_ABI

PY = sys.executable
TIMEOUT = 90

# Each argv after the port is one raw request (``{host}``: the Host header line's value);
# one connection each, ``Connection: close`` added; prints the status line's code.
RAW = r"""
import socket, sys
port = int(sys.argv[1])
host = f"127.0.0.1:{port}"
for raw in sys.argv[2:]:
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.sendall(raw.replace("{host}", host).encode("latin-1"))
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    s.close()
    print(got.split(b" ", 2)[1].decode() if got.startswith(b"HTTP/") else "none")
"""


@pytest.fixture
def web() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


def rules(port: int, *extra: str) -> list[str]:
    return [
        "--http-ports",
        str(port),
        "--http-allow",
        "GET 127.0.0.1/ok/*",
        "--http-deny",
        "* */ok/secret*",
        *extra,
    ]


def raw(port: int, args: list[str], requests: list[str]) -> tuple[list[str], str]:
    res = run_sandboxed(args, [PY, "-c", RAW, str(port), *requests], timeout=TIMEOUT)
    assert res.returncode == 0, describe(res)
    assert "internal error" not in res.stderr and "Traceback" not in res.stderr, describe(res)
    return res.stdout.split(), res.stderr


def test_a_fragment_in_the_target_is_refused(web: EchoServer) -> None:
    """``#`` cannot be in a request target (RFC 9112): the relay matched the part before
    it, and a server that reads it as a path character resolves ``/ok/a#/../../secret``
    to ``/secret``; refused as a bad path, it never reaches the server."""
    p = web.port
    got, _ = raw(
        p,
        rules(p),
        [
            "GET /ok/a#/../../secret HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
            "GET /ok/x#/../secret HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
            "GET http://{host}/ok/a#/../../secret HTTP/1.1\r\nHost: {host}\r\n"
            "Connection: close\r\n\r\n",
            "GET /ok/a HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        ],
    )
    assert got == ["403", "403", "403", "200"]
    assert [s.target for s in web.log] == ["/ok/a"]


def test_a_second_upgrade_header_cannot_propose_h2c(web: EchoServer) -> None:
    """``Upgrade: websocket`` then ``Upgrade: h2c`` on an allowed GET: a server reads both
    (or the last), and may switch to h2c, after which requests are no longer checked;
    every Upgrade header counts, so it is refused and never reaches the server."""
    p = web.port
    got, _ = raw(
        p,
        rules(p),
        [
            "GET /ok/a HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n"
            "Connection: Upgrade, close\r\n\r\n",
            "GET /ok/b HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        ],
    )
    assert got == ["403", "200"]
    assert [s.target for s in web.log] == ["/ok/b"]


def test_malformed_authorities_are_refused_quietly(web: EchoServer) -> None:
    """An absolute URI whose authority urllib cannot split (``[::1``, ``[zz]``), and an
    HTTP/1.0 request whose host has no IDNA form (``a..b``, a 64-character label) under
    a ``*`` rule: each refused or answered, one connection at a time; no internal error
    (a command must not make the relay fail)."""
    p = web.port
    label = "a" * 64
    got, _ = raw(
        p,
        rules(p, "--http-allow", "GET */any/*"),
        [
            "GET http://[::1/ok/a HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
            "GET http://[zz]/ok/a HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
            "GET http://a..b/any/x HTTP/1.0\r\n\r\n",
            f"GET http://{label}.example/any/x HTTP/1.0\r\n\r\n",
            "GET /any/y HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        ],
    )
    assert got[:2] == ["403", "403"] and got[4] == "200", got
    assert got[2] in ("200", "403") and got[3] in ("200", "403"), got
    assert all("/ok/a" not in s.target for s in web.log)


HOLD = r"""
import errno, resource, socket, sys, time
port, n, want = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks, reset = [], 0
for _ in range(n):
    try:
        socks.append(socket.create_connection(("127.0.0.1", port), timeout=20))
    except ConnectionResetError:  # (the relay's reset, seen by the connect already)
        reset += 1
for s in socks:
    s.setblocking(False)
deadline = time.monotonic() + 60  # (the relay takes the last ones when it has served the
while reset < want and time.monotonic() < deadline:  # rest: slowly on a loaded machine)
    time.sleep(0.2)
    for s in list(socks):
        try:
            s.recv(1)
        except ConnectionResetError:
            reset += 1
            socks.remove(s)
        except BlockingIOError:
            pass
print(n, reset)
"""


def test_idle_connections_are_bounded() -> None:
    """Slowloris: connections held open without a byte each cost the supervisor two fds
    (and open one to the server); past ``MAX_SERVED`` a new one is reset at once, so the
    server never sees more, and stderr says so once."""
    extra = 64
    sink = TcpSink("127.0.0.1")
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard < 3 * (MAX_SERVED + extra) + 64:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} too low for the supervisor's side")
        args = ["--http-ports", str(sink.port), "--http-allow", "GET 127.0.0.1/*"]
        cmd = [PY, "-c", HOLD, str(sink.port), str(MAX_SERVED + extra), str(extra)]
        res = run_sandboxed(args, cmd, timeout=TIMEOUT)
        assert res.returncode == 0, describe(res)
        opened, reset = map(int, res.stdout.split())
        assert opened == MAX_SERVED + extra and reset >= extra, describe(res)
        sink.settle()
        assert sink.count <= MAX_SERVED, sink.count
        assert res.stderr.count("connections at once") == 1, describe(res)
    finally:
        sink.close()


BAD_SNI = r"""
import socket, ssl, sys
port = int(sys.argv[1])
for fake in sys.argv[2:]:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out, server_hostname="aaaa.example")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = out.read().replace(b"aaaa.example", fake.encode("latin-1"))
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.sendall(hello)
    try:
        got = s.recv(7)
        print("alert" if got[:1] == b"\x15" else "other" if got else "closed")
    except OSError as err:
        print(type(err).__name__)
    s.close()
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20)) as s:
    s.sendall(b"GET /ok/a HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    print(s.recv(12).decode())
"""


def test_a_non_ascii_sni_is_refused_quietly(tmp_path: Path) -> None:
    """A ClientHello whose SNI is not ASCII (the ``ssl`` module cannot decode it, and
    prints a traceback from its callback) or not a name a certificate can hold: the
    handshake fails, nothing on stderr, and the next connection works."""
    ca = Interceptor()
    (tmp_path / "ca.pem").write_bytes(ca.ca_pem)
    with EchoServer(tls=ca.base_context("127.0.0.1")) as web:
        p = web.port
        args = [
            "--http-tls",
            "--http-ports",
            str(p),
            "--http-upstream-ca",
            str(tmp_path / "ca.pem"),
            "--http-allow",
            "GET 127.0.0.1/ok/*",
        ]
        res = run_sandboxed(
            args, [PY, "-c", BAD_SNI, str(p), "\xff\xfe\xfd\xfc.example", "a\x7fa a.example"],
            timeout=TIMEOUT,
        )
        assert res.returncode == 0, describe(res)
        lines = res.stdout.split("\n")
        assert lines[2] == "HTTP/1.1 200", describe(res)
        refused = ("alert", "closed", "ConnectionResetError")
        assert all(x in refused for x in lines[:2]), describe(res)
        assert res.stderr == "", describe(res)
        assert [s.target for s in web.log] == ["/ok/a"]


def test_the_sni_hook_passes_every_other_report_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The unraisable hook --http-tls installs drops only an undecodable SNI's report:
    any other goes to the hook that was there."""
    seen: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
    Interceptor()
    Interceptor()  # (installed once)
    raw_name = b"\xff.example"
    try:
        raw_name.decode("ascii")
    except UnicodeDecodeError as err:
        sni_error = err
    other = UnicodeDecodeError("ascii", b"\xff", 0, 1, "x")
    for exc, obj in ((sni_error, raw_name), (other, b"elsewhere"), (ValueError("v"), raw_name)):
        sys.unraisablehook(_Unraisable(type(exc), exc, None, None, obj))
    assert seen == [other, seen[1]] and isinstance(seen[1], ValueError)


class _Unraisable:
    def __init__(self, t: type, v: BaseException, tb: None, msg: None, obj: object) -> None:
        self.exc_type, self.exc_value, self.exc_traceback = t, v, tb
        self.err_msg, self.object = msg, obj


READ_PARENT = r"""
import ctypes, os, sys
ppid = os.getppid()
with open(f"/proc/{ppid}/cmdline", "rb") as f:
    print("parent", b"sandlock" in f.read())
libc = ctypes.CDLL(None, use_errno=True)
def attempt(label, fn):
    try:
        fn()
        print(label, "ok")
    except OSError as err:
        print(label, err.errno)
def mem():
    with open(f"/proc/{ppid}/maps") as f:
        start = int(next(l for l in f if "[heap]" in l).split("-")[0], 16)
    with open(f"/proc/{ppid}/mem", "rb") as f:
        f.seek(start)
        f.read(64)
def vm_read():
    class iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
    buf = ctypes.create_string_buffer(64)
    local = iovec(ctypes.cast(buf, ctypes.c_void_p), 64)
    remote = iovec(ctypes.c_void_p(id(ppid)), 64)
    if libc.process_vm_readv(ppid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) < 0:
        raise OSError(ctypes.get_errno(), "process_vm_readv")
def attach():
    if libc.ptrace(16, ppid, None, None) < 0:  # PTRACE_ATTACH
        raise OSError(ctypes.get_errno(), "ptrace")
    libc.ptrace(17, ppid, None, None)  # PTRACE_DETACH
attempt("mem", mem)
attempt("vm_read", vm_read)
if sys.argv[1:] != ["baseline"]:  # (attaching the test runner would leave it stopped)
    attempt("attach", attach)
else:
    print("attach skipped")
def fds():
    opened = 0
    for name in os.listdir(f"/proc/{ppid}/fd"):
        try:
            os.close(os.open(f"/proc/{ppid}/fd/{name}", os.O_RDONLY))
            opened += 1
        except OSError as err:
            last = err
    if not opened:
        raise last
    print("opened", opened, end=" ")
attempt("fd_open", fds)
"""


def test_the_ca_key_stays_in_the_supervisor(tmp_path: Path) -> None:
    """--http-tls keeps the run CA's private key in the supervisor's memory: the command
    (root here) cannot read that memory (/proc/PID/mem, process_vm_readv), trace the
    supervisor, or open its fds (a leaf's memfd) through /proc/PID/fd; unsandboxed, a
    root child can (the baseline: the attempts are real)."""
    if LANDLOCK_ABI == 0:
        pytest.skip("Landlock is not available: /proc/PID/mem is not contained without it")
    plain = run_command([PY, "-c", READ_PARENT, "baseline"], timeout=30)
    base = plain.stdout.split("\n")
    assert base[1] == "mem ok" and base[4].endswith(" ok"), describe(plain)
    ca = Interceptor()
    (tmp_path / "ca.pem").write_bytes(ca.ca_pem)
    args = ["--http-tls", "--http-upstream-ca", str(tmp_path / "ca.pem")]
    res = run_sandboxed(
        [*args, "--http-allow", "GET 127.0.0.1/ok/*"], [PY, "-c", READ_PARENT], timeout=TIMEOUT
    )
    assert res.returncode == 0, describe(res)
    got = res.stdout.split("\n")
    assert got[0] == "parent True", describe(res)
    assert got[1:5] == ["mem 13", "vm_read 1", "attach 1", "fd_open 13"], describe(res)


class _Switcher:
    """A server that answers every request head with ``101`` (no upgrade was asked for)
    and keeps what it receives after it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.after: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                head = b""
                try:
                    while b"\r\n\r\n" not in head and (chunk := conn.recv(4096)):
                        head += chunk
                    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n")
                    rest = head.split(b"\r\n\r\n", 1)[1]
                    while chunk := conn.recv(4096):
                        rest += chunk
                except OSError:
                    pass
                self.after.append(rest)


SWITCHED = r"""
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20)
s.sendall(b"GET /ok/a HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
got = b""
try:
    while chunk := s.recv(4096):
        got += chunk
        s.sendall(b"GET /secret HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
except OSError:
    pass
print(got.split(b"\r\n", 1)[0].decode() or "closed")
"""


def test_a_101_nobody_asked_for_switches_nothing() -> None:
    """A server (the command may pick any allowed one) that answers 101 to a request
    without Upgrade: the relay does not switch to copying bytes; the connection ends, and
    what the command sends next never reaches the server unchecked."""
    server = _Switcher()
    try:
        args = ["--http-ports", str(server.port), "--http-allow", "GET 127.0.0.1/ok/*"]
        res = run_sandboxed(args, [PY, "-c", SWITCHED, str(server.port)], timeout=TIMEOUT)
        assert res.returncode == 0, describe(res)
        assert "internal error" not in res.stderr, describe(res)
        time.sleep(0.5)
        assert server.after == [b""], (server.after, describe(res))
    finally:
        server.sock.close()


def test_other_protocols_on_an_http_port_reach_nothing(web: EchoServer) -> None:
    """The HTTP/2 prior-knowledge preface, ``OPTIONS *`` and ``CONNECT`` to an allowed
    address: refused (400 or 403), quietly; the server gets none of them."""
    p = web.port
    got, _ = raw(
        p,
        rules(p, "--http-allow", "* 127.0.0.1/*"),
        [
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
            "CONNECT {host} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
            "GET /ok/a HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        ],
    )
    assert got[0] in ("400", "403") and got[1:] == ["403", "403", "200"], got
    assert [s.target for s in web.log] == ["/ok/a"]
