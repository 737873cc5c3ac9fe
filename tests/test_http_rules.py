"""HTTP rules end to end (httprelay.py): real sandboxed clients, a loopback server the test
starts (tests/httpfake.py), sinks on other ports and on 127.0.0.2 that must get nothing.

The server's log is the proof: a refused request never reaches it, and an allowed one
reaches it as sent, on the address and port the command connected to.
"""

from __future__ import annotations

import json
import random
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import (
    SANDLOCK,
    TcpSink,
    describe,
    need_tool,
    run_command,
    run_plain,
    run_sandboxed,
    sandlock_env,
)
from .dnsfake import FakeUpstream
from .httpfake import EchoServer

PY = sys.executable
TIMEOUT = 90
SANDLOCK_LEARN = [*SANDLOCK[:-1], "learn"]  # (SANDLOCK ends with "run")

CLIENT = r"""
import http.client, json, sys
port, keep = int(sys.argv[1]), sys.argv[2] == "keep"
cases = json.loads(sys.argv[3])
out = []
conn = None
first_sock = None
for case in cases:
    if conn is None or not keep:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.putrequest(case["method"], case["path"], skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", case.get("host", f"127.0.0.1:{port}"))
        body = case.get("body", "").encode()
        if case.get("chunked"):
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for piece in (body[: len(body) // 2], body[len(body) // 2 :]):
                conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            conn.send(b"0\r\n\r\n")
        else:
            if body:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
        if keep and first_sock is None:
            first_sock = conn.sock
        r = conn.getresponse()
        out.append([r.status, r.read().decode(), keep and conn.sock is first_sock])
    except OSError as e:
        out.append([type(e).__name__, "", False])
print(json.dumps(out))
"""


@pytest.fixture
def web() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


@pytest.fixture
def sinks() -> Iterator[tuple[TcpSink, TcpSink]]:
    """One sink on another port of 127.0.0.1, one on 127.0.0.2 (denied)."""
    other, far = TcpSink("127.0.0.1"), TcpSink("127.0.0.2")
    try:
        yield other, far
    finally:
        other.close()
        far.close()


def rules(port: int) -> list[str]:
    return [
        "--http-ports",
        str(port),
        "--http-allow",
        "GET 127.0.0.1/ok/*",
        "--http-allow",
        "POST 127.0.0.1/upload",
        "--http-deny",
        "* */ok/secret*",
    ]


def run_client(
    args: list[str], port: int, cases: list[dict[str, object]], *, keep: bool = False
) -> tuple[list[list[object]], str]:
    res = run_sandboxed(
        args,
        [PY, "-c", CLIENT, str(port), "keep" if keep else "fresh", json.dumps(cases)],
        timeout=TIMEOUT,
    )
    assert res.returncode == 0, describe(res)
    return json.loads(res.stdout), res.stderr


def test_paths_methods_and_tricks(web: EchoServer, sinks: tuple[TcpSink, TcpSink]) -> None:
    """Allowed requests pass as sent; denied methods, paths, path tricks and Host
    steering to another port or to 127.0.0.2 get 403 and never reach any server."""
    other, far = sinks
    p = web.port
    cases: list[dict[str, object]] = [
        {"method": "GET", "path": "/ok/a"},
        {"method": "GET", "path": "/secret"},
        {"method": "GET", "path": "/ok/../secret"},
        {"method": "GET", "path": "/ok/%2e%2e/secret"},
        {"method": "GET", "path": "/ok/..;/secret"},
        {"method": "GET", "path": "//ok/b?x=/../secret"},
        {"method": "GET", "path": "/OK/a"},
        {"method": "GET", "path": "/ok/SECRET"},
        {"method": "GET", "path": "/ok/%73ecret"},
        {"method": "POST", "path": "/ok/a", "body": "x"},
        {"method": "POST", "path": "/upload", "body": "payload"},
        {"method": "GET", "path": "/ok/a", "host": other.target},
        {"method": "GET", "path": "/ok/a", "host": f"127.0.0.2:{p}"},
        {"method": "GET", "path": "/ok/a", "host": far.target},
        {"method": "GET", "path": f"http://{far.target}/ok/a"},
        {"method": "GET", "path": "/ok/a", "host": f"evil.example:{p}"},
        {"method": "GET", "path": "/ok/a", "host": f"user@127.0.0.1:{p}"},
        {"method": "CONNECT", "path": far.target},
    ]
    got, stderr = run_client(rules(p), p, cases)
    statuses = [g[0] for g in got]
    assert statuses == [
        200,
        403,
        403,
        403,
        403,
        200,
        403,
        403,
        403,
        403,
        200,
        403,
        403,
        403,
        403,
        403,
        403,
        403,
    ], (got, stderr)
    assert got[1][1] == "sandlock: refused by HTTP rule `http-default-deny`\n"
    assert "`* */ok/secret*`" in got[7][1]
    assert "http-host-mismatch" in got[11][1]
    assert [(s.method, s.target, s.body) for s in web.log] == [
        ("GET", "/ok/a", b""),
        ("GET", "//ok/b?x=/../secret", b""),
        ("POST", "/upload", b"payload"),
    ]
    assert all(s.host == f"127.0.0.1:{p}" for s in web.log)
    assert other.settle().count == 0 and far.settle().count == 0
    assert "sandlock: denied HTTP GET 127.0.0.1/secret" in stderr


def test_keep_alive_allowed_denied_allowed(web: EchoServer) -> None:
    """One connection: an allowed, a denied, an allowed request; the connection stays
    up, and the server sees one connection for both allowed ones."""
    p = web.port
    cases: list[dict[str, object]] = [
        {"method": "GET", "path": "/ok/1"},
        {"method": "GET", "path": "/nope"},
        {"method": "GET", "path": "/ok/2"},
    ]
    got, _ = run_client(rules(p), p, cases, keep=True)
    assert [(g[0], g[2]) for g in got] == [(200, True), (403, True), (200, True)], got
    assert [s.target for s in web.log] == ["/ok/1", "/ok/2"]
    assert web.accepted == 1


V6_CLIENT = r"""
import http.client, sys
port = int(sys.argv[1])
for path, host in (("/ok/1", f"[::1]:{port}"), ("/secret", f"[::1]:{port}"),
                   ("/ok/2", f"127.0.0.1:{port}"), ("/ok/3", f"[::1]:{port + 1}")):
    conn = http.client.HTTPConnection("::1", port, timeout=20)
    conn.putrequest("GET", path, skip_host=True)
    conn.putheader("Host", host)
    conn.endheaders()
    r = conn.getresponse()
    print(path, r.status, r.read().decode().strip())
    conn.close()
"""


def test_ipv6_loopback() -> None:
    """HTTP rules on ::1: a rule naming `[::1]` allows its paths, other paths and a Host
    naming another address or port are refused, and only the allowed request arrives."""
    with EchoServer("::1") as web:
        p = web.port
        args = ["--http-ports", str(p), "--http-allow", "GET [::1]/ok/*"]
        res = run_sandboxed(args, [PY, "-c", V6_CLIENT, str(p)], timeout=TIMEOUT)
    assert res.returncode == 0, describe(res)
    assert res.stdout.splitlines() == [
        "/ok/1 200 ok GET /ok/1 0",
        "/secret 403 sandlock: refused by HTTP rule `http-default-deny`",
        "/ok/2 403 sandlock: refused by HTTP rule `http-default-deny`",  # (no rule names it)
        "/ok/3 403 sandlock: refused by HTTP rule `http-host-mismatch`",
    ], describe(res)
    assert [(s.target, s.host) for s in web.log] == [("/ok/1", f"[::1]:{p}")]


FALLBACK_CLIENT = r"""
import http.client, socket, sys
port = int(sys.argv[1])
for round in range(3):  # (again once the gate remembers the address that answered)
    for host in ("::1", "127.0.0.1"):  # (a client trying each address of a name in turn)
        try:
            conn = http.client.HTTPConnection(host, port, timeout=20)
            conn.request("GET", "/ok/x")  # (Host: the address, as http.client says it)
            r = conn.getresponse()
            print(round, host, r.status, r.read().decode().strip())
            conn.close()
            break
        except ConnectionRefusedError:
            print(round, host, "refused")
"""


def test_an_address_that_refuses_is_refused_at_connect(web: EchoServer, gate_mode: str) -> None:
    """Through the relay, a connect to an allowed address whose port nothing listens on
    (::1 here, the server being on 127.0.0.1) is refused, as it is without the sandbox,
    so a client tries the name's next address. The old relay accepted it and answered
    the request 502 ("cannot reach"): no fallback."""
    p = web.port
    native = run_plain([PY, "-c", FALLBACK_CLIENT, str(p)], timeout=TIMEOUT)
    args = ["--http-ports", str(p), "--http-allow", "GET 127.0.0.1/ok/*"]
    args += ["--http-allow", "GET [::1]/ok/*"]
    res = run_sandboxed(args, [PY, "-c", FALLBACK_CLIENT, str(p)], timeout=TIMEOUT)
    assert res.returncode == 0, describe(res)
    want = [
        line
        for r in range(3)
        for line in (f"{r} ::1 refused", f"{r} 127.0.0.1 200 ok GET /ok/x 0")
    ]
    assert native.stdout.splitlines() == want, describe(native)
    assert res.stdout.splitlines() == want, describe(res)
    assert [s.target for s in web.log] == ["/ok/x"] * 6


SILENT_CLIENT = r"""
import errno, socket, struct, sys, time
port = int(sys.argv[1])
def attempt(how):
    s = socket.socket()
    if how == "non-blocking":
        s.setblocking(False)
    else:  # (blocking, SO_SNDTIMEO 1 s: connect(2) gives EINPROGRESS when it runs out)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 1, 0))
    t = time.monotonic()
    rc = s.connect_ex(("127.0.0.1", port))
    took = time.monotonic() - t
    print(how, errno.errorcode.get(rc, rc), "within 5 s" if took < 5 else f"after {took:.1f} s")
    s.close()
for how in ("non-blocking", "blocking", "non-blocking"):
    attempt(how)
"""


def test_a_destination_that_does_not_answer_keeps_the_connect_bounded() -> None:
    """A connect through the relay waits for its destination's answer (a refusal is the
    command's), but no longer than the command's own connect would: a non-blocking one
    returns at once (EINPROGRESS) and one with SO_SNDTIMEO after it. The destination: a
    loopback listener whose queue is full, so that its handshakes never end. The old
    relay held each of these connects 30 s, then said ETIMEDOUT."""
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    port = stuck.getsockname()[1]
    queued = []
    try:
        for _ in range(4):  # (the queue's room and more: later SYNs are dropped)
            q = socket.socket()
            q.setblocking(False)
            q.connect_ex(("127.0.0.1", port))
            queued.append(q)
        native = run_plain([PY, "-c", SILENT_CLIENT, str(port)], timeout=TIMEOUT)
        args = ["--http-ports", str(port), "--http-allow", "GET 127.0.0.1/*"]
        res = run_sandboxed(args, [PY, "-c", SILENT_CLIENT, str(port)], timeout=TIMEOUT)
    finally:
        for q in (stuck, *queued):
            q.close()
    want = [
        "non-blocking EINPROGRESS within 5 s",
        "blocking EINPROGRESS within 5 s",
        "non-blocking EINPROGRESS within 5 s",
    ]
    assert native.stdout.splitlines() == want, describe(native)
    assert res.returncode == 0, describe(res)
    assert res.stdout.splitlines() == want, describe(res)


def test_refused_upload_closes_allowed_chunked_upload_streams(web: EchoServer) -> None:
    """A chunked upload to an allowed path arrives chunked and whole; a refused one with a
    body is answered 403 and its body never reaches the server."""
    p = web.port
    body = "0123456789" * 1000
    cases: list[dict[str, object]] = [
        {"method": "POST", "path": "/upload", "body": body, "chunked": True},
        {"method": "POST", "path": "/elsewhere", "body": body, "chunked": True},
        {"method": "POST", "path": "/elsewhere", "body": body},
    ]
    got, _ = run_client(rules(p), p, cases)
    assert [g[0] for g in got] == [200, 403, 403], got
    assert got[0][1] == f"ok POST /upload {len(body)}"
    assert [(s.target, s.chunked, len(s.body)) for s in web.log] == [("/upload", True, len(body))]


WS_CLIENT = r"""
import socket, sys
port = int(sys.argv[1])
for path, upgrade, method in [("/ok/ws", "websocket", "GET"), ("/nope", "websocket", "GET"),
                              ("/ok/h2", "h2c", "GET"), ("/upload", "websocket", "POST")]:
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: {upgrade}\r\n"
              f"Connection: Upgrade\r\nContent-Length: 0\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    status = head.split()[1].decode()
    echo = ""
    if status == "101":
        s.sendall(b"ping over the socket")
        echo = s.recv(100).decode()
    print(path, status, echo)
    s.close()
"""


def test_websocket_only_on_an_allowed_get(web: EchoServer) -> None:
    """Upgrade: websocket on an allowed GET switches and copies bytes both ways; on a
    denied path, with another protocol (h2c) or another method: 403."""
    p = web.port
    res = run_sandboxed(rules(p), [PY, "-c", WS_CLIENT, str(p)], timeout=TIMEOUT)
    assert res.returncode == 0, describe(res)
    assert res.stdout.splitlines() == [
        "/ok/ws 101 ping over the socket",
        "/nope 403 ",
        "/ok/h2 403 ",
        "/upload 403 ",
    ], describe(res)
    assert [s.target for s in web.log] == ["/ok/ws"]


def test_curl_and_urllib(web: EchoServer) -> None:
    """curl and Python urllib, unchanged: allowed 200, denied 403."""
    p = web.port
    script = (
        "import urllib.request, urllib.error, sys\n"
        "for path in sys.argv[2:]:\n"
        "    try:\n"
        "        r = urllib.request.urlopen(f'http://127.0.0.1:{sys.argv[1]}{path}', timeout=20)\n"
        "        print(r.status, r.read().decode())\n"
        "    except urllib.error.HTTPError as e:\n"
        "        print(e.code, e.read().decode().strip())\n"
    )
    res = run_sandboxed(rules(p), [PY, "-c", script, str(p), "/ok/u", "/x"], timeout=TIMEOUT)
    assert res.returncode == 0, describe(res)
    assert res.stdout.splitlines() == [
        "200 ok GET /ok/u 0",
        "403 sandlock: refused by HTTP rule `http-default-deny`",
    ]
    curl = need_tool("curl")
    out = []
    for path in ("/ok/c", "/ok/../x"):
        res = run_sandboxed(
            rules(p),
            [curl, "-s", "--path-as-is", "-w", " %{http_code}", f"http://127.0.0.1:{p}{path}"],
            timeout=TIMEOUT,
        )
        out.append(res.stdout.strip())
    assert out[0] == "ok GET /ok/c 0 200"
    assert out[1].endswith(" 403")
    assert [s.target for s in web.log] == ["/ok/u", "/ok/c"]


def test_audit_records_and_summary(web: EchoServer, tmp_path: Path) -> None:
    """Each HTTP decision is an audit record with method, host, path, status and rule;
    --summary shows HTTP rows."""
    p = web.port
    log = tmp_path / "audit.jsonl"
    cases: list[dict[str, object]] = [
        {"method": "GET", "path": "/ok/a"},
        {"method": "GET", "path": "/ok/secret"},
    ]
    res = run_sandboxed(
        [*rules(p), "--audit", str(log), "--summary"],
        [PY, "-c", CLIENT, str(p), "fresh", json.dumps(cases)],
        timeout=TIMEOUT,
    )
    assert res.returncode == 0, describe(res)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    http = [
        {k: r[k] for k in ("method", "host", "path", "status", "action", "rule", "dst", "port")}
        for r in records
        if r.get("syscall") == "http"
    ]
    assert http == [
        {
            "method": "GET",
            "host": "127.0.0.1",
            "path": "/ok/a",
            "status": 200,
            "action": "allow",
            "rule": "GET 127.0.0.1/ok/*",
            "dst": "127.0.0.1",
            "port": p,
        },
        {
            "method": "GET",
            "host": "127.0.0.1",
            "path": "/ok/secret",
            "status": 403,
            "action": "deny",
            "rule": "* */ok/secret*",
            "dst": "127.0.0.1",
            "port": p,
        },
    ]
    assert "GET 127.0.0.1/ok/a" in res.stdout + res.stderr


def test_a_named_host_must_resolve_to_the_destination(web: EchoServer) -> None:
    """good.test (127.0.0.1 by a fake upstream) passes; a rule naming other.test
    (127.0.0.3) does not match requests to 127.0.0.1 whatever their Host says
    (http-host-mismatch), and the bare address matches no named rule."""
    p = web.port
    with FakeUpstream(f"127.0.{random.randrange(1, 255)}.153", 53) as fake:
        fake.add("good.test", "A", ["127.0.0.1"])
        fake.add("other.test", "A", ["127.0.0.3"])
        args = [
            "--no-dns-proxy",
            "--dns-allow-private",
            "--dns-upstream",
            f"{fake.address}:{fake.port}",
            "--http-ports",
            str(p),
            "--http-allow",
            "GET good.test/ok/*",
            "--http-allow",
            "GET other.test/*",
        ]
        cases: list[dict[str, object]] = [
            {"method": "GET", "path": "/ok/a", "host": f"good.test:{p}"},
            {"method": "GET", "path": "/ok/b", "host": f"other.test:{p}"},
            {"method": "GET", "path": "/ok/c", "host": f"127.0.0.1:{p}"},
        ]
        got, stderr = run_client(args, p, cases)
    assert [g[0] for g in got] == [200, 403, 403], (got, stderr)
    assert "http-host-mismatch" in str(got[1][1])
    assert "http-default-deny" in str(got[2][1])
    assert [s.target for s in web.log] == ["/ok/a"]


def test_net_deny_still_wins(web: EchoServer) -> None:
    """An HTTP allow rule does not open a destination --net-deny refuses."""
    p = web.port
    cases: list[dict[str, object]] = [{"method": "GET", "path": "/ok/a"}]
    got, _ = run_client([*rules(p), "--net-deny", f"127.0.0.1:{p}"], p, cases)
    assert got[0][0] == "ConnectionRefusedError"
    assert web.accepted == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--http-allow", "GET"], "--http-allow: `GET` is not `METHOD HOST"),
        (["--http-allow", "GET example.com/a*b"], "must be its last character"),
        (["--http-deny", "G@T */x"], "--http-deny: `G@T` in `G@T */x` is not an HTTP method"),
        (["--http-allow", "GET example.com:81/"], "not an HTTP port"),
        (["--http-ports", "0"], "--http-ports: `0`"),
        (["--http-ports", "80,x"], "--http-ports: `x`"),
    ],
)
def test_bad_http_rules_exit_2(args: list[str], needle: str) -> None:
    """A bad HTTP rule or port list: one line on stderr, exit 2, nothing run."""
    res = run_sandboxed(args, ["true"], timeout=TIMEOUT)
    assert res.returncode == 2, describe(res)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], describe(res)


def test_profile_http_keys(tmp_path: Path, web: EchoServer) -> None:
    """http_allow / http_deny in a TOML profile act as the flags; a bad type is one line."""
    p = web.port
    profile = tmp_path / "p.toml"
    profile.write_text('http_allow = ["GET 127.0.0.1/ok/*"]\nhttp_deny = ["GET */ok/no"]\n')
    cases: list[dict[str, object]] = [
        {"method": "GET", "path": "/ok/yes"},
        {"method": "GET", "path": "/ok/no"},
    ]
    got, _ = run_client(["--profile", str(profile), "--http-ports", str(p)], p, cases)
    assert [g[0] for g in got] == [200, 403]
    profile.write_text('http_allow = "GET */"\n')
    res = run_sandboxed(["--profile", str(profile)], ["true"], timeout=TIMEOUT)
    assert res.returncode == 2 and "`http_allow` must be a list of strings" in res.stderr


RAW_CLIENT = r"""
import re, socket, sys
port = int(sys.argv[1])
def exchange(data):
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.sendall(data)
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    s.close()
    return re.findall(rb"HTTP/1.1 (\d+)", got)
host = f"Host: 127.0.0.1:{port}\r\n".encode()
piped = (b"GET /ok/a HTTP/1.1\r\n" + host + b"\r\n"
         + b"GET /secret HTTP/1.1\r\n" + host + b"\r\n"
         + b"GET /ok/b HTTP/1.1\r\n" + host + b"Connection: close\r\n\r\n")
print(b" ".join(exchange(piped)).decode())
twice = b"GET /ok/c HTTP/1.1\r\n" + host + b"Host: evil.example\r\n\r\n"
print(b" ".join(exchange(twice)).decode())
smuggle = (b"POST /upload HTTP/1.1\r\n" + host + b"Content-Length: 30\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n"
           b"0\r\n\r\nGET /secret HTTP/1.1\r\n" + host + b"\r\n"
           + b"GET /ok/d HTTP/1.1\r\n" + host + b"Connection: close\r\n\r\n")
print(b" ".join(exchange(smuggle)).decode())
"""


def test_pipelining_duplicate_host_and_smuggling(web: EchoServer) -> None:
    """Pipelined requests are each checked; two Host headers are a 400; a body framed
    two ways reaches the server framed one way (chunked), so the request hidden after
    it is read by the relay, checked and refused, and never reaches the server."""
    p = web.port
    res = run_sandboxed(rules(p), [PY, "-c", RAW_CLIENT, str(p)], timeout=TIMEOUT)
    assert res.returncode == 0, describe(res)
    assert res.stdout.splitlines() == ["200 403 200", "400", "200 403 200"], describe(res)
    assert [(s.target, s.chunked, s.body) for s in web.log] == [
        ("/ok/a", False, b""),
        ("/ok/b", False, b""),
        ("/upload", True, b""),
        ("/ok/d", False, b""),
    ]


def test_learn_proposes_http_allow_lines(web: EchoServer, tmp_path: Path) -> None:
    """learn --http-ports: every request passes and becomes an --http-allow line (and a
    profile's http_allow), which then allows exactly those requests."""
    p = web.port
    cases: list[dict[str, object]] = [
        {"method": "GET", "path": "/ok/../v1/items?x=1"},
        {"method": "POST", "path": "/upload", "body": "x"},
    ]
    profile = tmp_path / "learned.toml"
    res = run_command(
        [
            *SANDLOCK_LEARN,
            "--http-ports",
            str(p),
            "--profile-out",
            str(profile),
            "--",
            PY,
            "-c",
            CLIENT,
            str(p),
            "fresh",
            json.dumps(cases),
        ],
        timeout=TIMEOUT,
        env=sandlock_env(),
    )
    assert res.returncode == 0, describe(res)
    assert f"  --http-ports {p}" in res.stderr
    assert "  --http-allow 'GET 127.0.0.1/v1/items'" in res.stderr, describe(res)
    assert "  --http-allow 'POST 127.0.0.1/upload'" in res.stderr, describe(res)
    assert '"GET 127.0.0.1/v1/items",' in profile.read_text()
    got, _ = run_client(
        ["--profile", str(profile), "--http-ports", str(p)],
        p,
        [*cases, {"method": "GET", "path": "/v1/other"}],
    )
    assert [g[0] for g in got] == [200, 200, 403]


def test_http_rules_through_the_daemon(web: EchoServer, tmp_path: Path) -> None:
    """run --daemon carries the HTTP rules (the name options' wire form): the daemon's
    supervisor relays and checks each request, and the denial line reaches the client."""
    from .test_daemon import Daemon

    daemon = Daemon(tmp_path / "d.sock")
    try:
        p = web.port
        cases: list[dict[str, object]] = [
            {"method": "GET", "path": "/ok/a"},
            {"method": "GET", "path": "/secret"},
        ]
        res = daemon.run(
            rules(p),
            [PY, "-c", CLIENT, str(p), "fresh", json.dumps(cases)],
            timeout=TIMEOUT,
        )
        assert res.returncode == 0, describe(res)
        assert [g[0] for g in json.loads(res.stdout)] == [200, 403]
        assert "sandlock: denied HTTP GET 127.0.0.1/secret" in res.stderr
        assert [s.target for s in web.log] == ["/ok/a"]
        res = daemon.run([*rules(p), "--http-ca-out", str(tmp_path / "ca.pem")], ["true"])
        assert res.returncode == 2, describe(res)
        assert "--http-ca-out: there is no CA without --http-tls" in res.stderr, describe(res)
        assert not (tmp_path / "ca.pem").exists()
    finally:
        daemon.stop()


STREAM_CLIENT = r"""
import os, socket, sys, time
port, flag = int(sys.argv[1]), sys.argv[2]
total, first = 8 << 20, 1 << 20
s = socket.create_connection(("127.0.0.1", port), timeout=30)
s.sendall(f"POST /upload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {total}\r\n"
          f"Connection: close\r\n\r\n".encode())
s.sendall(bytes(first))
deadline = time.monotonic() + 20
while not os.path.exists(flag):  # the server has the first MiB: the relay did not wait
    if time.monotonic() > deadline:
        print("the first MiB never reached the server")
        sys.exit(1)
    time.sleep(0.01)
s.sendall(bytes(total - first))
data = b""
while chunk := s.recv(65536):
    data += chunk
print(data.split(b"\r\n")[0].decode(), data.rsplit(b"\r\n", 1)[-1].decode())
"""


def test_request_bodies_are_streamed(tmp_path: Path) -> None:
    """The server gets the first MiB of an 8 MiB upload while the command still holds
    the rest: the relay forwards a body as it comes, it never waits for the whole."""
    import socket
    import threading

    flag = tmp_path / "first-mib"
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            got = len(data.partition(b"\r\n\r\n")[2])
            while got < 8 << 20:
                if got >= 1 << 20 and not flag.exists():
                    flag.touch()
                chunk = conn.recv(1 << 20)
                if not chunk:
                    return
                got += len(chunk)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n" + str(got >> 20).encode().ljust(8)
            )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        res = run_sandboxed(
            rules(port), [PY, "-c", STREAM_CLIENT, str(port), str(flag)], timeout=TIMEOUT
        )
    finally:
        server.close()
    assert res.returncode == 0, describe(res)
    assert res.stdout.split() == ["HTTP/1.1", "200", "OK", "8"], describe(res)


ABRUPT = r"""
import socket, struct, sys, time
port = int(sys.argv[1])
host = f"Host: 127.0.0.1:{port}\r\n".encode()
for data, reset in [(b"GET /ok/a HTTP/1.1\r\n" + host, False),
                    (b"POST /upload HTTP/1.1\r\n" + host + b"Content-Length: 100\r\n\r\nabc", True),
                    (b"\x00\x01garbage\r\n\r\n", False)]:
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.sendall(data)
    if reset:  # (once the relay has had time to take the connection and pass the bytes on:
        time.sleep(0.3)  # a connection reset before its accept is dropped by the kernel)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:
        s.shutdown(socket.SHUT_WR)
        s.recv(4096)
    s.close()
print("done")
"""


def test_clients_that_go_away_are_no_internal_error(web: EchoServer) -> None:
    """A half-sent request, a reset mid-body and garbage end those connections quietly
    (a 400 for the garbage): no internal error; of the upload the server got the head and
    the 3 bytes sent (bodies are streamed), then the end of the connection."""
    p = web.port
    res = run_sandboxed(rules(p), [PY, "-c", ABRUPT, str(p)], timeout=TIMEOUT)
    assert res.returncode == 0 and res.stdout.strip() == "done", describe(res)
    assert "internal error" not in res.stderr, describe(res)
    assert [(s.target, s.body) for s in web.log] == [("/upload", b"abc")]
