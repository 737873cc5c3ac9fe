"""Inbound connections: a server in the sandbox hands no data to a peer the policy denies.

The sandboxed server (tests/probes/acceptsrv.c) listens on 127.0.0.1 (allowed); the test
connects to it from 127.0.0.2 (denied: the client socket is bound to that source) and
from 127.0.0.1. The denied connection must be reset without a byte of the server's
greeting; the allowed one is served, with the accept flags and the peer address as the
kernel gives them."""

from __future__ import annotations

import ipaddress
import re
import select
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from sandlock.plan import make

from .conftest import SANDLOCK, describe, kill_group, run_sandboxed, sandlock_env

ALLOWED = "127.0.0.1"
DENIED = "127.0.0.2"
GREETING = b"greeting\n"
_PEER = re.compile(
    r"^peer=(?P<host>\S+) port=(?P<port>-?\d+) addrlen=(?P<len>\d+) "
    r"nonblock=(?P<nonblock>[01]) cloexec=(?P<cloexec>[01])$",
    re.M,
)


# --- the policy: Policy.decide_peer ------------------------------------------------------


def _ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


@pytest.mark.parametrize(
    ("allow", "deny", "peer", "expected"),
    [
        (["127.0.0.1"], [], "127.0.0.1", True),
        (["127.0.0.1"], [], "127.0.0.2", False),
        (["127.0.0.1:8080"], [], "127.0.0.1", True),  # some port is enough
        (["udp://127.0.0.1"], [], "127.0.0.1", False),  # another protocol's rule
        (["*"], ["127.0.0.2"], "127.0.0.2", False),
        (["*"], ["127.0.0.2:22"], "127.0.0.2", False),  # a deny wins whatever its ports
        (["*"], ["127.0.0.2"], "127.0.0.1", True),
        (["127.0.0.0/8"], ["127.0.0.2/32"], "::ffff:127.0.0.2", False),  # mapped is IPv4
        (["127.0.0.0/8"], [], "::ffff:127.0.0.3", True),
        (["[::1]"], [], "::1", True),
        (["[::1]"], [], "127.0.0.1", False),
        ([], [], "127.0.0.1", False),
    ],
)
def test_decide_peer(allow: list[str], deny: list[str], peer: str, expected: bool) -> None:
    """A peer is allowed when a connect to its address is allowed on some port."""
    policy = make(allow, deny).policy
    decision = policy.decide_peer("tcp", _ip(peer))
    assert decision.allowed is expected
    if not expected and deny:
        assert decision.rule is not None and decision.rule in deny


def test_decide_peer_agrees_with_decide() -> None:
    """Without port-specific deny rules, decide_peer allows exactly the addresses that
    decide allows on some port (the two read addresses the same way)."""
    policy = make(["127.0.0.0/8:80", "[::1]:443", "192.0.2.1"], ["127.0.0.9", "[::2]"]).policy
    addrs = [
        "127.0.0.1",
        "127.0.0.9",
        "::ffff:127.0.0.5",
        "::1",
        "::2",
        "0.0.0.0",
        "::",
        "::ffff:0.0.0.0",
        "192.0.2.1",
        "192.0.2.2",
        "::ffff:192.0.2.1",
    ]
    for text in addrs:
        some_port = any(policy.decide("tcp", _ip(text), p).allowed for p in (80, 443, 1))
        assert policy.decide_peer("tcp", _ip(text)).allowed is some_port, text
    assert not policy.decide_peer("tcp", b"\x7f\x00\x00").allowed  # not an address
    assert not policy.decide_peer("sctp", _ip("127.0.0.1")).allowed


# --- a server in the sandbox ---------------------------------------------------------------


class Server:
    """A sandboxed server started in the background; ``port`` is the one it printed."""

    def __init__(self, sandlock_args: Sequence[str], cmd: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            [*SANDLOCK, *sandlock_args, "--", *cmd],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,  # communicate() reads the raw pipe: nothing may sit in a buffer
            start_new_session=True,
            env=sandlock_env(),
        )
        self.early = b""
        self.port = self._read_port()

    def _read_port(self) -> int:
        m = re.fullmatch(rb"port=(\d+)\n", self.read_until(rb"port=\d+\n"))
        assert m
        return int(m[1])

    def read_until(self, pattern: bytes) -> bytes:
        """Read stdout up to a line matching ``pattern`` (what came before is kept for
        finish, and so is that line, except the port)."""
        assert self.proc.stdout is not None
        while True:
            line = b""
            while not line.endswith(b"\n"):
                ready, _, _ = select.select([self.proc.stdout], [], [], 30)
                byte = self.proc.stdout.read(1) if ready else b""
                if not byte:
                    self.kill()
                    res = self.finish()
                    pytest.fail(f"no line {pattern!r} from the server: {line!r}\n{describe(res)}")
                line += byte
            if not line.startswith(b"port="):
                self.early += line
            if re.fullmatch(pattern, line):
                return line

    def go(self) -> None:
        """Let a server started with START=stdin accept."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        kill_group(self.proc.pid)

    def finish(self, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.proc.communicate()
            res = subprocess.CompletedProcess(self.proc.args, -9, out.decode(), err.decode())
            pytest.fail(f"the server did not finish:\n{describe(res)}")
        out = self.early + out
        return subprocess.CompletedProcess(
            self.proc.args, self.proc.returncode, out.decode(), err.decode()
        )


@pytest.fixture
def server() -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(sandlock_args: Sequence[str], cmd: Sequence[str]) -> Server:
        s = Server(sandlock_args, cmd)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.kill()
        s.proc.communicate()


def connect(source: str, port: int) -> socket.socket:
    """A TCP connection to 127.0.0.1:port from ``source`` (bound before connecting)."""
    s = socket.socket()
    try:
        s.settimeout(10)
        s.bind((source, 0))
        s.connect((ALLOWED, port))
    except OSError:
        s.close()
        raise
    return s


def drain(s: socket.socket) -> tuple[bytes, bool]:
    """Everything the connection receives until it ends, and whether it was reset."""
    data = b""
    with s:
        try:
            while chunk := s.recv(4096):
                data += chunk
        except ConnectionResetError:
            return data, True
    return data, False


def peers(stdout: str) -> list[dict[str, Any]]:
    return [m.groupdict() for m in _PEER.finditer(stdout)]


def _exchange(
    srv: Server, queued: bool, then: bytes | None = None
) -> tuple[bytes, bool, int, bytes, int]:
    """Connect from the denied address, then from the allowed one. ``queued``: both wait
    in the backlog before the server accepts; else the denied one is reset before the
    allowed one connects (the server then waits for the next connection), and, with
    ``then``, not before the server printed that line."""
    denied = connect(DENIED, srv.port)
    denied_port = denied.getsockname()[1]
    if queued:
        allowed = connect(ALLOWED, srv.port)
        srv.go()
        d_data, d_reset = drain(denied)
    else:
        d_data, d_reset = drain(denied)
        if then is not None:
            srv.read_until(then)
        allowed = connect(ALLOWED, srv.port)
    allowed_port = allowed.getsockname()[1]
    a_data, _ = drain(allowed)
    return d_data, d_reset, denied_port, a_data, allowed_port


@pytest.mark.parametrize(
    ("mode", "flags", "family", "start"),
    [
        ("accept", "0", "4", "now"),  # a blocking accept that waits
        ("accept", "0", "4", "stdin"),  # ... and one with connections queued
        ("accept4", "both", "4", "now"),
        ("accept4", "both", "6", "stdin"),
        ("accept4", "cloexec", "4", "stdin"),
        ("accept4", "nonblock", "6", "now"),
        ("epoll", "both", "4", "now"),  # non-blocking: EAGAIN after the refused peer
        ("epoll", "0", "6", "now"),
    ],
)
def test_a_denied_peer_is_reset_and_an_allowed_one_served(
    probe: Callable[[str], str],
    server: Callable[..., Server],
    mode: str,
    flags: str,
    family: str,
    start: str,
) -> None:
    """The 127.0.0.2 connection is reset with none of the greeting; the 127.0.0.1 one is
    greeted, its peer address and accept flags are what the child asked for, and the
    denial names 127.0.0.2 and accept."""
    srv = server(["--net-allow", ALLOWED], [probe("acceptsrv"), mode, flags, family, start])
    then = b"eagain\n" if mode == "epoll" else None  # the refused peer, then EAGAIN
    d_data, d_reset, d_port, a_data, a_port = _exchange(srv, start == "stdin", then)
    res = srv.finish()
    assert d_data == b"", f"the denied peer received {d_data!r}\n{describe(res)}"
    assert d_reset, describe(res)
    assert a_data == GREETING, describe(res)
    assert res.returncode == 0, describe(res)
    got = peers(res.stdout)
    mapped = "::ffff:" if family == "6" else ""
    assert [(p["host"], int(p["port"])) for p in got] == [(mapped + ALLOWED, a_port)], describe(res)
    assert int(got[0]["len"]) == (28 if family == "6" else 16)
    assert got[0]["nonblock"] == ("1" if flags in ("nonblock", "both") else "0")
    assert got[0]["cloexec"] == ("1" if flags in ("cloexec", "both") else "0")
    if mode == "epoll":
        assert "eagain" in res.stdout.splitlines(), describe(res)
    denial = [ln for ln in res.stderr.splitlines() if ln.startswith("sandlock: denied")]
    assert len(denial) == 1 and f"{DENIED}:{d_port} " in denial[0], describe(res)
    assert re.search(r"\baccept4?\)", denial[0]), describe(res)


@pytest.mark.parametrize("mode", ["accept", "epoll"])
def test_a_flood_of_denied_peers_then_an_allowed_one(
    probe: Callable[[str], str], server: Callable[..., Server], mode: str
) -> None:
    """100 denied connections queued before the allowed one (more than one batch of
    refusals): every denied one is reset with nothing, the allowed one served."""
    srv = server(["--net-allow", ALLOWED], [probe("acceptsrv"), mode, "0", "4", "stdin"])
    denied = [connect(DENIED, srv.port) for _ in range(100)]
    allowed = connect(ALLOWED, srv.port)
    srv.go()
    got = [drain(s) for s in denied]
    data, _ = drain(allowed)
    res = srv.finish()
    assert got == [(b"", True)] * len(denied), describe(res)
    assert data == GREETING and res.returncode == 0, describe(res)
    assert [p["host"] for p in peers(res.stdout)] == [ALLOWED], describe(res)


def test_a_deny_rule_refuses_a_peer_under_allow_everything(
    probe: Callable[[str], str], server: Callable[..., Server]
) -> None:
    """--net-deny 127.0.0.2 with --net-allow '*': the peer is refused all the same."""
    args = ["--net-allow", "*", "--net-deny", DENIED]
    srv = server(args, [probe("acceptsrv"), "accept", "0", "4", "now"])
    d_data, d_reset, _, a_data, _ = _exchange(srv, queued=False)
    res = srv.finish()
    assert (d_data, d_reset, a_data) == (b"", True, GREETING), describe(res)
    assert f"--net-deny {DENIED}" in res.stderr, describe(res)


@pytest.mark.parametrize("mode", ["short", "null"])
def test_addr_and_addrlen_as_the_kernel_writes_them(
    probe: Callable[[str], str], server: Callable[..., Server], mode: str
) -> None:
    """A 4-byte buffer gets the first 4 bytes and addrlen the full 16, the rest of the
    buffer untouched; NULL addr and addrlen are left alone."""
    srv = server(["--net-allow", ALLOWED], [probe("acceptsrv"), mode, "0", "4", "now"])
    s = connect(ALLOWED, srv.port)
    port = s.getsockname()[1]
    data, _ = drain(s)
    res = srv.finish()
    assert data == GREETING and res.returncode == 0, describe(res)
    if mode == "short":
        assert "short addrlen=16 head=1 tail=1" in res.stdout, describe(res)
    assert [(p["host"], int(p["port"])) for p in peers(res.stdout)] == [(ALLOWED, port)]


def test_a_blocking_accept_honours_so_rcvtimeo(
    probe: Callable[[str], str], server: Callable[..., Server]
) -> None:
    """A blocking accept with SO_RCVTIMEO and nothing to accept fails with EAGAIN."""
    srv = server(["--net-allow", ALLOWED], [probe("acceptsrv"), "accept", "0", "4", "rcvtimeo"])
    s = connect(ALLOWED, srv.port)
    data, _ = drain(s)
    res = srv.finish()
    assert "rcvtimeo errno=11" in res.stdout.splitlines(), describe(res)
    assert data == GREETING and res.returncode == 0, describe(res)


def test_the_ia32_accept4_is_closed(
    probe: Callable[[str], str], server: Callable[..., Server], features: Any
) -> None:
    """accept4 through int 0x80 (not trapped: the IA-32 entry has its own numbers) fails
    with ENOSYS; the denied peer gets nothing."""
    features.require("ia32")
    srv = server(["--net-allow", ALLOWED], [probe("acceptsrv"), "int80", "0", "4", "now"])
    data = b""
    try:
        data, _ = drain(connect(DENIED, srv.port))
    except (ConnectionRefusedError, ConnectionResetError):  # the server is gone (or going)
        pass
    assert data == b"", f"the denied peer received {data!r}"
    res = srv.finish()
    assert "accept errno=38" in res.stdout.splitlines(), describe(res)


UNIX_SERVER = r"""
import os, socket, sys, threading
path = os.path.join(sys.argv[1], "s.sock")
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(4)
def client(abstract):
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if abstract:
        c.bind(b"\0sandlock-inbound-test-%d" % os.getpid())
    c.connect(path)
    c.sendall(b"ping")
    assert c.recv(4) == b"pong"
    c.close()
for abstract in (False, True):
    t = threading.Thread(target=client, args=(abstract,))
    t.start()
    conn, addr = srv.accept()
    assert conn.recv(4) == b"ping"
    conn.sendall(b"pong")
    t.join()
    conn.close()
    print("accepted", repr(addr))
"""


def test_af_unix_accept_inside_the_sandbox(tmp_path: Any) -> None:
    """A unix server and its clients, all in the sandbox, under a policy that allows no
    network: accepted as before, the peer's name (unnamed, abstract) as the kernel's."""
    res = run_sandboxed([], [sys.executable, "-c", UNIX_SERVER, str(tmp_path)], timeout=30)
    assert res.returncode == 0, describe(res)
    lines = res.stdout.splitlines()
    assert lines[0] == "accepted ''", describe(res)
    assert re.fullmatch(r"accepted b'\\x00sandlock-inbound-test-\d+'", lines[1]), describe(res)
