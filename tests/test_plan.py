"""The plan: rule strings parsed once, the hostname options and their defaults, the mode
chosen, hostnames resolved (an injected resolver, a patched getaddrinfo, or the fake
upstream on loopback: never real DNS), and what a run under it starts."""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import sandlock
from sandlock import names, upstream
from sandlock.errors import DnsConfigError, PolicyError, SandlockError
from sandlock.hostbook import HostBook
from sandlock.plan import TTL_MAX, TTL_MIN, NameOptions, Plan, make, parse, resolve_host

from .dnsfake import FakeUpstream

HOSTS = {
    "example.com": ["93.184.216.34", "2606:2800:220:1::1"],
    "api.example.org": ["203.0.113.5", "::ffff:203.0.113.6", "203.0.113.5"],
}
# Never asked: a resolver hook replaces the lookups, and an upstream given is only parsed.
NOWHERE = "192.0.2.53"


def fake_resolver(host: str) -> Sequence[str]:
    """Resolve from HOSTS; anything else does not exist."""
    try:
        return HOSTS[host]
    except KeyError:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None


def dns_mode(**options: object) -> NameOptions:
    """Options that choose the DNS-following mode, with an upstream that is never asked."""
    return NameOptions(dns_proxy=True, dns_upstream=NOWHERE, **options)  # type: ignore[arg-type]


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    """A fake upstream on 127.0.0.1 that knows one name."""
    with FakeUpstream() as upstream:
        upstream.add("api.example.test", "A", ["192.0.2.1"], ttl=5)
        upstream.add("api.example.test", "AAAA", ["::ffff:192.0.2.2"], ttl=60)
        yield upstream


# --- the options and their defaults ----------------------------------------------------


def test_name_option_defaults() -> None:
    """The defaults are written once: NameOptions, the CLI's parser and its fast reader,
    and the DNS book all take theirs from plan.py."""
    from sandlock._fastrun import parse_run
    from sandlock.cli import build_parser

    options = NameOptions()
    assert (options.ttl_min, options.ttl_max) == (TTL_MIN, TTL_MAX) == (30.0, 3600.0)
    assert (options.virtual_hosts, options.dns_proxy, options.dns_upstream) == (True, None, None)
    args = build_parser().parse_args(["run", "--", "x"])
    fast = parse_run(["run", "--", "x"], {})
    assert fast is not None
    for ns in (args, fast):
        assert (ns.dns_ttl_min, ns.dns_ttl_max) == (TTL_MIN, TTL_MAX)
    book = HostBook()
    assert (book.ttl_min, book.ttl_max) == (TTL_MIN, TTL_MAX)
    assert sandlock.NameOptions is NameOptions


def test_name_options_wire_round_trip() -> None:
    """to_wire gives the daemon's form; from_wire reads it back, a field left out at its
    default, and None as all defaults."""
    options = NameOptions(
        virtual_hosts=False,
        dns_proxy=True,
        dns_upstream="127.0.0.53",
        ttl_min=1.0,
        ttl_max=2.0,
        dns_allow_private=True,
        verify_names=True,
    )
    wire = options.to_wire()
    assert wire == {
        "virtual_hosts": False,
        "dns_proxy": True,
        "dns_upstream": "127.0.0.53",
        "ttl_min": 1.0,
        "ttl_max": 2.0,
        "dns_allow_private": True,
        "verify_names": True,
    }
    assert (
        repr(NameOptions.from_wire(wire))
        == repr(options)
        == (
            "NameOptions(dns_allow_private=True, dns_proxy=True, dns_upstream='127.0.0.53', "
            "ttl_max=2.0, ttl_min=1.0, verify_names=True, virtual_hosts=False)"
        )
    )
    defaults = repr(NameOptions())
    assert repr(NameOptions.from_wire({})) == repr(NameOptions.from_wire(None)) == defaults


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "name options must be an object"),
        ({"dns_upstream": 53}, "bad name options: dns_upstream must be a string"),
        ({"ttl_min": "soon"}, "bad name options: could not convert string to float: 'soon'"),
        ({"ttl_max": None}, "bad name options: float() argument must be a string or a real"),
        ({"ttl_min": 10, "ttl_max": 5}, "--dns-ttl-min/--dns-ttl-max: need 0 < min <= max"),
        ({"ttl_min": 0}, "--dns-ttl-min/--dns-ttl-max: need 0 < min <= max, got 0 and 3600"),
    ],
)
def test_name_options_from_wire_refuses(data: object, message: str) -> None:
    """A malformed wire form, or a TTL range that makes no sense, is a PolicyError."""
    with pytest.raises(PolicyError) as info:
        NameOptions.from_wire(data)
    assert str(info.value).startswith(message)


def test_name_options_dns_proxy_from_wire() -> None:
    """dns_proxy keeps its three values: on, off, and None (on when a rule names a host)."""
    for value in (True, False, None):
        assert NameOptions.from_wire({"dns_proxy": value}).dns_proxy is value


def test_plan_checks_the_ttl_range() -> None:
    """A plan refuses options whose TTL floor is above the ceiling, naming the flag."""
    with pytest.raises(PolicyError) as info:
        make([], [], NameOptions(ttl_min=10, ttl_max=5))
    assert info.value.flag == "--dns-ttl-min"
    assert str(info.value) == "--dns-ttl-min/--dns-ttl-max: need 0 < min <= max, got 10 and 5"


# --- parsing, once ---------------------------------------------------------------------


def test_parse_each_rule_once_in_order() -> None:
    """Allow, then deny, then --unix-allow: the first bad one is the error."""
    with pytest.raises(PolicyError) as info:
        parse(["ok.example", "h:0", "h:99999"], ["x.example"])
    assert info.value.spec == "h:0"
    with pytest.raises(PolicyError) as info:
        parse(["ok.example"], ["10.0.0.1", "x.example:0"], ["relative"])
    assert (info.value.flag, info.value.spec) == ("--net-deny", "x.example:0")
    with pytest.raises(PolicyError) as info:
        parse(["ok.example"], ["10.0.0.1"], ["relative"])
    assert info.value.flag == "--unix-allow"


def test_parsed_rules() -> None:
    """The parsed rules say which exact names start-up resolves (each once, with the
    first rule naming it) and which rules are wildcards."""
    rules = parse(
        ["*.example.com:443", "example.com:443", "udp://Example.com:53", "10.0.0.1", "b.test"],
        ["10.0.0.0/8"],
    )
    assert [r.spec for r in rules.allow][:2] == ["*.example.com:443", "example.com:443"]
    assert [r.spec for r in rules.deny] == ["10.0.0.0/8"]
    assert rules.unix is None
    assert rules.hostnames == {"example.com": "example.com:443", "b.test": "b.test"}
    assert rules.wildcards == ["*.example.com:443"]
    unix = parse([], [], ["@name"]).unix
    assert unix is not None and unix.specs == ("@name",)


def test_the_policy_keeps_the_parsed_rules() -> None:
    """The Policy holds the very rules parsed, and the unix rules."""
    plan = make(["10.0.0.1:80", "udp://*"], ["10.0.0.0/8"], unix_allow=["@x"])
    assert [r.spec for r in plan.policy.allow_rules] == ["10.0.0.1:80", "udp://*"]
    assert [r.spec for r in plan.policy.deny_rules] == ["10.0.0.0/8"]
    assert plan.policy.unix_rules is not None
    assert plan.policy.unix_rules.specs == ("@x",)


# --- hostnames resolved, once ----------------------------------------------------------


def test_each_hostname_resolved_once() -> None:
    """A hostname named by several rules is resolved a single time."""
    calls: list[str] = []

    def counting(host: str) -> Sequence[str]:
        calls.append(host)
        return fake_resolver(host)

    make(
        ["example.com:443", "udp://example.com:53", "Example.com", "api.example.org"],
        [],
        resolver=counting,
    )
    assert calls == ["example.com", "api.example.org"]


def test_resolved_addresses_are_stored_unmapped() -> None:
    """What the resolver gives is deduplicated, mapped addresses as IPv4."""
    plan = make(["api.example.org:443"], [], resolver=fake_resolver)
    assert plan.policy.host_addresses["api.example.org"] == ("203.0.113.5", "203.0.113.6")


def test_unresolvable_hostname_is_an_error() -> None:
    """A name that does not resolve stops the start with the flag, name and spec."""
    with pytest.raises(PolicyError) as info:
        make(["*", "nosuch.invalid:443"], [], resolver=fake_resolver)
    assert str(info.value) == (
        "--net-allow: cannot resolve `nosuch.invalid` in `nosuch.invalid:443`: "
        "Name or service not known"
    )
    assert info.value.flag == "--net-allow"
    assert info.value.spec == "nosuch.invalid:443"
    assert isinstance(info.value.__cause__, socket.gaierror)


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        ([], "no addresses"),
        (["not-an-ip"], "'not-an-ip' does not appear to be an IPv4 or IPv6 address"),
    ],
)
def test_resolver_without_usable_addresses(result: list[str], reason: str) -> None:
    """No address, or a junk address, is a start-up error too."""
    with pytest.raises(PolicyError) as info:
        make(["h:1"], [], resolver=lambda host: result)
    assert str(info.value) == f"--net-allow: cannot resolve `h` in `h:1`: {reason}"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (OSError("plain message"), "plain message"),
        (OSError(11, "Resource temporarily unavailable"), "Resource temporarily unavailable"),
        (UnicodeError("label too long"), "label too long"),
    ],
)
def test_resolver_errors(error: Exception, reason: str) -> None:
    """OSError and UnicodeError from the resolver become PolicyError."""

    def failing(host: str) -> Sequence[str]:
        raise error

    with pytest.raises(PolicyError) as info:
        make(["h"], [], resolver=failing)
    assert str(info.value) == f"--net-allow: cannot resolve `h` in `h`: {reason}"
    assert info.value.__cause__ is error


def test_default_resolver_uses_getaddrinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolving at start without `resolver=`: getaddrinfo gives every A and AAAA address,
    once each."""
    seen: list[object] = []

    def fake_getaddrinfo(host: str, port: object) -> list[tuple[object, ...]]:
        seen.append((host, port))
        tcp, udp = socket.SOCK_STREAM, socket.SOCK_DGRAM
        return [
            (socket.AF_INET, tcp, 6, "", ("192.0.2.1", 0)),
            (socket.AF_INET, udp, 17, "", ("192.0.2.1", 0)),
            (socket.AF_INET6, tcp, 6, "", ("2001:db8::1", 0, 0, 0)),
            (socket.AF_UNIX, tcp, 0, "", "/nowhere"),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    assert resolve_host("h.example") == ["192.0.2.1", "2001:db8::1"]
    plan = make(["h.example:443"], [], NameOptions(dns_proxy=False))
    assert plan.policy.host_addresses["h.example"] == ("192.0.2.1", "2001:db8::1")
    assert seen == [("h.example", None), ("h.example", None)]
    assert plan.upstream is None and not plan.seeds


def test_wildcards_are_not_resolved_and_start_empty() -> None:
    """A wildcard pattern never reaches the resolver and allows nothing until learned."""
    calls: list[str] = []

    def counting(host: str) -> Sequence[str]:
        calls.append(host)
        return fake_resolver(host)

    policy = make(
        ["*.example.com:443", "example.com:443"], [], dns_mode(), resolver=counting
    ).policy
    assert calls == ["example.com"]
    assert dict(policy.host_addresses) == {
        "*.example.com": (),
        "example.com": tuple(HOSTS["example.com"]),
    }
    assert not policy.decide("tcp", socket.inet_aton("198.51.100.9"), 443).allowed


def test_interrupt_is_called_before_each_lookup() -> None:
    """The daemon's interrupt runs before every lookup, and what it raises stops the rest."""

    class Gone(Exception):
        pass

    calls: list[str] = []

    def interrupt() -> None:
        calls.append("interrupt")
        if calls.count("interrupt") == 2:
            raise Gone

    def counting(host: str) -> Sequence[str]:
        calls.append(host)
        return fake_resolver(host)

    rules = parse(["example.com", "api.example.org", "other.example"], [])
    with pytest.raises(Gone):
        Plan(rules, resolver=counting, interrupt=interrupt)
    assert calls == ["interrupt", "example.com", "interrupt"]
    plan = Plan(parse(["example.com"], []), resolver=counting, interrupt=lambda: None)
    assert plan.policy.host_addresses["example.com"] == tuple(HOSTS["example.com"])


# --- the upstream: the DNS-following mode's start-up lookups ---------------------------


@pytest.mark.parametrize(
    "text, name, want",
    [
        ("127.0.0.1 localhost\n::1 localhost ip6-localhost\n", "localhost", ["127.0.0.1", "::1"]),
        ("127.0.0.1\tlocalhost\n", "localhost", ["127.0.0.1"]),  # (no ::1: none given)
        ("::1 localhost\n127.0.0.1 localhost\n", "localhost", ["::1", "127.0.0.1"]),
        ("# 127.0.0.9 localhost\n127.0.0.1 LocalHost. # a comment\n", "localhost", ["127.0.0.1"]),
        ("10.0.0.5 localhost\n127.0.1.1 localhost\n", "localhost", ["127.0.1.1"]),  # (loopback)
        ("10.0.0.5 localhost\n", "localhost", ["127.0.0.1", "::1"]),  # (none: RFC 6761's)
        ("127.0.0.1 localhost\n", "a.localhost", ["127.0.0.1", "::1"]),
        ("127.0.0.7 a.localhost\nnot-an-address a.localhost\n", "a.localhost", ["127.0.0.7"]),
        ("", "localhost", ["127.0.0.1", "::1"]),
    ],
)
def test_localhost_is_what_the_hosts_file_says(
    tmp_path: Path, text: str, name: str, want: list[str]
) -> None:
    """`localhost` in DNS mode: the loopback addresses the system's hosts file gives it,
    in its order (a `::1` it does not list would send the command's clients there first,
    to a server listening on 127.0.0.1 only), else both loopback addresses."""
    from sandlock.plan import local_addresses

    hosts = tmp_path / "hosts"
    hosts.write_text(text)
    assert local_addresses(name, str(hosts)) == want
    assert local_addresses(name, str(tmp_path / "missing")) == ["127.0.0.1", "::1"]


def test_upstream_resolves_and_seeds_the_book(
    fake: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In DNS mode the start-up lookups go to the upstream, and their TTLs are kept as
    seeds for the forwarder's book; `localhost` is loopback, asked of nobody (the hosts
    file's loopback addresses for it; 127.0.0.1 and ::1 for a name it does not list)."""
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost\n")
    monkeypatch.setattr("sandlock.plan.SYSTEM_HOSTS", str(hosts))
    options = NameOptions(dns_upstream=f"[::ffff:127.0.0.1]:{fake.port}")
    plan = make(["api.example.test:443", "localhost:80", "a.localhost"], [], options)
    assert plan.dns_on and plan.upstream == ("127.0.0.1", fake.port)
    assert plan.policy.host_addresses == {
        "api.example.test": ("192.0.2.1", "192.0.2.2"),
        "localhost": ("127.0.0.1", "::1"),
        "a.localhost": ("127.0.0.1", "::1"),
    }
    assert plan.seeds == {"api.example.test": [("192.0.2.1", 5), ("192.0.2.2", 60)]}
    assert {name for name, _type, _how in fake.queries} == {"api.example.test"}


def test_upstream_without_dns_mode(fake: FakeUpstream) -> None:
    """--dns-upstream with --no-dns-proxy: the start-up lookups still go there."""
    options = NameOptions(dns_proxy=False, dns_upstream=f"127.0.0.1:{fake.port}")
    plan = make(["api.example.test"], [], options)
    assert not plan.dns_on
    assert plan.policy.host_addresses["api.example.test"] == ("192.0.2.1", "192.0.2.2")


def test_upstream_errors_name_the_rule(fake: FakeUpstream) -> None:
    """A name the upstream does not know is a PolicyError quoting the rule and the
    upstream's answer."""
    with pytest.raises(PolicyError) as info:
        make(["nosuch.test:443"], [], NameOptions(dns_upstream=f"127.0.0.1:{fake.port}"))
    assert str(info.value) == (
        f"--net-allow: cannot resolve `nosuch.test` in `nosuch.test:443`: "
        f"NXDOMAIN from 127.0.0.1:{fake.port}"
    )
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.EHOSTUNREACH


def test_bad_upstream_is_a_policy_error() -> None:
    """--dns-upstream is parsed by the plan: a bad one is refused before any lookup."""
    with pytest.raises(DnsConfigError, match="--dns-upstream: invalid address `nowhere`"):
        make([], [], NameOptions(dns_upstream="nowhere"))


def test_system_upstream(monkeypatch: pytest.MonkeyPatch, fake: FakeUpstream) -> None:
    """Without --dns-upstream, DNS mode asks the first nameserver of /etc/resolv.conf; a
    resolv.conf that names none is an error naming the flag."""
    monkeypatch.setattr(
        upstream, "system_upstreams", lambda: [("127.0.0.1", fake.port), ("192.0.2.1", 53)]
    )
    assert make(["api.example.test"], []).upstream == ("127.0.0.1", fake.port)
    monkeypatch.setattr(upstream, "system_upstreams", lambda: [])
    with pytest.raises(PolicyError) as info:
        make(["api.example.test"], [])
    assert info.value.flag == "--dns-upstream"
    assert "/etc/resolv.conf names no nameserver" in str(info.value)


# --- the mode --------------------------------------------------------------------------


def test_no_hostname_no_mode() -> None:
    """Rules without hostnames need nothing at run time: no forwarder, no virtual file."""
    plan = make(["127.0.0.1:80"], ["127.0.0.2"])
    assert (plan.dns_on, plan.has_hosts, plan.trap_open) == (False, False, False)
    assert plan.start(plan.policy) is None


def test_dns_mode_is_the_default_for_hostnames(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule naming a host turns the DNS-following mode on, unless a resolver hook or
    --no-dns-proxy asks for resolving at start; --dns-proxy turns it on without hosts."""
    monkeypatch.setattr(upstream, "system_upstreams", lambda: [(NOWHERE, 53)])
    monkeypatch.setattr(upstream, "lookup", lambda upstream, name: [("192.0.2.1", 60)])
    assert make(["h.test"], []).dns_on
    assert not make(["example.com"], [], resolver=fake_resolver).dns_on
    assert not make(
        ["example.com"], [], NameOptions(dns_proxy=False), resolver=fake_resolver
    ).dns_on
    assert make(["example.com"], [], NameOptions(dns_proxy=True), resolver=fake_resolver).dns_on
    assert make([], [], NameOptions(dns_proxy=True)).dns_on
    assert not make([], []).dns_on


@pytest.mark.parametrize(
    ("options", "resolver"),
    [(NameOptions(dns_proxy=False), None), (NameOptions(), fake_resolver)],
    ids=["no-dns-proxy", "resolver-hook"],
)
def test_wildcard_needs_dns_mode(options: NameOptions, resolver: object) -> None:
    """A wildcard rule has nothing to resolve at start: without the DNS-following mode
    it is an error, quoting the rule."""
    with pytest.raises(PolicyError) as info:
        make(["10.0.0.1", "*.example.com:443"], [], options, resolver=resolver)  # type: ignore[arg-type]
    assert str(info.value) == (
        "--net-allow: `*.example.com:443` is a wildcard rule, which needs the DNS proxy (its "
        "addresses come from the command's lookups): drop --no-dns-proxy"
    )
    assert (info.value.flag, info.value.spec) == ("--net-allow", "*.example.com:443")


def test_trap_open() -> None:
    """Opens are trapped when some file is virtual: in DNS mode, or when hostnames are
    resolved at start and the virtual /etc/hosts is on."""
    hosts = ["example.com"]
    assert make(hosts, [], resolver=fake_resolver).trap_open
    assert not make(hosts, [], NameOptions(virtual_hosts=False), resolver=fake_resolver).trap_open
    assert make(hosts, [], dns_mode(virtual_hosts=False), resolver=fake_resolver).trap_open


def test_learn_mode() -> None:
    """Learn mode resolves exact names at start, keeps wildcards (empty), and needs
    nothing at run time, whatever the options say."""
    plan = make(
        ["*.example.com", "example.com"], [], dns_mode(), resolver=fake_resolver, learn=True
    )
    assert (plan.dns_on, plan.trap_open, plan.upstream) == (False, False, None)
    assert dict(plan.policy.host_addresses) == {
        "*.example.com": (),
        "example.com": tuple(HOSTS["example.com"]),
    }


# --- start: what each run needs --------------------------------------------------------


def _refuse_bind() -> tuple[socket.socket, socket.socket]:
    raise OSError(errno.EACCES, "Permission denied")


@contextlib.contextmanager
def started(plan: Plan) -> Iterator[names.Names]:
    """What one run under ``plan`` needs, closed on leaving."""
    run = plan.start(plan.policy)
    assert run is not None
    try:
        yield run
    finally:
        run.close()


def test_start_resolving_at_start() -> None:
    """Hostnames resolved at start: each run gets a virtual /etc/hosts, no forwarder."""
    plan = make(["example.com"], [], resolver=fake_resolver)
    with started(plan) as run:
        assert not run.dns_mode and run.trap_open


def test_start_binds_the_forwarder() -> None:
    """In DNS mode each run gets its own forwarder on port 53 of a 127.53.X.Y (as root)."""
    plan = make(["example.com"], [], dns_mode(), resolver=fake_resolver)
    with started(plan) as run:
        assert run.dns_mode and run.address is not None and run.address.startswith("127.53.")
        assert run.upstream == (NOWHERE, 53)


def test_start_falls_back_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fake: FakeUpstream
) -> None:
    """DNS mode by default, and port 53 out of reach: the run keeps the addresses
    resolved at start, and says so on stderr."""
    monkeypatch.setattr(names, "bind_forwarder", _refuse_bind)
    plan = make(["api.example.test"], [], NameOptions(dns_upstream=f"127.0.0.1:{fake.port}"))
    assert plan.dns_on
    with started(plan) as run:
        assert not run.dns_mode and run.trap_open
    assert capsys.readouterr().err == (
        "sandlock: DNS proxy unavailable (Permission denied; port 53 needs root or "
        "CAP_NET_BIND_SERVICE): hostnames are resolved once at start\n"
    )


@pytest.mark.parametrize(
    ("allow", "options"),
    [
        (["*.example.com"], NameOptions(dns_upstream=NOWHERE)),
        (["example.com"], dns_mode()),
        ([], dns_mode()),
    ],
    ids=["wildcard", "dns-proxy-given", "dns-proxy-without-hosts"],
)
def test_start_fails_when_dns_mode_is_required(
    monkeypatch: pytest.MonkeyPatch, allow: list[str], options: NameOptions
) -> None:
    """With a wildcard rule, or --dns-proxy given, a forwarder that cannot bind is an
    error, not a fallback."""
    monkeypatch.setattr(names, "bind_forwarder", _refuse_bind)
    plan = make(allow, [], options, resolver=fake_resolver if options.dns_proxy else None)
    with pytest.raises(SandlockError, match="cannot start the DNS proxy on port 53"):
        plan.start(plan.policy)


# --- HTTP rules: carried by the policy, swapped while a run goes on ----------------------


def test_the_policy_carries_the_http_rules() -> None:
    """The plan's HTTP rules ride in its policy, and the DNS mode's and an ask's new
    policies (with_hosts, with_allow) keep them: the relay reads them there."""
    from sandlock.rules import parse_rule

    options = NameOptions(http_allow=["GET example.com/a/*"], http_ports=[8080])
    policy = make([], [], options, resolver=fake_resolver).policy
    http = policy.http_rules
    assert http is not None and [r.spec for r in http.allow] == ["GET example.com/a/*"]
    assert http.ports == frozenset({8080})
    assert policy.with_hosts({"example.com": ["192.0.2.9"]}).http_rules is http
    assert policy.with_allow(parse_rule("api.example.org", flag="--ask")).http_rules is http
    assert make([], [], resolver=fake_resolver).policy.http_rules is None


def test_swap_options_replace_both_lists_or_keep_those_in_force() -> None:
    """Either HTTP list given replaces both (one left out: empty); neither keeps those of
    the policy in force; the run's own options (ports, TLS, hostname mode) stay."""
    from sandlock.plan import swap_options

    run = NameOptions(
        dns_proxy=False, http_allow=["GET */a/*"], http_deny=["GET */a/no"], http_ports=[8080]
    )
    current = make([], [], run).policy
    swapped = swap_options(run, current, ["GET */b/*"], None)
    assert (swapped.http_allow, swapped.http_deny) == (("GET */b/*",), ())
    assert (swapped.http_ports, swapped.dns_proxy) == ((8080,), False)
    later = make([], [], swapped, interposed=True).policy
    kept = swap_options(run, later, None, None)
    assert (kept.http_allow, kept.http_deny) == (("GET */b/*",), ())
    emptied = swap_options(run, later, [], None)
    with pytest.raises(PolicyError, match="not a string"):
        swap_options(run, later, "GET */b/*", None)
    # No list left: the relay stays (the ports are the run's) and passes every request.
    none = make([], [], emptied, interposed=True).policy.http_rules
    assert none is not None and not none and none.ports == frozenset({8080})
    assert not none.decide("GET", "x", 8080, "/a", bound=False).rule


def test_swap_options_refuse_http_rules_to_a_run_without_them() -> None:
    """A run started without HTTP rules has no relay: a swap giving it some is a one-line
    PolicyError naming the flag; one giving none (or empty lists) is not."""
    from sandlock.plan import swap_options

    run = NameOptions(dns_proxy=False)
    current = make(["127.0.0.1"], [], run).policy
    with pytest.raises(PolicyError, match=r"^--http-deny: this sandbox started without") as err:
        swap_options(run, current, None, ["GET */x"])
    assert "\n" not in str(err.value) and err.value.flag == "--http-deny"
    assert swap_options(run, current, None, None) is run
    assert make([], [], swap_options(run, current, [], [])).policy.http_rules is None


def test_a_swap_under_http_tls_needs_no_rule_nor_the_ca_file() -> None:
    """--http-tls without rules is an error at the start, not in a swap (the run
    intercepts TLS whatever its rules), and --http-upstream-ca, loaded at the start, is
    not read again."""
    options = NameOptions(http_tls=True, http_upstream_ca="/nonexistent.pem")
    with pytest.raises(PolicyError, match="--http-tls: no HTTP rule"):
        make([], [], NameOptions(http_tls=True))
    with pytest.raises(PolicyError, match="--http-upstream-ca: no such file"):
        make([], [], NameOptions.from_wire(options.to_wire() | {"http_allow": ["GET */"]}))
    http = make([], [], options, interposed=True).policy.http_rules
    assert http is not None and http.ports == frozenset({80, 443})
