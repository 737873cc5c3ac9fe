"""relay.py's pure decisions: which connects go through the relay, which names pass."""

from __future__ import annotations

import socket

import pytest

from sandlock.firstbytes import First
from sandlock.policy import Policy
from sandlock.relay import name_allowed, names_check, only_by_name
from sandlock.rules import parse_rule
from sandlock.sockaddr import MAPPED_PREFIX, Dest

A = bytes([192, 0, 2, 7])  # (no socket is opened: pure decisions)
B = bytes([192, 0, 2, 8])


def policy(*allow: str, hosts: dict[str, list[str]] | None = None) -> Policy:
    rules = [parse_rule(spec, flag="--net-allow") for spec in allow]
    return Policy(rules, [], hosts or {})


def dest(addr: bytes, port: int = 443) -> Dest:
    family = socket.AF_INET if len(addr) == 4 else socket.AF_INET6
    return Dest(family, addr, port)


def test_only_hostname_rules_send_a_connect_through_the_relay() -> None:
    """A hostname rule's decision is relayed unless an IP/CIDR rule (of that port) or an
    any-address rule also covers the destination."""
    hosts = {"good.test": ["192.0.2.7"]}
    by_name = policy("good.test:443", hosts=hosts)
    d = dest(A)
    assert only_by_name(by_name, by_name.decide("tcp", A, 443), d)
    mapped = dest(MAPPED_PREFIX + A)
    assert only_by_name(by_name, by_name.decide("tcp", mapped.addr, 443), mapped)
    for extra in ("192.0.2.0/24:443", "192.0.2.7", "*:443"):
        both = policy("good.test:443", extra, hosts=hosts)
        assert not only_by_name(both, both.decide("tcp", A, 443), d), extra
    other_port = policy("good.test:443", "192.0.2.7:80", hosts=hosts)
    assert only_by_name(other_port, other_port.decide("tcp", A, 443), d)
    ip_only = policy("192.0.2.7:443")
    assert not only_by_name(ip_only, ip_only.decide("tcp", A, 443), d)


def test_a_name_passes_only_on_its_own_addresses_and_ports() -> None:
    """The name's rule must allow the port, and its addresses include the destination."""
    p = policy(
        "good.test:443",
        "other.test:8443",
        "*.wild.test:443",
        hosts={
            "good.test": ["192.0.2.7"],
            "other.test": ["192.0.2.7"],
            "*.wild.test": ["192.0.2.8"],
        },
    )
    assert name_allowed(p, "good.test", dest(A))
    assert name_allowed(p, "good.test", dest(MAPPED_PREFIX + A))
    assert not name_allowed(p, "good.test", dest(B))  # not its address
    assert not name_allowed(p, "other.test", dest(A))  # not its port
    assert not name_allowed(p, "evil.test", dest(A))  # no rule
    assert name_allowed(p, "a.wild.test", dest(B))
    assert not name_allowed(p, "wild.test", dest(B))  # (a wildcard covers subdomains only)


def test_names_check_wants_a_named_tls_or_http_record() -> None:
    """An allowed name in a ClientHello or an HTTP head passes; Encrypted ClientHello,
    no name, or a name not allowed there is refused."""
    p = policy("good.test:443", hosts={"good.test": ["192.0.2.7"]})
    d = dest(A)
    assert names_check(p, First("tls", "good.test", 300), d)
    assert names_check(p, First("http", "good.test", 40), d)
    assert not names_check(p, First("ech", "good.test", 300), d)
    assert not names_check(p, First("tls", None, 300), d)
    assert not names_check(p, First("tls", "evil.test", 300), d)


async def test_connects_waiting_for_their_destination_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP rules: a connect is answered once its destination is reached (``reach_first``),
    each wait holding a descriptor of the supervisor's. A command that connects, again
    and again, to an allowed destination that never answers must not use them all up:
    past MAX_WAITING waits the next connects go to the relay at once. The destination
    here: a loopback listener whose queue is full, so that new handshakes wait."""
    import trio

    from sandlock import relay as relay_mod
    from sandlock.httprelay import HttpHandler
    from sandlock.httprules import HttpRules

    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    port = stuck.getsockname()[1]
    queued = []
    for _ in range(4):  # (the queue's room and more: later SYNs are dropped)
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        queued.append(s)
    rules = HttpRules.parse(["GET 127.0.0.1/*"], [], [port])
    policy = Policy((), (), {}, http=rules)
    relay = relay_mod.Relay(
        lambda: policy, None, verify=False, http=HttpHandler(rules.ports, lambda: policy, None)
    )
    dest = Dest(socket.AF_INET, bytes([127, 0, 0, 1]), port)
    monkeypatch.setattr(relay_mod, "MAX_WAITING", 2)
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                assert relay.reaches_first(dest)
                for _ in range(2):
                    nursery.start_soon(relay.reach_first, dest, lambda: True)
                await trio.sleep(0.2)
                assert not relay.reaches_first(dest)  # (two wait: the next ones do not)
                nursery.cancel_scope.cancel()
        assert relay.reaches_first(dest)  # (the waits ended: their room is free again)
    finally:
        for s in (stuck, *queued):
            s.close()
