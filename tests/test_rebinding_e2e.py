"""The rebinding guard and name deny rules end to end: a sandboxed command, a fake
upstream on loopback, a sink on 127.0.0.1.

The fake answers the allowed name with 127.0.0.1 (the sink), 169.254.169.254, 10.9.8.7
and, for AAAA, ::ffff:127.0.0.1. The command prints every address its lookup got and
connects only to the loopback ones: whatever else leaked into an answer shows in what it
prints, never as a packet.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Sinks, TcpSink, describe, run_sandboxed
from .dnsfake import FakeUpstream
from .test_names import CONNECT

PY = sys.executable
SLOW = 60

SCRIPT = (
    """
import socket, sys
import dns.message, dns.query
mode, name, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])
found = set()
if mode == "dns":  # ask the forwarder itself: glibc would connect() to each answer to sort
    server = open("/etc/resolv.conf").read().split()[1]
    for rdtype in ("A", "AAAA"):
        reply = dns.query.udp(dns.message.make_query(name, rdtype), server, timeout=10)
        found |= {rd.address for rrset in reply.answer if rrset.rdtype in (1, 28) for rd in rrset}
else:  # resolved at start: the virtual /etc/hosts says it all
    for line in open("/etc/hosts"):
        if name in line.split()[1:]:
            found.add(line.split()[0])
"""
    + CONNECT
    + """
loopback = [ip for ip in sorted(found) if ip.startswith(("127.", "::ffff:127."))]
print(",".join(sorted(found)) or "-", attempt("127.0.0.1"), *[attempt(ip) for ip in loopback])
"""
)


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    """A fake upstream whose allowed name answers local and private addresses only."""
    with FakeUpstream() as fake:
        fake.add("api.example.test", "A", ["127.0.0.1", "169.254.169.254", "10.9.8.7"])
        fake.add("api.example.test", "AAAA", ["::ffff:127.0.0.1"])
        for name in ("ok.example.test", "evil.example.test", "x.bad.example.test"):
            fake.add(name, "A", ["127.0.0.1"])
        yield fake


@pytest.fixture
def sink(sinks: Sinks) -> TcpSink:
    """The TCP sink on 127.0.0.1, the only address the command may reach."""
    return sinks.tcp("127.0.0.1")


def _run(upstream: FakeUpstream, sink: TcpSink, name: str, *args: str) -> list[str]:
    where = f"{upstream.address}:{upstream.port}"
    mode = "hosts" if "--no-dns-proxy" in args else "dns"
    cmd = [PY, "-c", SCRIPT, mode, name, str(sink.port)]
    res = run_sandboxed(["--dns-upstream", where, *args], cmd, SLOW)
    assert res.returncode == 0, describe(res)
    return [*res.stdout.split(), res.stderr]


def test_guard_refuses_local_answers(upstream: FakeUpstream, sink: TcpSink, tmp_path: Path):
    """DNS mode: the name answers only local addresses, so it does not resolve, nothing
    connects, a line says why and the audit log has the rebinding-guard records."""
    log = tmp_path / "audit.jsonl"
    rule = f"api.example.test:{sink.port}"
    found, direct, stderr = _run(
        upstream, sink, "api.example.test", "--audit", str(log), "--net-allow", rule
    )
    assert (found, direct) == ("-", "111"), stderr
    assert "denied DNS lookup of api.example.test (A) — rebinding guard" in stderr
    assert sink.settle().count == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    guard = [r for r in records if r.get("rule") == "rebinding-guard"]
    start = [r for r in guard if r["proto"] is None]  # the start-up lookup's (plan.py)
    asked = [r for r in guard if r["proto"] == "udp"]
    assert len(start) == 1 and {r["qtype"] for r in asked} == {"A", "AAAA"}, records
    assert all(r["action"] == "deny" for r in guard)
    assert all(r["rcode"] == "NXDOMAIN" for r in asked)
    assert all("169.254.169.254" in r["answers"] for r in [*start, asked[0]]), guard


def test_ip_rule_lets_the_loopback_answer_through(upstream: FakeUpstream, sink: TcpSink):
    """With an IP rule for the sink, the name resolves to the loopback answers only (the
    others dropped) and the connect passes through that rule."""
    found, direct, *by_name, stderr = _run(
        upstream,
        sink,
        "api.example.test",
        "--net-allow",
        f"api.example.test:{sink.port}",
        "--net-allow",
        sink.spec,
    )
    assert found == "127.0.0.1,::ffff:127.0.0.1", stderr  # (the IP rule covers both)
    assert (direct, by_name) == ("ok", ["ok", "ok"]), stderr
    assert sink.settle().count == 3


def test_allow_private_turns_the_guard_off(upstream: FakeUpstream, sink: TcpSink):
    """--dns-allow-private: every answer resolves, and the loopback one connects through
    the hostname rule alone."""
    found, direct, *by_name, stderr = _run(
        upstream,
        sink,
        "api.example.test",
        "--dns-allow-private",
        "--net-allow",
        f"api.example.test:{sink.port}",
    )
    assert found.split(",") == [
        "10.9.8.7",
        "127.0.0.1",
        "169.254.169.254",
        "::ffff:127.0.0.1",
    ], stderr
    assert (direct, by_name) == ("ok", ["ok", "ok"]), stderr


def test_guard_at_start(upstream: FakeUpstream, sink: TcpSink):
    """Resolved at start (--no-dns-proxy): one line names the dropped answers, the
    virtual /etc/hosts has none of them, the connect is refused."""
    rule = f"api.example.test:{sink.port}"
    found, direct, stderr = _run(
        upstream, sink, "api.example.test", "--no-dns-proxy", "--net-allow", rule
    )
    assert direct == "111", stderr
    assert "169.254.169.254" not in found and "10.9.8.7" not in found
    (line,) = [line for line in stderr.splitlines() if "rebinding guard" in line]
    assert "`api.example.test`" in line and "169.254.169.254" in line
    assert sink.settle().count == 0


def test_deny_names_against_an_allowing_wildcard(
    upstream: FakeUpstream, sink: TcpSink, tmp_path: Path
):
    """`--net-deny evil.example.test` and `--net-deny '*.bad.example.test'` under
    `--net-allow '*.example.test'`: the denied names never resolve and never reach the
    upstream, the audit log names the deny rule; another name under the wildcard works."""
    log = tmp_path / "audit.jsonl"
    args = [
        "--dns-allow-private",  # the fake's loopback answers stand in for public ones
        "--audit",
        str(log),
        "--net-allow",
        f"*.example.test:{sink.port}",
        "--net-deny",
        "evil.example.test",
        "--net-deny",
        "*.bad.example.test",
    ]
    script = textwrap.dedent("""
        import socket
        for name in ("evil.example.test", "x.bad.example.test", "ok.example.test"):
            try:
                print(socket.getaddrinfo(name, 80, socket.AF_INET)[0][4][0])
            except socket.gaierror:
                print("nxdomain")
    """)
    where = f"{upstream.address}:{upstream.port}"
    res = run_sandboxed(["--dns-upstream", where, *args], [PY, "-c", script], SLOW)
    assert res.returncode == 0, describe(res)
    assert res.stdout.split() == ["nxdomain", "nxdomain", "127.0.0.1"], describe(res)
    assert {q[0] for q in upstream.queries} == {"ok.example.test"}
    assert "--net-deny `evil.example.test` names it" in res.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    denied = {(r["host"], r["rule"]) for r in records if r.get("action") == "deny"}
    assert ("evil.example.test", "evil.example.test") in denied
    assert ("x.bad.example.test", "*.bad.example.test") in denied


def test_through_the_daemon(upstream: FakeUpstream, sink: TcpSink, tmp_path: Path):
    """run --daemon: the guard holds, its start-up line reaches the client's stderr, and
    --dns-allow-private travels in the request's name options."""
    from .test_daemon import Daemon

    daemon = Daemon(tmp_path / "d.sock")
    try:
        where = f"{upstream.address}:{upstream.port}"
        base = [
            "--dns-upstream",
            where,
            "--no-dns-proxy",
            "--net-allow",
            f"api.example.test:{sink.port}",
        ]
        cmd = [PY, "-c", SCRIPT, "hosts", "api.example.test", str(sink.port)]
        res = daemon.run(base, cmd, timeout=SLOW)
        assert res.returncode == 0, describe(res)
        assert res.stdout.split()[:2] == ["-", "111"], describe(res)
        assert "rebinding guard: `api.example.test` answered" in res.stderr, describe(res)
        res = daemon.run(["--dns-allow-private", *base], cmd, timeout=SLOW)
        assert res.returncode == 0, describe(res)
        assert res.stdout.split()[1:] == ["ok", "ok"], describe(res)
        assert "rebinding guard" not in res.stderr, describe(res)
    finally:
        daemon.stop()
