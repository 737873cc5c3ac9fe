"""The relay's data path in-process (relay.py with csrc/relay.c, and its trio fallback):
what a checked connection's bytes go through once its first record passed.

A Relay runs in the test's trio loop; a "command" socket connects to its loopback
listener and is noted (``expect``) as going to a loopback server of the test, exactly as
onbehalf.py does for a relayed connect. Every case runs with the C data path
(``native``) and with the trio tasks (``python``), which must behave alike; the fd count
of this process comes back to where it was once a connection (or the relay) ends.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import pytest
import trio

from sandlock import _syscalls as sys_
from sandlock import relay as relay_mod
from sandlock.events import Event
from sandlock.policy import Policy
from sandlock.relay import MISMATCH, Relay
from sandlock.rules import parse_rule
from sandlock.sockaddr import Dest

HEAD = b"GET / HTTP/1.1\r\nHost: good.test\r\n\r\n"
LIMIT = 60  # seconds: an absolute bound on each test (hangs, not timings)
LINGER0 = struct.pack("ii", 1, 0)


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Server:
    """A 127.0.0.1 listener whose connections are served, one thread each, by ``handler``
    (the accepted socket, blocking); it counts what it accepted."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self.errors: list[BaseException] = []
        self._handler = handler
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            t = threading.Thread(target=self._one, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            try:
                self._handler(conn)
            except BaseException as err:  # (reported by the test that expects none)
                self.errors.append(err)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(10)
        for t in self._threads:
            t.join(10)


@pytest.fixture
def serving() -> Iterator[Callable[[Callable[[socket.socket], None]], Server]]:
    made: list[Server] = []

    def make(handler: Callable[[socket.socket], None]) -> Server:
        made.append(Server(handler))
        return made[-1]

    yield make
    for s in made:
        s.close()


def policy_for(port: int) -> Policy:
    rule = parse_rule(f"good.test:{port}", flag="--net-allow")
    return Policy([rule], [], {"good.test": ["127.0.0.1"]})


class Running:
    """A Relay running in a nursery, and a way to connect through it as the command."""

    def __init__(self, relay: Relay, port: int, events: list[Event]) -> None:
        self.relay = relay
        self.port = port
        self.events = events

    def connect(self) -> socket.socket:
        """A blocking socket connected to the relay, noted as going to the server."""
        target = self.relay.target(socket.AF_INET)
        assert target is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.connect(("127.0.0.1", int.from_bytes(target[2:4], "big")))
        dest = Dest(socket.AF_INET, bytes([127, 0, 0, 1]), self.port)
        assert self.relay.expect(sock.fileno(), 4242, dest)
        return sock


@pytest.fixture(params=["native", "python"])
def native(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "native")


async def start(nursery: trio.Nursery, port: int, native: bool) -> Running:
    events: list[Event] = []
    relay = Relay(lambda: policy_for(port), events.append, native=native)
    await nursery.start(relay.run)
    return Running(relay, port, events)


@asynccontextmanager
async def relaying(port: int, native: bool) -> AsyncIterator[Running]:
    """A Relay running for the block (then cancelled: its pairs are reset), under LIMIT."""
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            yield await start(nursery, port, native)
            nursery.cancel_scope.cancel()


def recv_all(sock: socket.socket) -> bytes:
    out = bytearray()
    while chunk := sock.recv(1 << 20):
        out += chunk
    return bytes(out)


def pattern(size: int, seed: bytes) -> bytes:
    """``size`` bytes that differ all along (a misordered or lost block shows)."""
    out = bytearray()
    block = seed
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 128
    return bytes(out[:size])


async def until(cond: Callable[[], bool]) -> None:
    with trio.fail_after(LIMIT):
        while not cond():  # noqa: ASYNC110 - the condition lives outside trio (fds, threads)
            await trio.sleep(0.01)


async def test_big_transfer_both_ways_arrives_whole(
    serving: Callable[..., Server], native: bool
) -> None:
    """64 MB down and 16 MB up at once arrive whole and in order (sha256 on both ends),
    and each end's half-close reaches the other."""
    down, up = pattern(64 << 20, b"down"), pattern(16 << 20, b"up")
    got_up: list[str] = []

    def handler(conn: socket.socket) -> None:
        assert conn.recv(len(HEAD), socket.MSG_WAITALL) == HEAD
        sender = threading.Thread(target=conn.sendall, args=(down,))
        sender.start()
        got_up.append(hashlib.sha256(recv_all(conn)).hexdigest())
        sender.join()
        conn.shutdown(socket.SHUT_WR)

    server = serving(handler)
    base = fds()
    async with relaying(server.port, native) as r:
        sock = r.connect()

        def client() -> str:
            with sock:
                sock.sendall(HEAD)
                sender = threading.Thread(target=lambda: (sock.sendall(up), sock.shutdown(1)))
                sender.start()
                digest = hashlib.sha256(recv_all(sock)).hexdigest()
                sender.join()
                return digest

        assert await trio.to_thread.run_sync(client) == hashlib.sha256(down).hexdigest()
        await until(lambda: bool(got_up))
        assert got_up == [hashlib.sha256(up).hexdigest()]
        assert not server.errors
    await until(lambda: fds() <= base)  # (the relay ended: everything closed)


async def test_half_close_each_way_is_passed_on(
    serving: Callable[..., Server], native: bool
) -> None:
    """The command's shutdown(SHUT_WR) reaches the server as EOF while the server still
    sends; the server's reply after that EOF reaches the command, then its EOF."""

    def handler(conn: socket.socket) -> None:
        got = recv_all(conn)  # to the command's half-close
        conn.sendall(b"after your EOF: " + str(len(got)).encode())

    server = serving(handler)
    async with relaying(server.port, native) as r:
        sock = r.connect()

        def client() -> bytes:
            with sock:
                sock.sendall(HEAD + b"x" * 1000)
                sock.shutdown(socket.SHUT_WR)
                return recv_all(sock)

        assert (
            await trio.to_thread.run_sync(client) == f"after your EOF: {len(HEAD) + 1000}".encode()
        )


async def test_a_reset_is_passed_on_both_ways(serving: Callable[..., Server], native: bool) -> None:
    """The server resetting mid-stream reaches the command as ECONNRESET (never a clean
    EOF); the command resetting reaches the server as ECONNRESET too."""
    seen: list[str] = []

    def handler(conn: socket.socket) -> None:
        conn.recv(len(HEAD), socket.MSG_WAITALL)
        if conn.recv(5, socket.MSG_WAITALL) == b"reset":
            conn.sendall(b"partial")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            return  # (closed with a reset)
        try:
            recv_all(conn)
            seen.append("eof")
        except ConnectionResetError:
            seen.append("reset")

    server = serving(handler)
    async with relaying(server.port, native) as r:
        first = r.connect()

        def reset_by_server() -> str:
            with first:
                first.sendall(HEAD + b"reset")
                try:
                    recv_all(first)
                except ConnectionResetError:
                    return "reset"
                return "eof"

        assert await trio.to_thread.run_sync(reset_by_server) == "reset"
        second = r.connect()

        def reset_by_command() -> None:
            second.sendall(HEAD + b"stays")
            second.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            second.close()

        await trio.to_thread.run_sync(reset_by_command)
        await until(lambda: bool(seen))
        assert seen == ["reset"]


async def test_many_connections_at_once_and_fds_come_back(
    serving: Callable[..., Server], native: bool
) -> None:
    """200 connections at once, each echoing its own bytes, all come back whole; once
    they are closed this process holds as many fds as before (pipes, sockets)."""

    def handler(conn: socket.socket) -> None:
        conn.sendall(recv_all(conn))

    server = serving(handler)
    async with relaying(server.port, native) as r:
        await trio.lowlevel.checkpoint()
        base = fds()
        socks = [r.connect() for _ in range(200)]

        def one(i: int) -> bool:
            sock = socks[i]
            with sock:
                data = HEAD + pattern(50_000 + i, str(i).encode())
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                return recv_all(sock) == data

        results: list[bool] = []

        async def run(i: int) -> None:
            results.append(await trio.to_thread.run_sync(one, i))

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(run, i)
        assert results == [True] * 200
        assert server.accepted == 200 and not server.errors
        await until(lambda: fds() <= base)
        if native:
            splicer = r.relay._splicer
            assert splicer is not None
            await until(lambda: splicer.pairs() == 0)


async def test_the_sandbox_ending_mid_transfer_resets_both(
    serving: Callable[..., Server], native: bool
) -> None:
    """The relay cancelled (the sandbox ended) while bytes flow: the server and the
    command both see a reset, and every fd the relay held is closed."""
    outcome: list[str] = []
    chunk = bytes(1 << 20)

    def handler(conn: socket.socket) -> None:
        conn.recv(len(HEAD), socket.MSG_WAITALL)
        try:
            while True:
                conn.sendall(chunk)
        except (ConnectionResetError, BrokenPipeError):
            outcome.append("reset")

    server = serving(handler)
    base = fds()
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            r = await start(nursery, server.port, native)
            sock = r.connect()
            sock.sendall(HEAD)
            got = 0
            while got < 4 << 20:  # bytes are flowing
                got += len(await trio.to_thread.run_sync(sock.recv, 1 << 20))
            nursery.cancel_scope.cancel()

    def drain() -> str:
        try:
            recv_all(sock)
        except ConnectionResetError:
            return "reset"
        return "eof"

    with sock:
        assert await trio.to_thread.run_sync(drain) == "reset"
    with trio.fail_after(LIMIT):
        await until(lambda: bool(outcome))
        assert outcome == ["reset"]
        await until(lambda: fds() <= base)


async def test_a_command_that_never_sends_is_reset_and_nothing_is_connected(
    serving: Callable[..., Server],
    native: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No first record within FIRST_TIMEOUT: the command is reset, the server never sees
    a connection, the refusal is reported, the fds come back."""
    monkeypatch.setattr(relay_mod, "FIRST_TIMEOUT", 0.5)
    server = serving(lambda conn: None)
    async with relaying(server.port, native) as r:
        await trio.lowlevel.checkpoint()
        base = fds()
        sock = r.connect()

        def wait() -> str:
            with sock:
                try:
                    return "eof" if sock.recv(10) == b"" else "data"
                except ConnectionResetError:
                    return "reset"

        assert await trio.to_thread.run_sync(wait) == "reset"
        assert server.accepted == 0
        assert [e.decision.rule for e in r.events] == [MISMATCH]
        await until(lambda: fds() <= base)


async def test_a_wrong_name_never_reaches_the_data_path(
    serving: Callable[..., Server], native: bool
) -> None:
    """A first record naming another host is refused before any upstream connect."""
    server = serving(lambda conn: None)
    async with relaying(server.port, native) as r:
        sock = r.connect()

        def client() -> str:
            with sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: evil.test\r\n\r\nsecret")
                try:
                    return "eof" if sock.recv(10) == b"" else "data"
                except ConnectionResetError:
                    return "reset"

        assert await trio.to_thread.run_sync(client) == "reset"
        assert server.accepted == 0
        assert [(e.decision.rule, e.decision.host) for e in r.events] == [(MISMATCH, "evil.test")]


def test_splicer_refusals_leave_the_fds_to_the_caller() -> None:
    """join of fds it cannot take (bad fds; after close) returns -errno and closes
    nothing; open/join/close many times leaks no fd."""
    base = fds()
    for _ in range(50):
        sp = sys_.Splicer()
        a, b = socket.socketpair()
        assert sp.join(-1, b.fileno()) == -errno.EBADF
        assert sp.join(a.fileno(), b.fileno()) == 0
        a.detach(), b.detach()
        c, d = socket.socketpair()
        sp.close()
        assert sp.join(c.fileno(), d.fileno()) == -errno.ESHUTDOWN
        assert sp.pairs() == 0
        c.close(), d.close()  # (still ours: closing them raises nothing)
    assert fds() == base


async def test_a_reset_after_the_command_half_closed_is_passed_on_at_once(
    serving: Callable[..., Server],
) -> None:
    """C path: the command half-closes, then resets its socket while the server is quiet:
    the server sees ECONNRESET at once, not only when it next sends. (The trio fallback
    notices at the server's next byte.)"""
    seen: list[str] = []

    def handler(conn: socket.socket) -> None:
        recv_all(conn)  # to the command's half-close
        # After an EOF, recv says EOF again even once a reset came (SOCK_DONE first):
        # SO_ERROR says it (EPIPE: a reset received in CLOSE_WAIT).
        for _ in range(int(LIMIT / 2 / 0.05)):
            time.sleep(0.05)
            if conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                seen.append("reset")
                return
        seen.append("nothing")

    server = serving(handler)
    async with relaying(server.port, True) as r:
        sock = r.connect()
        sock.sendall(HEAD)
        sock.shutdown(socket.SHUT_WR)
        await trio.sleep(0.2)  # (the half-close has reached the server)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        sock.close()
        await until(lambda: bool(seen))
    assert seen == ["reset"]


async def test_a_pair_the_data_path_cannot_take_is_reset(
    serving: Callable[..., Server],
) -> None:
    """C path: a checked connection the Splicer refuses (here: closed; in use: its pair
    limit, or no pipes) is reset both ways, never moved by unbounded Python tasks."""
    seen: list[str] = []

    def handler(conn: socket.socket) -> None:
        try:
            seen.append("eof" if recv_all(conn) is not None else "?")
        except ConnectionResetError:
            seen.append("reset")

    server = serving(handler)
    async with relaying(server.port, True) as r:
        splicer = r.relay._splicer
        assert splicer is not None
        splicer.close()
        sock = r.connect()

        def client() -> str:
            with sock:
                sock.sendall(HEAD)
                try:
                    return "eof" if sock.recv(10) == b"" else "data"
                except ConnectionResetError:
                    return "reset"

        assert await trio.to_thread.run_sync(client) == "reset"
        await until(lambda: bool(seen))
    assert seen == ["reset"]
