"""--verify-names end to end: the relay lets through only connections whose first bytes
name an allowed host (TLS SNI, HTTP Host) that resolves to the address connected to.

good.test and evil.test both resolve to 127.0.0.1 (a fake upstream, DNS mode); only
good.test is allowed. The servers (tests/tlsfake.py) count the connections they accept:
a connection the relay refuses is never made upstream, so nothing the command sent after
its first record (nor that record) reaches them.
"""

from __future__ import annotations

import errno
import json
import os
import random
import resource
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import describe, need_tool, run_command, run_sandboxed, sandlock_env
from .dnsfake import FakeUpstream
from .test_firstbytes import hello_with, sni
from .test_gate_mode import SPY, _stats
from .tlsfake import Authority, WebServer

PY = sys.executable
BODY = b"hello from the server"
TIMEOUT = 90


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    """good.test and evil.test, both 127.0.0.1, on port 53 of a loopback address."""
    with FakeUpstream(f"127.0.{random.randrange(1, 255)}.153", 53) as upstream:
        upstream.add("good.test", "A", ["127.0.0.1"])
        upstream.add("evil.test", "A", ["127.0.0.1"])
        yield upstream


@pytest.fixture
def www(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_bytes(BODY)
    return root


@pytest.fixture
def https(tmp_path: Path, www: Path) -> Iterator[WebServer]:
    with WebServer(www, Authority(["good.test", "evil.test"], tmp_path)) as server:
        yield server


@pytest.fixture
def http(www: Path) -> Iterator[WebServer]:
    with WebServer(www) as server:
        yield server


def args(fake: FakeUpstream, *ports: int, verify: bool = True) -> list[str]:
    rules = [a for port in ports for a in ("--net-allow", f"good.test:{port}")]
    return [
        "--dns-allow-private",  # good.test resolves to loopback: the rebinding guard off
        "--dns-upstream",
        f"{fake.address}:{fake.port}",
        *rules,
        *(["--verify-names"] if verify else []),
    ]


CLIENT = r"""
import http.client, socket, ssl, sys
tls_port, http_port, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
body = sys.argv[4].encode()
request = b"GET /hello.txt HTTP/1.1\r\nHost: good.test\r\nConnection: close\r\n\r\n"

def outcome(fn):
    try:
        return fn()
    except OSError as e:
        return type(e).__name__

def tls(sni, peer=False):
    ctx = ssl.create_default_context(cafile=ca)
    if sni is None:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    def go():
        with socket.create_connection(("good.test", tls_port), timeout=20) as raw:
            if peer:
                print("peer", raw.getpeername()[:2] == ("127.0.0.1", tls_port))
            with ctx.wrap_socket(raw, server_hostname=sni) as s:
                s.sendall(request)
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                return "ok" if data.endswith(body) else "bad"
    return outcome(go)

def plain(host):
    def go():
        c = http.client.HTTPConnection("good.test", http_port, timeout=20)
        c.request("GET", "/hello.txt", headers={"Host": host})
        return "ok" if c.getresponse().read() == body else "bad"
    return outcome(go)

def raw(data):
    def go():
        with socket.create_connection(("good.test", tls_port), timeout=20) as s:
            s.sendall(data)
            return "eof" if s.recv(100) == b"" else "data"
    return outcome(go)

for case in sys.argv[5:]:
    kind, _, arg = case.partition(":")
    if kind == "tls" and arg == "peer":
        print(case, tls(None, peer=True))
    elif kind == "tls":
        print(case, tls(arg or None))
    elif kind == "http":
        print(case, plain(arg))
    elif kind == "close":  # nothing sent: nothing refused, nothing reported
        socket.create_connection(("good.test", tls_port), timeout=20).close()
        print(case, "closed")
    else:  # raw, ech: these bytes to the TLS port
        print(case, raw(bytes.fromhex(arg)))
"""

# A ClientHello with Encrypted ClientHello (RFC 9849): the allowed name as its outer SNI,
# and an outer ECHClientHello (type 0; HKDF-SHA256, AES-128-GCM; config 42; enc; payload)
# hiding the name it asks for. Sent as raw bytes (Python's ssl cannot make one).
ECH_OUTER = struct.pack("!BHHBH", 0, 1, 1, 42, 32) + bytes(range(32)) + struct.pack("!H", 48)
ECH_HELLO = hello_with([sni(b"good.test"), (0xFE0D, ECH_OUTER + bytes(48))])
ECH_CASE = "ech:" + ECH_HELLO.hex()

CASES = [
    "tls:good.test",
    ECH_CASE,  # (after a good one: the gate sends it to the C front, good.test approved)
    "tls:evil.test",  # another name on the same address (the certificate covers it)
    "tls:",  # no SNI
    "http:good.test",
    "http:evil.test",
    "raw:" + b"\x00\x01secret payload\r\n\r\n".hex(),
    "close:",
]


def outcomes(stdout: str) -> dict[str, str]:
    return dict(line.rsplit(" ", 1) for line in stdout.splitlines() if " " in line)


def client_cmd(https: WebServer, http: WebServer, cases: list[str]) -> list[str]:
    assert https.tls is not None
    ports = [str(https.port), str(http.port)]
    return [PY, "-c", CLIENT, *ports, str(https.tls.ca_file), BODY.decode(), *cases]


def run_client(
    fake: FakeUpstream, https: WebServer, http: WebServer, extra: list[str], cases: list[str]
) -> subprocess.CompletedProcess[str]:
    assert https.tls is not None
    cmd = client_cmd(https, http, cases)
    return run_sandboxed([*args(fake, https.port, http.port), *extra], cmd, timeout=TIMEOUT)


def test_without_verify_names_every_case_passes(
    fake: FakeUpstream, https: WebServer, http: WebServer
) -> None:
    """The control: without --verify-names, another name on the allowed address works
    (what the relay must stop)."""
    assert https.tls is not None
    cmd = client_cmd(https, http, CASES)
    res = run_sandboxed(args(fake, https.port, http.port, verify=False), cmd, timeout=TIMEOUT)
    got = outcomes(res.stdout)
    assert got["tls:evil.test"] == "ok", describe(res)
    assert got["http:evil.test"] == "ok", describe(res)


def test_only_allowed_names_pass(
    fake: FakeUpstream, https: WebServer, http: WebServer, tmp_path: Path, gate_mode: str
) -> None:
    """Allowed SNI and Host pass; a wrong SNI, no SNI, an Encrypted ClientHello (whose
    outer SNI is the allowed name), raw bytes, a wrong Host are reset and never reach the
    servers; each refusal is audited as name-mismatch with the name seen, and the ECH one
    is reported as encrypted, not as a name no rule allows."""
    audit = tmp_path / "audit.jsonl"
    res = run_client(fake, https, http, ["--audit", str(audit)], CASES)
    got = outcomes(res.stdout)
    assert got == {
        "tls:good.test": "ok",
        ECH_CASE: "ConnectionResetError",
        "tls:evil.test": "ConnectionResetError",
        "tls:": "ConnectionResetError",
        "http:good.test": "ok",
        "http:evil.test": "ConnectionResetError",
        CASES[-2]: "ConnectionResetError",
        "close:": "closed",
    }, describe(res)
    assert https.accepted == 1 and http.accepted == 1  # the refused ones: never connected
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    refused = [r for r in records if r.get("rule") == "name-mismatch"]
    hosts = sorted(str(r["host"]) for r in refused)
    assert hosts == ["None", "None", "evil.test", "evil.test", "good.test"], records
    assert all(r["action"] == "deny" and r["port"] in (https.port, http.port) for r in refused)
    (ech,) = [r for r in refused if r["host"] == "good.test"]  # (the outer SNI, as seen)
    assert (ech["dst"], ech["port"], ech["errno"]) == ("127.0.0.1", https.port, errno.ECONNRESET)
    # One line per destination: the TLS port's first refusal is the ECH one, the HTTP
    # port's the wrong Host.
    assert "it named evil.test" in res.stderr, describe(res)
    lines = [line for line in res.stderr.splitlines() if f"127.0.0.1:{https.port}" in line]
    assert len(lines) == 1 and "ClientHello is encrypted (ECH)" in lines[0], describe(res)
    assert "names no host that can be checked" in lines[0], describe(res)
    assert "good.test is only its outer, public name" in lines[0], describe(res)
    assert "it named good.test" not in res.stderr, describe(res)


# Each relay's count of connections its C thread let through on its own (relay.h's
# front), written to stderr as it closes: a spy in the supervising process.
FRONT_SPY = """
import sys
from sandlock import _syscalls as _s
_close_splicer = _s.Splicer.close
def _splicer_close(self):
    fast = self.fast()
    _close_splicer(self)
    print("fast", fast, file=sys.stderr, flush=True)
_s.Splicer.close = _splicer_close
"""


def test_remembered_connects_go_to_the_relay_from_the_gate_and_each_is_checked(
    fake: FakeUpstream, https: WebServer, http: WebServer, gate_mode: str
) -> None:
    """After the first relayed connect to a destination, the gate sends the next ones to
    the relay itself (csrc/relaynotes.h: no Python on the connect), and every one of them
    is still checked: a wrong name after good ones is reset and reaches no server. The
    same outcomes with SANDLOCK_GATE=python, where the gate answers no connect."""

    cases = ["tls:good.test"] * 3 + ["tls:evil.test", "tls:", "tls:good.test"]
    cases += ["http:good.test"] * 2 + ["http:evil.test", "http:good.test"]
    cmd = client_cmd(https, http, cases)
    argv = [PY, "-c", FRONT_SPY + SPY, "run", *args(fake, https.port, http.port), "--", *cmd]
    res = run_command(argv, timeout=TIMEOUT, env=sandlock_env())
    got = [line.rsplit(" ", 1)[1] for line in res.stdout.splitlines()]
    reset = "ConnectionResetError"
    assert got == ["ok"] * 3 + [reset, reset, "ok"] + ["ok"] * 2 + [reset, "ok"], describe(res)
    assert https.accepted == 4 and http.accepted == 3  # the refused ones: never connected
    connects = _stats(res.stderr)["connects"]
    fast = [int(line.split()[1]) for line in res.stderr.splitlines() if line.startswith("fast ")]
    if gate_mode == "gate":  # (all but the first to each server; ≥: timing may park some)
        assert connects >= len(cases) - 2, describe(res)
        assert fast == [3], describe(res)  # the good TLS ones after the first: C's alone
    else:
        assert connects == 0 and fast == [0], describe(res)


SILENT = r"""
import socket, ssl, sys, time
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
with ctx.wrap_socket(socket.create_connection(("good.test", port), timeout=20),
                     server_hostname="good.test") as s:  # (the gate remembers it now)
    pass
s = socket.create_connection(("good.test", port), timeout=20)
t = time.monotonic()
try:
    print("eof" if s.recv(10) == b"" else "data")
except ConnectionResetError:
    print("reset")
print("waited", round(time.monotonic() - t, 1))
"""


def test_a_silent_connection_from_the_gate_is_reset_in_time(
    fake: FakeUpstream, https: WebServer, http: WebServer
) -> None:
    """A connection the gate sent to the relay whose command sends nothing: the relay's C
    thread gives it to Python after FIRST_TIMEOUT (set to 1 s here, in the supervising
    process), which refuses it (reset, reported); the server sees only the first one."""
    assert https.tls is not None
    spy = "import sandlock.relay; sandlock.relay.FIRST_TIMEOUT = 1.0\n" + FRONT_SPY + SPY
    cmd = [PY, "-c", SILENT, str(https.port), str(https.tls.ca_file)]
    argv = [PY, "-c", spy, "run", *args(fake, https.port, http.port), "--", *cmd]
    res = run_command(argv, timeout=TIMEOUT, env=sandlock_env())
    assert res.stdout.split()[:2] == ["reset", "waited"], describe(res)
    assert 0.5 <= float(res.stdout.split()[2]) < 8, describe(res)
    assert "it named no host" in res.stderr, describe(res)
    assert _stats(res.stderr)["connects"] == 1, describe(res)  # (the second: the gate's)
    assert https.accepted == 1


MANY = r"""
import resource, socket, sys
ports, n = [int(p) for p in sys.argv[1:3]], int(sys.argv[3])
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
addr = socket.getaddrinfo("good.test", ports[0], socket.AF_INET)[0][4][0]
socks = [socket.create_connection((addr, ports[i % 2]), timeout=30) for i in range(n)]
for i, s in enumerate(socks):
    s.sendall(f"GET /{i} HTTP/1.0\r\nHost: good.test\r\n\r\n".encode())
wrong = 0
for i, s in enumerate(socks):
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    wrong += data.split(b"\r\n\r\n", 1)[-1] != f"{ports[i % 2]} /{i}".encode()
print(n, wrong)
"""


def _path_server() -> tuple[socket.socket, threading.Thread]:
    """A loopback server answering each request with its own port and the request's
    path, one thread, every connection at once (selectors)."""
    import selectors

    server = socket.create_server(("127.0.0.1", 0), backlog=1024)
    port = server.getsockname()[1]

    def serve() -> None:
        sel = selectors.DefaultSelector()
        sel.register(server, selectors.EVENT_READ)
        got: dict[socket.socket, bytes] = {}
        while True:
            for key, _ in sel.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is server:
                    try:
                        conn, _ = server.accept()
                    except OSError:
                        return  # (closed: the test is over)
                    got[conn] = b""
                    sel.register(conn, selectors.EVENT_READ)
                    continue
                data = got[sock] = got[sock] + sock.recv(4096)
                if b"\r\n\r\n" in data:
                    path = data.split(b" ", 2)[1]
                    sock.sendall(b"HTTP/1.0 200 OK\r\n\r\n%d %s" % (port, path))
                    sel.unregister(sock)
                    sock.close()
                    del got[sock]

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def test_many_connections_at_once_each_reach_their_own_destination(fake: FakeUpstream) -> None:
    """2000 relayed connections open at once, alternating between two allowed ports (most
    sent to the relay by the gate, each noted by its local port): every one reaches its
    own destination and gets its own answer. sandlock starts with a soft limit of 1024
    descriptors, as on most desktops: its relay takes its hard limit (each relayed
    connection costs it up to six), the command keeps 1024 (it raises its own here)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2000 * 6 + 200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} too low for the supervisor's side")

    def desktop_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))

    servers = [_path_server() for _ in range(2)]
    try:
        ports = [str(server.getsockname()[1]) for server, _ in servers]
        cmd = [PY, "-c", MANY, *ports, "2000"]
        res = run_sandboxed(
            args(fake, *map(int, ports)), cmd, timeout=TIMEOUT, preexec_fn=desktop_limit
        )
    finally:
        for server, _ in servers:
            server.close()
    assert res.returncode == 0 and res.stdout.split() == ["2000", "0"], describe(res)


def test_profile_and_api_turn_it_on(
    fake: FakeUpstream, https: WebServer, http: WebServer, tmp_path: Path
) -> None:
    """`verify_names = true` in a profile, and Sandbox(verify_names=True), verify names;
    another name to the allowed address is reset both ways."""
    from sandlock import Sandbox
    from sandlock.plan import NameOptions

    profile = tmp_path / "p.toml"
    profile.write_text(
        f'net_allow = ["good.test:{https.port}"]\nverify_names = true\ndns_allow_private = true\n'
    )
    upstream = f"{fake.address}:{fake.port}"
    cmd = client_cmd(https, http, ["tls:good.test", "tls:evil.test"])
    res = run_sandboxed(["--dns-upstream", upstream, "--profile", str(profile)], cmd)
    want = {"tls:good.test": "ok", "tls:evil.test": "ConnectionResetError"}
    assert outcomes(res.stdout) == want, describe(res)
    sandbox = Sandbox(
        [f"good.test:{https.port}"],
        names=NameOptions(dns_upstream=upstream),
        verify_names=True,
        dns_allow_private=True,
    )
    result = sandbox.run(cmd, capture_output=True, timeout=TIMEOUT)
    assert result.stdout is not None
    assert outcomes(result.stdout.decode()) == want, result.stderr
    assert [d.rule for d in result.denied] == ["name-mismatch"]
    assert https.accepted == 2


def test_through_the_daemon(
    fake: FakeUpstream, https: WebServer, http: WebServer, tmp_path: Path
) -> None:
    """run --daemon --verify-names: the daemon's sandbox relays and checks names too."""
    from .test_daemon import Daemon

    daemon = Daemon(tmp_path / "d.sock")
    try:
        cmd = client_cmd(https, http, ["tls:good.test", "tls:evil.test"])
        res = daemon.run(args(fake, https.port, http.port), cmd, timeout=TIMEOUT)
    finally:
        daemon.stop()
    want = {"tls:good.test": "ok", "tls:evil.test": "ConnectionResetError"}
    assert outcomes(res.stdout) == want, describe(res)
    assert "it named evil.test" in res.stderr
    assert https.accepted == 1


def test_ip_rules_are_untouched(fake: FakeUpstream, https: WebServer, http: WebServer) -> None:
    """A destination an IP rule allows is not relayed: no SNI passes, getpeername is the
    server's; allowed only by name, getpeername is the relay's (documented)."""
    ip_rule = ["--net-allow", f"127.0.0.1:{https.port}"]
    res = run_client(fake, https, http, ip_rule, ["tls:peer"])
    assert outcomes(res.stdout) == {"peer": "True", "tls:peer": "ok"}, describe(res)
    res = run_client(fake, https, http, [], ["tls:good.test", "tls:peer"])
    assert outcomes(res.stdout)["peer"] == "False", describe(res)


def test_bulk_both_ways_and_half_close(fake: FakeUpstream, tmp_path: Path) -> None:
    """8 MB up and 8 MB down through the relay, the client's half-close passed on, every
    byte in order (an echo server on loopback)."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    script = r"""
import hashlib, socket, sys, threading
port = int(sys.argv[1])
payload = b"GET / HTTP/1.1\r\nHost: good.test\r\n\r\n" + bytes(range(256)) * 32768
s = socket.create_connection(("good.test", port), timeout=30)
def send():
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=send).start()
got = hashlib.sha256()
n = 0
while data := s.recv(1 << 16):
    got.update(data)
    n += len(data)
print(n == len(payload) and got.digest() == hashlib.sha256(payload).digest())
"""
    try:
        res = run_sandboxed([*args(fake, port)], [PY, "-c", script, str(port)], timeout=TIMEOUT)
    finally:
        server.close()
    assert res.stdout.strip() == "True", describe(res)


def test_the_command_ending_mid_download_ends_the_relayed_connection(
    fake: FakeUpstream,
) -> None:
    """The command exits while a relayed download flows (the C data path holds the
    pair): the run ends with the command's status and the server's sends fail (reset or
    broken pipe) instead of going on into a relay that outlives the sandbox."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    ended: list[str] = []

    def flood() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            try:
                while True:
                    conn.sendall(bytes(1 << 20))
            except OSError as err:
                ended.append(type(err).__name__)

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    script = r"""
import os, socket, sys
s = socket.create_connection(("good.test", int(sys.argv[1])), timeout=30)
s.sendall(b"GET / HTTP/1.1\r\nHost: good.test\r\n\r\n")
got = 0
while got < 8 << 20:
    got += len(s.recv(1 << 20))
print("flowing", flush=True)
os._exit(7)
"""
    try:
        res = run_sandboxed([*args(fake, port)], [PY, "-c", script, str(port)], timeout=TIMEOUT)
        thread.join(30)
    finally:
        server.close()
    assert res.returncode == 7 and res.stdout.strip() == "flowing", describe(res)
    assert ended in (["ConnectionResetError"], ["BrokenPipeError"]), ended


def test_curl(fake: FakeUpstream, https: WebServer) -> None:
    """curl: the allowed name passes; --resolve evil.test to the same address is reset."""
    curl = need_tool("curl")
    assert https.tls is not None
    ca = str(https.tls.ca_file)
    good = run_sandboxed(
        args(fake, https.port),
        [curl, "-sS", "--cacert", ca, f"https://good.test:{https.port}/hello.txt"],
        timeout=TIMEOUT,
    )
    assert good.returncode == 0 and good.stdout == BODY.decode(), describe(good)
    evil = run_sandboxed(
        args(fake, https.port),
        [
            curl,
            "-sS",
            "--cacert",
            ca,
            "--resolve",
            f"evil.test:{https.port}:127.0.0.1",
            f"https://evil.test:{https.port}/hello.txt",
        ],
        timeout=TIMEOUT,
    )
    assert evil.returncode != 0 and BODY.decode() not in evil.stdout, describe(evil)
    assert https.accepted == 1


def test_curl_plain_http(fake: FakeUpstream, http: WebServer, tmp_path: Path) -> None:
    """curl over plain HTTP: Host good.test passes (the body arrives); Host evil.test to
    the same address (-H, and --resolve) is reset (curl 56, recv failure), audited as
    name-mismatch with evil.test, and the server never gets the connection."""
    curl = need_tool("curl")
    url = f"http://good.test:{http.port}/hello.txt"
    base = [curl, "-q", "-sS", "--noproxy", "*", "--max-time", "20"]
    good = run_sandboxed(args(fake, http.port), [*base, url], timeout=TIMEOUT)
    assert good.returncode == 0 and good.stdout == BODY.decode(), describe(good)
    assert http.accepted == 1
    evil_url = f"http://evil.test:{http.port}/hello.txt"
    wrong = {
        "header": [*base, "-H", "Host: evil.test", url],
        "resolve": [*base, "--resolve", f"evil.test:{http.port}:127.0.0.1", evil_url],
    }
    for how, cmd in wrong.items():
        audit = tmp_path / f"{how}.jsonl"
        res = run_sandboxed([*args(fake, http.port), "--audit", str(audit)], cmd, timeout=TIMEOUT)
        assert res.returncode == 56 and BODY.decode() not in res.stdout, (how, describe(res))
        records = [json.loads(line) for line in audit.read_text().splitlines()]
        refused = [
            (r["host"], r["dst"], r["port"], r["action"])
            for r in records
            if r.get("rule") == "name-mismatch"
        ]
        assert refused == [("evil.test", "127.0.0.1", http.port, "deny")], (how, records)
        assert "it named evil.test" in res.stderr, (how, describe(res))
        assert http.accepted == 1, how  # never connected: the request never reached it


def test_node_fetch(fake: FakeUpstream, https: WebServer) -> None:
    """node's fetch, trusting the test CA, through the relay."""
    node = need_tool("node")
    assert https.tls is not None
    script = (
        f"fetch('https://good.test:{https.port}/hello.txt')"
        ".then(r => r.text()).then(t => console.log(t))"
        ".catch(e => { console.log('error', e.cause && e.cause.code); process.exit(1) })"
    )
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(https.tls.ca_file)}
    res = run_sandboxed(args(fake, https.port), [node, "-e", script], timeout=TIMEOUT, env=env)
    assert res.returncode == 0 and res.stdout.strip() == BODY.decode(), describe(res)


def test_git_clone_over_https(fake: FakeUpstream, https: WebServer, www: Path) -> None:
    """git clone over HTTPS (the "dumb" protocol, served as files) through the relay."""
    git = need_tool("git")
    assert https.tls is not None
    work = www.parent / "work"
    env = {**os.environ, "HOME": str(www.parent), "GIT_CONFIG_NOSYSTEM": "1"}
    quiet = {"env": env, "check": True, "capture_output": True, "timeout": 60}
    subprocess.run([git, "init", "-q", "-b", "main", str(work)], **quiet)  # type: ignore[call-overload]
    (work / "file.txt").write_text("through the relay\n")
    ident = ["-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([git, "-C", str(work), "add", "."], **quiet)  # type: ignore[call-overload]
    subprocess.run([git, "-C", str(work), *ident, "commit", "-qm", "x"], **quiet)  # type: ignore[call-overload]
    bare = www / "repo.git"
    subprocess.run([git, "clone", "-q", "--bare", str(work), str(bare)], **quiet)  # type: ignore[call-overload]
    subprocess.run([git, "-C", str(bare), "update-server-info"], **quiet)  # type: ignore[call-overload]
    dest = www.parent / "clone"
    res = run_sandboxed(
        args(fake, https.port),
        [git, "clone", "-q", f"https://good.test:{https.port}/repo.git", str(dest)],
        timeout=TIMEOUT,
        env={**env, "GIT_SSL_CAINFO": str(https.tls.ca_file)},
    )
    assert res.returncode == 0, describe(res)
    assert (dest / "file.txt").read_text() == "through the relay\n"


WILDCARD_CLIENT = r"""
import socket, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
for sni in sys.argv[3:]:
    ctx = ssl.create_default_context(cafile=ca)
    try:
        with socket.create_connection(("good.a.test", port), timeout=20) as raw:
            with ctx.wrap_socket(raw, server_hostname=sni) as s:
                s.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: " + sni.encode()
                          + b"\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
        print(sni, "ok" if data.endswith(b"server") else "bad")
    except OSError as e:
        print(sni, type(e).__name__)
"""


def test_a_denied_name_is_refused_under_an_allowing_wildcard(
    fake: FakeUpstream, www: Path, tmp_path: Path
) -> None:
    """Under `*.a.test`, another name on the connected address passes (the wildcard's
    addresses are pooled); with `--net-deny evil.a.test` a connection naming it is reset
    and never reaches the server."""
    fake.add("good.a.test", "A", ["127.0.0.1"])
    with WebServer(www, Authority(["good.a.test", "evil.a.test"], tmp_path)) as server:
        assert server.tls is not None
        base = [
            "--dns-allow-private",  # (the names resolve to loopback)
            "--dns-upstream",
            f"{fake.address}:{fake.port}",
            *("--net-allow", f"*.a.test:{server.port}", "--verify-names"),
        ]
        cmd = [PY, "-c", WILDCARD_CLIENT, str(server.port), str(server.tls.ca_file)]
        cmd += ["good.a.test", "evil.a.test"]
        res = run_sandboxed(base, cmd, timeout=TIMEOUT)
        assert outcomes(res.stdout) == {"good.a.test": "ok", "evil.a.test": "ok"}, describe(res)
        assert server.accepted == 2
        res = run_sandboxed([*base, "--net-deny", "evil.a.test"], cmd, timeout=TIMEOUT)
        want = {"good.a.test": "ok", "evil.a.test": "ConnectionResetError"}
        assert outcomes(res.stdout) == want, describe(res)
        assert server.accepted == 3
        # A deny rule's port and scheme narrow nothing for a name: other port, other scheme.
        other = server.port % 65535 + 1
        for spec in (f"evil.a.test:{other}", f"udp://evil.a.test:{server.port}"):
            res = run_sandboxed([*base, "--net-deny", spec], cmd, timeout=TIMEOUT)
            assert outcomes(res.stdout) == want, describe(res)
        assert server.accepted == 5
