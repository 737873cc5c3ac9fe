"""The policy of net-rules.md: per-protocol default deny, deny wins, mapped and
unspecified addresses, hostnames with the addresses given (resolving them is the plan's
job: tests/test_plan.py). Pure: no resolver, no socket."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pytest

from sandlock.errors import PolicyError
from sandlock.plan import parse
from sandlock.policy import Decision, Policy, stored_address, stored_addresses
from sandlock.rules import parse_rule
from sandlock.sockaddr import canonical

HOSTS = {
    "example.com": ["93.184.216.34", "2606:2800:220:1::1"],
    "api.example.org": ["203.0.113.5", "::ffff:203.0.113.6", "203.0.113.5"],
    "a.example.com": ["192.0.2.10"],
    "sinkhole.example": ["0.0.0.0"],
}


def make(allow: Sequence[str], deny: Sequence[str] = ()) -> Policy:
    """The Policy of these rule strings, each hostname with its HOSTS addresses and each
    wildcard with none (as the plan builds it)."""
    rules = parse(allow, deny)
    hosts = {r.host: () if r.wildcard else HOSTS[r.host] for r in rules.allow if r.host}
    return Policy(rules.allow, rules.deny, hosts)


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def allowed(policy: Policy, dest: str, port: int, proto: str = "tcp") -> bool:
    return policy.decide(proto, ip(dest), port).allowed


# --- default deny, per protocol ----------------------------------------------------


def test_empty_policy_denies_everything() -> None:
    """With no rule at all, every protocol is denied by default."""
    policy = make([])
    for proto in ("tcp", "udp", "icmp"):
        decision = policy.decide(proto, ip("1.1.1.1"), 443)
        assert decision == Decision(allowed=False, rule=None, host=None)
        assert decision.reason == "default-deny"


def test_protocols_are_decided_separately() -> None:
    """An allow rule for tcp says nothing about udp or icmp."""
    policy = make(["*:*"])
    assert allowed(policy, "1.1.1.1", 53)
    assert not allowed(policy, "1.1.1.1", 53, "udp")
    assert not allowed(policy, "1.1.1.1", 0, "icmp")
    udp = make(["udp://*"])
    assert allowed(udp, "1.1.1.1", 53, "udp")
    assert not allowed(udp, "1.1.1.1", 53)


def test_unknown_protocol_is_denied() -> None:
    """A protocol string the policy does not know is refused, even under `*`."""
    policy = make(["*", "udp://*", "icmp://*"])
    assert policy.decide("sctp", ip("1.1.1.1"), 80) == Decision(False, None, None)
    assert not policy.decide("TCP", ip("1.1.1.1"), 80).allowed


@pytest.mark.parametrize("size", [0, 3, 5, 15, 17, 32])
def test_bad_address_length_is_denied(size: int) -> None:
    """Only 4- and 16-byte packed addresses can match; anything else is refused."""
    assert make(["*"]).decide("tcp", b"\x7f" * size, 80) == Decision(False, None, None)


# --- targets and ports ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "dest", "port", "expected"),
    [
        ("1.2.3.4:80", "1.2.3.4", 80, True),
        ("1.2.3.4:80", "1.2.3.4", 81, False),
        ("1.2.3.4:80", "1.2.3.5", 80, False),
        ("1.2.3.4", "1.2.3.4", 1, True),
        ("1.2.3.4", "1.2.3.4", 65535, True),
        ("10.0.0.0/8:22", "10.0.0.0", 22, True),
        ("10.0.0.0/8:22", "10.255.255.255", 22, True),
        ("10.0.0.0/8:22", "11.0.0.0", 22, False),
        ("10.0.0.0/8:22", "9.255.255.255", 22, False),
        ("10.0.0.0/8:22", "10.1.2.3", 23, False),
        ("10.1.2.3/8", "10.200.0.1", 9, True),
        ("0.0.0.0/0:443", "8.8.8.8", 443, True),
        ("0.0.0.0/0:443", "2001:db8::1", 443, False),
        ("[fc00::/7]:*", "fd12::1", 5, True),
        ("[fc00::/7]:*", "fe00::1", 5, False),
        ("fc00::/7", "fc00::", 1, True),
        ("::1", "::1", 8080, True),
        ("::1", "::2", 8080, False),
        ("[::1]:443", "::1", 443, True),
        ("[::1]:443", "::1", 80, False),
        ("::/0", "2001:db8::1", 80, True),
        ("::/0", "1.2.3.4", 80, False),
        (":443", "1.2.3.4", 443, True),
        (":443", "2001:db8::1", 443, True),
        (":443", "1.2.3.4", 80, False),
        ("*:22,80", "2001:db8::1", 80, True),
        ("*:22,80", "2001:db8::1", 81, False),
        ("*", "1.2.3.4", 1, True),
        ("*:*", "2001:db8::1", 65535, True),
        ("*:*", "::ffff:1.2.3.4", 0, True),
    ],
)
def test_allow_matching(spec: str, dest: str, port: int, expected: bool) -> None:
    """Any-IP, IP, CIDR containment (v4 and v6), with ports or all ports."""
    decision = make([spec]).decide("tcp", ip(dest), port)
    assert decision.allowed is expected
    assert decision.rule == (spec if expected else None)
    assert decision.host is None


def test_first_matching_allow_rule_is_reported() -> None:
    """The deciding rule is the first match in the order the rules were given."""
    policy = make(["10.0.0.0/8:80", "*:80", "10.1.1.1"])
    assert policy.decide("tcp", ip("10.1.1.1"), 80).rule == "10.0.0.0/8:80"
    assert policy.decide("tcp", ip("10.1.1.1"), 81).rule == "10.1.1.1"
    assert policy.decide("tcp", ip("11.1.1.1"), 80).reason == "*:80"


def test_icmp_rules_match_any_ident() -> None:
    """icmp rules carry no port: the ping socket's ident never matters."""
    policy = make(["icmp://1.1.1.1", "icmp://[2001:db8::1]"])
    for port in (0, 1, 65535):
        assert allowed(policy, "1.1.1.1", port, "icmp")
        assert allowed(policy, "2001:db8::1", port, "icmp")
    assert not allowed(policy, "1.0.0.1", 0, "icmp")


# --- deny wins -----------------------------------------------------------------------


def test_deny_wins_over_allow() -> None:
    """A matching deny rule refuses the call even where an allow rule matches."""
    policy = make(["*", "10.1.2.3:22"], ["10.0.0.0/8"])
    decision = policy.decide("tcp", ip("10.1.2.3"), 22)
    assert decision == Decision(allowed=False, rule="10.0.0.0/8", host=None)
    assert decision.reason == "10.0.0.0/8"
    assert allowed(policy, "11.1.2.3", 22)


def test_deny_with_ports() -> None:
    """A deny rule with ports refuses only those ports."""
    policy = make(["*"], [":25", "[2001:db8::/32]:22,23"])
    assert not allowed(policy, "1.2.3.4", 25)
    assert allowed(policy, "1.2.3.4", 26)
    assert not allowed(policy, "2001:db8::1", 23)
    assert allowed(policy, "2001:db8::1", 24)


def test_deny_is_per_protocol() -> None:
    """`udp://*` on the deny side leaves tcp alone."""
    policy = make(["*", "udp://*"], ["udp://*"])
    assert allowed(policy, "1.2.3.4", 53)
    assert policy.decide("udp", ip("1.2.3.4"), 53) == Decision(False, "udp://*", None)


def test_deny_everything() -> None:
    """`--net-deny *` refuses every address of its protocol, IPv4 and IPv6."""
    policy = make(["*"], ["*"])
    for dest in ("1.2.3.4", "::1", "::ffff:1.2.3.4", "0.0.0.0", "::"):
        assert policy.decide("tcp", ip(dest), 80) == Decision(False, "*", None)


# --- IPv4-mapped addresses -----------------------------------------------------------


def test_mapped_destination_is_ipv4_for_deny() -> None:
    """`::ffff:a.b.c.d` is refused by a deny on `a.b.c.d`."""
    policy = make(["*"], ["169.254.169.254"])
    assert not allowed(policy, "::ffff:169.254.169.254", 80)
    assert not allowed(policy, "169.254.169.254", 80)
    assert allowed(policy, "::ffff:169.254.169.253", 80)


def test_mapped_destination_is_ipv4_for_allow() -> None:
    """`::ffff:a.b.c.d` is allowed by an IPv4 allow rule, not by an IPv6 one."""
    assert allowed(make(["10.0.0.0/8:80"]), "::ffff:10.9.8.7", 80)
    assert not allowed(make(["::/0"]), "::ffff:10.9.8.7", 80)
    assert not allowed(make(["[::ffff:0:0/95]:*"]), "::ffff:10.9.8.7", 80)


@pytest.mark.parametrize("rule", ["::ffff:10.0.0.1", "[::ffff:10.0.0.1]:*", "::ffff:10.0.0.0/104"])
@pytest.mark.parametrize("dest", ["10.0.0.1", "::ffff:10.0.0.1"])
def test_mapped_deny_rule_stops_both_forms(rule: str, dest: str) -> None:
    """A deny rule written in mapped form stops the IPv4 and the mapped destination."""
    assert not allowed(make(["*"], [rule]), dest, 443)


def test_ipv4_compatible_is_not_mapped() -> None:
    """`::a.b.c.d` (IPv4-compatible, deprecated) is an IPv6 address like any other."""
    policy = make(["*"], ["10.0.0.1"])
    assert allowed(policy, "::10.0.0.1", 80)


# --- unspecified addresses -----------------------------------------------------------


@pytest.mark.parametrize(
    ("deny", "dest"),
    [
        ("127.0.0.1", "0.0.0.0"),
        ("127.0.0.1", "::ffff:0.0.0.0"),
        ("127.0.0.0/8", "0.0.0.0"),
        ("::1", "::"),
        ("[::1]:5432", "::"),
        ("0.0.0.0", "0.0.0.0"),
        ("0.0.0.0", "127.0.0.1"),
        ("::ffff:0.0.0.0", "0.0.0.0"),
        ("::", "::"),
        ("::", "::1"),
    ],
)
def test_unspecified_destination_is_loopback(deny: str, dest: str) -> None:
    """0.0.0.0 and :: reach the local host: a deny on loopback stops them."""
    assert not allowed(make(["*"], [deny]), dest, 5432)


def test_unspecified_allowed_as_loopback() -> None:
    """An allow on loopback covers 0.0.0.0 and ::, and only with the allowed port."""
    policy = make(["127.0.0.1:8080", "[::1]:8080"])
    assert allowed(policy, "0.0.0.0", 8080)
    assert allowed(policy, "::ffff:0.0.0.0", 8080)
    assert allowed(policy, "::", 8080)
    assert not allowed(policy, "0.0.0.0", 8081)
    assert not allowed(policy, "::", 8081)


def test_unspecified_is_not_matched_by_its_own_network() -> None:
    """0.0.0.0 is matched as 127.0.0.1, so `0.0.0.0/8` does not cover it."""
    assert not allowed(make(["0.0.0.0/8"]), "0.0.0.0", 80)


def test_loopback_deny_does_not_touch_other_addresses() -> None:
    """The loopback rewrite is only for the unspecified addresses."""
    policy = make(["*"], ["127.0.0.1", "::1"])
    assert allowed(policy, "127.0.0.2", 80)
    assert allowed(policy, "::2", 80)


# --- hostnames -----------------------------------------------------------------------


def test_hostname_rule_allows_its_addresses() -> None:
    """A hostname rule allows each resolved address, and says which host matched."""
    policy = make(["example.com:443"])
    for dest in HOSTS["example.com"]:
        decision = policy.decide("tcp", ip(dest), 443)
        assert decision == Decision(True, "example.com:443", "example.com")
        assert not allowed(policy, dest, 80)
    assert not allowed(policy, "93.184.216.35", 443)


def test_host_addresses_are_canonical() -> None:
    """Resolved addresses are deduplicated and mapped ones stored as IPv4."""
    policy = make(["api.example.org:443", "example.com"])
    assert dict(policy.host_addresses) == {
        "api.example.org": ("203.0.113.5", "203.0.113.6"),
        "example.com": ("93.184.216.34", "2606:2800:220:1::1"),
    }
    assert allowed(policy, "::ffff:203.0.113.6", 443)
    assert allowed(policy, "203.0.113.6", 443)


def test_sinkholed_hostname_grants_nothing() -> None:
    """A name resolving to 0.0.0.0 does not open loopback."""
    policy = make(["sinkhole.example"])
    assert not allowed(policy, "127.0.0.1", 80)
    assert not allowed(policy, "0.0.0.0", 80)


def test_deny_wins_over_hostname() -> None:
    """A deny on an address refuses it even when an allowed name resolves to it."""
    policy = make(["example.com"], ["93.184.216.34"])
    assert not allowed(policy, "93.184.216.34", 443)
    assert allowed(policy, "2606:2800:220:1::1", 443)


# --- building ------------------------------------------------------------------------


def test_first_bad_spec_raises() -> None:
    """Specs are parsed in order, allow before deny; the first mistake is reported."""
    with pytest.raises(PolicyError) as info:
        make(["ok.example", "h:0", "h:99999"], ["x.example"])
    assert info.value.spec == "h:0"
    with pytest.raises(PolicyError) as info:
        make(["ok.example"], ["10.0.0.1", "x.example:0"])
    assert info.value.spec == "x.example:0"
    assert info.value.flag == "--net-deny"


def test_constructor() -> None:
    """The plan passes the parsed rules and the addresses, as strings or ip objects."""
    allow = [parse_rule("example.com:443", flag="--net-allow")]
    deny = [parse_rule("10.0.0.0/8", flag="--net-deny")]
    policy = Policy(
        allow,
        deny,
        {
            "example.com": [
                ipaddress.ip_address("10.1.1.1"),
                ipaddress.ip_address("::ffff:192.0.2.7"),
                ipaddress.IPv6Address("fe80::1%eth0"),
                "fe80::2%eth0",
            ]
        },
    )
    assert policy.allow_rules == tuple(allow)
    assert policy.deny_rules == tuple(deny)
    assert policy.host_addresses["example.com"] == ("10.1.1.1", "192.0.2.7", "fe80::1", "fe80::2")
    assert allowed(policy, "192.0.2.7", 443)
    assert allowed(policy, "fe80::1", 443)
    assert not allowed(policy, "10.1.1.1", 443)


@pytest.mark.parametrize(
    "hosts",
    [{}, {"example.com": ["1.1.1.1"], "other.example": ["1.1.1.2"]}, {"EXAMPLE.COM": []}],
)
def test_host_addresses_must_match_rules(hosts: dict[str, list[str]]) -> None:
    """Every hostname needs addresses, and no address list may be left over."""
    allow = [parse_rule("example.com", flag="--net-allow")]
    with pytest.raises(ValueError, match="host addresses do not match the rules"):
        Policy(allow, [], hosts)


def test_deny_hostname_holds_no_address() -> None:
    """A deny rule naming a host takes no address (it denies the name, not addresses)."""
    rule = parse_rule("example.com", flag="--net-deny")
    with pytest.raises(ValueError, match="extra"):
        Policy([], [rule], {"example.com": ["10.0.0.1"]})
    assert Policy([], [rule], {}).denied_name("Example.COM.") == "example.com"


def test_refuses_junk_addresses() -> None:
    """An address that is not an IP is a ValueError."""
    allow = [parse_rule("example.com", flag="--net-allow")]
    with pytest.raises(ValueError):
        Policy(allow, [], {"example.com": ["example.com"]})


def test_with_host_addresses_returns_a_new_policy() -> None:
    """Replacing a host's addresses builds a new Policy and leaves the old one as it was."""
    old = make(["example.com:443", "1.1.1.1"])
    new = old.with_host_addresses("example.com", ["198.51.100.1", "::ffff:198.51.100.2"])
    assert new is not old
    assert new.host_addresses["example.com"] == ("198.51.100.1", "198.51.100.2")
    assert old.host_addresses["example.com"] == tuple(HOSTS["example.com"])
    assert allowed(new, "198.51.100.2", 443)
    assert not allowed(new, "93.184.216.34", 443)
    assert allowed(old, "93.184.216.34", 443)
    assert not allowed(old, "198.51.100.2", 443)
    assert new.allow_rules == old.allow_rules
    assert allowed(new, "1.1.1.1", 9)


def test_with_host_addresses_empty_matches_nothing() -> None:
    """A host may have no addresses for a while; it then allows nothing."""
    policy = make(["example.com"]).with_host_addresses("example.com", [])
    assert policy.host_addresses["example.com"] == ()
    assert not allowed(policy, "93.184.216.34", 443)


def test_with_host_addresses_unknown_host() -> None:
    """Only a hostname that a rule names can get addresses."""
    with pytest.raises(ValueError, match=r"no --net-allow rule names the host 'other\.example'"):
        make(["example.com"]).with_host_addresses("other.example", ["1.1.1.1"])


def test_policy_is_immutable() -> None:
    """No attribute can be set or deleted, and the host map is read-only."""
    policy = make(["example.com"])
    with pytest.raises(AttributeError, match="immutable"):
        policy._allow = ()
    with pytest.raises(AttributeError, match="immutable"):
        policy.anything = 1
    with pytest.raises(AttributeError, match="immutable"):
        del policy._tables
    with pytest.raises(TypeError):
        policy.host_addresses["example.com"] = ("1.1.1.1",)  # type: ignore[index]


def test_decision_reason() -> None:
    """`reason` is the rule text, or "default-deny" when no rule decided."""
    assert Decision(False, None, None).reason == "default-deny"
    assert Decision(True, "h:1", "h").reason == "h:1"


def test_describe_and_repr() -> None:
    """A one-line summary: rule counts per protocol and the resolved hosts."""
    policy = make(["example.com:443", "udp://*:53", "*"], ["10.0.0.0/8"])
    summary = (
        "tcp: 2 allow, 1 deny; udp: 1 allow, 0 deny; icmp: default deny; hostnames: 1, addresses: 2"
    )
    assert policy.describe() == summary
    assert repr(policy) == f"<Policy {summary}>"


# --- wildcards and the DNS-following mode ----------------------------------------------


def test_with_hosts_fills_several_keys_at_once() -> None:
    """`with_hosts` replaces the named keys in one new Policy and keeps the rest."""
    old = make(["*.example.com:443", "udp://*.cdn.example:53", "example.com:443"])
    new = old.with_hosts({"*.example.com": ["198.51.100.1"], "*.cdn.example": ["::ffff:1.2.3.4"]})
    assert dict(new.host_addresses) == {
        "*.example.com": ("198.51.100.1",),
        "*.cdn.example": ("1.2.3.4",),
        "example.com": tuple(HOSTS["example.com"]),
    }
    assert new.decide("tcp", ip("198.51.100.1"), 443) == Decision(
        True, "*.example.com:443", "*.example.com"
    )
    assert new.decide("udp", ip("1.2.3.4"), 53).host == "*.cdn.example"
    assert not allowed(new, "198.51.100.1", 80)
    assert not allowed(old, "198.51.100.1", 443)
    assert make(["*.example.com"]).with_hosts({}).host_addresses["*.example.com"] == ()


def test_with_hosts_unknown_key() -> None:
    """Every key given to `with_hosts` must be named by an allow rule."""
    with pytest.raises(
        ValueError, match=r"no --net-allow rule names the host '\*\.other\.example'"
    ):
        make(["*.example.com"]).with_hosts({"*.example.com": [], "*.other.example": []})


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("example.com", "example.com"),
        ("EXAMPLE.com.", "example.com"),
        ("a.example.com", "a.example.com"),
        ("b.example.com", "*.example.com"),
        ("B.Example.Com.", "*.example.com"),
        ("x.y.example.com", "*.example.com"),
        ("a.b.example.com", "*.b.example.com"),
        ("b.example.com.evil.test", None),
        ("x.a.example.com", "*.example.com"),
        ("*.example.com", "*.example.com"),
        ("notexample.com", None),
        ("com", None),
        ("other.test", None),
        ("", None),
        (".", None),
        ("\u212a.example.com", None),
        ("b.example.com..", None),
        ("x\\.example.com", None),
        ("a.b\\.example.com", None),
    ],
)
def test_host_for_name(name: str, key: str | None) -> None:
    """Exact names win, then the longest wildcard domain; `*.d` never covers `d` itself."""
    policy = make(
        ["*.example.com:443", "udp://*.b.example.com", "example.com", "a.example.com:443"]
    )
    assert policy.host_for_name(name) == key


def test_host_for_name_without_rules() -> None:
    """A policy without hostnames covers no name."""
    assert make(["*"]).host_for_name("example.com") is None


# --- how addresses are read and kept ----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        (ipaddress.ip_address("::ffff:192.0.2.1"), "192.0.2.1"),
        ("0.0.0.0", "0.0.0.0"),
        ("::ffff:0.0.0.0", "0.0.0.0"),
        ("::", "::"),
        ("fe80::1%eth0", "fe80::1"),
        (ipaddress.IPv6Address("fe80::1%eth0"), "fe80::1"),
        ("2001:DB8::1", "2001:db8::1"),
    ],
)
def test_stored_address(
    value: str | ipaddress.IPv4Address | ipaddress.IPv6Address, kept: str
) -> None:
    """A host's address is kept unmapped and without its zone, never made loopback."""
    assert stored_address(value) == kept


def test_stored_addresses() -> None:
    """Each address once, in the order first given; junk is a ValueError."""
    assert stored_addresses(["192.0.2.1", "::ffff:192.0.2.1", "::1", "192.0.2.1"]) == (
        "192.0.2.1",
        "::1",
    )
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        stored_addresses(["192.0.2.1", "nowhere"])


@pytest.mark.parametrize("size", [0, 3, 5, 15, 17])
def test_decide_peer_bad_length(size: int) -> None:
    """A peer address of another length than 4 or 16 bytes is refused."""
    assert make(["*"]).decide_peer("tcp", b"\x7f" * size) == Decision(False, None, None)


def test_decide_peer_unknown_protocol_or_address() -> None:
    """A protocol the policy does not know, or an address no rule covers, is refused for
    peers too."""
    assert make(["*"]).decide_peer("sctp", ip("127.0.0.1")) == Decision(False, None, None)
    assert make(["127.0.0.1:80"]).decide_peer("tcp", ip("127.0.0.2")) == Decision(False, None, None)


@pytest.mark.parametrize(
    "dest", ["0.0.0.0", "::", "::ffff:0.0.0.0", "::ffff:127.0.0.1", "::ffff:10.1.2.3", "::1"]
)
def test_decide_and_decide_peer_read_canonical(dest: str) -> None:
    """Both decisions read an address exactly as sockaddr.canonical says."""
    policy = make(["127.0.0.1:80", "[::1]:80", "10.0.0.0/8"], ["10.1.0.0/16"])
    seen = canonical(ip(dest))
    assert policy.decide("tcp", ip(dest), 80) == policy.decide("tcp", seen, 80)
    assert policy.decide_peer("tcp", ip(dest)) == policy.decide_peer("tcp", seen)
