"""Without the sandbox, every probe reaches every sink, the denied ones included.

These tests need no sandlock: they prove that the probes and sinks can see a failure, so
that "nothing arrived" in the sandboxed tests means the sandbox stopped it, not that the
probe was broken.  They also pin the kernel behaviours the attack tests rely on."""

from __future__ import annotations

import errno

import pytest

from .conftest import describe, parse_probe, probe_kv, probe_results

OPS = ["connect", "sendto", "sendmsg", "sendmmsg"]


@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("op", OPS)
def test_netprobe_reaches_every_sink(probe, sinks, run_plain, op, proto):
    """netprobe's op reaches 127.0.0.1, 127.0.0.2 and two ports on ::1, byte-exact."""
    make = sinks.tcp if proto == "tcp" else sinks.udp
    targets = [make("127.0.0.1"), make("127.0.0.2"), make("::1"), make("::1")]
    res = run_plain([probe("netprobe"), "-c", "3", op, proto, *(t.target for t in targets)])
    assert res.returncode == 0, describe(res)
    for t in targets:
        t.settle()
        assert t.count == 3, (t.target, describe(res))
        assert t.nbytes == 3 * 16


def test_flip_reaches_both_sinks(probe, sinks, run_plain):
    """The flip race, unsandboxed, connects to both the allowed and the denied sink."""
    allow, deny = sinks.tcp("127.0.0.1"), sinks.tcp("127.0.0.2")
    # A race: on a quiet 2-core machine one run of 3000 may happen to land on one side
    # only. A few runs show that both can be reached, which is all this baseline claims.
    total = 0
    for _ in range(5):
        res = run_plain([probe("flip"), allow.target, deny.target, "3000"])
        total += probe_kv(res.stdout)["ok"]
        allow.settle(), deny.settle()
        if allow.count > 0 and deny.count > 0:
            break
    assert total == allow.count + deny.count, describe(res)
    assert allow.count > 0 and deny.count > 0, describe(res)


def test_int80_reaches_sinks(probe, sinks, run_plain, features):
    """int 0x80 socketcall and i386 socket calls work from a 64-bit process here."""
    features.require("ia32")
    tcp, udp = sinks.tcp("127.0.0.2"), sinks.udp("127.0.0.2")
    res = run_plain([probe("int80"), tcp.target, udp.target])
    assert res.returncode == 0, describe(res)
    assert tcp.settle().count == 2
    assert udp.settle().count == 6


def test_uring_connects(probe, sinks, run_plain, features):
    """An io_uring IORING_OP_CONNECT reaches the sink without any connect syscall."""
    features.require("io_uring")
    tcp = sinks.tcp("127.0.0.2")
    res = run_plain([probe("uring"), tcp.target])
    assert res.returncode == 0, describe(res)
    assert tcp.settle().count == 1


def test_x32_probe_runs(probe, sinks, run_plain, features):
    """x32 calls either work (x32 kernels) or fail with ENOSYS; never anything else."""
    tcp, udp = sinks.tcp("127.0.0.2"), sinks.udp("127.0.0.2")
    res = run_plain([probe("x32"), tcp.target, udp.target])
    lines = probe_results(res.stdout)
    assert set(lines) == {
        "getpid",
        "socket",
        "connect",
        "sendto",
        "sendmsg",
        "sendmmsg",
        "io_uring_setup",
    }, describe(res)
    if features.has("x32"):
        assert res.returncode == 0, describe(res)
        assert tcp.settle().count == 1
    else:
        assert all(line.errno == errno.ENOSYS for line in lines.values()), describe(res)


def test_rawsock_kernel_allows(probe, run_plain):
    """As root, raw/packet/MPTCP/UDPLITE sockets can be created here (so refusing them is
    the sandbox's doing)."""
    res = run_plain([probe("rawsock")])
    lines = probe_results(res.stdout)
    for name in [
        "tcp4",
        "udp6_flags",
        "unix_stream",
        "netlink_route",
        "raw4_icmp",
        "raw6_icmp",
        "packet_raw",
        "mptcp4",
        "mptcp6",
        "udplite4",
        "udplite6",
    ]:
        assert lines[name].ok, (name, describe(res))


def test_nested_listener_bypasses(probe, sinks, run_plain):
    """A nested seccomp listener can be installed and answering CONTINUE lets connect out."""
    tcp = sinks.tcp("127.0.0.2")
    res = run_plain([probe("nested"), tcp.target])
    lines = probe_results(res.stdout)
    assert lines["listener"].ok and lines["connect"].ok, describe(res)
    assert tcp.settle().count == 1


def test_mmsg_mix_sends_all(probe, sinks, run_plain):
    """sendmmsg to allowed, denied, allowed sinks sends all three entries unsandboxed."""
    a, d = sinks.udp("127.0.0.1"), sinks.udp("127.0.0.2")
    res = run_plain([probe("mmsg_mix"), a.target, d.target, a.target])
    assert res.returncode == 0, describe(res)
    assert probe_results(res.stdout)["sendmmsg"].value == 3
    assert "msg_len 16,16,16" in res.stdout
    assert a.settle().count == 2 and d.settle().count == 1


def test_storm_counts_exactly(probe, sinks, run_plain):
    """Unsandboxed, signals hit the sender and every datagram arrives exactly once."""
    udp = sinks.udp("127.0.0.1")
    res = run_plain([probe("storm"), udp.target, "3000"])
    kv = probe_kv(res.stdout)
    assert res.returncode == 0 and kv["sent"] == 3000, describe(res)
    assert kv["signals"] > 0, describe(res)
    udp.settle()
    assert udp.count == 3000
    assert len(set(udp.payloads)) == 3000


def test_threads_all_connect(probe, sinks, run_plain):
    """16 threads x 100 connects all arrive."""
    tcp = sinks.tcp("127.0.0.2")
    res = run_plain([probe("threads"), "tcp", tcp.target, "16", "100"])
    assert probe_kv(res.stdout)["ok"] == 1600, describe(res)
    assert tcp.settle().count == 1600


def test_slowconnect_is_slow(probe, sinks, run_plain, full_listener):
    """A connect to the full listener hangs until SO_SNDTIMEO while others go through."""
    fast = sinks.tcp("127.0.0.1")
    res = run_plain([probe("slowconnect"), full_listener, fast.target, "20", "2000"])
    kv = probe_kv(res.stdout)
    assert res.returncode == 0, describe(res)
    assert kv["slow_pending"] == 1 and kv["slow_errno"] == errno.EINPROGRESS
    assert 1500 <= kv["slow_ms"] <= 8000
    assert fast.settle().count == 20


def test_badptr_kernel_errnos(probe, sinks, run_plain):
    """The kernel's own answers to bad pointers and lengths (the sandbox must give the same)."""
    tcp, udp = sinks.tcp("127.0.0.1"), sinks.udp("127.0.0.1")
    res = run_plain([probe("badptr"), tcp.target, udp.target])
    lines = probe_results(res.stdout)
    assert lines["connect_null"].errno == errno.EFAULT, describe(res)
    assert lines["connect_unmapped"].errno == errno.EFAULT
    assert lines["connect_straddle"].errno == errno.EFAULT
    assert lines["connect_len_huge"].errno == errno.EINVAL
    assert lines["sendmsg_iovlen_huge"].errno == errno.EMSGSIZE
    assert lines["sendmmsg_vec_unmapped"].errno == errno.EFAULT
    assert lines["sendmmsg_vlen_huge"].value == 2
    assert all(v.ok for k, v in lines.items() if k.endswith(".after"))


def test_tfo_reaches_sink(probe, sinks, run_plain):
    """TCP Fast Open sendto/sendmsg and TCP_FASTOPEN_CONNECT all reach the sink."""
    tcp = sinks.tcp("127.0.0.2")
    res = run_plain([probe("tfo"), tcp.target])
    assert res.returncode == 0, describe(res)
    tcp.settle()
    assert tcp.count == 4 and tcp.nbytes == 4 * 16


def test_unspec_family_udp_is_ipv4(probe, sinks, run_plain):
    """The kernel sends a UDP datagram whose sockaddr says AF_UNSPEC as if it were AF_INET."""
    udp = sinks.udp("127.0.0.2")
    res = run_plain([probe("netprobe"), "-U", "sendto", "udp", udp.target])
    assert res.returncode == 0, describe(res)
    assert udp.settle().count == 1


def test_v4_sockaddr_on_v6_udp_socket(probe, sinks, run_plain):
    """An AF_INET6 UDP socket accepts an AF_INET sockaddr and sends over IPv4."""
    udp = sinks.udp("127.0.0.2")
    res = run_plain([probe("netprobe"), "-6", "sendto", "udp", udp.target])
    assert res.returncode == 0, describe(res)
    assert udp.settle().count == 1


def test_connected_udp_honours_msg_name(probe, sinks, run_plain):
    """A connected UDP socket still sends to sendmsg's msg_name when one is given."""
    a, d = sinks.udp("127.0.0.1"), sinks.udp("127.0.0.2")
    res = run_plain([probe("netprobe"), "-C", a.target, "sendmsg", "udp", d.target])
    assert res.returncode == 0, describe(res)
    assert d.settle().count == 1 and a.settle().count == 0


def test_parse_probe_lines():
    """parse_probe reads ok and errno lines and ignores the rest."""
    lines = parse_probe("0 connect ok ret=0\nnoise\nx errno=111\n")
    assert [(line.label, line.ok, line.value) for line in lines] == [
        ("0 connect", True, 0),
        ("x", False, 111),
    ]


@pytest.mark.parametrize("mode", ["udp_cmsg", "udp_sockopt", "tcp_sockopt"])
def test_source_route_goes_to_first_hop(probe, sinks, run_plain, lo_sniffer, mode):
    """Unsandboxed, LSRR to an allowed target sends the packet to the first hop."""
    sink = sinks.tcp("127.0.0.1") if mode.startswith("tcp") else sinks.udp("127.0.0.1")
    res = run_plain([probe("srcroute"), mode, "127.0.0.2", sink.target])
    lo_sniffer.settle()
    assert ("127.0.0.2", 6 if mode.startswith("tcp") else 17, sink.port) in lo_sniffer.to_port(
        sink.port
    ), describe(res)
