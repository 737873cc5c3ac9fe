"""The daemon's caps and its non-blocking writer, in process (real sockets and pipes)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from sandlock._sink import Sink, SinkText, check, report_note
from sandlock.daemon import Daemon, Limits


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[object]:
    """start(limits) -> path of a Daemon listening in this test's trio loop."""
    async with trio.open_nursery() as nursery:

        async def run(limits: Limits) -> str:
            path = str(tmp_path / f"d{len(os.listdir(tmp_path))}.sock")
            listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            await listener.bind(path)
            listener.listen(16)
            await nursery.start(Daemon(limits).serve, listener)
            return path

        yield run
        nursery.cancel_scope.cancel()


async def _connect(path: str) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    await sock.connect(path)
    return sock


async def _ask(sock: trio.socket.SocketType, message: dict[str, object]) -> object:
    await sock.send(json.dumps(message).encode())
    with trio.fail_after(10):
        data = await sock.recv(65536)
    return json.loads(data) if data else None


async def test_an_idle_connection_is_closed(start: object) -> None:
    """No request and no sandbox for idle_timeout: the daemon hangs up."""
    path = await start(Limits(idle_timeout=0.2))  # type: ignore[operator]
    sock = await _connect(path)
    assert await _ask(sock, {"op": "ps"}) == {"ok": True, "sandboxes": []}
    with trio.fail_after(10):
        assert await sock.recv(100) == b""
    sock.close()


async def test_connections_beyond_the_cap_are_refused_in_one_line(start: object) -> None:
    """Past clients_per_uid, a connection gets one error reply and is closed; once one
    leaves, the next is served."""
    path = await start(Limits(clients_per_uid=2))  # type: ignore[operator]
    first, second = await _connect(path), await _connect(path)
    assert (await _ask(first, {"op": "ps"}), await _ask(second, {"op": "ps"})) == (
        {"ok": True, "sandboxes": []},
    ) * 2
    third = await _connect(path)
    with trio.fail_after(10):
        reply = json.loads(await third.recv(65536))
    assert reply["ok"] is False and "too many connections of uid" in reply["error"]
    assert await third.recv(100) == b""
    first.close()
    await trio.sleep(0.1)
    fourth = await _connect(path)
    assert await _ask(fourth, {"op": "ps"}) == {"ok": True, "sandboxes": []}
    for sock in (second, third, fourth):
        sock.close()


async def test_the_sink_never_blocks_and_says_what_it_dropped() -> None:
    """A pipe nobody reads: writes return at once, the excess is counted, and the count
    is written before the next record once the reader is back."""
    r, w = os.pipe()
    sink = Sink(w, report_note, limit=4096)
    os.close(w)  # the sink has a descriptor of its own
    os.set_blocking(r, False)
    got = bytearray()

    async def read_until(end: bytes) -> None:
        with trio.fail_after(10):
            while not got.endswith(end):
                try:
                    got.extend(os.read(r, 1 << 20))
                except BlockingIOError:
                    await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink.run)
        for i in range(10000):  # 110 KB at once: more than the pipe and the buffer hold
            sink.write(f"line {i:05d}\n".encode())
        dropped = sink.dropped
        assert dropped > 0 and sink.dropped_total == dropped
        await read_until(b"\n")  # the pipe's part, then the buffer's (by run)
        await trio.sleep(0.2)
        got.extend(os.read(r, 1 << 20))
        sink.write(b"after\n")
        await read_until(b"after\n")
        nursery.cancel_scope.cancel()
    await sink.close(1)
    os.close(r)
    lines = got.decode().splitlines()
    assert lines[0] == "line 00000"
    assert lines[-2:] == [
        f"sandlock: {dropped} report lines dropped (stderr was not being read)",
        "after",
    ]
    assert len(lines) == 10000 - dropped + 2


async def test_the_sink_text_stream_makes_whole_lines() -> None:
    """print() writes a line in two calls; the sink gets it as one record."""
    r, w = os.pipe()
    sink = Sink(w, report_note)
    os.close(w)
    print("sandlock: denied", "tcp", file=SinkText(sink), flush=True)  # type: ignore[arg-type]
    await sink.close(1)
    assert os.read(r, 100) == b"sandlock: denied tcp\n"
    os.close(r)


def test_what_can_be_a_sink(tmp_path: Path) -> None:
    """A directory, a read-only descriptor, an eventfd: refused; the rest taken."""
    r, w = os.pipe()
    d = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    ev = os.eventfd(0)
    null = os.open("/dev/null", os.O_WRONLY)
    try:
        assert check(d, "stderr") == "stderr is a directory"
        assert check(r, "stderr") == "stderr is not open for writing"
        assert check(ev, "stderr") == "stderr is not a file, pipe, socket or terminal"
        assert check(w, "stderr") is None and check(null, "stderr") is None
    finally:
        for fd in (r, w, d, ev, null):
            os.close(fd)
