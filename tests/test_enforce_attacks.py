"""Ways around the checks: each must fail in the child and leave the denied sink empty.

Every vector here works without the sandbox (tests/test_enforce_baseline.py proves it on
this kernel), so an empty sink means the sandbox stopped it."""

from __future__ import annotations

import errno
import sys
import textwrap

import pytest

from .conftest import describe, parse_probe, probe_kv, probe_results

# Every test twice: the gate answering what Python remembered, and Python answering every
# call (SANDLOCK_GATE=python): the same must reach the sinks and the command (conftest.py).
pytestmark = pytest.mark.usefixtures("gate_mode")

ECONNREFUSED = errno.ECONNREFUSED


def _got(res):
    return [(x.label, x.ok, x.value) for x in parse_probe(res.stdout)]


# ------------------------------------------------------------------- time of check/use


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_flip_race_never_reaches_denied(probe, sinks, run_sandboxed, host):
    """A thread flipping the shared sockaddr during 3000 connects gets zero connections to
    the denied sink; every success went to the allowed one."""
    allow = sinks.tcp(host)
    deny = sinks.tcp("127.0.0.2" if host == "127.0.0.1" else "::1")
    res = run_sandboxed(
        ["--net-allow", allow.spec], [probe("flip"), allow.target, deny.target, "3000"]
    )
    kv = probe_kv(res.stdout)
    assert res.returncode == 0 and kv["other"] == 0, describe(res)
    assert kv["ok"] + kv["refused"] == 3000, describe(res)
    assert deny.settle().count == 0, describe(res)
    assert allow.settle().count == kv["ok"]
    assert kv["ok"] > 0 and kv["refused"] > 0, f"the race did not run: {res.stdout}"


# ------------------------------------------------------------------- address forms


def test_v4_mapped_destination_hits_v4_deny(probe, sinks, run_sandboxed):
    """`::ffff:127.0.0.2` from an IPv6 socket is refused by `--net-deny 127.0.0.2`, TCP
    and UDP alike."""
    tcp, udp = sinks.tcp("127.0.0.2"), sinks.udp("127.0.0.2")
    res = run_sandboxed(
        [
            "--net-allow",
            "*",
            "--net-allow",
            "udp://*",
            "--net-deny",
            "127.0.0.2",
            "--net-deny",
            "udp://127.0.0.2",
        ],
        [
            "sh",
            "-c",
            '"$0" connect tcp "$1"; "$0" sendto udp "$2"',
            probe("netprobe"),
            f"[::ffff:127.0.0.2]:{tcp.port}",
            f"[::ffff:127.0.0.2]:{udp.port}",
        ],
    )
    assert _got(res) == [("0 connect", False, ECONNREFUSED), ("0 sendto", False, ECONNREFUSED)], (
        describe(res)
    )
    assert tcp.settle().count == 0 and udp.settle().count == 0


def test_v4_mapped_deny_rule_hits_v4_destination(probe, sinks, run_sandboxed):
    """A deny written in mapped form (`::ffff:127.0.0.2`) refuses plain IPv4 127.0.0.2."""
    tcp = sinks.tcp("127.0.0.2")
    res = run_sandboxed(
        ["--net-allow", "*", "--net-deny", "::ffff:127.0.0.2"],
        [probe("netprobe"), "connect", "tcp", tcp.target],
    )
    assert _got(res) == [("0 connect", False, ECONNREFUSED)], describe(res)
    assert tcp.settle().count == 0


def test_v4_mapped_destination_matches_v4_allow(probe, sinks, run_sandboxed):
    """`::ffff:127.0.0.1` is allowed by `--net-allow 127.0.0.1:P` and arrives."""
    tcp = sinks.tcp("127.0.0.1")
    res = run_sandboxed(
        ["--net-allow", tcp.spec],
        [probe("netprobe"), "connect", "tcp", f"[::ffff:127.0.0.1]:{tcp.port}"],
    )
    assert _got(res) == [("0 connect", True, 0)], describe(res)
    assert tcp.settle().count == 1


@pytest.mark.parametrize(
    ("dest_host", "sink_host", "deny"),
    [
        ("0.0.0.0", "127.0.0.1", "127.0.0.1"),
        ("::ffff:0.0.0.0", "127.0.0.1", "127.0.0.1"),
        ("::", "::1", "::1"),
    ],
)
def test_unspecified_address_hits_loopback_deny(
    probe, sinks, run_sandboxed, dest_host, sink_host, deny
):
    """A connect or sendto to 0.0.0.0 / ::ffff:0.0.0.0 / :: reaches the local host, so a
    deny on loopback refuses it."""
    tcp, udp = sinks.tcp(sink_host), sinks.udp(sink_host)
    res = run_sandboxed(
        [
            "--net-allow",
            "*",
            "--net-allow",
            "udp://*",
            "--net-deny",
            deny,
            "--net-deny",
            f"udp://{deny}",
        ],
        [
            "sh",
            "-c",
            '"$0" connect tcp "$1"; "$0" sendto udp "$2"',
            probe("netprobe"),
            f"[{dest_host}]:{tcp.port}" if ":" in dest_host else f"{dest_host}:{tcp.port}",
            f"[{dest_host}]:{udp.port}" if ":" in dest_host else f"{dest_host}:{udp.port}",
        ],
    )
    assert _got(res) == [("0 connect", False, ECONNREFUSED), ("0 sendto", False, ECONNREFUSED)], (
        describe(res)
    )
    assert tcp.settle().count == 0 and udp.settle().count == 0


@pytest.mark.parametrize(("dest_host", "sink_host"), [("0.0.0.0", "127.0.0.1"), ("::", "::1")])
def test_unspecified_address_matches_loopback_allow(
    probe, sinks, run_sandboxed, dest_host, sink_host
):
    """0.0.0.0 is matched as 127.0.0.1 and :: as ::1 on the allow side too."""
    tcp = sinks.tcp(sink_host)
    res = run_sandboxed(
        ["--net-allow", tcp.spec],
        [
            probe("netprobe"),
            "connect",
            "tcp",
            f"[{dest_host}]:{tcp.port}" if ":" in dest_host else f"{dest_host}:{tcp.port}",
        ],
    )
    assert _got(res) == [("0 connect", True, 0)], describe(res)
    assert tcp.settle().count == 1


def test_unspec_family_udp_refused(probe, sinks, run_sandboxed):
    """A UDP sendto/sendmsg whose sockaddr says AF_UNSPEC (the kernel sends it as IPv4) is
    decided as IPv4: refused when 127.0.0.2 is denied."""
    allow, deny = sinks.udp("127.0.0.1"), sinks.udp("127.0.0.2")
    res = run_sandboxed(
        ["--net-allow", "udp://*", "--net-deny", "udp://127.0.0.2"],
        [
            "sh",
            "-c",
            '"$0" -U sendto udp "$1"; "$0" -U sendmsg udp "$1"; "$0" -U sendmmsg udp "$1"',
            probe("netprobe"),
            deny.target,
        ],
    )
    assert [(x.label, x.ok) for x in parse_probe(res.stdout)] == [
        ("0 sendto", False),
        ("0 sendmsg", False),
        ("0 sendmmsg", False),
    ], describe(res)
    assert deny.settle().count == 0
    assert allow.settle().count == 0


def test_v4_sockaddr_on_v6_socket_refused(probe, sinks, run_sandboxed):
    """An AF_INET sockaddr given to an AF_INET6 UDP socket is decided as the IPv4 address
    it is."""
    deny = sinks.udp("127.0.0.2")
    res = run_sandboxed(
        ["--net-allow", "udp://*", "--net-deny", "udp://127.0.0.2"],
        [probe("netprobe"), "-6", "sendto", "udp", deny.target],
    )
    assert [(x.label, x.ok) for x in parse_probe(res.stdout)] == [("0 sendto", False)], describe(
        res
    )
    assert deny.settle().count == 0


@pytest.mark.parametrize("op", ["sendto", "sendmsg", "sendmmsg"])
def test_connected_udp_with_denied_name(probe, sinks, run_sandboxed, op):
    """A UDP socket connected to an allowed peer cannot send to a denied msg_name: the
    call is refused and neither sink receives anything."""
    allow, deny = sinks.udp("127.0.0.1"), sinks.udp("127.0.0.2")
    res = run_sandboxed(
        ["--net-allow", allow.spec],
        [probe("netprobe"), "-C", allow.target, op, "udp", deny.target],
    )
    assert _got(res) == [("0 preconnect", True, 0), (f"0 {op}", False, ECONNREFUSED)], describe(res)
    assert deny.settle().count == 0 and allow.settle().count == 0


# ------------------------------------------------------------------- TCP Fast Open


def test_tfo_to_denied(probe, sinks, run_sandboxed):
    """TCP Fast Open (sendto/sendmsg with MSG_FASTOPEN, non-blocking too, and
    TCP_FASTOPEN_CONNECT) to a denied address is refused and nothing arrives."""
    allow, deny = sinks.tcp("127.0.0.1"), sinks.tcp("127.0.0.2")
    res = run_sandboxed(["--net-allow", allow.spec], [probe("tfo"), deny.target])
    lines = probe_results(res.stdout)
    for name in ("sendto", "sendmsg", "sendto_nb", "fo_connect"):
        assert lines[name].errno == ECONNREFUSED, (name, describe(res))
    assert not lines["fo_write"].ok, describe(res)
    assert deny.settle().count == 0 and deny.nbytes == 0


def test_tfo_to_allowed(probe, sinks, run_sandboxed):
    """The same Fast Open calls to an allowed address work and deliver their data."""
    allow = sinks.tcp("127.0.0.1")
    res = run_sandboxed(["--net-allow", allow.spec], [probe("tfo"), allow.target])
    assert res.returncode == 0, describe(res)
    allow.settle()
    assert (allow.count, allow.nbytes) == (4, 64)


# ------------------------------------------------------------------- other entry points


def test_io_uring_refused(probe, sinks, run_sandboxed, features):
    """io_uring_setup fails with ENOSYS, so no IORING_OP_CONNECT can reach anything, not
    even an allowed address."""
    features.require("io_uring")
    allow = sinks.tcp("127.0.0.1")
    res = run_sandboxed(["--net-allow", allow.spec], [probe("uring"), allow.target])
    assert _got(res) == [("setup", False, errno.ENOSYS)], describe(res)
    assert allow.settle().count == 0


@pytest.mark.parametrize("allowed", [True, False], ids=["allowed-dest", "denied-dest"])
def test_int80_refused(probe, sinks, run_sandboxed, features, allowed):
    """Every int 0x80 socket call (socketcall and the direct i386 numbers) and
    io_uring_setup fails with ENOSYS, whatever the destination; nothing arrives."""
    features.require("ia32")
    host = "127.0.0.1" if allowed else "127.0.0.2"
    tcp, udp = sinks.tcp(host), sinks.udp(host)
    rules = ["--net-allow", tcp.spec, "--net-allow", udp.spec] if allowed else []
    res = run_sandboxed(rules, [probe("int80"), tcp.target, udp.target])
    lines = probe_results(res.stdout)
    assert len(lines) == 11, describe(res)
    assert {k: v.errno for k, v in lines.items()} == dict.fromkeys(lines, errno.ENOSYS), describe(
        res
    )
    assert tcp.settle().count == 0 and udp.settle().count == 0


def test_x32_refused(probe, sinks, run_sandboxed):
    """Syscall numbers with the x32 bit fail with ENOSYS (network or not); nothing arrives.
    (On a kernel without x32 they fail so anyway; the filter must not change that.)"""
    tcp, udp = sinks.tcp("127.0.0.1"), sinks.udp("127.0.0.1")
    res = run_sandboxed(
        ["--net-allow", tcp.spec, "--net-allow", udp.spec],
        [probe("x32"), tcp.target, udp.target],
    )
    lines = probe_results(res.stdout)
    assert len(lines) == 7, describe(res)
    assert all(v.errno == errno.ENOSYS for v in lines.values()), describe(res)
    assert tcp.settle().count == 0 and udp.settle().count == 0


RAWSOCK_EXPECT = {
    # let through
    "tcp4": None,
    "tcp4_proto": None,
    "tcp4_flags": None,
    "udp4": None,
    "udp4_proto": None,
    "tcp6": None,
    "udp6_flags": None,
    "unix_stream": None,
    "unix_dgram": None,
    "unix_seqpacket": None,
    "netlink_route": None,
    # AF_INET/6 with a type other than stream/dgram
    "raw4_icmp": errno.EPERM,
    "raw4_raw": errno.EPERM,
    "raw4_udp": errno.EPERM,
    "raw4_flags": errno.EPERM,
    "raw6_icmp": errno.EPERM,
    "seqpacket4": errno.EPERM,
    "rdm4": errno.EPERM,
    "packet4": errno.EPERM,
    # AF_INET/6 with a protocol other than TCP, UDP, ICMP
    "sctp4": errno.EPROTONOSUPPORT,
    "sctp6_flags": errno.EPROTONOSUPPORT,
    "mptcp4": errno.EPROTONOSUPPORT,
    "mptcp6": errno.EPROTONOSUPPORT,
    "udplite4": errno.EPROTONOSUPPORT,
    "udplite6": errno.EPROTONOSUPPORT,
    "stream_udp": errno.EPROTONOSUPPORT,
    "dgram_tcp": errno.EPROTONOSUPPORT,
    "stream_icmp": errno.EPROTONOSUPPORT,
    # other families
    "packet_raw": errno.EAFNOSUPPORT,
    "packet_dgram": errno.EAFNOSUPPORT,
    "af_key": errno.EAFNOSUPPORT,
    "af_alg": errno.EAFNOSUPPORT,
    "af_vsock": errno.EAFNOSUPPORT,
    "af_xdp": errno.EAFNOSUPPORT,
}


def test_socket_creation_filter(probe, run_sandboxed, run_plain):
    """raw/seqpacket/packet types → EPERM, SCTP/MPTCP/UDPLITE → EPROTONOSUPPORT, other
    families → EAFNOSUPPORT; TCP, UDP, UNIX and netlink sockets are created as usual and
    the ping socket gets whatever the kernel says."""
    res = run_sandboxed([], [probe("rawsock")])
    lines = probe_results(res.stdout)
    got = {name: line.errno for name, line in lines.items() if name in RAWSOCK_EXPECT}
    plain_run = run_plain([probe("rawsock"), "icmp4_dgram", "icmp6_dgram", "af_vsock"])
    plain = probe_results(plain_run.stdout)
    expect = dict(RAWSOCK_EXPECT)
    if plain["af_vsock"].errno == errno.EPERM:  # a container's filter refuses it first
        expect["af_vsock"] = errno.EPERM  # (tests/container.py: Docker's does)
    assert got == expect, describe(res)
    for name in ("icmp4_dgram", "icmp6_dgram"):
        assert (lines[name].ok, lines[name].errno) == (plain[name].ok, plain[name].errno)


def test_nested_listener_refused(probe, sinks, run_sandboxed):
    """seccomp(NEW_LISTENER) fails with EPERM, so a nested supervisor cannot answer
    CONTINUE; the denied connect is refused and nothing arrives."""
    deny = sinks.tcp("127.0.0.2")
    res = run_sandboxed([], [probe("nested"), deny.target])
    assert _got(res) == [("listener", False, errno.EPERM), ("connect", False, ECONNREFUSED)], (
        describe(res)
    )
    assert deny.settle().count == 0


# ------------------------------------------------------------------- sendmmsg


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_mmsg_stops_at_denied_entry(probe, sinks, run_sandboxed, host):
    """sendmmsg [allowed, denied, allowed] sends the first entry only, returns 1 and
    writes msg_len for it alone."""
    allow = sinks.udp(host)
    deny = sinks.udp("127.0.0.2" if host == "127.0.0.1" else "::1")
    res = run_sandboxed(
        ["--net-allow", allow.spec],
        [probe("mmsg_mix"), allow.target, deny.target, allow.target],
    )
    assert _got(res) == [("sendmmsg", True, 1)], describe(res)
    assert "msg_len 16,777777,777777" in res.stdout, describe(res)
    assert deny.settle().count == 0
    assert allow.settle().count == 1
    assert allow.payloads[0][:4] == (0).to_bytes(4, "little")


def test_mmsg_first_entry_denied(probe, sinks, run_sandboxed):
    """sendmmsg whose first entry is denied fails with ECONNREFUSED and sends nothing."""
    allow, deny = sinks.udp("127.0.0.1"), sinks.udp("127.0.0.2")
    res = run_sandboxed(["--net-allow", allow.spec], [probe("mmsg_mix"), deny.target, allow.target])
    assert _got(res) == [("sendmmsg", False, ECONNREFUSED)], describe(res)
    assert allow.settle().count == 0 and deny.settle().count == 0


def test_mmsg_null_name_does_not_wave_batch_through(probe, sinks, run_sandboxed):
    """On a connected UDP socket, [NULL name, denied name] sends the connected entry only."""
    allow, deny = sinks.udp("127.0.0.1"), sinks.udp("127.0.0.2")
    res = run_sandboxed(
        ["--net-allow", allow.spec],
        [probe("mmsg_mix"), "-C", allow.target, "-", deny.target],
    )
    assert _got(res) == [("preconnect", True, 0), ("sendmmsg", True, 1)], describe(res)
    assert "msg_len 16,777777" in res.stdout
    assert allow.settle().count == 1 and deny.settle().count == 0


# ------------------------------------------------------------------- bad pointers


def test_bad_pointers_match_kernel(probe, sinks, run_sandboxed, run_plain):
    """Bad pointers and absurd lengths get exactly the kernel's own result (EFAULT, EINVAL,
    EMSGSIZE, partial counts), and a normal connect works after each one."""
    tcp0, udp0 = sinks.tcp("127.0.0.1"), sinks.udp("127.0.0.1")
    plain = run_plain([probe("badptr"), tcp0.target, udp0.target])
    tcp, udp = sinks.tcp("127.0.0.1"), sinks.udp("127.0.0.1")
    res = run_sandboxed(
        ["--net-allow", tcp.spec, "--net-allow", udp.spec],
        [probe("badptr"), tcp.target, udp.target],
    )
    want = probe_results(plain.stdout)
    got = probe_results(res.stdout)
    assert list(got) == list(want), describe(res)
    diff = {
        k: (want[k], got[k])
        for k in want
        if (want[k].ok, want[k].value) != (got[k].ok, got[k].value)
    }
    assert not diff, f"differs from the kernel: {diff}\n{describe(res)}"
    # the contract's own words, independent of the baseline
    assert got["connect_null"].errno == errno.EFAULT
    assert got["connect_unmapped"].errno == errno.EFAULT
    assert got["connect_len_huge"].errno == errno.EINVAL
    assert got["sendmmsg_vec_unmapped"].errno == errno.EFAULT
    assert udp.settle().count == udp0.settle().count
    assert tcp.settle().count == tcp0.settle().count


# ------------------------------------------------------------------- not egress


UNIX_CHILD = textwrap.dedent(
    """
    import socket, sys
    path, dpath = sys.argv[1], sys.argv[2]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(b"stream")
    s.close()
    d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    d.sendto(b"dgram", dpath)
    a, b = socket.socketpair()
    a.sendall(b"pair")
    assert b.recv(4) == b"pair"
    print("unix ok")
    """
)


def test_af_unix_untouched(run_sandboxed, tmp_path):
    """AF_UNIX connect and sendto with a path work under a policy that allows no IP
    network, once --unix-allow lets the command reach these sockets served outside it
    (tests/test_unix.py: without the rule they are refused)."""
    import socket

    spath, dpath = str(tmp_path / "s.sock"), str(tmp_path / "d.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with server, dgram:
        server.bind(spath)
        server.listen(1)
        dgram.bind(dpath)
        allow = ["--unix-allow", f"{tmp_path}/"]
        res = run_sandboxed(allow, [sys.executable, "-c", UNIX_CHILD, spath, dpath])
        assert res.returncode == 0 and "unix ok" in res.stdout, describe(res)
        server.settimeout(10)
        conn, _ = server.accept()
        with conn:
            conn.settimeout(10)
            assert conn.recv(16) == b"stream"
        dgram.settimeout(10)
        assert dgram.recv(16) == b"dgram"


# ------------------------------------------------------------------- IPv4 source routing


@pytest.mark.parametrize("mode", ["udp_cmsg", "udp_sockopt", "tcp_sockopt"])
def test_source_route_never_reaches_denied_hop(probe, sinks, run_sandboxed, lo_sniffer, mode):
    """A call to an allowed address carrying an LSRR option whose first hop is denied
    (IP_OPTIONS or an IP_RETOPTS control message) puts no packet addressed to the denied
    hop on the wire."""
    sink = sinks.tcp("127.0.0.1") if mode.startswith("tcp") else sinks.udp("127.0.0.1")
    res = run_sandboxed(
        ["--net-allow", "127.0.0.1", "--net-allow", "udp://127.0.0.1"],
        [probe("srcroute"), mode, "127.0.0.2", sink.target],
    )
    lo_sniffer.settle()
    to_hop = [p for p in lo_sniffer.to_port(sink.port) if p[0] != "127.0.0.1"]
    assert to_hop == [], f"packets to a denied hop: {to_hop}\n{describe(res)}"
    assert "Traceback" not in res.stderr
