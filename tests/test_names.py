"""Hostname rules end to end: the DNS-following mode, wildcards, the virtual /etc/hosts.

Every lookup goes to a fake upstream (tests/dnsfake.py) on a 127.x address, port 53, so
that a child asking "a resolver" by address asks one that can testify: whatever it never
saw never left the machine. Names are in the reserved .test domain.

The fake's answers are loopback addresses (the only ones a test may connect to), standing
in for public ones: these tests pass --dns-allow-private, which turns the rebinding guard
off (tests/test_rebinding.py tests the guard).
"""

from __future__ import annotations

import json
import random
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import describe, run_sandboxed
from .dnsfake import FakeUpstream

PY = sys.executable

SLOW = 90  # generous: these children sleep through a TTL


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    """A fake upstream on port 53 of its own loopback address (we are root)."""
    address = f"127.0.{random.randrange(1, 255)}.153"
    with FakeUpstream(address, 53) as upstream:
        yield upstream


@pytest.fixture
def twin_listeners() -> Iterator[int]:
    """TCP listeners on 127.0.0.3 and 127.0.0.4 sharing one port (nobody accepts: the
    backlog completes the handshakes)."""
    for _ in range(20):
        three, four = socket.socket(), socket.socket()
        try:
            three.bind(("127.0.0.3", 0))
            four.bind(("127.0.0.4", three.getsockname()[1]))
        except OSError:
            three.close()
            four.close()
            continue
        for s in (three, four):
            s.listen(64)
        try:
            yield three.getsockname()[1]
        finally:
            three.close()
            four.close()
        return
    pytest.fail("no port free on both 127.0.0.3 and 127.0.0.4")


def _dns_args(fake: FakeUpstream, *more: str) -> list[str]:
    return [
        "--dns-upstream",
        f"{fake.address}:{fake.port}",
        "--dns-ttl-min",
        "1",
        "--dns-allow-private",  # loopback answers stand in for public ones
        *more,
    ]


CONNECT = """
def addrs(name):
    return sorted({ai[4][0] for ai in socket.getaddrinfo(name, PORT, socket.AF_INET,
                                                           socket.SOCK_STREAM)})
def attempt(ip):
    s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
    s.settimeout(10)
    try:
        s.connect((ip, PORT))
        return "ok"
    except OSError as e:
        return str(e.errno)
    finally:
        s.close()
"""


def test_addresses_follow_the_ttl(fake: FakeUpstream, twin_listeners: int, tmp_path: Path):
    """A name's answer becomes allowed for its TTL: after the upstream moves the name and
    the TTL runs out, a new lookup and a connect to the new address pass while the old
    address is refused; a connection opened before the expiry stays open."""
    port = twin_listeners
    fake.add("api.example.test", "A", ["127.0.0.3"], ttl=2)
    flip, flipped = tmp_path / "flip", tmp_path / "flipped"
    script = (
        f"import os, socket, time\nPORT = {port}\n"
        + CONNECT
        + textwrap.dedent(f"""
        first = addrs("api.example.test")
        r1 = attempt(first[0])
        held = socket.create_connection((first[0], PORT), timeout=10)
        open({str(flip)!r}, "w").close()
        while not os.path.exists({str(flipped)!r}):
            time.sleep(0.01)
        time.sleep(3)  # past the 2 s TTL
        second = addrs("api.example.test")
        kept = "open" if held.send(b"x") == 1 else "closed"
        print(first[0], r1, second[0], attempt(second[0]), attempt("127.0.0.3"), kept)
    """)
    )

    def move_the_name() -> None:
        deadline = time.monotonic() + SLOW
        while not flip.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        fake.add("api.example.test", "A", ["127.0.0.4"], ttl=2)
        flipped.touch()

    mover = threading.Thread(target=move_the_name, daemon=True)
    mover.start()
    res = run_sandboxed(
        _dns_args(fake, "--net-allow", f"api.example.test:{port}"), [PY, "-c", script], SLOW
    )
    mover.join(SLOW)
    assert res.returncode == 0, describe(res)
    assert res.stdout.split() == ["127.0.0.3", "ok", "127.0.0.4", "ok", "111", "open"], (
        describe(res)
    )
    assert ("api.example.test", "A", "udp") in fake.queries  # the start-up lookup too
    assert "denied tcp 127.0.0.3" in res.stderr


def test_wildcard_rule_covers_subdomains_only(fake: FakeUpstream, twin_listeners: int):
    """`*.cdn.example.test` allows what x.cdn.example.test answers; cdn.example.test itself
    is not covered: NXDOMAIN, and the upstream never hears of it."""
    port = twin_listeners
    fake.add("x.cdn.example.test", "A", ["127.0.0.3"])
    fake.add("cdn.example.test", "A", ["127.0.0.4"])
    script = (
        f"import socket\nPORT = {port}\n"
        + CONNECT
        + textwrap.dedent("""
        ip = addrs("x.cdn.example.test")[0]
        try:
            addrs("cdn.example.test")
            bare = "resolved"
        except socket.gaierror:
            bare = "nxdomain"
        print(ip, attempt(ip), bare, attempt("127.0.0.4"))
    """)
    )
    res = run_sandboxed(
        _dns_args(fake, "--net-allow", f"*.cdn.example.test:{port}"), [PY, "-c", script], SLOW
    )
    assert res.returncode == 0, describe(res)
    assert res.stdout.split() == ["127.0.0.3", "ok", "nxdomain", "111"], describe(res)
    assert {q[0] for q in fake.queries} == {"x.cdn.example.test"}


def test_no_dns_tunnel(fake: FakeUpstream, twin_listeners: int):
    """Unlisted names and TXT queries never leave the machine, not even when the child
    asks a resolver by address over UDP or TCP: the forwarder answers NXDOMAIN / REFUSED."""
    fake.add("api.example.test", "A", ["127.0.0.3"])
    fake.add("api.example.test", "TXT", ['"secret"'])
    fake.add("leak.attacker.test", "A", ["127.0.0.4"])
    script = textwrap.dedent(f"""
        import socket, struct
        import dns.message, dns.rcode
        def udp(name, rdtype):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(10)
            s.connect(({fake.address!r}, 53))
            s.send(dns.message.make_query(name, rdtype).to_wire())
            return dns.rcode.to_text(dns.message.from_wire(s.recv(4096)).rcode())
        def tcp(name, rdtype):
            s = socket.create_connection(({fake.address!r}, 53), timeout=10)
            wire = dns.message.make_query(name, rdtype).to_wire()
            s.sendall(struct.pack("!H", len(wire)) + wire)
            size = struct.unpack("!H", s.recv(2))[0]
            data = b""
            while len(data) < size:
                data += s.recv(size - len(data))
            return dns.rcode.to_text(dns.message.from_wire(data).rcode())
        try:
            socket.getaddrinfo("leak.attacker.test", 80)
            lib = "resolved"
        except socket.gaierror:
            lib = "nxdomain"
        print(lib, udp("leak.attacker.test", "A"), tcp("leak.attacker.test", "A"),
              udp("api.example.test", "TXT"), tcp("api.example.test", "TXT"),
              udp("api.example.test", "A"))
    """)
    res = run_sandboxed(
        _dns_args(fake, "--net-allow", f"api.example.test:{twin_listeners}"),
        [PY, "-c", script],
        SLOW,
    )
    assert res.returncode == 0, describe(res)
    assert res.stdout.split() == [
        "nxdomain",
        "NXDOMAIN",
        "NXDOMAIN",
        "REFUSED",
        "REFUSED",
        "NOERROR",
    ], describe(res)
    assert "denied DNS lookup of leak.attacker.test" in res.stderr
    seen = {(name, rdtype) for name, rdtype, _transport in fake.queries}
    assert all(name != "leak.attacker.test" for name, _ in seen), seen
    assert ("api.example.test", "TXT") not in seen
    assert ("api.example.test", "A") in seen  # the forwarder did forward what it may


def test_dns_decisions_are_logged(fake: FakeUpstream, twin_listeners: int, tmp_path: Path):
    """Every DNS decision is a line of the audit log: syscall dns, host, action, answers."""
    fake.add("api.example.test", "A", ["127.0.0.3"])
    log = tmp_path / "audit.jsonl"
    script = textwrap.dedent("""
        import socket
        socket.getaddrinfo("api.example.test", 80, socket.AF_INET)
        try:
            socket.getaddrinfo("leak.attacker.test", 80, socket.AF_INET)
        except socket.gaierror:
            pass
    """)
    args = _dns_args(
        fake, "--quiet", "--audit", str(log), "--net-allow", f"api.example.test:{twin_listeners}"
    )
    res = run_sandboxed(args, [PY, "-c", script], SLOW)
    assert res.returncode == 0, describe(res)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    records = [r for r in records if "event" not in r]  # (not the run's open and close)
    dns_records = [r for r in records if r["syscall"] == "dns" and r["qtype"] == "A"]
    by_host = {r["host"]: r for r in dns_records}
    assert by_host["api.example.test"]["action"] == "allow"
    assert by_host["api.example.test"]["answers"] == ["127.0.0.3"]
    assert by_host["api.example.test"]["rule"] == "api.example.test"
    assert by_host["leak.attacker.test"]["action"] == "deny"
    assert by_host["leak.attacker.test"]["rcode"] == "NXDOMAIN"


def test_getent_reads_the_virtual_hosts(fake: FakeUpstream):
    """Resolved at start (--no-dns-proxy): /etc/hosts is localhost plus one line per
    allowed address, and `getent hosts` reads it; the real file is untouched."""
    fake.add("api.example.test", "A", ["127.0.0.3"])
    real = Path("/etc/hosts").read_bytes()
    args = _dns_args(fake, "--no-dns-proxy", "--net-allow", "api.example.test:443")
    script = "cat /etc/hosts; echo ---; getent hosts api.example.test"
    res = run_sandboxed(args, ["/bin/sh", "-c", script], SLOW)
    assert res.returncode == 0, describe(res)
    hosts, _, getent = res.stdout.partition("---\n")
    assert hosts.splitlines() == [
        "127.0.0.1 localhost",
        "::1 localhost",
        "127.0.0.3 api.example.test",
    ], describe(res)
    assert getent.split() == ["127.0.0.3", "api.example.test"]
    assert Path("/etc/hosts").read_bytes() == real


def test_a_localhost_rule_and_the_virtual_hosts_agree(sinks, run_sandboxed):
    """`--net-allow localhost:PORT`, resolved at start by the system: the command's
    /etc/hosts gives localhost exactly the addresses the rule resolved to (it once listed
    ::1 whatever the rule resolved to), so a connect by name makes no refused attempt."""
    sink = sinks.tcp("127.0.0.1")
    script = (
        f"import socket; socket.create_connection(('localhost', {sink.port})).close(); "
        "print(open('/etc/hosts').read())"
    )
    res = run_sandboxed(
        ["--no-dns-proxy", "--net-allow", f"localhost:{sink.port}"], [PY, "-c", script]
    )
    assert res.returncode == 0 and "denied tcp" not in res.stderr, describe(res)
    ours = sorted(line.split()[0] for line in res.stdout.splitlines() if "localhost" in line)
    system = sorted({ai[4][0] for ai in socket.getaddrinfo("localhost", None)})
    assert ours == system, describe(res)
    assert sink.settle().count == 1


def test_no_virtual_hosts_shows_the_real_file(fake: FakeUpstream):
    """--no-virtual-hosts: the command reads the real /etc/hosts."""
    fake.add("api.example.test", "A", ["127.0.0.3"])
    args = _dns_args(fake, "--no-dns-proxy", "--no-virtual-hosts")
    res = run_sandboxed([*args, "--net-allow", "api.example.test:443"], ["cat", "/etc/hosts"])
    assert res.returncode == 0, describe(res)
    assert res.stdout == Path("/etc/hosts").read_text()


def test_dns_mode_resolv_conf_points_at_the_forwarder(fake: FakeUpstream):
    """In DNS mode the command's resolv.conf names the forwarder (127.53.x.y) and its
    /etc/hosts has localhost only, so that every lookup stays fresh."""
    fake.add("api.example.test", "A", ["127.0.0.3"])
    args = _dns_args(fake, "--net-allow", "api.example.test:443")
    res = run_sandboxed(args, ["/bin/sh", "-c", "cat /etc/resolv.conf /etc/hosts"])
    assert res.returncode == 0, describe(res)
    lines = res.stdout.splitlines()
    assert lines[0].startswith("nameserver 127.53."), describe(res)
    assert "127.0.0.1 localhost" in lines and "api.example.test" not in res.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--no-dns-proxy", "--net-allow", "*.x.test:443"], ["`*.x.test:443`", "DNS proxy"]),
        (["--net-deny", "*.x.test:0"], ["--net-deny", "`*.x.test:0`"]),
        (["--net-allow", "*.test:443"], ["--net-allow", "`*.test:443`"]),
        (["--dns-upstream", "resolver.test"], ["--dns-upstream", "`resolver.test`"]),
        (["--dns-upstream", "127.0.0.153:99999"], ["--dns-upstream"]),
        (["--dns-ttl-min", "0"], ["--dns-ttl-min"]),
        (["--dns-ttl-min", "10", "--dns-ttl-max", "5"], ["--dns-ttl-min", "10", "5"]),
    ],
)
def test_bad_name_options_are_one_line(args: list[str], words: list[str], tmp_path: Path):
    """Each mistake in the hostname options: one line naming it, exit 2, nothing ran."""
    marker = tmp_path / "ran"
    res = run_sandboxed(args, ["touch", str(marker)])
    assert res.returncode == 2, describe(res)
    assert res.stderr.count("\n") == 1, describe(res)
    assert all(word in res.stderr for word in words), describe(res)
    assert not marker.exists()


def test_api_sandbox_follows_dns(fake: FakeUpstream, twin_listeners: int):
    """Sandbox(names=NameOptions(...)): the same DNS-following mode in-process, one
    forwarder per run, the upstream's answer allowed."""
    from sandlock import NameOptions, Sandbox

    fake.add("api.example.test", "A", ["127.0.0.3"])
    options = NameOptions(dns_upstream=f"{fake.address}:{fake.port}", ttl_min=1)
    sb = Sandbox([f"api.example.test:{twin_listeners}"], names=options, dns_allow_private=True)
    script = (
        f"import socket\nPORT = {twin_listeners}\n"
        + CONNECT
        + textwrap.dedent("""
        ip = addrs("api.example.test")[0]
        print(ip, attempt(ip), attempt("127.0.0.4"))
    """)
    )
    for _ in range(2):
        res = sb.run([PY, "-c", script], capture_output=True, timeout=SLOW)
        assert res.exit_code == 0, res
        assert res.stdout.split() == [b"127.0.0.3", b"ok", b"111"], res


def test_daemon_serves_the_same_modes(fake: FakeUpstream, twin_listeners: int, tmp_path: Path):
    """Through `run --daemon`, the daemon runs the forwarder and the virtual files."""
    import subprocess

    from .conftest import SANDLOCK, kill_group, run_command, sandlock_env

    sock = tmp_path / "d.sock"
    serve = [*SANDLOCK[:-1], "serve", "--socket", str(sock)]
    daemon = subprocess.Popen(serve, env=sandlock_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        fake.add("api.example.test", "A", ["127.0.0.3"])
        script = (
            f"import socket\nPORT = {twin_listeners}\n"
            + CONNECT
            + textwrap.dedent("""
            print(open("/etc/resolv.conf").read().split()[1].startswith("127.53."))
            ip = addrs("api.example.test")[0]
            print(ip, attempt(ip), attempt("127.0.0.4"))
        """)
        )
        args = _dns_args(
            fake, "--daemon", str(sock), "--net-allow", f"api.example.test:{twin_listeners}"
        )
        res = run_command(
            [*SANDLOCK, *args, "--", PY, "-c", script], env=sandlock_env(), timeout=SLOW
        )
        assert res.returncode == 0, describe(res)
        assert res.stdout.split() == ["True", "127.0.0.3", "ok", "111"], describe(res)
    finally:
        kill_group(daemon.pid)
        daemon.wait()
