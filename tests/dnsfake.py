"""A fake upstream DNS server for tests: loopback only, threads, answers from a table.

    with FakeUpstream() as fake:                       # 127.0.0.1, a free port
        fake.add("www.example.test", "CNAME", ["edge.cdn.test."])
        fake.add("edge.cdn.test", "A", ["192.0.2.7"], ttl=5)
        ... ask (fake.address, fake.port) over UDP or TCP ...
        assert fake.queries == [("www.example.test", "A", "udp")]

It answers like a recursive resolver: it follows CNAMEs in its own table and puts the
chain in the answer; a name it has no entry for at all is NXDOMAIN, a name with other
types only is NOERROR with no answer. It runs in threads, so it serves sync tests, trio
tests and sandboxed children alike, and every query is handled in its own thread (a
``delays`` entry holds back one name without stalling the others).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
import time
from types import TracebackType

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

_POLL = 0.05  # how often the serving threads look at the stop flag
_BIND_TRIES = 20  # port 0: UDP ports that TCP may find taken


class FakeUpstream:
    """A UDP and TCP DNS server on one loopback (address, port), as a context manager."""

    def __init__(self, address: str = "127.0.0.1", port: int = 0) -> None:
        self.table: dict[tuple[str, str], tuple[list[str], int]] = {}
        self.rcodes: dict[str, str] = {}  # name -> rcode text ("SERVFAIL"), for any type
        self.delays: dict[str, float] = {}  # name -> seconds to wait before answering
        self.queries: list[tuple[str, str, str]] = []  # (name, type, "udp" | "tcp")
        self.names_as_sent: list[str] = []  # each query's name, letter case untouched
        self.truncate_udp = False  # answer every UDP query with TC and no records
        self.silent = False  # never answer (an upstream that times out)
        self.forge_first = False  # send a reply with a wrong id before the real one
        self.tcp_hangup = False  # close TCP connections without reading a query
        self.stray: list[str] = []  # records added to every answer ("n. 60 IN A 192.0.2.9")
        if not ipaddress.ip_address(address).is_loopback:
            raise ValueError(f"the fake upstream is loopback only, not {address}")
        self.address = address
        self.port = port
        self._family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._udp = socket.socket(self._family, socket.SOCK_DGRAM)
        self._tcp = socket.socket(self._family, socket.SOCK_STREAM)

    def _bind_pair(self) -> None:
        self._udp.bind((self.address, self.port))
        port = self._udp.getsockname()[1]
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._tcp.bind((self.address, port))
        self._tcp.listen(16)
        self.port = port

    def add(self, name: str, rdtype: str, rdatas: list[str], ttl: int = 300) -> None:
        """Answer ``name``/``rdtype`` with ``rdatas`` (presentation format) and ``ttl``."""
        self.table[(name.lower().rstrip("."), rdtype.upper())] = (rdatas, ttl)

    def __enter__(self) -> FakeUpstream:
        for attempt in range(_BIND_TRIES):
            try:
                self._bind_pair()
                break
            except OSError as err:
                # Port 0: the kernel picked a UDP port some TCP socket already has.
                if self.port != 0 or attempt == _BIND_TRIES - 1 or err.errno != errno.EADDRINUSE:
                    raise
                for sock in (self._udp, self._tcp):
                    sock.close()
                self._udp = socket.socket(self._family, socket.SOCK_DGRAM)
                self._tcp = socket.socket(self._family, socket.SOCK_STREAM)
        for sock in (self._udp, self._tcp):
            sock.settimeout(_POLL)
        self._spawn(self._serve_udp)
        self._spawn(self._serve_tcp)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=10)
        self._udp.close()
        self._tcp.close()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self._udp.recvfrom(65535)
            except TimeoutError:
                continue
            self._spawn(self._answer_datagram, wire, peer)

    def _answer_datagram(self, wire: bytes, peer: tuple[str, int]) -> None:
        for reply in self._replies(wire, "udp"):
            self._udp.sendto(reply, peer)

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _peer = self._tcp.accept()
            except TimeoutError:
                continue
            self._spawn(self._serve_connection, conn)

    def _serve_connection(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            while not (self._stop.is_set() or self.tcp_hangup):
                header = _recv_exactly(conn, 2)
                wire = None if header is None else _recv_exactly(conn, int.from_bytes(header))
                if wire is None:
                    return
                for reply in self._replies(wire, "tcp"):
                    conn.sendall(len(reply).to_bytes(2) + reply)

    def _replies(self, wire: bytes, transport: str) -> list[bytes]:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.queries.append((name, rdtype, transport))
            self.names_as_sent.append(question.name.to_text(omit_final_dot=True))
        time.sleep(self.delays.get(name, 0.0))
        if self.silent:
            return []
        reply = self._reply(query, name, rdtype, truncate=transport == "udp" and self.truncate_udp)
        replies = [reply.to_wire()]
        if self.forge_first:
            forged = self._reply(query, name, rdtype, truncate=False)
            forged.id = (query.id + 1) % 65536
            forged.answer = [dns.rrset.from_text(question.name, 60, "IN", "A", "192.0.2.66")]
            replies.insert(0, forged.to_wire())
        return replies

    def _reply(
        self, query: dns.message.Message, name: str, rdtype: str, *, truncate: bool
    ) -> dns.message.Message:
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.RA
        if name in self.rcodes:
            reply.set_rcode(dns.rcode.from_text(self.rcodes[name]))
        elif truncate:
            reply.flags |= dns.flags.TC
        else:
            self._resolve(reply, name, rdtype)
            for line in self.stray:
                owner, ttl, rdclass, rdtype_text, rdata = line.split(maxsplit=4)
                reply.answer.append(
                    dns.rrset.from_text(owner, int(ttl), rdclass, rdtype_text, rdata)
                )
        return reply

    def _resolve(self, reply: dns.message.Message, name: str, rdtype: str) -> None:
        """Fill the answer, following CNAMEs in the table; NXDOMAIN for unknown names."""
        for _hop in range(8):
            entry = self.table.get((name, rdtype))
            cname = self.table.get((name, "CNAME"))
            if entry is None and cname is not None and rdtype != "CNAME":
                entry, rdtype_here = cname, "CNAME"
            else:
                rdtype_here = rdtype
            if entry is None:
                if not any(known == name for known, _type in self.table):
                    reply.set_rcode(dns.rcode.NXDOMAIN)
                return
            rdatas, ttl = entry
            owner = dns.name.from_text(name)
            reply.answer.append(dns.rrset.from_text_list(owner, ttl, "IN", rdtype_here, rdatas))
            if rdtype_here != "CNAME" or rdtype == "CNAME":
                return
            name = dns.name.from_text(rdatas[0]).to_text(omit_final_dot=True).lower()


def _recv_exactly(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        try:
            chunk = conn.recv(size - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return data
