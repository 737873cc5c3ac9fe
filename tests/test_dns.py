"""The DNS-following mode: upstream parsing, start-up lookups, the host book and the
forwarder, served on 127.0.0.1 against a fake upstream (loopback only, never real DNS)."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rrset
import pytest
import trio
import trio.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sandlock.dns import (
    Forwarder,
    Record,
    open_forwarder_sockets,
    serve,
    serve_tcp,
    serve_udp,
)
from sandlock.errors import DnsConfigError, PolicyError
from sandlock.hostbook import HostBook
from sandlock.plan import NameOptions, make
from sandlock.policy import Policy
from sandlock.upstream import (
    DnsLookupError,
    Upstream,
    lookup,
    parse_upstream,
    resolver_for,
    system_upstreams,
)

from .dnsfake import FakeUpstream

IO_LIMIT = 10.0  # every I/O test finishes well within this, or fails
HINT = "(expected IP[:PORT], as in `127.0.0.53`, `127.0.0.53:5300` or `[::1]:53`)"
SPECS = ["*.example.test:443", "api.example.test:443", "udp://*.b.example.test:53"]


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        upstream.add("api.example.test", "A", ["192.0.2.1"], ttl=5)
        upstream.add("api.example.test", "AAAA", ["2001:db8::1"], ttl=99999)
        upstream.add("api.example.test", "TXT", ['"secret"'])
        upstream.add("a.example.test", "A", ["192.0.2.10", "192.0.2.11"], ttl=600)
        upstream.add("www.example.test", "CNAME", ["edge.cdn.test."], ttl=300)
        upstream.add("edge.cdn.test", "CNAME", ["node.cdn.test."], ttl=300)
        upstream.add("node.cdn.test", "A", ["198.51.100.7"], ttl=60)
        upstream.add("other.test", "A", ["203.0.113.1"])
        yield upstream


def where(fake: FakeUpstream) -> Upstream:
    return (fake.address, fake.port)


def closed_port() -> int:
    """A loopback UDP port nobody listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- parse_upstream, system_upstreams ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.53", ("127.0.0.53", 53)),
        ("127.0.0.53:5300", ("127.0.0.53", 5300)),
        (" 127.0.0.1:53 ", ("127.0.0.1", 53)),
        ("[::1]:53", ("::1", 53)),
        ("[::1]", ("::1", 53)),
        ("::1", ("::1", 53)),
        ("::ffff:127.0.0.1", ("127.0.0.1", 53)),
        ("[::ffff:127.0.0.1]:5353", ("127.0.0.1", 5353)),
    ],
)
def test_parse_upstream(text: str, expected: Upstream) -> None:
    """IP[:PORT], bracketed IPv6 with a port, bare IPv6; port 53 by default; mapped is IPv4."""
    assert parse_upstream(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", f"invalid address `` in `` {HINT}"),
        ("dns.example", f"invalid address `dns.example` in `dns.example` {HINT}"),
        ("1.2.3", f"invalid address `1.2.3` in `1.2.3` {HINT}"),
        ("[::1", f"invalid address `[::1` in `[::1` {HINT}"),
        ("[::1]53", f"invalid address `[::1]53` in `[::1]53` {HINT}"),
        ("[h]:53", f"invalid address `h` in `[h]:53` {HINT}"),
        ("127.0.0.1:", "invalid port `` in `127.0.0.1:` (ports are 1-65535)"),
        ("127.0.0.1:0", "invalid port `0` in `127.0.0.1:0` (ports are 1-65535)"),
        ("127.0.0.1:dns", "invalid port `dns` in `127.0.0.1:dns` (ports are 1-65535)"),
        ("[::1]:65536", "invalid port `65536` in `[::1]:65536` (ports are 1-65535)"),
        (
            "1.1.1.1:\u0665\u0663",
            "invalid port `\u0665\u0663` in `1.1.1.1:\u0665\u0663` (ports are 1-65535)",
        ),
    ],
)
def test_parse_upstream_errors(text: str, message: str) -> None:
    """A bad --dns-upstream is one line naming the flag, a PolicyError (so a ValueError)."""
    with pytest.raises(DnsConfigError) as info:
        parse_upstream(text)
    assert str(info.value) == f"--dns-upstream: {message}"
    assert (info.value.flag, info.value.spec) == ("--dns-upstream", text)
    assert isinstance(info.value, PolicyError)
    assert isinstance(info.value, ValueError)


def test_system_upstreams(tmp_path: Path) -> None:
    """Every `nameserver` line of resolv.conf, port 53; none, or no file, gives []."""
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nnameserver 127.0.0.53\nnameserver ::1\nsearch example.test\n")
    assert system_upstreams(str(conf)) == [("127.0.0.53", 53), ("::1", 53)]
    conf.write_text("search example.test\n")
    assert system_upstreams(str(conf)) == []
    assert system_upstreams(str(tmp_path / "missing")) == []
    conf.write_text("nameserver bogus\n")
    with pytest.raises(
        DnsConfigError, match=r"resolv\.conf: .*bogus.* \(pass --dns-upstream IP\[:PORT\]\)$"
    ):
        system_upstreams(str(conf))


# --- lookup, resolver_for (blocking, against the fake in its thread) -------------------


def test_lookup_returns_addresses_with_ttls(fake: FakeUpstream) -> None:
    """A and AAAA, each address once with the TTL of its record set, over UDP."""
    assert lookup(where(fake), "API.example.test.", timeout=5) == [
        ("192.0.2.1", 5),
        ("2001:db8::1", 99999),
    ]
    assert fake.queries == [("api.example.test", "A", "udp"), ("api.example.test", "AAAA", "udp")]


def test_lookup_follows_cname_chain(fake: FakeUpstream) -> None:
    """The addresses at the end of a CNAME chain are the name's addresses."""
    assert lookup(where(fake), "www.example.test", timeout=5) == [("198.51.100.7", 60)]


def test_lookup_truncated_retries_over_tcp(fake: FakeUpstream) -> None:
    """A reply with TC is asked again over TCP."""
    fake.truncate_udp = True
    assert sorted(lookup(where(fake), "a.example.test", timeout=5)) == [
        ("192.0.2.10", 600),
        ("192.0.2.11", 600),
    ]
    assert [transport for _name, _type, transport in fake.queries] == ["udp", "tcp"] * 2


def test_lookup_name_without_addresses(fake: FakeUpstream) -> None:
    """A name that exists but has no A/AAAA gives [] (the plan then says so)."""
    fake.add("txt-only.test", "TXT", ['"x"'])
    assert lookup(where(fake), "txt-only.test", timeout=5) == []


@pytest.mark.parametrize(
    ("name", "rcode"), [("nosuch.test", "NXDOMAIN"), ("broken.test", "SERVFAIL")]
)
def test_lookup_errors(fake: FakeUpstream, name: str, rcode: str) -> None:
    """Any rcode but NOERROR is a DnsLookupError (an OSError) naming rcode and upstream."""
    fake.rcodes["broken.test"] = "SERVFAIL"
    with pytest.raises(DnsLookupError) as info:
        lookup(where(fake), name, timeout=5)
    assert str(info.value) == f"{rcode} from 127.0.0.1:{fake.port}"
    assert info.value.strerror == str(info.value)
    assert isinstance(info.value, OSError)


def test_lookup_timeout(fake: FakeUpstream) -> None:
    """An upstream that never answers is an error after `timeout`."""
    fake.silent = True
    with pytest.raises(
        DnsLookupError, match=rf"^no answer from 127\.0\.0\.1:{fake.port} within 0\.2 s$"
    ):
        lookup(where(fake), "api.example.test", timeout=0.2)


def test_lookup_network_error() -> None:
    """A send the kernel refuses is an error naming the upstream."""
    with pytest.raises(DnsLookupError, match=r"^\[::1\]:0: "):
        lookup(("::1", 0), "api.example.test", timeout=1)


def test_lookup_bad_name() -> None:
    """A name DNS cannot carry fails before anything is sent."""
    with pytest.raises(DnsLookupError, match=r"^not a DNS name: "):
        lookup(("127.0.0.1", closed_port()), "a" * 64 + ".test", timeout=1)


def dns_policy(
    specs: Sequence[str], resolver: Callable[[str], Sequence[str]], deny: Sequence[str] = ()
) -> Policy:
    """The plan's policy of ``specs`` (and ``deny``) in the DNS-following mode, its exact
    names resolved by ``resolver`` (the upstream given is only parsed)."""
    options = NameOptions(dns_proxy=True, dns_upstream="127.0.0.1")
    return make(specs, deny, options, resolver=resolver).policy


def test_resolver_for_feeds_policy(fake: FakeUpstream) -> None:
    """The plan resolves exact names at the upstream, and reports its errors as usual."""
    policy = dns_policy(SPECS, resolver_for(where(fake), timeout=5))
    assert dict(policy.host_addresses) == {
        "*.example.test": (),
        "api.example.test": ("192.0.2.1", "2001:db8::1"),
        "*.b.example.test": (),
    }
    with pytest.raises(PolicyError) as info:
        dns_policy(["nosuch.test:443"], resolver_for(where(fake)))
    assert str(info.value) == (
        f"--net-allow: cannot resolve `nosuch.test` in `nosuch.test:443`: "
        f"NXDOMAIN from 127.0.0.1:{fake.port}"
    )


# --- HostBook --------------------------------------------------------------------------


def test_book_clamps_ttls() -> None:
    """TTLs are held at least ttl_min and at most ttl_max seconds."""
    book = HostBook()
    assert book.learn("h", [("192.0.2.1", 0)], now=100.0)
    assert book.next_expiry() == 130.0
    book = HostBook(ttl_min=10, ttl_max=20)
    book.learn("h", [("192.0.2.1", 86400), ("192.0.2.2", 15)], now=0.0)
    assert not book.expire(14.9)
    assert book.expire(15.0)
    assert book.addresses("h") == ("192.0.2.1",)
    assert book.next_expiry() == 20.0


def test_book_learn_reports_changes_and_extends() -> None:
    """Only a new address is a change; learning one again pushes its expiry later, never sooner."""
    book = HostBook()
    assert book.learn("*.example.test", [("192.0.2.1", 60), ("::ffff:192.0.2.2", 60)], now=0.0)
    assert book.addresses("*.example.test") == ("192.0.2.1", "192.0.2.2")
    assert not book.learn("*.example.test", [("192.0.2.2", 300)], now=10.0)
    assert not book.learn("*.example.test", [("192.0.2.2", 30)], now=20.0)
    assert book.expire(60.0)
    assert book.addresses("*.example.test") == ("192.0.2.2",)
    assert not book.expire(309.9)
    assert book.expire(310.0)
    assert book.as_mapping() == {"*.example.test": ()}
    assert book.next_expiry() is None
    assert book.learn("*.example.test", [("192.0.2.1", 60)], now=400.0)


def test_book_keys_are_separate() -> None:
    """An address is held per host key; unknown keys have none."""
    book = HostBook()
    book.learn("a.test", [("192.0.2.1", 60)], now=0.0)
    assert book.learn("*.b.test", [("192.0.2.1", 60)], now=0.0)
    assert book.as_mapping() == {"a.test": ("192.0.2.1",), "*.b.test": ("192.0.2.1",)}
    assert book.addresses("c.test") == ()
    assert not book.learn("c.test", [], now=0.0)


@pytest.mark.parametrize(("ttl_min", "ttl_max"), [(0, 10), (-1, 10), (20, 10)])
def test_book_rejects_bad_bounds(ttl_min: float, ttl_max: float) -> None:
    """The floor must be positive and not above the ceiling."""
    with pytest.raises(ValueError, match="ttl_min"):
        HostBook(ttl_min=ttl_min, ttl_max=ttl_max)


# --- the forwarder, served on 127.0.0.1 ------------------------------------------------


class Env:
    """A forwarder on 127.0.0.1 wired like the integrator will: learn -> swap policy."""

    def __init__(
        self,
        fake: FakeUpstream,
        specs: Sequence[str],
        deny: Sequence[str] = (),
        **options: object,
    ) -> None:
        self.book = HostBook()
        self.policy = dns_policy(specs, lambda host: ["192.0.2.99"], deny)
        self.records: list[Record] = []
        self.swaps = 0
        upstream = options.pop("upstream", where(fake))
        self.fwd = Forwarder(
            lambda: self.policy,
            upstream,  # type: ignore[arg-type]
            self.book,
            on_learn=self.swap,
            on_record=self.records.append,
            **options,  # type: ignore[arg-type]
        )
        self.port = 0

    def swap(self) -> None:
        self.policy = self.policy.with_hosts(self.book.as_mapping())
        self.swaps += 1

    def allows(self, proto: str, address: str, port: int) -> bool:
        return self.policy.decide(proto, socket.inet_pton(_family(address), address), port).allowed

    async def udp(self, name: str, rdtype: str = "A", **query: object) -> dns.message.Message:
        """Ask over UDP with dnspython (in a thread, as the command would)."""
        message = dns.message.make_query(name, rdtype, **query)  # type: ignore[arg-type]
        return await trio.to_thread.run_sync(dns.query.udp, message, "127.0.0.1", 5, self.port)

    async def tcp(self, name: str, rdtype: str = "A") -> dns.message.Message:
        message = dns.message.make_query(name, rdtype)
        return await trio.to_thread.run_sync(dns.query.tcp, message, "127.0.0.1", 5, self.port)


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


@asynccontextmanager
async def running(
    fake: FakeUpstream, specs: Sequence[str] = SPECS, deny: Sequence[str] = (), **options: object
) -> AsyncIterator[Env]:
    env = Env(fake, specs, deny, **options)
    udp, tcp = await open_forwarder_sockets("127.0.0.1", 0)
    env.port = udp.getsockname()[1]
    with udp, tcp:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, env.fwd, udp, tcp)
            yield env
            nursery.cancel_scope.cancel()


def addresses(reply: dns.message.Message) -> list[str]:
    return [rdata.to_text() for rrset in reply.answer for rdata in rrset if rrset.rdtype in (1, 28)]


async def test_exact_name_forwarded_and_learned(fake: FakeUpstream) -> None:
    """An allowed name is forwarded, its addresses learned with clamped TTLs, before the reply."""
    with trio.fail_after(IO_LIMIT):
        async with running(fake) as env:
            fake.queries.clear()
            start = trio.current_time()
            reply = await env.udp("api.example.test")
            assert reply.rcode() == dns.rcode.NOERROR
            assert addresses(reply) == ["192.0.2.1"]
            assert reply.answer[0].ttl == 5
            assert fake.queries == [("api.example.test", "A", "udp")]
            assert env.book.addresses("api.example.test") == ("192.0.2.1",)
            assert env.allows("tcp", "192.0.2.1", 443)
            assert 30 <= env.book.next_expiry() - start < 31  # type: ignore[operator]
            aaaa = await env.udp("api.example.test", "AAAA")
            assert aaaa.answer[0].ttl == 3600  # capped in the reply too
            assert env.allows("tcp", "2001:db8::1", 443)
            assert env.records[0] == {
                "syscall": "dns",
                "proto": "udp",
                "host": "api.example.test",
                "qtype": "A",
                "action": "allow",
                "rule": "api.example.test",
                "answers": ["192.0.2.1"],
                "rcode": "NOERROR",
            }


async def test_wildcard_learned_under_pattern(fake: FakeUpstream) -> None:
    """A name under `*.example.test` is learned under the pattern; the decision names it."""
    with trio.fail_after(IO_LIMIT):
        async with running(fake) as env:
            reply = await env.udp("A.Example.Test")
            assert sorted(addresses(reply)) == ["192.0.2.10", "192.0.2.11"]
            assert sorted(env.book.addresses("*.example.test")) == ["192.0.2.10", "192.0.2.11"]
            assert list(env.book.as_mapping()) == ["*.example.test"]
            decision = env.policy.decide("tcp", socket.inet_aton("192.0.2.11"), 443)
            assert (decision.allowed, decision.host) == (True, "*.example.test")
            assert not env.allows("tcp", "192.0.2.11", 80)
            assert env.swaps == 1
            await env.udp("a.example.test")
            assert env.swaps == 1  # nothing new: no swap


async def test_cname_targets_learned_under_queried_rule(fake: FakeUpstream) -> None:
    """The addresses at the end of a CNAME chain are allowed under the queried name's rule."""
    with trio.fail_after(IO_LIMIT):
        async with running(fake) as env:
            reply = await env.udp("www.example.test")
            assert [rrset.rdtype for rrset in reply.answer] == [5, 5, 1]
            assert env.book.as_mapping() == {"*.example.test": ("198.51.100.7",)}
            assert env.policy.host_for_name("node.cdn.test") is None
            assert env.allows("tcp", "198.51.100.7", 443)


async def test_records_off_the_chain_allow_nothing(fake: FakeUpstream) -> None:
    """A record in the answer that the queried name does not lead to is passed on, not learned."""
    fake.stray = ["stray.test. 60 IN A 192.0.2.200", "stray.test. 60 IN CNAME x.test."]
    with trio.fail_after(IO_LIMIT):
        async with running(fake) as env:
            reply = await env.udp("www.example.test")
            assert "192.0.2.200" in addresses(reply)
            assert env.book.as_mapping() == {"*.example.test": ("198.51.100.7",)}
            assert not env.allows("tcp", "192.0.2.200", 443)


async def test_unlisted_name_nxdomain_never_forwarded(fake: FakeUpstream) -> None:
    """A name no rule covers is NXDOMAIN at once; the upstream never sees it (no tunnel)."""
    with trio.fail_after(IO_LIMIT):
        async with running(fake) as env:
            fake.queries.clear()
            for name in ("other.test", "example.test", "data-to-leak.attacker.test"):
                reply = await env.udp(name)
                assert reply.rcode() == dns.rcode.NXDOMAIN
                assert reply.flags & dns.flags.RA
            assert fake.queries == []
            assert env.records[-1]["action"] == "deny"
            assert env.records[-1]["rule"] is None
            assert env.records[-1]["rcode"] == "NXDOMAIN"


async def test_other_types_refused_never_forwarded(fake: FakeUpstream) -> None:
    """TXT (or ANY, NULL, HTTPS) on an allowed name is REFUSED without asking upstream."""
    with trio.fail_after(IO_LIMIT):
        async with running(fake) as env:
            fake.queries.clear()
            for rdtype in ("TXT", "ANY", "NULL", "HTTPS", "CNAME"):
                reply = await env.udp("api.example.test", rdtype)
                assert reply.rcode() == dns.rcode.REFUSED
            assert fake.queries == []
            assert env.records[0]["rule"] == "api.example.test"
            assert (env.records[0]["qtype"], env.records[0]["action"]) == ("TXT", "deny")


async def test_extra_types_are_forwarded(fake: FakeUpstream) -> None:
    """`extra_types` opens more record types on purpose; nothing is learned from them."""
    with trio.fail_after(IO_LIMIT):
        async with running(fake, extra_types=["TXT"]) as env:
            reply = await env.udp("api.example.test", "TXT")
            assert reply.answer[0].to_text() == 'api.example.test. 300 IN TXT "secret"'
            assert env.book.as_mapping() == {"api.example.test": ()}


def test_unknown_extra_type_is_an_error(fake: FakeUpstream) -> None:
    """A type name dnspython does not know is a ValueError at construction."""
    with pytest.raises(ValueError, match="unknown DNS record type 'NOPE'"):
        Env(fake, SPECS, extra_types=["NOPE"])


async def test_upstream_down_is_servfail_quickly(fake: FakeUpstream) -> None:
    """A refused upstream gives SERVFAIL well before the timeout; nothing is learned."""
    with trio.fail_after(IO_LIMIT):
        async with running(fake, upstream=("127.0.0.1", closed_port()), timeout=5) as env:
            started = time.monotonic()
            reply = await env.udp("api.example.test")
            assert reply.rcode() == dns.rcode.SERVFAIL
            assert time.monotonic() - started < 2
            assert env.records[0]["action"] == "allow"
            assert env.records[0]["rcode"] == "SERVFAIL"


async def test_upstream_silent_is_servfail_after_timeout(fake: FakeUpstream) -> None:
    """An upstream that never answers gives SERVFAIL after the forwarder's timeout."""
    fake.silent = True
    with trio.fail_after(IO_LIMIT):
        async with running(fake, timeout=0.3) as env:
            reply = await env.udp("api.example.test")
            assert reply.rcode() == dns.rcode.SERVFAIL


async def test_upstream_rcode_passed_on_nothing_learned(fake: FakeUpstream) -> None:
    """The upstream's NXDOMAIN reaches the command; a failed answer teaches nothing."""
    with trio.fail_after(IO_LIMIT):
        async with running(fake) as env:
            reply = await env.udp("nosuch.example.test")
            assert reply.rcode() == dns.rcode.NXDOMAIN
            assert env.records[0]["action"] == "allow"
            assert env.book.as_mapping() == {}


async def test_forged_reply_is_ignored(fake: FakeUpstream) -> None:
    """A datagram that does not answer our query (wrong id) is skipped, not learned."""
    fake.forge_first = True
    with trio.fail_after(IO_LIMIT):
        async with running(fake) as env:
            reply = await env.udp("api.example.test")
            assert addresses(reply) == ["192.0.2.1"]
            assert env.book.addresses("api.example.test") == ("192.0.2.1",)


async def test_truncated_upstream_reply_retried_over_tcp(fake: FakeUpstream) -> None:
    """When the upstream sets TC, the forwarder asks again over TCP."""
    fake.truncate_udp = True
    with trio.fail_after(IO_LIMIT):
        async with running(fake, specs=["*.example.test"]) as env:
            reply = await env.udp("a.example.test")
            assert sorted(addresses(reply)) == ["192.0.2.10", "192.0.2.11"]
            assert not reply.flags & dns.flags.TC
            assert fake.queries == [("a.example.test", "A", "udp"), ("a.example.test", "A", "tcp")]


async def test_upstream_tcp_failure_is_servfail(fake: FakeUpstream) -> None:
    """TC from upstream, then a TCP connection closed without a reply: SERVFAIL."""
    fake.truncate_udp = True
    fake.tcp_hangup = True
    with trio.fail_after(IO_LIMIT):
        async with running(fake, specs=["*.example.test"]) as env:
            reply = await env.udp("a.example.test")
            assert reply.rcode() == dns.rcode.SERVFAIL
            assert env.book.as_mapping() == {}


async def test_big_reply_truncated_for_the_command(fake: FakeUpstream) -> None:
    """A reply bigger than the command's UDP size gets TC; over TCP it comes whole."""
    fake.add("big.example.test", "A", [f"192.0.2.{i}" for i in range(1, 60)])
    with trio.fail_after(IO_LIMIT):
        async with running(fake) as env:
            small = await env.udp("big.example.test", use_edns=False)
            assert small.flags & dns.flags.TC
            whole = await env.tcp("big.example.test")
            assert len(addresses(whole)) == 59
            assert len(env.book.addresses("*.example.test")) == 59
            edns = await env.udp("big.example.test", use_edns=0, payload=4096)
            assert not edns.flags & dns.flags.TC


async def test_query_over_tcp_several_per_connection(fake: FakeUpstream) -> None:
    """DNS over TCP: length-prefixed queries answered in order on one connection."""
    with trio.fail_after(IO_LIMIT):
        async with running(fake) as env:
            stream = await trio.open_tcp_stream("127.0.0.1", env.port)
            async with stream:
                queries = [dns.message.make_query(n, "A") for n in ("api.example.test", "x.test")]
                for query in queries:
                    await stream.send_all(query.to_wire(prepend_length=True))
                for query in queries:
                    reply = dns.message.from_wire(await receive_framed(stream))
                    assert reply.id == query.id
                assert reply.rcode() == dns.rcode.NXDOMAIN
                await stream.send_all(b"\x00\x03abc")  # garbage: the connection is closed
                assert await stream.receive_some() == b""
            assert env.records[0]["proto"] == "tcp"


async def receive_framed(stream: trio.SocketStream) -> bytes:
    data = b""
    while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2]):
        chunk = await stream.receive_some()
        assert chunk, "connection closed early"
        data += chunk
    return data[2:]


async def test_tcp_idle_connection_closed(fake: FakeUpstream) -> None:
    """A TCP connection that sends nothing is closed after the idle timeout."""
    env = Env(fake, SPECS)
    udp, tcp = await open_forwarder_sockets("127.0.0.1", 0)
    udp.close()
    with tcp, trio.fail_after(IO_LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: serve_tcp(tcp, env.fwd, idle_timeout=0.2))
            stream = await trio.open_tcp_stream("127.0.0.1", tcp.getsockname()[1])
            await stream.send_all(b"\x00")  # half a length prefix, then silence
            assert await stream.receive_some() == b""
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_tcp_connection_limit(fake: FakeUpstream) -> None:
    """Beyond `max_connections`, a new connection is closed at once; the first still works."""
    env = Env(fake, SPECS)
    udp, tcp = await open_forwarder_sockets("127.0.0.1", 0)
    udp.close()
    port = tcp.getsockname()[1]
    with tcp, trio.fail_after(IO_LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: serve_tcp(tcp, env.fwd, max_connections=1))
            first = await trio.open_tcp_stream("127.0.0.1", port)
            await first.send_all(dns.message.make_query("x.test", "A").to_wire(prepend_length=True))
            await receive_framed(first)
            second = await trio.open_tcp_stream("127.0.0.1", port)
            assert await second.receive_some() == b""
            await first.send_all(dns.message.make_query("y.test", "A").to_wire(prepend_length=True))
            await receive_framed(first)
            for stream in (first, second):
                await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_slow_upstream_does_not_block_other_queries(fake: FakeUpstream) -> None:
    """Each UDP query has its own task: a slow name does not hold back a fast one."""
    fake.delays["a.example.test"] = 1.5
    with trio.fail_after(IO_LIMIT):
        async with running(fake) as env:
            done: list[str] = []

            async def ask(name: str) -> None:
                await env.udp(name)
                done.append(name)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask, "a.example.test")
                await trio.sleep(0.2)
                nursery.start_soon(ask, "api.example.test")
            assert done == ["api.example.test", "a.example.test"]


async def test_udp_garbage_gets_no_reply(fake: FakeUpstream) -> None:
    """A datagram that is not a DNS query is dropped; the next query is answered."""
    with trio.fail_after(IO_LIMIT):
        async with running(fake) as env:
            with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                await client.connect(("127.0.0.1", env.port))
                await client.send(b"\xff" * 7)
                query = dns.message.make_query("x.test", "A")
                await client.send(query.to_wire())
                assert dns.message.from_wire(await client.recv(65535)).id == query.id
            assert len(env.records) == 1


async def test_udp_flood_beyond_pending_is_dropped(fake: FakeUpstream) -> None:
    """With `max_pending` queries waiting on the upstream, more datagrams are dropped."""
    fake.delays["a.example.test"] = 1.0
    env = Env(fake, SPECS)
    udp, tcp = await open_forwarder_sockets("127.0.0.1", 0)
    tcp.close()
    with udp, trio.fail_after(IO_LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: serve_udp(udp, env.fwd, max_pending=1))
            with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                await client.connect(udp.getsockname())
                slow = dns.message.make_query("a.example.test", "A")
                fast = dns.message.make_query("api.example.test", "A")
                await client.send(slow.to_wire())
                await trio.sleep(0.3)
                await client.send(fast.to_wire())  # dropped: the slow one holds the slot
                reply = dns.message.from_wire(await client.recv(65535))
                assert reply.id == slow.id
                with trio.move_on_after(0.3):
                    await client.recv(65535)
                    pytest.fail("the dropped query was answered")
            nursery.cancel_scope.cancel()
    assert [record["host"] for record in env.records] == ["a.example.test"]


# --- answer(): what is dropped, refused or malformed ------------------------------------


async def test_answer_drops_garbage_and_responses(fake: FakeUpstream) -> None:
    """Bytes that do not parse, and messages that are responses, get no reply at all."""
    env = Env(fake, SPECS)
    response = dns.message.make_response(dns.message.make_query("api.example.test", "A"))
    for wire in (b"", b"\x00" * 5, b"junk" * 10, response.to_wire()):
        assert await env.fwd.answer(wire, transport="udp") is None
    assert env.records == []


async def test_answer_non_queries_and_bad_questions(fake: FakeUpstream) -> None:
    """Other opcodes: REFUSED; not one question: FORMERR; class CH: REFUSED. Never forwarded."""
    env = Env(fake, SPECS)
    fake.queries.clear()
    notify = dns.message.make_query("api.example.test", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    two = dns.message.make_query("api.example.test", "A")
    two.question.append(dns.message.make_query("a.example.test", "A").question[0])
    none = dns.message.make_query("api.example.test", "A")
    none.question = []
    chaos = dns.message.make_query("version.bind", "TXT", "CH")
    cases = [(notify, "REFUSED"), (two, "FORMERR"), (none, "FORMERR"), (chaos, "REFUSED")]
    for query, rcode in cases:
        wire = await env.fwd.answer(query.to_wire(), transport="udp")
        assert wire is not None
        reply = dns.message.from_wire(wire)
        assert (reply.id, dns.rcode.to_text(reply.rcode())) == (query.id, rcode)
    assert fake.queries == []
    assert [record["host"] for record in env.records] == [None, None, None, "version.bind"]


async def test_answer_keeps_the_commands_id_and_question(fake: FakeUpstream) -> None:
    """The reply carries the command's id and its question as written (0x20 case intact)."""
    env = Env(fake, SPECS)
    query = dns.message.make_query("aPi.ExAmPlE.tEsT", "A", use_edns=0, want_dnssec=True)
    with trio.fail_after(IO_LIMIT):
        wire = await env.fwd.answer(query.to_wire(), transport="udp")
    assert wire is not None
    reply = dns.message.from_wire(wire)
    assert query.is_response(reply)
    assert reply.question[0].name.to_text() == "aPi.ExAmPlE.tEsT."
    assert reply.edns == 0


async def test_escaped_name_is_not_covered(fake: FakeUpstream) -> None:
    """A label holding a dot (`x\\.example.test`) matches no rule: NXDOMAIN, not forwarded."""
    env = Env(fake, SPECS)
    fake.queries.clear()
    query = dns.message.make_query(dns.name.Name([b"x.example", b"test", b""]), "A")
    wire = await env.fwd.answer(query.to_wire(), transport="udp")
    assert wire is not None
    assert dns.message.from_wire(wire).rcode() == dns.rcode.NXDOMAIN
    assert fake.queries == []


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
@example(dns.message.make_query("x.test", "A").to_wire())
def test_answer_never_raises_on_junk(wire: bytes) -> None:
    """Any bytes at all: a reply or a drop, never an exception (nothing is covered here)."""
    book = HostBook()
    policy = make(["*"], []).policy
    fwd = Forwarder(lambda: policy, ("127.0.0.1", 9), book, on_learn=lambda: None)
    reply = trio.run(lambda: fwd.answer(wire, transport="udp"))
    assert reply is None or isinstance(reply, bytes)


# --- sockets, expiry, serve -------------------------------------------------------------


async def test_open_forwarder_sockets_same_port() -> None:
    """UDP and TCP are bound on one (host, port); a taken port is an OSError."""
    udp, tcp = await open_forwarder_sockets("127.0.0.1", 0)
    with udp, tcp:
        assert udp.getsockname() == tcp.getsockname()
        assert udp.type == socket.SOCK_DGRAM
        assert tcp.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        with pytest.raises(OSError):
            await open_forwarder_sockets("127.0.0.1", udp.getsockname()[1])


async def test_open_forwarder_sockets_retries_port_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """With port 0, a TCP port clash is retried with another port."""
    import sandlock.dns as sdns

    real = sdns._bind_pair
    calls: list[int] = []

    async def flaky(host: str, port: int) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
        calls.append(port)
        if len(calls) < 3:
            raise OSError("taken")
        return await real(host, port)

    monkeypatch.setattr(sdns, "_bind_pair", flaky)
    udp, tcp = await open_forwarder_sockets("127.0.0.1", 0)
    udp.close()
    tcp.close()
    assert calls[:3] == [0, 0, 0]  # (a real clash may add a try: ports are shared)


async def test_run_expiry_drops_and_swaps(
    fake: FakeUpstream, autojump_clock: trio.testing.MockClock
) -> None:
    """Learned addresses leave the policy when their (clamped) TTL is up, on time."""
    env = Env(fake, ["*.example.test"])
    env.book = book = HostBook(ttl_min=30, ttl_max=100)
    env.fwd = Forwarder(lambda: env.policy, where(fake), book, on_learn=env.swap)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(env.fwd.run_expiry)
        await trio.sleep(1)
        start = trio.current_time()
        book.learn("*.example.test", [("192.0.2.1", 5), ("192.0.2.2", 500)], start)
        env.swap()
        await trio.sleep(29.9)
        assert env.allows("tcp", "192.0.2.1", 1)
        await trio.sleep(0.2)
        assert not env.allows("tcp", "192.0.2.1", 1)
        assert env.allows("tcp", "192.0.2.2", 1)
        await trio.sleep(70)
        assert env.policy.host_addresses["*.example.test"] == ()
        assert trio.current_time() - start == pytest.approx(100.1)
        nursery.cancel_scope.cancel()
