"""The DNS-following mode: hostname rules that stay true.

A name such as ``cdn.example.com`` resolved once at start goes stale: the CDN moves
it, and the command's own lookups return addresses the policy never saw. In this
mode the command's port-53 traffic goes to a :class:`Forwarder` in the supervisor.
For a name an allow rule covers, it asks the upstream resolver, learns the
addresses of the answer under that rule's host key (:class:`HostBook`), lets the
caller swap in a policy that allows them, and only then answers the command. So the
addresses the command sees are the addresses it may reach, for as long as it may
keep them.

Why unlisted names get NXDOMAIN and are never forwarded: a query is egress. The
name travels to the upstream and on to whatever authoritative server its owner
runs, so forwarding any name would let the command tunnel data out in labels
(``<data>.attacker.example``) and back in the answers, with no network rule at all.
NXDOMAIN is also what resolvers handle best: they stop at once, no retry elsewhere.

Why only A and AAAA by default: those are the types a resolver asks to connect.
TXT, NULL and ANY carry arbitrary data (the tunnel again); SRV, HTTPS and SVCB
carry names and address hints the policy would not learn. Other types get REFUSED,
not NXDOMAIN: the name may exist, and an NXDOMAIN is cached as "no such name" for
every type (RFC 2308), which would break the A lookup that follows an HTTPS one.
``extra_types`` opens more types on purpose.

Why a TTL floor and ceiling: CDNs answer with TTLs of a few seconds, and a command
may connect a little after its lookup (a retry, a slow start); the floor (30 s)
keeps a learned address allowed that long. The ceiling (1 h) stops an address from
staying allowed for a day after the name moved on. TTLs above the ceiling are
lowered in the reply too, so the command never keeps an address longer than the
book allows it: its view always expires first.

CNAMEs: ``www.example.com A`` is answered ``www.example.com CNAME x.cdn.test`` and
``x.cdn.test A 192.0.2.1``. The address at the end of the chain is what the command
connects to, so it is learned under the rule that covered the *queried* name,
although no rule names ``x.cdn.test``. Only the chain that starts at the queried
name counts; other records in the answer are passed on and allow nothing.

Decisions:

- What leaves is what was decided: the upstream gets a fresh query built from the
  checked question (our id, RD, EDNS with the DO and CD bits of the command's query,
  none of its other sections or options); the command gets a reply built from its
  own query (its id, question, EDNS) with the upstream's rcode, AA/AD flags and
  records (RA always set), truncated with TC to its UDP size (it then asks over TCP).
- A message that is not a query (QR set) or does not parse is dropped; another
  opcode gets REFUSED; a query without exactly one question gets FORMERR; a class
  other than IN gets REFUSED. None of them is forwarded.
- A name with a presentation-format escape (``a\\.b``) is covered by no rule
  (:meth:`sandlock.policy.Policy.host_for_name`).
- Upstream timeout or error: SERVFAIL. Addresses are learned from NOERROR replies only.
- Learned addresses go through ``--net-deny`` like any other.
- DNS rebinding (an allowed name answering ``127.0.0.1`` or ``169.254.169.254``):
  answers in local and private space are never learned under a hostname rule
  (:mod:`sandlock.rebinding`). Those an IP/CIDR rule allows stay in the reply; the
  others are removed from every section, the reply is NXDOMAIN when the name's own
  addresses (the chain from it) were all dropped, and a second record says so
  (``"rule": "rebinding-guard"``).
  ``guard=False`` (``--dns-allow-private``) turns this off.
- A name a deny rule names (:meth:`sandlock.policy.Policy.denied_name`) gets NXDOMAIN
  and is never forwarded, whatever allow rule covers it; the record's ``rule`` is the
  deny rule.
- The upstream sees the name in lower case: the case of each letter of a query (DNS
  0x20) would otherwise carry a bit per letter out of the sandbox.
- ``--dns-upstream`` and the start-up lookups: :mod:`sandlock.upstream`.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterable
from typing import Literal, NoReturn

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.resolver
import dns.rrset
import trio

from .ask import ONCE_RULE, RUN_RULE, Asker
from .hostbook import HostBook
from .policy import Policy, stored_address
from .rebinding import RULE as GUARD_RULE
from .rebinding import sort_answers
from .upstream import ADDRESS_TYPES, DEFAULT_TIMEOUT, Upstream, chain_addresses

__all__ = [
    "ALLOWED_TYPES",
    "Forwarder",
    "Record",
    "Transport",
    "open_forwarder_sockets",
    "serve",
    "serve_tcp",
    "serve_udp",
]

Record = dict[str, object]
Transport = Literal["udp", "tcp"]

ALLOWED_TYPES = frozenset({"A", "AAAA"})

_RELAYED_FLAGS = dns.flags.AA | dns.flags.AD
_UPSTREAM_PAYLOAD = 1232  # the DNS flag day 2020 size: no IP fragmentation
_MAX_MESSAGE = 65535
_PORT_TRIES = 20


# --- the forwarder -----------------------------------------------------------------


class Forwarder:
    """Answers the command's DNS queries under the policy (see the module docstring).

    ``policy`` returns the current Policy; ``on_learn`` is called, before the reply
    goes out, whenever the book changed (an address learned or expired), so the
    caller can swap in ``policy.with_hosts(book.as_mapping())``; ``on_record`` gets
    one JSON-able dict per answered query, and a second one when the rebinding guard
    (``guard``, on unless ``--dns-allow-private``) dropped records of its answer.
    With an ``asker`` (ask.py), a lookup of a name no rule covers and no rule denies
    waits for an answer about the name: Allow.RUN calls ``add_host`` (which swaps in a
    policy with a hostname rule for it) and goes on as for a listed name; Allow.ONCE
    forwards this lookup and learns nothing; a refusal is NXDOMAIN.
    """

    def __init__(
        self,
        policy: Callable[[], Policy],
        upstream: Upstream,
        book: HostBook,
        *,
        on_learn: Callable[[], None],
        on_record: Callable[[Record], None] | None = None,
        extra_types: Iterable[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
        guard: bool = True,
        asker: Asker | None = None,
        add_host: Callable[[str], None] | None = None,
    ) -> None:
        self._guard = guard
        self._asker = asker
        self._add_host = add_host
        self._policy = policy
        self._upstream = upstream
        self._book = book
        self._on_learn = on_learn
        self._on_record = on_record
        self._types = frozenset(_rdtype(name) for name in (*ALLOWED_TYPES, *extra_types))
        self._timeout = timeout

    async def answer(self, query: bytes, *, transport: Transport) -> bytes | None:
        """The reply to one query from the command (``transport`` "udp" or "tcp").

        None means drop it: it does not parse or is itself a response.
        """
        message = _parse_message(query)
        if message is None or message.flags & dns.flags.QR:
            return None
        reply, records = await self._decide(message, transport)
        for record in records:
            record["rcode"] = dns.rcode.to_text(reply.rcode())
            if self._on_record is not None:
                self._on_record(record)
        limit = _MAX_MESSAGE if transport == "tcp" else _udp_limit(message)
        return reply.to_wire(max_size=limit, prefer_truncation=True)

    async def run_expiry(self) -> NoReturn:
        """Drop expired addresses from the book at their time, calling ``on_learn``.

        New addresses never expire sooner than ``ttl_min`` from now, so waking at
        least that often is enough to meet every expiry on time.
        """
        while True:
            now = trio.current_time()
            if self._book.expire(now):
                self._on_learn()
            wake = now + self._book.ttl_min
            soonest = self._book.next_expiry()
            await trio.sleep_until(wake if soonest is None else min(wake, soonest))

    async def _decide(
        self, query: dns.message.Message, transport: Transport
    ) -> tuple[dns.message.Message, list[Record]]:
        record: Record = {"syscall": "dns", "proto": transport, "host": None, "qtype": None}
        record.update(action="deny", rule=None, answers=[])
        records = [record]
        if query.opcode() != dns.opcode.QUERY:
            return _synthesize(query, dns.rcode.REFUSED), records
        if len(query.question) != 1:
            return _synthesize(query, dns.rcode.FORMERR), records
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        record.update(host=name, qtype=dns.rdatatype.to_text(question.rdtype))
        if question.rdclass != dns.rdataclass.IN:
            return _synthesize(query, dns.rcode.REFUSED), records
        policy = self._policy()
        denial = policy.denied_name(name)
        key = policy.host_for_name(name)
        record["rule"] = key if key is not None else denial
        if question.rdtype not in self._types:
            if key is None:
                return _synthesize(query, dns.rcode.NXDOMAIN), records
            return _synthesize(query, dns.rcode.REFUSED), records
        asked = None
        if key is None and denial is None and self._may_ask(name):
            assert self._asker is not None and self._add_host is not None
            asked = record["rule"] = await self._asker.ask_name(name, transport)
            if asked == RUN_RULE:
                self._add_host(name)
                policy = self._policy()
                key = policy.host_for_name(name)
        if key is None and asked != ONCE_RULE:
            return _synthesize(query, dns.rcode.NXDOMAIN), records
        record["action"] = "allow"
        upstream_reply = await self._ask_upstream(query)
        if upstream_reply is None:
            return _synthesize(query, dns.rcode.SERVFAIL), records
        if upstream_reply.rcode() == dns.rcode.NOERROR:
            learned = chain_addresses(upstream_reply, question.name)
            sort = sort_answers(policy, name, _addresses(upstream_reply), on=self._guard)
            if sort.dropped:
                records.append(
                    record | {"action": "deny", "rule": GUARD_RULE, "answers": list(sort.dropped)}
                )
                _drop_addresses(upstream_reply, frozenset(sort.dropped))
                if learned and all(address in sort.dropped for address, _ttl in learned):
                    return _synthesize(query, dns.rcode.NXDOMAIN), records
            learned = [
                (a, ttl) for a, ttl in learned if a not in sort.dropped and a not in sort.by_address
            ]
            record["answers"] = [address for address, _ttl in learned]
            if key is None:  # allowed once: nothing learned (a connect to them asks)
                assert self._asker is not None
                self._asker.saw(name, [address for address, _ttl in learned])
            elif self._book.learn(key, learned, trio.current_time()):
                self._on_learn()
        return _relay(query, upstream_reply, self._book.ttl_max), records

    def _may_ask(self, name: str) -> bool:
        """Whether a lookup of ``name`` may be asked about: with an asker, a name a
        hostname rule can name (plain ASCII, no escape, no wildcard)."""
        if self._asker is None or self._add_host is None:
            return False
        if not name.isascii() or "\\" in name or name.startswith("*"):
            return False
        from .rules import parse_rule

        try:
            rule = parse_rule(name, flag="--ask")
        except ValueError:
            return False
        return rule.host is not None

    async def _ask_upstream(self, query: dns.message.Message) -> dns.message.Message | None:
        """The upstream's reply to a fresh copy of ``query``'s question, or None on failure."""
        question = query.question[0]
        fresh = dns.message.make_query(
            dns.name.Name(label.lower() for label in question.name.labels),  # no 0x20 bits
            question.rdtype,
            use_edns=0,
            payload=_UPSTREAM_PAYLOAD,
            want_dnssec=bool(query.ednsflags & dns.flags.DO),
            flags=dns.flags.RD | (query.flags & dns.flags.CD),
        )
        try:
            with trio.fail_after(self._timeout):
                reply = await _exchange_udp(self._upstream, fresh)
                if reply.flags & dns.flags.TC:
                    return await _exchange_tcp(self._upstream, fresh)
                return reply
        except (trio.TooSlowError, trio.BrokenResourceError, OSError, dns.exception.DNSException):
            return None


def _addresses(reply: dns.message.Message) -> list[str]:
    """Every A and AAAA address in every section of ``reply``, stored form, once each."""
    found = {
        stored_address(rdata.address): None
        for section in (reply.answer, reply.authority, reply.additional)
        for rrset in section
        if rrset.rdtype in ADDRESS_TYPES and rrset.rdclass == dns.rdataclass.IN
        for rdata in rrset
    }
    return list(found)


def _drop_addresses(reply: dns.message.Message, dropped: frozenset[str]) -> None:
    """Remove the A and AAAA records of ``dropped`` addresses from every section."""
    for section in ("answer", "authority", "additional"):
        kept = []
        for rrset in getattr(reply, section):
            if rrset.rdtype in ADDRESS_TYPES and rrset.rdclass == dns.rdataclass.IN:
                rdatas = [rd for rd in rrset if stored_address(rd.address) not in dropped]
                if not rdatas:
                    continue
                if len(rdatas) < len(rrset):
                    rrset = dns.rrset.from_rdata_list(rrset.name, rrset.ttl, rdatas)
            kept.append(rrset)
        setattr(reply, section, kept)


def _rdtype(name: str) -> dns.rdatatype.RdataType:
    try:
        return dns.rdatatype.from_text(name)
    except dns.exception.DNSException:
        raise ValueError(f"unknown DNS record type {name!r}") from None


def _parse_message(wire: bytes) -> dns.message.Message | None:
    try:
        return dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError):
        return None


def _udp_limit(query: dns.message.Message) -> int:
    """The largest UDP reply the asker accepts: its EDNS payload, at least 512."""
    return max(512, query.payload) if query.edns >= 0 else 512


def _synthesize(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    reply = dns.message.make_response(query, recursion_available=True)
    reply.set_rcode(rcode)
    return reply


def _relay(
    query: dns.message.Message, upstream_reply: dns.message.Message, ttl_max: float
) -> dns.message.Message:
    """The command's reply: its own id, question and EDNS, the upstream's records."""
    reply = _synthesize(query, upstream_reply.rcode())
    reply.flags |= upstream_reply.flags & _RELAYED_FLAGS
    for section in ("answer", "authority", "additional"):
        rrsets = getattr(upstream_reply, section)
        for rrset in rrsets:
            rrset.ttl = min(rrset.ttl, int(ttl_max))
        setattr(reply, section, rrsets)
    return reply


# --- trio I/O ------------------------------------------------------------------------


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def _exchange_udp(upstream: Upstream, query: dns.message.Message) -> dns.message.Message:
    """Send over a connected UDP socket; wait for the reply that matches ``query``.

    Connected, so only the upstream's datagrams arrive; anything that does not
    parse or does not answer this query is ignored (a late or forged reply).
    """
    with trio.socket.socket(_family(upstream[0]), socket.SOCK_DGRAM) as sock:
        await sock.connect(upstream)
        await sock.send(query.to_wire())
        while True:
            reply = _parse_message(await sock.recv(_MAX_MESSAGE))
            if reply is not None and query.is_response(reply):
                return reply


async def _exchange_tcp(
    upstream: Upstream, query: dns.message.Message
) -> dns.message.Message | None:
    """One length-prefixed query and reply over a fresh TCP connection; None if invalid."""
    with trio.socket.socket(_family(upstream[0]), socket.SOCK_STREAM) as sock:
        await sock.connect(upstream)
        stream = trio.SocketStream(sock)
        await stream.send_all(query.to_wire(prepend_length=True))
        header = await _receive_exactly(stream, 2)
        wire = None if header is None else await _receive_exactly(stream, int.from_bytes(header))
        reply = None if wire is None else _parse_message(wire)
        return reply if reply is not None and query.is_response(reply) else None


async def _receive_exactly(stream: trio.SocketStream, size: int) -> bytes | None:
    """``size`` bytes from ``stream``, or None if it ends first."""
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


async def serve_udp(
    sock: trio.socket.SocketType, fwd: Forwarder, *, max_pending: int = 256
) -> None:
    """Answer each datagram on ``sock`` in its own task, replying to its sender.

    At most ``max_pending`` queries wait for the upstream at once; more are dropped
    (the command's resolver retries), so a flood costs no memory.
    """
    pending = trio.Semaphore(max_pending)
    async with trio.open_nursery() as nursery:
        while True:
            query, peer = await sock.recvfrom(_MAX_MESSAGE)
            try:
                pending.acquire_nowait()
            except trio.WouldBlock:
                continue
            nursery.start_soon(_answer_datagram, sock, fwd, query, peer, pending)


async def _answer_datagram(
    sock: trio.socket.SocketType,
    fwd: Forwarder,
    query: bytes,
    peer: tuple[object, ...],
    pending: trio.Semaphore,
) -> None:
    try:
        reply = await fwd.answer(query, transport="udp")
        if reply is not None:
            with contextlib.suppress(OSError):  # the asker may be gone
                await sock.sendto(reply, peer)
    finally:
        pending.release()


async def serve_tcp(
    listener: trio.socket.SocketType,
    fwd: Forwarder,
    *,
    idle_timeout: float = 10.0,
    max_connections: int = 64,
) -> None:
    """Serve DNS over TCP on the listening ``listener``: one task per connection.

    Each connection may carry several length-prefixed queries, answered in order;
    it is closed after ``idle_timeout`` seconds without a whole query, on a query
    that is dropped, or at once beyond ``max_connections`` open connections.
    """
    slots = trio.Semaphore(max_connections)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                slots.acquire_nowait()
            except trio.WouldBlock:
                return
            try:
                await _serve_connection(stream, fwd, idle_timeout)
            finally:
                slots.release()

    await trio.serve_listeners(handle, [trio.SocketListener(listener)])


async def _serve_connection(stream: trio.SocketStream, fwd: Forwarder, idle: float) -> None:
    with contextlib.suppress(trio.BrokenResourceError):
        while True:
            query = None
            with trio.move_on_after(idle):
                header = await _receive_exactly(stream, 2)
                if header is not None:
                    query = await _receive_exactly(stream, int.from_bytes(header))
            reply = None if query is None else await fwd.answer(query, transport="tcp")
            if reply is None:
                return
            await stream.send_all(len(reply).to_bytes(2) + reply)


async def open_forwarder_sockets(
    host: str, port: int = 53
) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    """A bound UDP socket and a listening TCP socket on the same ``(host, port)``.

    With port 0 the kernel picks the UDP port and TCP takes the same one (tried a
    few times if TCP finds it taken). Raises OSError when binding fails.
    """
    for _attempt in range(_PORT_TRIES - 1 if port == 0 else 0):
        with contextlib.suppress(OSError):
            return await _bind_pair(host, port)
    return await _bind_pair(host, port)


async def _bind_pair(host: str, port: int) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    with contextlib.ExitStack() as stack:
        udp = stack.enter_context(trio.socket.socket(_family(host), socket.SOCK_DGRAM))
        await udp.bind((host, port))
        tcp = stack.enter_context(trio.socket.socket(_family(host), socket.SOCK_STREAM))
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await tcp.bind((host, udp.getsockname()[1]))
        tcp.listen(128)
        stack.pop_all()
        return udp, tcp


async def serve(fwd: Forwarder, udp: trio.socket.SocketType, tcp: trio.socket.SocketType) -> None:
    """Run :func:`serve_udp`, :func:`serve_tcp` and the book's expiry until cancelled."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_udp, udp, fwd)
        nursery.start_soon(serve_tcp, tcp, fwd)
        nursery.start_soon(fwd.run_expiry)
