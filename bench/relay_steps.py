"""Where a --verify-names connection's set-up goes: `sandlock run` with the relay's steps
wrapped in timers (medians to stderr at the end; the first call, with its imports, left
out).

    .venv/bin/python bench/relay_steps.py server &          # prints its PORT
    .venv/bin/python bench/relay_steps.py run --no-dns-proxy --net-allow localhost:PORT \\
        --verify-names -- .venv/bin/python bench/relay_steps.py client PORT 500

``server``: a 127.0.0.1 server answering each connection's first bytes with a 59-byte
HTTP reply; ``client PORT N``: N connections (connect, request, reply to EOF, close),
printing the medians of each part as the command sees them (run it with and without
``--verify-names``; or with HTTP rules instead: ``--http-ports PORT --http-allow
'GET localhost/*'``, which times the HTTP handler's steps).

Measurement only: it replaces functions of sandlock.relay and sandlock.onbehalf in this
process before the CLI starts, and adds a timer's cost (~1 us) to each step.
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import sandlock._syscalls as sys_
import sandlock.cli as cli
import sandlock.httprelay as httprelay
import sandlock.onbehalf as onbehalf
import sandlock.relay as relay

TIMES: dict[str, list[int]] = {}


def timed(name: str, fn: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
    if is_async:

        @functools.wraps(fn)
        async def wait(*a: Any, **k: Any) -> Any:
            t = time.perf_counter_ns()
            out = await fn(*a, **k)
            TIMES.setdefault(name, []).append(time.perf_counter_ns() - t)
            return out

        return wait

    @functools.wraps(fn)
    def call(*a: Any, **k: Any) -> Any:
        t = time.perf_counter_ns()
        out = fn(*a, **k)
        TIMES.setdefault(name, []).append(time.perf_counter_ns() - t)
        return out

    return call


REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
HEAD = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"


def server() -> None:
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    print(listener.getsockname()[1], flush=True)

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.recv(4096)
            conn.sendall(REPLY)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=answer, args=(conn,), daemon=True).start()


def client(port: int, n: int) -> None:
    import socket

    parts: dict[str, list[int]] = {"connect": [], "first reply": [], "to EOF": [], "close": []}
    for _ in range(n):
        t0 = time.perf_counter_ns()
        s = socket.create_connection(("127.0.0.1", port))
        t1 = time.perf_counter_ns()
        s.sendall(HEAD)
        s.recv(1 << 20)
        t2 = time.perf_counter_ns()
        while s.recv(1 << 20):
            pass
        t3 = time.perf_counter_ns()
        s.close()
        t4 = time.perf_counter_ns()
        for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            parts[key].append(dt)
    print(", ".join(f"{k} {statistics.median(v) / 1000:.0f} us" for k, v in parts.items()))


def main() -> None:
    if sys.argv[1:2] == ["server"]:
        return server()
    if sys.argv[1:2] == ["client"]:
        return client(int(sys.argv[2]), int(sys.argv[3]))
    r: Any = relay
    r._first = timed("relay _first: wait for and read the first record", r._first, True)
    r.read = timed("  firstbytes.read", r.read, False)
    r._connect = timed("relay _connect: upstream", r._connect, True)
    r._send_all = timed("relay: first record written upstream", r._send_all, True)
    r.Relay._splice = timed("relay _splice: to the join", r.Relay._splice, True)
    r.Relay._serve = timed("relay _serve whole", r.Relay._serve, True)
    r.Relay.expect = timed("  relay.expect", r.Relay.expect, False)
    s: Any = sys_.Splicer
    s.join = timed("  Splicer.join", s.join, False)
    h: Any = onbehalf.Handlers
    h._connect = timed("onbehalf _connect: decided, connected to the relay", h._connect, False)
    x: Any = httprelay  # (HTTP rules: --http-ports PORT --http-allow 'GET localhost/*')
    x.HttpHandler.serve = timed("http serve whole", x.HttpHandler.serve, True)
    x.HttpHandler.decide = timed("  http decide", x.HttpHandler.decide, False)
    x._Exchange.prefetch = timed("  http prefetch: upstream", x._Exchange.prefetch, True)
    x._Exchange._relay = timed("  http _relay: request up, response down", x._Exchange._relay, True)
    x._Exchange.close = timed("  http close", x._Exchange.close, True)
    exit_now = os._exit

    def report(code: int) -> None:
        for name, values in TIMES.items():
            if values[1:]:
                med = statistics.median(values[1:]) / 1000
                print(f"{name}: median {med:.0f} us (n={len(values) - 1})", file=sys.stderr)
        exit_now(code)

    os._exit = report  # type: ignore[assignment]  # (the CLI leaves through os._exit)
    sys.argv = ["sandlock", *sys.argv[1:]]
    cli.main()


if __name__ == "__main__":
    main()
