"""connect / sendto / sendmsg / sendmmsg x TCP / UDP x IPv4 / IPv6, under the sandbox.

Each case runs netprobe once under sandlock against three loopback sinks: one allowed,
one default-denied (no rule names it) and one explicitly denied under a wider allow (deny
wins).  The allowed one must receive exactly what was sent; the other two must fail in the
child with ECONNREFUSED and receive nothing.  TCP sendto/sendmsg/sendmmsg carry the address
with MSG_FASTOPEN."""

from __future__ import annotations

import errno
import shutil
import subprocess

import pytest

from .conftest import SANDLOCK, describe, parse_probe, run_command, sandlock_env

# Every test twice: the gate answering what Python remembered, and Python answering every
# call (SANDLOCK_GATE=python): the same must reach the sinks and the command (conftest.py).
pytestmark = pytest.mark.usefixtures("gate_mode")

OPS = ["connect", "sendto", "sendmsg", "sendmmsg"]
COUNT = 2
SIZE = 16


def _three_sinks(sinks, proto, family):
    """(allowed, default-denied, explicitly-denied) sinks and the sandlock rule arguments."""
    make = sinks.tcp if proto == "tcp" else sinks.udp
    scheme = "" if proto == "tcp" else "udp://"
    if family == 4:
        allow, deny1, deny2 = make("127.0.0.1"), make("127.0.0.2"), make("127.0.0.3")
        rules = [
            "--net-allow",
            allow.spec,
            "--net-allow",
            f"{scheme}127.0.0.3",
            "--net-deny",
            deny2.spec,
        ]
    else:
        allow, deny1, deny2 = make("::1"), make("::1"), make("::1")
        rules = [
            "--net-allow",
            f"{scheme}[::1]:{allow.port},{deny2.port}",
            "--net-deny",
            deny2.spec,
        ]
    return allow, deny1, deny2, rules


def _lines(res, idx):
    return [line for line in parse_probe(res.stdout) if line.label.startswith(f"{idx} ")]


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("op", OPS)
def test_allowed_arrives_denied_refused(probe, sinks, run_sandboxed, op, proto, family):
    """Allowed traffic arrives byte-exact; default-denied and deny-wins targets get
    ECONNREFUSED and their sinks receive nothing."""
    allow, deny1, deny2, rules = _three_sinks(sinks, proto, family)
    res = run_sandboxed(
        rules,
        [
            probe("netprobe"),
            "-c",
            str(COUNT),
            "-s",
            str(SIZE),
            op,
            proto,
            allow.target,
            deny1.target,
            deny2.target,
        ],
    )
    assert res.returncode == 1, describe(res)  # the denied calls fail, nothing else

    # what the allowed target's calls must have printed
    ok_lines = _lines(res, 0)
    if proto == "tcp" or op in ("sendto", "sendmsg"):
        assert [(x.label, x.ok) for x in ok_lines] == [(f"0 {op}", True)] * COUNT, describe(res)
        if op == "sendmmsg":  # tcp: one message of SIZE bytes per call
            assert all(x.value == 1 for x in ok_lines), describe(res)
            assert res.stdout.count(f"0 msg_len {SIZE}\n") == COUNT, describe(res)
        elif proto == "udp" or op != "connect":
            assert all(x.value == SIZE for x in ok_lines), describe(res)
    elif op == "connect":  # udp: connect, then COUNT sends on the connected socket
        assert [(x.label, x.ok) for x in ok_lines] == (
            [("0 connect", True)] + [("0 send", True)] * COUNT
        ), describe(res)
    else:  # udp sendmmsg: one batch of COUNT
        assert [(x.label, x.ok, x.value) for x in ok_lines] == [("0 sendmmsg", True, COUNT)]
        assert f"0 msg_len {SIZE},{SIZE}" in res.stdout

    # the denied ones: every call ECONNREFUSED, nothing sent after
    for idx in (1, 2):
        lines = _lines(res, idx)
        calls = 1 if (proto == "udp" and op in ("connect", "sendmmsg")) else COUNT
        assert [(x.label, x.errno) for x in lines] == [
            (f"{idx} {op}", errno.ECONNREFUSED)
        ] * calls, describe(res)
        if op == "sendmmsg":
            unsent = ",".join(["777777"] * (COUNT if proto == "udp" else 1))
            assert f"{idx} msg_len {unsent}" in res.stdout, describe(res)

    allow.settle(), deny1.settle(), deny2.settle()
    assert (allow.count, allow.nbytes) == (COUNT, COUNT * SIZE), describe(res)
    assert (deny1.count, deny1.nbytes) == (0, 0)
    assert (deny2.count, deny2.nbytes) == (0, 0)
    if proto == "udp":
        assert sorted(p[:4] for p in allow.payloads) == [
            i.to_bytes(4, "little") for i in range(COUNT)
        ]


@pytest.mark.parametrize("family", [4, 6])
def test_nonblocking_connect(probe, sinks, run_sandboxed, family):
    """A non-blocking connect gets EINPROGRESS and completes when allowed, and fails at
    once with ECONNREFUSED when denied."""
    host = "127.0.0.1" if family == 4 else "::1"
    allow, deny = sinks.tcp(host), sinks.tcp(host)
    res = run_sandboxed(
        ["--net-allow", allow.spec],
        [probe("netprobe"), "-n", "connect", "tcp", allow.target, deny.target],
    )
    got = [(x.label, x.ok, x.value) for x in parse_probe(res.stdout)]
    assert got == [
        ("0 connect", False, errno.EINPROGRESS),
        ("0 established", True, 0),
        ("1 connect", False, errno.ECONNREFUSED),
    ], describe(res)
    assert allow.settle().count == 1 and allow.nbytes == 16
    assert deny.settle().count == 0


def test_rules_are_per_protocol(probe, sinks, run_sandboxed):
    """A UDP rule allows no TCP and a TCP rule allows no UDP to the same address."""
    tcp, udp = sinks.tcp("127.0.0.1"), sinks.udp("127.0.0.1")
    res = run_sandboxed(
        ["--net-allow", "udp://127.0.0.1"],
        [probe("netprobe"), "connect", "tcp", tcp.target],
    )
    assert [(x.label, x.errno) for x in parse_probe(res.stdout)] == [
        ("0 connect", errno.ECONNREFUSED)
    ], describe(res)
    res = run_sandboxed(
        ["--net-allow", "127.0.0.1"],
        [probe("netprobe"), "sendto", "udp", udp.target],
    )
    assert [(x.label, x.errno) for x in parse_probe(res.stdout)] == [
        ("0 sendto", errno.ECONNREFUSED)
    ], describe(res)
    assert tcp.settle().count == 0 and udp.settle().count == 0


def test_no_rules_no_network(probe, sinks, run_sandboxed):
    """With no rule at all, TCP and UDP to loopback are both refused."""
    tcp, udp = sinks.tcp("127.0.0.1"), sinks.udp("127.0.0.1")
    res = run_sandboxed(
        [],
        [
            "sh",
            "-c",
            '"$0" connect tcp "$1"; "$0" sendto udp "$2"',
            probe("netprobe"),
            tcp.target,
            udp.target,
        ],
    )
    assert [(x.label, x.errno) for x in parse_probe(res.stdout)] == [
        ("0 connect", errno.ECONNREFUSED),
        ("0 sendto", errno.ECONNREFUSED),
    ], describe(res)
    assert tcp.settle().count == 0 and udp.settle().count == 0


@pytest.mark.parametrize(
    "rule",
    ["127.0.0.2/31", "127.0.0.2", "127.0.0.2:{port}", "*:{port}", "127.0.0.0/8:{port}"],
)
def test_deny_forms(probe, sinks, run_sandboxed, rule):
    """Deny by CIDR, by address, by address and port, by any address with a port: each
    refuses the target even under an allow-everything rule."""
    allow, deny = sinks.tcp("127.0.0.1"), sinks.tcp("127.0.0.2")
    deny_rule = rule.format(port=deny.port)
    res = run_sandboxed(
        ["--net-allow", "*", "--net-deny", deny_rule],
        [probe("netprobe"), "connect", "tcp", allow.target, deny.target],
    )
    got = [(x.label, x.ok, x.value) for x in parse_probe(res.stdout)]
    assert got == [
        ("0 connect", True, 0),  # the allowed sink's port differs from the denied one's
        ("1 connect", False, errno.ECONNREFUSED),
    ], describe(res)
    assert deny.settle().count == 0
    assert allow.settle().count == 1


def test_allow_cidr_and_port_list(probe, sinks, run_sandboxed):
    """An allow CIDR with a port list admits exactly those ports inside the CIDR."""
    a, b, c = sinks.tcp("127.0.0.1"), sinks.tcp("127.0.0.2"), sinks.tcp("127.0.0.2")
    res = run_sandboxed(
        ["--net-allow", f"127.0.0.0/30:{a.port},{b.port}"],
        [probe("netprobe"), "connect", "tcp", a.target, b.target, c.target],
    )
    got = [(x.label, x.ok) for x in parse_probe(res.stdout)]
    assert got == [("0 connect", True), ("1 connect", True), ("2 connect", False)], describe(res)
    assert (a.settle().count, b.settle().count, c.settle().count) == (1, 1, 0)


# ------------------------------------------------------------------- ICMP (ping sockets)
# The host's net.ipv4.ping_group_range may forbid ping sockets, so these run in a private
# network namespace (lo up, ping allowed for gid 0): the echo requests stay inside it and
# its own ICMP counters say exactly how many arrived.

NETNS_SCRIPT = (
    'ip link set lo up && echo "0 0" > /proc/sys/net/ipv4/ping_group_range || exit 99; '
    '"$@"; echo "rc=$?"; echo ---; cat /proc/net/snmp /proc/net/snmp6'
)


def run_in_netns(features, argv):
    """argv in a fresh network namespace; returns (result, {InEchos, Icmp6InEchos})."""
    features.require("netns")
    if shutil.which("ip") is None:
        pytest.skip("ip(8) not installed: cannot bring lo up in the test namespace")
    res = run_command(
        [*features.unshare_net, "sh", "-c", NETNS_SCRIPT, "sh", *argv], env=sandlock_env()
    )
    assert "---" in res.stdout, describe(res)
    head, _, counters = res.stdout.partition("---")
    lines = counters.splitlines()
    icmp = [line.split()[1:] for line in lines if line.startswith("Icmp: ")]
    echos = dict(zip(icmp[0], map(int, icmp[1]), strict=True))
    v6 = dict(line.split() for line in lines if line.startswith("Icmp6InEchos"))
    return (
        subprocess.CompletedProcess(res.args, res.returncode, head, res.stderr),
        {"InEchos": echos["InEchos"], "Icmp6InEchos": int(v6["Icmp6InEchos"])},
    )


PING_TARGETS = ["127.0.0.1:0", "127.0.0.2:0", "[::1]:0"]


def test_ping_baseline_in_netns(features, probe):
    """Without the sandbox, all three echo requests are answered and counted."""
    res, counts = run_in_netns(features, [probe("ping"), "sendto", *PING_TARGETS])
    assert "rc=0" in res.stdout, describe(res)
    assert counts == {"InEchos": 2, "Icmp6InEchos": 1}


@pytest.mark.parametrize("op", ["sendto", "connect"])
@pytest.mark.parametrize(
    ("rules", "allowed", "counts"),
    [
        (["--net-allow", "icmp://127.0.0.1"], [0], {"InEchos": 1, "Icmp6InEchos": 0}),
        (
            ["--net-allow", "icmp://*", "--net-deny", "icmp://127.0.0.2"],
            [0, 2],
            {"InEchos": 1, "Icmp6InEchos": 1},
        ),
        (
            ["--net-allow", "127.0.0.1", "--net-allow", "udp://*"],
            [],
            {"InEchos": 0, "Icmp6InEchos": 0},
        ),
    ],
    ids=["allow-one", "deny-wins", "tcp-udp-rules-allow-no-icmp"],
)
def test_ping(features, probe, op, rules, allowed, counts):
    """ICMP echo through ping sockets follows the icmp:// rules alone: allowed targets
    answer, the others get ECONNREFUSED and the namespace's counters see nothing."""
    res, got_counts = run_in_netns(
        features, [*SANDLOCK, *rules, "--", probe("ping"), op, *PING_TARGETS]
    )
    lines = parse_probe(res.stdout)
    for idx in range(3):
        mine = [(x.label.split()[1], x.ok, x.value) for x in lines if x.label.startswith(f"{idx} ")]
        if idx in allowed:
            assert [m[:2] for m in mine] == (
                [("sendto", True), ("reply", True)]
                if op == "sendto"
                else [("connect", True), ("send", True), ("reply", True)]
            ), describe(res)
        else:
            assert mine == [(op, False, errno.ECONNREFUSED)], describe(res)
    assert got_counts == counts, describe(res)


def _pattern(seq: int, size: int) -> bytes:
    """netprobe's payload: the 32-bit sequence number, then a-z repeated."""
    body = bytes(ord("a") + i % 26 for i in range(size))
    return seq.to_bytes(4, "little") + body[4:]


@pytest.mark.parametrize("op", ["sendto", "sendmsg", "sendmmsg"])
def test_large_datagrams_byte_exact(probe, sinks, run_sandboxed, op):
    """65000-byte UDP datagrams sent on the child's behalf arrive whole and unaltered."""
    sink = sinks.udp("127.0.0.1")
    res = run_sandboxed(
        ["--net-allow", sink.spec],
        [probe("netprobe"), "-c", "2", "-s", "65000", op, "udp", sink.target],
    )
    assert res.returncode == 0, describe(res)
    sink.settle()
    assert sorted(sink.payloads) == [_pattern(0, 65000), _pattern(1, 65000)]


def test_large_fast_open_payload(probe, sinks, run_sandboxed):
    """A 65000-byte MSG_FASTOPEN sendto arrives whole on the allowed TCP sink."""
    sink = sinks.tcp("127.0.0.1")
    res = run_sandboxed(
        ["--net-allow", sink.spec],
        [probe("netprobe"), "-s", "65000", "sendto", "tcp", sink.target],
    )
    assert [(x.label, x.ok, x.value) for x in parse_probe(res.stdout)] == [
        ("0 sendto", True, 65000)
    ], describe(res)
    sink.settle()
    assert sink.conn_bytes == [65000]
