"""Property tests: the parsers never crash on junk, valid rules round-trip, and the
integer fast path of Policy.decide agrees with a plain ipaddress model."""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from sandlock.errors import PolicyError
from sandlock.plan import make
from sandlock.policy import Decision, Policy
from sandlock.rules import Network, Rule, parse_rule
from sandlock.sockaddr import Dest, Invalid, NoDest, canonical, parse_sockaddr

FLAGS = st.sampled_from(["--net-allow", "--net-deny"])
GRAMMAR_CHARS = "0123456789abcdefx:./[]*,-_% \t" + "tcpudpimTCP" + "\u212a\u00fc\u0660"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def check_parse(spec: str, flag: str) -> None:
    try:
        rule = parse_rule(spec, flag=flag)
    except PolicyError as err:
        assert str(err).startswith(f"{flag}: ")
        assert f"`{spec}`" in str(err)
        assert (err.flag, err.spec) == (flag, spec)
        return
    assert rule.spec == spec
    assert rule.network is None or rule.host is None
    assert rule.ports is None or (rule.ports and all(1 <= p <= 65535 for p in rule.ports))
    assert rule.proto != "icmp" or rule.ports is None
    assert rule.host is None or rule.host == rule.host.lower()


@given(st.text(), FLAGS)
def test_parse_rule_on_any_text_raises_only_policy_error(spec: str, flag: str) -> None:
    """Random text either parses to a consistent Rule or raises PolicyError."""
    check_parse(spec, flag)


@given(st.text(alphabet=GRAMMAR_CHARS, max_size=40), FLAGS)
def test_parse_rule_on_grammar_like_text(spec: str, flag: str) -> None:
    """Text built from the grammar's own characters: same guarantee, deeper paths."""
    check_parse(spec, flag)


@given(
    st.sampled_from(["", "tcp://", "udp://", "icmp://", "sctp://"]),
    st.sampled_from(["", "*", "h", "1.2.3.4", "[::1]", "::1", "10.0.0.0/8", "[fc00::/7]"]),
    st.sampled_from(["", ":", ":*", ":80", ":0", ":80,*", ":*,*", ":1,2", ":x"]),
    FLAGS,
)
def test_parse_rule_on_spliced_parts(scheme: str, target: str, ports: str, flag: str) -> None:
    """Every combination of scheme, target and port suffix is handled."""
    check_parse(scheme + target + ports, flag)


LABEL = st.from_regex(r"[a-z0-9_]([a-z0-9_-]{0,8}[a-z0-9_])?", fullmatch=True)
HOSTNAME = (
    st.lists(LABEL, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda name: not name.rsplit(".", 1)[-1].isdigit())
)
PORT_LIST = st.lists(st.integers(1, 65535), min_size=1, max_size=5)


def expected_network(text: str) -> Network:
    """The oracle for a rule's network: mapped IPv6 (/96 or narrower) becomes IPv4."""
    network = ipaddress.ip_network(text, strict=False)
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        low = int(network.network_address)
        if low >> 32 == 0xFFFF:
            return ipaddress.IPv4Network((low & 0xFFFFFFFF, network.prefixlen - 96))
    return network


@st.composite
def generated_rules(draw: st.DrawFn) -> Rule:
    """A valid rule and the spec that writes it, in the many ways the grammar allows."""
    proto = draw(st.sampled_from(["tcp", "udp", "icmp"]))
    scheme = "" if proto == "tcp" and draw(st.booleans()) else f"{proto}://"
    port_list = None if proto == "icmp" else draw(st.none() | PORT_LIST)
    if port_list is not None:
        ports_text: str | None = ",".join(map(str, port_list))
    elif proto != "icmp" and draw(st.booleans()):
        ports_text = draw(st.sampled_from(["*", "*,*"]))
    else:
        ports_text = None
    kind = draw(st.sampled_from(["any", "v4", "v6", "host"]))
    network: Network | None = None
    host = None
    if kind == "any":
        target = draw(st.sampled_from(["*", ""])) if ports_text is not None else "*"
    elif kind == "v4":
        address = draw(st.ip_addresses(v=4))
        prefix = draw(st.none() | st.integers(0, 32))
        target = str(address) if prefix is None else f"{address}/{prefix}"
        network = expected_network(target)
    elif kind == "v6":
        address = draw(
            st.ip_addresses(v=6)
            | st.ip_addresses(v=4).map(lambda a: ipaddress.IPv6Address(f"::ffff:{a}"))
        )
        prefix = draw(st.none() | st.integers(0, 128))
        text = str(address) if prefix is None else f"{address}/{prefix}"
        bracket = ports_text is not None or draw(st.booleans())
        target = f"[{text}]" if bracket else text
        network = expected_network(text)
    else:
        host = draw(HOSTNAME)
        target = draw(st.sampled_from([str.lower, str.upper, str.title]))(host)
    spec = scheme + target + ("" if ports_text is None else f":{ports_text}")
    ports = None if port_list is None else frozenset(port_list)
    return Rule(spec, proto, network, host, ports)  # type: ignore[arg-type]


@given(generated_rules())
def test_generated_rule_round_trips(rule: Rule) -> None:
    """A rule written out in any valid form parses back to the same Rule."""
    assert parse_rule(rule.spec, flag="--net-allow") == rule
    if rule.host is None:
        assert parse_rule(rule.spec, flag="--net-deny") == rule


@given(st.binary(max_size=160), st.booleans())
def test_parse_sockaddr_never_raises(data: bytes, unspec_as_inet: bool) -> None:
    """Any bytes give a Dest, NoDest or Invalid, each consistent with the input."""
    result = parse_sockaddr(data, unspec_as_inet=unspec_as_inet)
    assert isinstance(result, Dest | NoDest | Invalid)
    if isinstance(result, Dest):
        assert 16 <= len(data) <= 128
        assert len(result.addr) == (4 if result.family == socket.AF_INET else 16)
        assert 0 <= result.port <= 65535
    elif isinstance(result, Invalid):
        assert result.errno in (22, 97)


@given(st.ip_addresses(), st.integers(0, 65535), st.binary(max_size=104))
def test_sockaddr_round_trip(address: IPAddress, port: int, tail: bytes) -> None:
    """A well-formed sockaddr (with any trailing bytes) gives back its address and port."""
    if address.version == 4:
        family = socket.AF_INET
        data = (
            struct.pack("=H", family) + struct.pack("!H", port) + address.packed + bytes(8) + tail
        )
    else:
        family = socket.AF_INET6
        data = struct.pack("=H", family) + struct.pack("!HI", port, 0) + address.packed + tail
    assert parse_sockaddr(data) == Dest(family, address.packed, port)


POOL_SPECS = [
    "*",
    ":80",
    "*:443,8443",
    "10.0.0.0/8",
    "10.1.0.0/16:22,80",
    "127.0.0.1",
    "::1",
    "[fc00::/7]:443",
    "0.0.0.0",
    "::",
    "::ffff:10.0.0.0/104",
    "udp://*:53",
    "icmp://1.1.1.1",
    "icmp://[2001:db8::/32]",
    "udp://192.0.2.0/24",
    "example.com:443",
    "2001:db8::/32",
    "[::ffff:0:0/96]:22",
    "0.0.0.0/0:25",
    "[::/0]:25",
]
POOL_ADDRS = [
    "0.0.0.0",
    "127.0.0.1",
    "10.1.2.3",
    "10.2.0.1",
    "1.1.1.1",
    "93.184.216.34",
    "192.0.2.9",
    "::",
    "::1",
    "fc00::5",
    "2001:db8::7",
    "2606:2800:220:1::1",
    "::ffff:10.1.2.3",
    "::ffff:0.0.0.0",
    "::ffff:127.0.0.1",
    "::10.1.2.3",
]
POOL_HOSTS = {"example.com": ("93.184.216.34", "2606:2800:220:1::1", "0.0.0.0")}
ADDRESSES = st.sampled_from(POOL_ADDRS).map(ipaddress.ip_address) | st.ip_addresses()
PROTO_NAMES = st.sampled_from(["tcp", "udp", "icmp"])


def resolver(host: str) -> Sequence[str]:
    return POOL_HOSTS[host]


def model_decide(policy: Policy, proto: str, address: IPAddress, port: int) -> Decision:
    """The semantics of net-rules.md written plainly with ipaddress objects."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified:
        address = ipaddress.ip_address("127.0.0.1" if address.version == 4 else "::1")
    for rules, allowed in ((policy.deny_rules, False), (policy.allow_rules, True)):
        for rule in rules:
            if rule.proto != proto or (rule.ports is not None and port not in rule.ports):
                continue
            if rule.host is not None:
                if str(address) in policy.host_addresses[rule.host]:
                    return Decision(allowed, rule.spec, rule.host)
                continue
            network = rule.network
            if network is not None and network.num_addresses == 1 and network[0].is_unspecified:
                network = ipaddress.ip_network("127.0.0.1" if network.version == 4 else "::1")
            if network is None or address in network:
                return Decision(allowed, rule.spec, None)
    return Decision(False, None, None)


@given(
    st.lists(st.sampled_from(POOL_SPECS), max_size=6),
    st.lists(st.sampled_from([s for s in POOL_SPECS if "example" not in s]), max_size=3),
    PROTO_NAMES,
    ADDRESSES,
    st.sampled_from([0, 22, 25, 53, 80, 443, 8443]) | st.integers(0, 65535),
)
def test_decide_agrees_with_model(
    allow: list[str], deny: list[str], proto: str, address: IPAddress, port: int
) -> None:
    """The compiled integer tables decide exactly as the plain model does."""
    policy = make(allow, deny, resolver=resolver).policy
    assert policy.decide(proto, address.packed, port) == model_decide(policy, proto, address, port)


@given(
    st.lists(st.sampled_from(POOL_SPECS), max_size=6),
    PROTO_NAMES,
    st.ip_addresses(v=4),
    st.integers(0, 65535),
)
def test_mapped_destination_decides_as_ipv4(
    allow: list[str], proto: str, address: ipaddress.IPv4Address, port: int
) -> None:
    """`::ffff:a.b.c.d` always gets the same decision as `a.b.c.d`."""
    policy = make(allow, ["::ffff:10.0.0.0/104", "127.0.0.1:22"], resolver=resolver).policy
    mapped = ipaddress.IPv6Address(f"::ffff:{address}").packed
    assert policy.decide(proto, mapped, port) == policy.decide(proto, address.packed, port)


@given(st.text(max_size=8) | PROTO_NAMES, st.binary(max_size=20), st.integers())
def test_decide_never_raises(proto: str, addr: bytes, port: int) -> None:
    """Any protocol string, address bytes and port give a Decision; junk is denied."""
    policy = make(POOL_SPECS, ["10.0.0.0/8"], resolver=resolver).policy
    decision = policy.decide(proto, addr, port)
    assert isinstance(decision, Decision)
    if len(addr) not in (4, 16) or proto not in ("tcp", "udp", "icmp"):
        assert decision == Decision(False, None, None)
    if decision.allowed:
        assert decision.rule in POOL_SPECS


@given(
    st.lists(st.sampled_from(POOL_SPECS), max_size=6),
    st.lists(st.sampled_from([s for s in POOL_SPECS if "example" not in s]), max_size=3),
    PROTO_NAMES,
    ADDRESSES | st.sampled_from(["::ffff:0.0.0.0", "0.0.0.0", "::"]).map(ipaddress.ip_address),
    st.integers(0, 65535),
)
def test_decide_fast_path_is_canonical(
    allow: list[str], deny: list[str], proto: str, address: IPAddress, port: int
) -> None:
    """decide's inlined integers read an address exactly as sockaddr.canonical does, and
    decide_peer calls it: the same decision for an address and its canonical form."""
    policy = make(allow, deny, resolver=resolver).policy
    seen = canonical(address.packed)
    assert policy.decide(proto, address.packed, port) == policy.decide(proto, seen, port)
    assert policy.decide_peer(proto, address.packed) == policy.decide_peer(proto, seen)
