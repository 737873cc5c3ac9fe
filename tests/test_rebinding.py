"""The rebinding guard, name deny rules and case normalising, without a sandbox.

The fake upstream answers with loopback, link-local, private and mapped addresses; no
test here opens a socket to any of them: the forwarder's replies and the policy's
decisions are checked as values. (tests/test_rebinding_e2e.py connects, to loopback only.)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from pathlib import Path

import dns.rcode
import pytest
import trio

from sandlock.errors import PolicyError
from sandlock.plan import NameOptions, Plan, make
from sandlock.policy import Policy, stored_address
from sandlock.profile import read_profile
from sandlock.rebinding import GUARDED_NETWORKS, exempt, guarded

from .dnsfake import FakeUpstream
from .test_dns import IO_LIMIT, addresses, running

LOCAL_ANSWERS = ["127.0.0.7", "169.254.169.254", "10.1.2.3"]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    """A fake upstream whose allowed name answers only local and private addresses."""
    with FakeUpstream() as fake:
        fake.add("api.example.test", "A", LOCAL_ANSWERS)
        fake.add("api.example.test", "AAAA", ["::ffff:127.0.0.1"])
        fake.add("mixed.example.test", "A", ["192.0.2.5", "127.0.0.7"])
        fake.add("dev.localhost", "A", ["127.0.0.1"])
        fake.add("meta.localhost", "A", ["127.0.0.1", "169.254.169.254", "10.1.2.3"])
        fake.add("meta.localhost", "AAAA", ["::1", "::ffff:127.0.0.9", "fd00::5"])
        fake.add("private.localhost", "A", ["169.254.169.254"])
        for name in ("ok.example.test", "evil.example.test", "x.bad.example.test"):
            fake.add(name, "A", ["192.0.2.8"])
        fake.add("bad.example.test", "A", ["192.0.2.9"])
        yield fake


def _packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


# --- the list ---------------------------------------------------------------------------


GUARDED_ADDRESSES = [
    "0.0.0.0",
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "100.64.0.1",
    "100.127.255.255",
    "169.254.169.254",
    "224.0.0.1",
    "239.255.255.250",
    "::",
    "::1",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
]


@pytest.mark.parametrize("address", GUARDED_ADDRESSES)
def test_guarded_addresses(address: str) -> None:
    """Loopback, unspecified, RFC 1918, CGNAT, link-local, ULA, multicast and their mapped
    forms (as the policy stores them) are guarded."""
    assert guarded(stored_address(address))


@pytest.mark.parametrize(
    "address",
    ["192.0.2.1", "8.8.8.8", "100.128.0.1", "172.32.0.1", "11.0.0.1", "2001:db8::1", "fec0::1"],
)
def test_unguarded_addresses(address: str) -> None:
    """Public and documentation addresses, and the neighbours of each guarded range, are not."""
    assert not guarded(stored_address(address))


def test_every_network_is_tested() -> None:
    """Each network of the list has an address in test_guarded_addresses (a network added
    without a test fails here)."""
    tested = [ipaddress.ip_address(stored_address(a)) for a in GUARDED_ADDRESSES]
    for network in GUARDED_NETWORKS:
        assert any(ip in network for ip in tested), network


@pytest.mark.parametrize(
    ("name", "address", "want"),
    [
        ("localhost", "127.0.0.1", True),
        ("dev.localhost", "127.9.9.9", True),
        ("a.b.localhost", "::1", True),
        ("dev.localhost", "::ffff:127.0.0.1", True),  # (mapped, should a caller not unmap)
        ("dev.localhost", stored_address("::ffff:127.0.0.2"), True),
        ("dev.localhost", "169.254.169.254", False),
        ("dev.localhost", "10.0.0.5", False),
        ("localhost", "192.168.1.1", False),
        ("localhost", "0.0.0.0", False),
        ("dev.localhost", "::", False),
        ("dev.localhost", "fd00::5", False),
        ("dev.localhost", "fe80::1", False),
        ("dev.localhost", "::ffff:10.0.0.5", False),
        ("dev.localhost", "::ffff:169.254.169.254", False),
        ("localhost.example", "127.0.0.1", False),
        ("notlocalhost", "127.0.0.1", False),
    ],
)
def test_localhost_exemption_is_for_loopback_answers(name: str, address: str, want: bool) -> None:
    """`localhost` and names under `.localhost` are exempt only for loopback answers
    (127/8, ::1, a mapped 127/8); any other name is exempt for none."""
    assert exempt(name, address) is want


# --- start-up resolution ------------------------------------------------------------------


def _start(allow: list[str], deny: Sequence[str] = (), **options: bool) -> tuple[Plan, list[str]]:
    answers = {"api.example.test": ["127.0.0.5", "192.0.2.1"], "evil.test": ["192.0.2.2"]}
    asked: list[str] = []

    def resolver(name: str) -> list[str]:
        asked.append(name)
        return answers.get(name, ["192.0.2.3"])

    opts = NameOptions(dns_proxy=False, **options)
    return make(allow, deny, opts, resolver=resolver), asked


def _allows(policy: Policy, address: str, port: int) -> bool:
    return policy.decide("tcp", _packed(address), port).allowed


def test_startup_drops_local_answers(capsys: pytest.CaptureFixture[str]) -> None:
    """Resolved at start, a local answer is left out of the hostname rule: one line on
    stderr, an audit record, and the policy refuses it."""
    plan, _asked = _start(["api.example.test:443"])
    assert plan.policy.host_addresses["api.example.test"] == ("192.0.2.1",)
    assert not _allows(plan.policy, "127.0.0.5", 443)
    assert _allows(plan.policy, "192.0.2.1", 443)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "rebinding guard" in lines[0] and "127.0.0.5" in lines[0]
    assert "`api.example.test:443`" in lines[0] and "--dns-allow-private" in lines[0]
    assert plan.records == [
        {
            "syscall": "dns",
            "proto": None,
            "host": "api.example.test",
            "qtype": None,
            "action": "deny",
            "rule": "rebinding-guard",
            "answers": ["127.0.0.5"],
            "rcode": None,
        }
    ]


def test_startup_ip_rule_keeps_the_answer_for_the_hosts_file() -> None:
    """An answer an IP rule allows still resolves (the virtual /etc/hosts shows it), but
    only that rule's ports pass: the hostname rule adds none."""
    plan, _asked = _start(["api.example.test:443", "127.0.0.0/8:22"])
    assert plan.notes == [] and plan.records == []
    assert plan.shown == {"api.example.test": ("127.0.0.5",)}
    assert not _allows(plan.policy, "127.0.0.5", 443)
    assert _allows(plan.policy, "127.0.0.5", 22)


def test_startup_allow_private_turns_the_guard_off() -> None:
    """--dns-allow-private: the hostname rule allows every answer, no line."""
    plan, _asked = _start(["api.example.test:443"], dns_allow_private=True)
    assert plan.policy.host_addresses["api.example.test"] == ("127.0.0.5", "192.0.2.1")
    assert _allows(plan.policy, "127.0.0.5", 443) and plan.notes == []


def test_startup_localhost_is_exempt() -> None:
    """`localhost` and names under `.localhost` are loopback by definition."""
    plan = make(
        ["localhost:80", "dev.localhost:80"],
        [],
        NameOptions(dns_proxy=False),
        resolver=lambda name: ["127.0.0.1"],
    )
    assert plan.notes == []
    assert plan.policy.host_addresses == {
        "localhost": ("127.0.0.1",),
        "dev.localhost": ("127.0.0.1",),
    }


LOCALHOST_ANSWERS = [
    "127.0.0.1",
    "169.254.169.254",
    "::1",
    "10.0.0.5",
    "::ffff:127.0.0.2",
    "fd00::5",
    "::ffff:10.0.0.6",
]
LOCALHOST_KEPT = ("127.0.0.1", "::1", "127.0.0.2")
LOCALHOST_DROPPED = ["169.254.169.254", "10.0.0.5", "fd00::5", "10.0.0.6"]


def test_startup_localhost_names_keep_only_loopback_answers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A resolver answering `localhost` or a `.localhost` name with link-local, private or
    ULA addresses next to loopback ones: the loopback ones (a mapped one too) pass, the
    others are guarded as any name's: one line and one record per name, refused."""
    plan = make(
        ["localhost:80", "dev.localhost:80"],
        [],
        NameOptions(dns_proxy=False),
        resolver=lambda name: LOCALHOST_ANSWERS,
    )
    assert plan.policy.host_addresses == {
        "localhost": LOCALHOST_KEPT,
        "dev.localhost": LOCALHOST_KEPT,
    }
    for address in LOCALHOST_KEPT:
        assert _allows(plan.policy, address, 80)
    for address in LOCALHOST_DROPPED:
        assert not _allows(plan.policy, address, 80)
    assert not _allows(plan.policy, "::ffff:10.0.0.6", 80)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all("rebinding guard" in line for line in lines), lines
    assert "`dev.localhost` answered 169.254.169.254, 10.0.0.5, fd00::5, 10.0.0.6" in lines[1]
    assert [(r["host"], r["rule"], r["answers"]) for r in plan.records] == [
        ("localhost", "rebinding-guard", LOCALHOST_DROPPED),
        ("dev.localhost", "rebinding-guard", LOCALHOST_DROPPED),
    ]


def test_startup_denied_name_is_never_looked_up(capsys: pytest.CaptureFixture[str]) -> None:
    """An allow rule for a name a deny rule names: deny wins, the name is not even looked
    up (a lookup is egress), one line says so."""
    plan, asked = _start(["evil.test:443", "ok.test:443"], ["evil.test"])
    assert asked == ["ok.test"]
    assert plan.policy.host_addresses["evil.test"] == ()
    (line,) = capsys.readouterr().err.splitlines()
    assert "`evil.test`" in line and "--net-deny `evil.test`" in line and "deny wins" in line


# --- the policy's names -------------------------------------------------------------------


def test_deny_names_win_over_allowing_wildcards() -> None:
    """Exact and wildcard deny rules name what never resolves, whatever allow rule or
    wildcard covers it; ports and schemes do not matter for the name."""
    plan = make(
        ["*.example.test:443", "evil.example.test:443"],
        ["evil.example.test", "udp://*.bad.example.test:53"],
        NameOptions(dns_proxy=True, dns_upstream="127.0.0.1"),
        resolver=lambda name: ["192.0.2.1"],
    )
    policy = plan.policy
    assert policy.denied_name("Evil.Example.Test.") == "evil.example.test"
    assert policy.denied_name("x.y.bad.example.test") == "udp://*.bad.example.test:53"
    assert policy.denied_name("bad.example.test") is None  # the wildcard's domain itself
    assert policy.denied_name("ok.example.test") is None
    for name in ("evil.example.test", "x.bad.example.test"):
        assert policy.host_for_name(name) is None
    assert policy.host_for_name("bad.example.test") == "*.example.test"
    assert policy.host_for_name("ok.example.test") == "*.example.test"


def test_allows_by_address() -> None:
    """Only IP/CIDR and any-address rules count, a covering deny refuses (any port)."""
    plan = make(
        ["api.example.test:443", "10.0.0.0/8:5432", "udp://127.0.0.1:53"],
        ["10.9.0.0/16:1"],
        NameOptions(dns_proxy=False),
        resolver=lambda name: ["10.1.2.3"],
    )
    policy = plan.policy
    assert policy.allows_by_address(_packed("10.1.2.3"))
    assert not policy.allows_by_address(_packed("10.9.0.1"))  # denied (on port 1 only)
    assert policy.allows_by_address(_packed("127.0.0.1"))  # the udp rule
    assert policy.allows_by_address(_packed("::ffff:127.0.0.1"))
    assert not policy.allows_by_address(_packed("127.0.0.2"))
    assert not policy.allows_by_address(b"\x00")


# --- the forwarder ------------------------------------------------------------------------


async def test_forwarder_drops_local_answers(upstream: FakeUpstream) -> None:
    """An allowed name answering only local addresses (A and a mapped AAAA): NXDOMAIN,
    nothing learned, a rebinding-guard record; the policy allows none of them."""
    with trio.fail_after(IO_LIMIT):
        async with running(upstream, ["api.example.test:443"]) as env:
            reply = await env.udp("api.example.test")
            assert reply.rcode() == dns.rcode.NXDOMAIN and addresses(reply) == []
            aaaa = await env.udp("api.example.test", "AAAA")
            assert aaaa.rcode() == dns.rcode.NXDOMAIN
            assert env.book.addresses("api.example.test") == ()
            for address in LOCAL_ANSWERS:
                assert not env.allows("tcp", address, 443)
            assert not env.allows("tcp", "::ffff:127.0.0.1", 443)
            guard = [r for r in env.records if r["rule"] == "rebinding-guard"]
            assert [(r["qtype"], sorted(r["answers"]), r["action"], r["rcode"]) for r in guard] == [
                ("A", sorted(LOCAL_ANSWERS), "deny", "NXDOMAIN"),
                ("AAAA", ["127.0.0.1"], "deny", "NXDOMAIN"),
            ]


async def test_forwarder_ip_rule_lets_an_answer_resolve(upstream: FakeUpstream) -> None:
    """An answer an IP rule allows stays in the reply but is not learned: that rule's
    ports pass, the hostname rule's do not."""
    specs = ["api.example.test:443", "10.0.0.0/8:5432"]
    with trio.fail_after(IO_LIMIT):
        async with running(upstream, specs) as env:
            reply = await env.udp("api.example.test")
            assert reply.rcode() == dns.rcode.NOERROR
            assert addresses(reply) == ["10.1.2.3"]
            assert env.book.addresses("api.example.test") == ()
            assert env.allows("tcp", "10.1.2.3", 5432)
            assert not env.allows("tcp", "10.1.2.3", 443)
            assert not env.allows("tcp", "169.254.169.254", 443)


async def test_forwarder_keeps_public_answers(upstream: FakeUpstream) -> None:
    """A mixed answer loses only its local records; the public ones are learned."""
    with trio.fail_after(IO_LIMIT):
        async with running(upstream, ["mixed.example.test:443"]) as env:
            reply = await env.udp("mixed.example.test")
            assert addresses(reply) == ["192.0.2.5"]
            assert env.book.addresses("mixed.example.test") == ("192.0.2.5",)
            assert env.allows("tcp", "192.0.2.5", 443)
            assert not env.allows("tcp", "127.0.0.7", 443)
            assert env.records[-1]["answers"] == ["127.0.0.7"]
            assert env.records[-1]["rcode"] == "NOERROR"


async def test_forwarder_drops_stray_local_records(upstream: FakeUpstream) -> None:
    """A local record off the name's chain is dropped too, without turning an answer with
    no address of its own (NODATA) into NXDOMAIN."""
    upstream.stray = ["elsewhere.test. 60 IN A 10.0.0.1"]
    with trio.fail_after(IO_LIMIT):
        async with running(upstream, ["mixed.example.test:443"]) as env:
            nodata = await env.udp("mixed.example.test", "AAAA")
            assert nodata.rcode() == dns.rcode.NOERROR and nodata.answer == []
            reply = await env.udp("mixed.example.test")
            assert addresses(reply) == ["192.0.2.5"]
            assert env.records[-1]["rule"] == "rebinding-guard"
            assert sorted(env.records[-1]["answers"]) == ["10.0.0.1", "127.0.0.7"]  # type: ignore[type-var]


async def test_forwarder_allow_private(upstream: FakeUpstream) -> None:
    """guard=False (--dns-allow-private): every answer is relayed and learned."""
    with trio.fail_after(IO_LIMIT):
        async with running(upstream, ["api.example.test:443"], guard=False) as env:
            reply = await env.udp("api.example.test")
            assert sorted(addresses(reply)) == sorted(LOCAL_ANSWERS)
            assert env.allows("tcp", "169.254.169.254", 443)
            assert all(r["rule"] != "rebinding-guard" for r in env.records)


async def test_forwarder_localhost_is_exempt(upstream: FakeUpstream) -> None:
    """A name under .localhost may answer loopback."""
    with trio.fail_after(IO_LIMIT):
        async with running(upstream, ["dev.localhost:8080"]) as env:
            reply = await env.udp("dev.localhost")
            assert addresses(reply) == ["127.0.0.1"]
            assert env.allows("tcp", "127.0.0.1", 8080)


async def test_forwarder_localhost_names_keep_only_loopback_answers(
    upstream: FakeUpstream,
) -> None:
    """A `.localhost` name whose upstream answers link-local, private or ULA addresses
    next to loopback ones: only the loopback records (A, AAAA, a mapped 127/8) reach the
    command and are learned; a name answering none gets NXDOMAIN; rebinding-guard
    records say which were dropped. Checked as values: nothing connects to them."""
    specs = ["meta.localhost:8080", "private.localhost:8080"]
    with trio.fail_after(IO_LIMIT):
        async with running(upstream, specs) as env:
            reply = await env.udp("meta.localhost")
            assert reply.rcode() == dns.rcode.NOERROR and addresses(reply) == ["127.0.0.1"]
            aaaa = await env.udp("meta.localhost", "AAAA")
            assert sorted(addresses(aaaa)) == ["::1", "::ffff:127.0.0.9"]
            assert sorted(env.book.addresses("meta.localhost")) == ["127.0.0.1", "127.0.0.9", "::1"]
            for address in ("127.0.0.1", "::1", "::ffff:127.0.0.9"):
                assert env.allows("tcp", address, 8080), address
            for address in ("169.254.169.254", "10.1.2.3", "fd00::5"):
                assert not env.allows("tcp", address, 8080), address
            private = await env.udp("private.localhost")
            assert private.rcode() == dns.rcode.NXDOMAIN and addresses(private) == []
            assert env.book.addresses("private.localhost") == ()
            guard = [
                (r["host"], r["qtype"], sorted(r["answers"]), r["rcode"])  # type: ignore[type-var]
                for r in env.records
                if r["rule"] == "rebinding-guard"
            ]
            assert guard == [
                ("meta.localhost", "A", ["10.1.2.3", "169.254.169.254"], "NOERROR"),
                ("meta.localhost", "AAAA", ["fd00::5"], "NOERROR"),
                ("private.localhost", "A", ["169.254.169.254"], "NXDOMAIN"),
            ]


async def test_forwarder_deny_names(upstream: FakeUpstream) -> None:
    """Denied names, exact and wildcard, get NXDOMAIN under an allowing wildcard and are
    never forwarded; the record names the deny rule. The wildcard's domain itself is not
    denied."""
    deny = ["evil.example.test", "*.bad.example.test:443"]
    with trio.fail_after(IO_LIMIT):
        async with running(upstream, ["*.example.test:443"], deny) as env:
            upstream.queries.clear()
            for name in ("evil.example.test", "x.bad.example.test"):
                assert (await env.udp(name)).rcode() == dns.rcode.NXDOMAIN
                assert (await env.tcp(name)).rcode() == dns.rcode.NXDOMAIN
            assert addresses(await env.udp("ok.example.test")) == ["192.0.2.8"]
            assert addresses(await env.udp("bad.example.test")) == ["192.0.2.9"]
            assert {q[0] for q in upstream.queries} == {"ok.example.test", "bad.example.test"}
            denied = {(r["host"], r["rule"], r["action"], r["rcode"]) for r in env.records}
            assert ("evil.example.test", "evil.example.test", "deny", "NXDOMAIN") in denied
            assert ("x.bad.example.test", "*.bad.example.test:443", "deny", "NXDOMAIN") in denied


async def test_upstream_sees_lower_case(upstream: FakeUpstream) -> None:
    """The case of a name's letters (DNS 0x20) never reaches the upstream."""
    with trio.fail_after(IO_LIMIT):
        async with running(upstream, ["*.example.test:443"]) as env:
            upstream.names_as_sent.clear()
            reply = await env.udp("oK.ExAmPle.TEST")
            assert reply.rcode() == dns.rcode.NOERROR and addresses(reply) == ["192.0.2.8"]
            assert (await env.tcp("OK.EXAMPLE.TEST")).rcode() == dns.rcode.NOERROR
            assert upstream.names_as_sent == ["ok.example.test", "ok.example.test"]


# --- the option's other forms -------------------------------------------------------------


def test_profile_key(tmp_path: Path) -> None:
    """`dns_allow_private = true` in a profile; anything but a boolean is one error."""
    good = tmp_path / "good.toml"
    good.write_text('net_allow = ["a.test:443"]\ndns_allow_private = true\n')
    assert read_profile(good).dns_allow_private is True
    bad = tmp_path / "bad.toml"
    bad.write_text('dns_allow_private = "yes"\n')
    with pytest.raises(PolicyError, match="`dns_allow_private` must be true or false"):
        read_profile(bad)


def test_api_option() -> None:
    """Sandbox(dns_allow_private=True) turns the guard off, the caller's options kept."""
    from sandlock import Sandbox

    options = NameOptions(dns_proxy=False, ttl_min=5)
    sandbox = Sandbox(
        ["api.example.test:443"],
        names=options,
        resolver=lambda name: ["127.0.0.5"],
        dns_allow_private=True,
    )
    assert sandbox.policy.host_addresses["api.example.test"] == ("127.0.0.5",)
    assert options.dns_allow_private is False
    guarded_box = Sandbox(["api.example.test:443"], names=options, resolver=lambda n: ["10.0.0.1"])
    assert guarded_box.policy.host_addresses["api.example.test"] == ()


def test_daemon_wire_checks_the_flag() -> None:
    """The daemon's wire form carries the flag, a boolean only."""
    from sandlock._request import RequestError, check_names

    check_names({"dns_allow_private": True})
    with pytest.raises(RequestError, match="dns_allow_private must be true or false"):
        check_names({"dns_allow_private": 1})
    assert NameOptions.from_wire({"dns_allow_private": True}).dns_allow_private
