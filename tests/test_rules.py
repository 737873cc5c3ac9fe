"""The rule grammar of net-rules.md: what parses to what, and every error message."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from sandlock.errors import PolicyError
from sandlock.rules import PROTOS, Rule, is_wildcard, parse_rule

ALLOW = "--net-allow"
DENY = "--net-deny"
HINT = "(ports are 1-65535, comma-separated, or `*`)"
V6_HINT = "(an IPv6 address with ports is written `[addr]:ports`)"
WILD_HINT = "(a wildcard is `*.` followed by a domain, as in `*.example.com`)"
BROAD_HINT = "(write at least two labels after `*.`, as in `*.example.com`)"


# spec -> (proto, network or None, host or None, ports or None)
VALID = [
    # scheme
    ("example.com:443", "tcp", None, "example.com", {443}),
    ("tcp://example.com:443", "tcp", None, "example.com", {443}),
    ("udp://8.8.8.8:53", "udp", "8.8.8.8/32", None, {53}),
    ("TCP://h:1", "tcp", None, "h", {1}),
    # any IP
    ("*", "tcp", None, None, None),
    ("*:*", "tcp", None, None, None),
    (":443", "tcp", None, None, {443}),
    ("*:443", "tcp", None, None, {443}),
    (":*", "tcp", None, None, None),
    ("udp://*", "udp", None, None, None),
    # IP literals and CIDRs
    ("1.2.3.4", "tcp", "1.2.3.4/32", None, None),
    ("1.2.3.4:80", "tcp", "1.2.3.4/32", None, {80}),
    ("10.0.0.0/8", "tcp", "10.0.0.0/8", None, None),
    ("10.0.0.0/8:80", "tcp", "10.0.0.0/8", None, {80}),
    ("10.1.2.3/8:80", "tcp", "10.0.0.0/8", None, {80}),  # host bits masked
    ("0.0.0.0/0", "tcp", "0.0.0.0/0", None, None),
    ("0.0.0.0", "tcp", "0.0.0.0/32", None, None),
    # IPv6
    ("::1", "tcp", "::1/128", None, None),
    ("fc00::/7", "tcp", "fc00::/7", None, None),
    ("::443", "tcp", "::443/128", None, None),  # bare IPv6: all ports
    ("[::1]:443", "tcp", "::1/128", None, {443}),
    ("[::1]", "tcp", "::1/128", None, None),
    ("[fc00::/7]:*", "tcp", "fc00::/7", None, None),
    ("[fc00::/7]:22,80", "tcp", "fc00::/7", None, {22, 80}),
    ("udp://[2001:db8::1]:53", "udp", "2001:db8::1/128", None, {53}),
    ("::/0", "tcp", "::/0", None, None),
    # IPv4-mapped rules are IPv4
    ("::ffff:10.0.0.1", "tcp", "10.0.0.1/32", None, None),
    ("::ffff:10.0.0.0/104", "tcp", "10.0.0.0/8", None, None),
    ("[::ffff:10.0.0.1]:22", "tcp", "10.0.0.1/32", None, {22}),
    ("::ffff:0:0/96", "tcp", "0.0.0.0/0", None, None),
    ("::ffff:0:0/95", "tcp", "::fffe:0:0/95", None, None),  # wider than /96: stays IPv6
    ("::10.0.0.1", "tcp", "::a00:1/128", None, None),  # IPv4-compatible is not mapped
    # ports
    ("github.com:22,80,443", "tcp", None, "github.com", {22, 80, 443}),
    ("h:80,80", "tcp", None, "h", {80}),
    ("h:*,*", "tcp", None, "h", None),
    ("h:*", "tcp", None, "h", None),
    ("h:65535", "tcp", None, "h", {65535}),
    ("h:1", "tcp", None, "h", {1}),
    ("h:00080", "tcp", None, "h", {80}),
    ("h", "tcp", None, "h", None),
    # hostnames
    ("Example.COM", "tcp", None, "example.com", None),
    ("example.com.:443", "tcp", None, "example.com", {443}),
    ("_srv.example.com", "tcp", None, "_srv.example.com", None),
    ("a-b.c0", "tcp", None, "a-b.c0", None),
    ("localhost", "tcp", None, "localhost", None),
    ("123abc.example", "tcp", None, "123abc.example", None),
    ("a" * 63 + ".com", "tcp", None, "a" * 63 + ".com", None),
    # wildcard hostnames
    ("*.example.com", "tcp", None, "*.example.com", None),
    ("*.example.com:443", "tcp", None, "*.example.com", {443}),
    ("*.Example.COM.:443", "tcp", None, "*.example.com", {443}),
    ("tcp://*.cdn.example.test:443", "tcp", None, "*.cdn.example.test", {443}),
    ("udp://*.x.test:*", "udp", None, "*.x.test", None),
    ("icmp://*.x.test", "icmp", None, "*.x.test", None),
    ("*._srv.a-b.c0:22,80", "tcp", None, "*._srv.a-b.c0", {22, 80}),
    # icmp
    ("icmp://*", "icmp", None, None, None),
    ("icmp://1.1.1.1", "icmp", "1.1.1.1/32", None, None),
    ("icmp://10.0.0.0/8", "icmp", "10.0.0.0/8", None, None),
    ("icmp://::1", "icmp", "::1/128", None, None),
    ("icmp://[::1]", "icmp", "::1/128", None, None),
    ("icmp://example.com", "icmp", None, "example.com", None),
    # whitespace around the spec and the ports is ignored
    ("  h:80  ", "tcp", None, "h", {80}),
    ("h:80, 443", "tcp", None, "h", {80, 443}),
]


@pytest.mark.parametrize(("spec", "proto", "network", "host", "ports"), VALID)
def test_valid_allow_specs(
    spec: str, proto: str, network: str | None, host: str | None, ports: set[int] | None
) -> None:
    """Each valid spec of the grammar parses to its target, protocol and ports."""
    rule = parse_rule(spec, flag=ALLOW)
    expected_ports = None if ports is None else frozenset(ports)
    expected_net = None if network is None else ip_network(network)
    assert rule == Rule(spec, proto, expected_net, host, expected_ports)  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", [s for s, _proto, _net, host, _ports in VALID if host is None])
def test_valid_deny_specs(spec: str) -> None:
    """--net-deny shares the grammar for everything but hostnames."""
    assert parse_rule(spec, flag=DENY) == parse_rule(spec, flag=ALLOW)


def test_rule_keeps_spec_as_written() -> None:
    """`spec` is the user's text, untouched, for messages and logs."""
    assert parse_rule(" Example.com:443 ", flag=ALLOW).spec == " Example.com:443 "


def test_protos() -> None:
    """The protocols, in the order of the error message."""
    assert PROTOS == ("tcp", "udp", "icmp")


def test_rule_is_frozen() -> None:
    """Rules are values: they cannot be changed after parsing."""
    rule = parse_rule("h:80", flag=ALLOW)
    with pytest.raises(AttributeError):
        rule.spec = "x"  # type: ignore[misc]


# (flag, spec, message)
ERRORS = [
    # scheme
    (
        ALLOW,
        "sctp://h:1",
        "--net-allow: unknown scheme `sctp://` in `sctp://h:1` (expected tcp, udp, icmp)",
    ),
    (
        DENY,
        "http://1.2.3.4",
        "--net-deny: unknown scheme `http://` in `http://1.2.3.4` (expected tcp, udp, icmp)",
    ),
    (ALLOW, "://h", "--net-allow: unknown scheme `://` in `://h` (expected tcp, udp, icmp)"),
    # empty
    (ALLOW, "", "--net-allow: empty rule `` (write `*` to mean everything)"),
    (ALLOW, "   ", "--net-allow: empty rule `   ` (write `*` to mean everything)"),
    (ALLOW, "tcp://", "--net-allow: empty rule `tcp://` (write `*` to mean everything)"),
    (DENY, "udp://", "--net-deny: empty rule `udp://` (write `*` to mean everything)"),
    # ports
    (ALLOW, "h:0", f"--net-allow: invalid port `0` in `h:0` {HINT}"),
    (ALLOW, "h:", f"--net-allow: invalid port (empty) in `h:` {HINT}"),
    (ALLOW, "h:80,", f"--net-allow: invalid port (empty) in `h:80,` {HINT}"),
    (ALLOW, ":", f"--net-allow: invalid port (empty) in `:` {HINT}"),
    (ALLOW, "h:65536", f"--net-allow: invalid port `65536` in `h:65536` {HINT}"),
    (ALLOW, "h:99999999999", f"--net-allow: invalid port `99999999999` in `h:99999999999` {HINT}"),
    (ALLOW, "h:http", f"--net-allow: invalid port `http` in `h:http` {HINT}"),
    (ALLOW, "h:-1", f"--net-allow: invalid port `-1` in `h:-1` {HINT}"),
    (ALLOW, "h:+80", f"--net-allow: invalid port `+80` in `h:+80` {HINT}"),
    (ALLOW, "h:80-90", f"--net-allow: invalid port `80-90` in `h:80-90` {HINT}"),
    (
        ALLOW,
        "h:\u0668\u0660",
        f"--net-allow: invalid port `\u0668\u0660` in `h:\u0668\u0660` {HINT}",
    ),
    (DENY, "1.2.3.4:0", f"--net-deny: invalid port `0` in `1.2.3.4:0` {HINT}"),
    (DENY, "[::1]:", f"--net-deny: invalid port (empty) in `[::1]:` {HINT}"),
    (ALLOW, "h:80,*", "--net-allow: cannot mix `*` with port numbers in `h:80,*`"),
    (ALLOW, "h:*,80", "--net-allow: cannot mix `*` with port numbers in `h:*,80`"),
    (ALLOW, "h:*,", "--net-allow: cannot mix `*` with port numbers in `h:*,`"),
    (DENY, ":80,*", "--net-deny: cannot mix `*` with port numbers in `:80,*`"),
    # icmp
    (ALLOW, "icmp://h:80", "--net-allow: icmp rule takes no port: `icmp://h:80`"),
    (ALLOW, "icmp://h:*", "--net-allow: icmp rule takes no port: `icmp://h:*`"),
    (ALLOW, "icmp://[::1]:7", "--net-allow: icmp rule takes no port: `icmp://[::1]:7`"),
    (DENY, "icmp://:", "--net-deny: icmp rule takes no port: `icmp://:`"),
    (ALLOW, "icmp://", "--net-allow: icmp rule needs a host/IP or `*`: `icmp://`"),
    (DENY, "icmp://", "--net-deny: icmp rule needs a host/IP or `*`: `icmp://`"),
    # CIDR: anything with a `/` is parsed strictly
    (
        ALLOW,
        "10.0.0.0/33",
        "--net-allow: invalid prefix `/33` in `10.0.0.0/33` (IPv4 prefixes are 0-32)",
    ),
    (
        ALLOW,
        "10.0.0.0/x",
        "--net-allow: invalid prefix `/x` in `10.0.0.0/x` (IPv4 prefixes are 0-32)",
    ),
    (ALLOW, "10.0.0.0/", "--net-allow: invalid prefix `/` in `10.0.0.0/` (IPv4 prefixes are 0-32)"),
    (
        ALLOW,
        "10.0.0.0/8/9",
        "--net-allow: invalid prefix `/8/9` in `10.0.0.0/8/9` (IPv4 prefixes are 0-32)",
    ),
    (
        ALLOW,
        "10.0.0.0/255.0.0.0",
        "--net-allow: invalid prefix `/255.0.0.0` in `10.0.0.0/255.0.0.0` (IPv4 prefixes are 0-32)",
    ),
    (
        ALLOW,
        "10.0.0.0/0008",
        "--net-allow: invalid prefix `/0008` in `10.0.0.0/0008` (IPv4 prefixes are 0-32)",
    ),
    (
        DENY,
        "fc00::/129",
        "--net-deny: invalid prefix `/129` in `fc00::/129` (IPv6 prefixes are 0-128)",
    ),
    (
        DENY,
        "[fc00::/x]:80",
        "--net-deny: invalid prefix `/x` in `[fc00::/x]:80` (IPv6 prefixes are 0-128)",
    ),
    (
        ALLOW,
        "example.com/8",
        "--net-allow: invalid network address `example.com` in `example.com/8`",
    ),
    (ALLOW, "a/b", "--net-allow: invalid network address `a` in `a/b`"),
    (ALLOW, "/8:80", "--net-allow: invalid network address `` in `/8:80`"),
    (
        ALLOW,
        "[10.0.0.0/8]:80",
        "--net-allow: invalid IPv6 network address `10.0.0.0` in `[10.0.0.0/8]:80`",
    ),
    # IPv6 forms
    (ALLOW, "[::1", "--net-allow: unclosed `[` in `[::1`"),
    (ALLOW, "[::1]80", "--net-allow: expected `:ports` after `]` in `[::1]80`"),
    (
        ALLOW,
        "[10.0.0.1]:80",
        f"--net-allow: invalid IPv6 address `10.0.0.1` in `[10.0.0.1]:80` {V6_HINT}",
    ),
    (ALLOW, "[*]:80", f"--net-allow: invalid IPv6 address `*` in `[*]:80` {V6_HINT}"),
    (ALLOW, "[]:80", f"--net-allow: invalid IPv6 address `` in `[]:80` {V6_HINT}"),
    (ALLOW, "[h]:80", f"--net-allow: invalid IPv6 address `h` in `[h]:80` {V6_HINT}"),
    (
        ALLOW,
        "fe80::1%eth0",
        f"--net-allow: invalid IPv6 address `fe80::1%eth0` in `fe80::1%eth0` {V6_HINT}",
    ),
    (ALLOW, "h::80", f"--net-allow: invalid IPv6 address `h::80` in `h::80` {V6_HINT}"),
    (
        ALLOW,
        "1.2.3.4:80:90",
        f"--net-allow: invalid IPv6 address `1.2.3.4:80:90` in `1.2.3.4:80:90` {V6_HINT}",
    ),
    # IPv4 look-alikes are never hostnames
    (ALLOW, "1.2.3", "--net-allow: invalid IP address `1.2.3` in `1.2.3`"),
    (ALLOW, "010.0.0.1", "--net-allow: invalid IP address `010.0.0.1` in `010.0.0.1`"),
    (ALLOW, "256.0.0.1:80", "--net-allow: invalid IP address `256.0.0.1` in `256.0.0.1:80`"),
    (ALLOW, "123", "--net-allow: invalid IP address `123` in `123`"),
    (DENY, "1.2.3.4.5", "--net-deny: invalid IP address `1.2.3.4.5` in `1.2.3.4.5`"),
    # hostnames
    (ALLOW, "a..b", "--net-allow: invalid hostname `a..b` in `a..b`"),
    (ALLOW, "-x", "--net-allow: invalid hostname `-x` in `-x`"),
    (ALLOW, "x-:80", "--net-allow: invalid hostname `x-` in `x-:80`"),
    (ALLOW, ".x", "--net-allow: invalid hostname `.x` in `.x`"),
    (ALLOW, ".", "--net-allow: invalid hostname `.` in `.`"),
    (ALLOW, "a b", "--net-allow: invalid hostname `a b` in `a b`"),
    (ALLOW, "tcp:// h", "--net-allow: invalid hostname ` h` in `tcp:// h`"),
    (ALLOW, "h!:80", "--net-allow: invalid hostname `h!` in `h!:80`"),
    (ALLOW, "foo.123", "--net-allow: invalid hostname `foo.123` in `foo.123`"),
    (ALLOW, "b\u00fccher.de", "--net-allow: invalid hostname `b\u00fccher.de` in `b\u00fccher.de`"),
    (ALLOW, "\u212a.com", "--net-allow: invalid hostname `\u212a.com` in `\u212a.com`"),
    (
        ALLOW,
        "a" * 64 + ".com",
        f"--net-allow: invalid hostname `{'a' * 64}.com` in `{'a' * 64}.com`",
    ),
    (
        ALLOW,
        ("a" * 63 + ".") * 4,
        f"--net-allow: invalid hostname `{('a' * 63 + '.') * 4}` in `{('a' * 63 + '.') * 4}`",
    ),
    # hostnames in --net-deny
    # wildcard hostnames: `*.` and a domain of two labels or more, allow only
    (ALLOW, "*.", f"--net-allow: wildcard needs a domain after `*.` in `*.` {WILD_HINT}"),
    (
        ALLOW,
        "*.:443",
        f"--net-allow: wildcard needs a domain after `*.` in `*.:443` {WILD_HINT}",
    ),
    (ALLOW, "*.com", f"--net-allow: wildcard `*.com` is too broad in `*.com` {BROAD_HINT}"),
    (
        ALLOW,
        "udp://*.Test.:53",
        f"--net-allow: wildcard `*.Test.` is too broad in `udp://*.Test.:53` {BROAD_HINT}",
    ),
    (ALLOW, "a*b", f"--net-allow: misplaced `*` in `a*b` {WILD_HINT}"),
    (ALLOW, "**", f"--net-allow: misplaced `*` in `**` {WILD_HINT}"),
    (
        ALLOW,
        "a.*.example.com",
        f"--net-allow: misplaced `*` in `a.*.example.com` {WILD_HINT}",
    ),
    (ALLOW, "*a.example.com", f"--net-allow: misplaced `*` in `*a.example.com` {WILD_HINT}"),
    (
        ALLOW,
        "**.example.com:443",
        f"--net-allow: misplaced `*` in `**.example.com:443` {WILD_HINT}",
    ),
    (
        ALLOW,
        "*.*.example.com",
        f"--net-allow: misplaced `*` in `*.*.example.com` {WILD_HINT}",
    ),
    (ALLOW, "example.*", f"--net-allow: misplaced `*` in `example.*` {WILD_HINT}"),
    (DENY, "*.a*.example.com", f"--net-deny: misplaced `*` in `*.a*.example.com` {WILD_HINT}"),
    (
        ALLOW,
        "*.1.2.3.4:443",
        "--net-allow: a wildcard needs a domain name, not an IP address: `*.1.2.3.4:443`",
    ),
    (ALLOW, "*.10", "--net-allow: a wildcard needs a domain name, not an IP address: `*.10`"),
    (ALLOW, "*..com", "--net-allow: invalid hostname `.com` in `*..com`"),
    (ALLOW, "*.-x.example", "--net-allow: invalid hostname `-x.example` in `*.-x.example`"),
    (ALLOW, "*.foo.123", "--net-allow: invalid hostname `foo.123` in `*.foo.123`"),
    (
        ALLOW,
        "*.10.0.0.0/8",
        "--net-allow: invalid network address `*.10.0.0.0` in `*.10.0.0.0/8`",
    ),
    (DENY, "*.com", f"--net-deny: wildcard `*.com` is too broad in `*.com` {BROAD_HINT}"),
]


@pytest.mark.parametrize(("flag", "spec", "message"), ERRORS)
def test_errors(flag: str, spec: str, message: str) -> None:
    """Every mistake is a PolicyError naming the flag and quoting the spec."""
    with pytest.raises(PolicyError) as info:
        parse_rule(spec, flag=flag)
    err = info.value
    assert str(err) == message
    assert str(err).startswith(f"{flag}: ")
    assert f"`{spec}`" in str(err)
    assert err.flag == flag
    assert err.spec == spec
    assert isinstance(err, ValueError)


def test_hostname_length_limit() -> None:
    """253 characters is the longest hostname; the trailing dot does not count."""
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(name) == 253
    assert parse_rule(name + ".", flag=ALLOW).host == name
    with pytest.raises(PolicyError, match="invalid hostname"):
        parse_rule(name + "d", flag=ALLOW)


@pytest.mark.parametrize(
    ("spec", "wildcard"),
    [("*.example.com:443", True), ("example.com", False), ("*", False), ("10.0.0.0/8", False)],
)
def test_rule_wildcard(spec: str, wildcard: bool) -> None:
    """`Rule.wildcard` tells a wildcard pattern from a hostname, an IP or any-IP."""
    rule = parse_rule(spec, flag=ALLOW)
    assert rule.wildcard is wildcard
    assert rule.host is None or is_wildcard(rule.host) is wildcard
