"""--http-tls end to end: HTTP rules inside HTTPS, real clients trusting the run's CA with
no flag of theirs (it is in the CA bundles they open), the server verified by the
supervisor against its own CA (--http-upstream-ca), SNI and Host held together.

good.test and evil.test resolve to 127.0.0.1 (a fake upstream, resolved at start). The
loopback HTTPS server (tests/httpfake.py) logs every request that reaches it.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandlock.httptls import Interceptor

from .conftest import describe, need_tool, run_sandboxed
from .dnsfake import FakeUpstream
from .httpfake import EchoServer

PY = sys.executable
TIMEOUT = 120


@pytest.fixture
def web(server_ca: tuple[Interceptor, Path]) -> Iterator[EchoServer]:
    with EchoServer(tls=server_ca[0].base_context("127.0.0.1")) as server:
        yield server


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream(f"127.0.{random.randrange(1, 255)}.153", 53) as upstream:
        upstream.add("good.test", "A", ["127.0.0.1"])
        upstream.add("evil.test", "A", ["127.0.0.1"])
        yield upstream


def args(fake: FakeUpstream, port: int, ca: Path, *extra: str) -> list[str]:
    return [
        "--no-dns-proxy",
        "--dns-allow-private",
        "--dns-upstream",
        f"{fake.address}:{fake.port}",
        "--http-tls",
        "--http-ports",
        str(port),
        "--http-upstream-ca",
        str(ca),
        "--http-allow",
        "GET good.test/ok/*",
        "--http-allow",
        "GET 127.0.0.1/ip/*",
        *extra,
    ]


CLIENT = r"""
import socket, ssl, sys, urllib.request, urllib.error
port = int(sys.argv[1])
def get(url):
    try:
        r = urllib.request.urlopen(url, timeout=20)
        return f"{r.status} {r.read().decode()}"
    except urllib.error.HTTPError as e:
        return f"{e.code} {e.read().decode().strip()}"
    except OSError as e:
        return f"{type(e).__name__} {e}"
print(get(f"https://good.test:{port}/ok/a"))
print(get(f"https://good.test:{port}/secret"))
print(get(f"https://127.0.0.1:{port}/ip/x"))
print(get(f"https://127.0.0.1:{port}/ok/a"))
ctx = ssl.create_default_context()
ctx.set_alpn_protocols(["h2", "http/1.1"])
with socket.create_connection(("good.test", port), timeout=20) as raw:
    with ctx.wrap_socket(raw, server_hostname="good.test") as s:
        print("alpn", s.selected_alpn_protocol())
        head = f"GET /ok/b HTTP/1.1\r\nHost: evil.test:{port}\r\nConnection: close\r\n\r\n"
        s.sendall(head.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        print(data.split(b"\r\n")[0].decode(), data.rsplit(b"\r\n", 1)[-1].decode().strip())
"""


# What CLIENT prints (the rules of ``args``).
ANSWERS = [
    "200 ok GET /ok/a 0",
    "403 sandlock: refused by HTTP rule `http-default-deny`",
    "200 ok GET /ip/x 0",
    "403 sandlock: refused by HTTP rule `http-default-deny`",
    "alpn http/1.1",
    "HTTP/1.1 403 Forbidden sandlock: refused by HTTP rule `http-host-mismatch`",
]


def test_https_rules_with_the_injected_ca(
    fake: FakeUpstream, web: EchoServer, server_ca: tuple[Interceptor, Path], tmp_path: Path
) -> None:
    """Python's default context trusts the run's CA; allowed and denied paths over TLS;
    an IP-literal URL (no SNI) works and is checked against the IP rule; SNI good.test
    with Host evil.test is refused; ALPN is http/1.1; the host's bundle is untouched."""
    ca_out = tmp_path / "run-ca.pem"
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    before = bundle.read_bytes() if bundle.exists() else b""
    res = run_sandboxed(
        args(fake, web.port, server_ca[1], "--http-ca-out", str(ca_out)),
        [PY, "-c", CLIENT, str(web.port)],
        timeout=TIMEOUT,
    )
    assert res.returncode == 0, describe(res)
    assert res.stdout.splitlines() == ANSWERS, describe(res)
    assert [(s.target, s.host) for s in web.log] == [
        ("/ok/a", f"good.test:{web.port}"),
        ("/ip/x", f"127.0.0.1:{web.port}"),
    ]
    assert ca_out.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert (bundle.read_bytes() if bundle.exists() else b"") == before


def test_upstream_is_verified(fake: FakeUpstream, web: EchoServer, tmp_path: Path) -> None:
    """Without --http-upstream-ca the test server's CA is not trusted by the supervisor:
    502, and the request never reaches the server."""
    other = tmp_path / "other-ca.pem"
    other.write_bytes(Interceptor().ca_pem)
    res = run_sandboxed(
        args(fake, web.port, other),
        [PY, "-c", CLIENT, str(web.port)],
        timeout=TIMEOUT,
    )
    assert res.returncode == 0, describe(res)
    assert res.stdout.splitlines()[0].startswith("502 sandlock: TLS to 127.0.0.1"), describe(res)
    assert web.log == []


def test_curl_and_git_trust_the_run_ca(
    fake: FakeUpstream, web: EchoServer, server_ca: tuple[Interceptor, Path]
) -> None:
    """curl and git over HTTPS, with no CA flag, reach the server through the relay."""
    curl, git = need_tool("curl"), need_tool("git")
    p = web.port
    res = run_sandboxed(
        args(fake, p, server_ca[1]),
        [curl, "-sS", "-w", " %{http_code}", f"https://good.test:{p}/ok/c"],
        timeout=TIMEOUT,
    )
    assert res.stdout.strip() == "ok GET /ok/c 0 200", describe(res)
    res = run_sandboxed(
        args(fake, p, server_ca[1]),
        [git, "ls-remote", f"https://good.test:{p}/ok/repo.git"],
        timeout=TIMEOUT,
        env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )
    assert "SSL" not in res.stderr and "certificate" not in res.stderr, describe(res)
    assert [s.target for s in web.log][:2] == [  # (then git tries the dumb protocol)
        "/ok/c",
        "/ok/repo.git/info/refs?service=git-upload-pack",
    ]


def test_node_fetch(
    fake: FakeUpstream, web: EchoServer, server_ca: tuple[Interceptor, Path]
) -> None:
    """node's fetch, with no flag: node keeps its own CA list, so sandlock sets
    NODE_EXTRA_CA_CERTS (unless set) to an injected bundle (README: HTTP rules)."""
    node = need_tool("node")
    p = web.port
    script = (
        f"fetch('https://good.test:{p}/ok/n').then(r => r.text().then(t => "
        "console.log(r.status, t))).catch(e => console.log('error', e.cause || e))"
    )
    res = run_sandboxed(
        args(fake, p, server_ca[1]),
        [node, "-e", script],
        timeout=TIMEOUT,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert res.stdout.strip() == "200 ok GET /ok/n 0", describe(res)


def test_http_tls_alone_is_a_usage_error() -> None:
    """--http-tls with no HTTP rule: one line, exit 2; so is a missing upstream CA file."""
    res = run_sandboxed(["--http-tls"], ["true"], timeout=TIMEOUT)
    assert res.returncode == 2 and "--http-tls: no HTTP rule" in res.stderr, describe(res)
    res = run_sandboxed(
        ["--http-tls", "--http-allow", "GET */", "--http-upstream-ca", "/nonexistent.pem"],
        ["true"],
        timeout=TIMEOUT,
    )
    assert res.returncode == 2 and "--http-upstream-ca: no such file" in res.stderr, describe(res)
    assert len(res.stderr.strip().splitlines()) == 1


SNI_ONLY = r"""
import socket, ssl, sys
port = int(sys.argv[1])
ctx = ssl.create_default_context()
with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
    with ctx.wrap_socket(raw, server_hostname="exfil-data-in-the-sni.test") as s:
        head = b"GET /ok/a HTTP/1.1\r\nHost: exfil-data-in-the-sni.test\r\n"
        head += b"Connection: close\r\n\r\n"
        s.sendall(head)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        print(data.split(b"\r\n")[0].decode())
"""


def test_a_chosen_sni_never_reaches_the_server(
    fake: FakeUpstream, web: EchoServer, server_ca: tuple[Interceptor, Path]
) -> None:
    """An SNI the policy does not give the destination is answered 403 and never reaches
    the server: the relay's TCP connection to it (made when the command connected, so
    that a refusal is the command's) carries no TLS handshake, no request."""
    res = run_sandboxed(
        args(fake, web.port, server_ca[1]),
        [PY, "-c", SNI_ONLY, str(web.port)],
        timeout=TIMEOUT,
    )
    assert res.returncode == 0, describe(res)
    assert res.stdout.strip() == "HTTP/1.1 403 Forbidden", describe(res)
    assert web.accepted <= 1 and web.handshakes == 0 and web.log == []


def test_bad_tls_files_are_one_line(tmp_path: Path) -> None:
    """An upstream CA file that is not PEM, or a --http-ca-out path that cannot be
    written: one line, exit 2, nothing run."""
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    rules = ["--http-tls", "--http-allow", "GET 127.0.0.1/*"]
    res = run_sandboxed([*rules, "--http-upstream-ca", str(junk)], ["true"], timeout=TIMEOUT)
    assert res.returncode == 2 and "--http-upstream-ca: cannot load" in res.stderr, describe(res)
    assert len(res.stderr.strip().splitlines()) == 1
    res = run_sandboxed(
        [*rules, "--http-ca-out", str(tmp_path / "no" / "such" / "dir" / "ca.pem")],
        ["true"],
        timeout=TIMEOUT,
    )
    assert res.returncode == 2 and "--http-ca-out: cannot write" in res.stderr, describe(res)
    assert len(res.stderr.strip().splitlines()) == 1


PINNED = r"""
import ssl, sys, urllib.request
ca_out, port = sys.argv[1], int(sys.argv[2])
print(open(ca_out).read().splitlines()[0])  # (written before the command started)
only = ssl.create_default_context(cafile=ca_out)  # (that CA alone: the run's own)
r = urllib.request.urlopen(f"https://good.test:{port}/ok/pinned", timeout=20, context=only)
print(r.status, r.read().decode())
"""


def test_https_rules_through_the_daemon(
    fake: FakeUpstream, web: EchoServer, server_ca: tuple[Interceptor, Path], tmp_path: Path
) -> None:
    """run --daemon --http-tls: the client reads --http-upstream-ca (the daemon opens no
    path a client names) and sends its text; the daemon's run CA comes back with its
    check of the rules and --http-ca-out is written before the command starts (a client
    trusting that file alone reaches the server through the relay); the answers are the
    ones of a run without the daemon."""
    from .test_daemon import Daemon

    ca_out = tmp_path / "run-ca.pem"
    daemon = Daemon(tmp_path / "d.sock")
    try:
        flags = args(fake, web.port, server_ca[1], "--http-ca-out", str(ca_out))
        res = daemon.run(flags, [PY, "-c", CLIENT, str(web.port)], timeout=TIMEOUT)
        assert res.returncode == 0, describe(res)
        assert res.stdout.splitlines() == ANSWERS, describe(res)
        cmd = [PY, "-c", PINNED, str(ca_out), str(web.port)]
        res = daemon.run(flags, cmd, timeout=TIMEOUT)
        assert res.returncode == 0, describe(res)
        assert res.stdout.splitlines() == [
            "-----BEGIN CERTIFICATE-----",
            "200 ok GET /ok/pinned 0",
        ], describe(res)
        assert [s.target for s in web.log] == ["/ok/a", "/ip/x", "/ok/pinned"]
    finally:
        daemon.stop()


def test_bad_tls_files_through_the_daemon_are_one_line(tmp_path: Path) -> None:
    """Through the daemon: a CA file that cannot be read, one too long to send, or one
    the daemon cannot load, and a --http-ca-out path that cannot be written: one line,
    exit 2, nothing run."""
    from sandlock._wire import MAX_CA_TEXT

    from .test_daemon import Daemon

    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    huge = tmp_path / "huge.pem"
    huge.write_text("x" * (MAX_CA_TEXT + 1))
    ran = tmp_path / "ran"
    rules = ["--http-tls", "--http-allow", "GET 127.0.0.1/*"]
    daemon = Daemon(tmp_path / "d.sock")
    try:
        for extra, needle in [
            (["--http-upstream-ca", str(tmp_path / "nonexistent.pem")], "cannot read"),
            (["--http-upstream-ca", str(huge)], f"longer than {MAX_CA_TEXT} bytes"),
            (["--http-upstream-ca", str(junk)], "--http-upstream-ca: cannot load"),
            (["--http-ca-out", str(tmp_path / "no" / "dir" / "ca.pem")], "cannot write"),
        ]:
            res = daemon.run([*rules, *extra], ["touch", str(ran)], timeout=TIMEOUT)
            assert res.returncode == 2 and needle in res.stderr, describe(res)
            assert len(res.stderr.strip().splitlines()) == 1, describe(res)
            assert not ran.exists()
    finally:
        daemon.stop()
