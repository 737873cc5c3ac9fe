"""What a relay costs a fresh connection before any HTTP work: the floor under the
Python row of bench/http_rules.py.

    .venv/bin/python bench/relay_floor.py [--rounds 5] [--requests 2000]

No sandbox. The server is bench/http_rules.py's (a thread per connection, on 127.0.0.1,
answering a short body). The client is that bench's Python row: ``http.client`` GETs
from one process, each on a fresh connection, us per request; it runs in a process of
its own against the server directly ("direct"), or through a bare relay in a third
process ("relay"): accept, connect to the server, pass the request on, pass the answer
back, close; blocking sockets, one connection at a time, no parsing, no checks, no
event loop. Rounds alternate the two; prints each round and the medians.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading

from http_rules import CLIENT, answer  # (bench/: the same server and client)


def serve(listener: socket.socket) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=answer, args=(conn, 0), daemon=True).start()


def bare_relay(listener: socket.socket, port: int) -> None:
    """Forever: one connection at a time from ``listener`` to 127.0.0.1:``port``."""
    while True:
        conn, _ = listener.accept()
        up = socket.create_connection(("127.0.0.1", port))
        for s in (conn, up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up.sendall(conn.recv(65536))  # (the client's request: one segment)
        answer_ = b""
        while not answer_.endswith(b"ok"):  # (the server's short body ends so)
            answer_ += up.recv(65536)
        conn.sendall(answer_)
        conn.recv(16)  # (the client's end)
        up.close()
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    server = socket.create_server(("127.0.0.1", 0), backlog=128)
    threading.Thread(target=serve, args=(server,), daemon=True).start()
    relay = socket.create_server(("127.0.0.1", 0), backlog=128)
    port = server.getsockname()[1]
    child = os.fork()
    if child == 0:
        server.close()
        bare_relay(relay, port)
    relay_port = relay.getsockname()[1]
    got: dict[str, list[float]] = {"direct": [], "relay": []}
    try:
        for _ in range(args.rounds):
            for mode, target in (("direct", port), ("relay", relay_port)):
                argv = [sys.executable, "-c", CLIENT, str(target), "python", str(args.requests)]
                out = subprocess.run(
                    [*argv, "http", "127.0.0.1"], capture_output=True, text=True, check=True
                )
                got[mode].append(float(out.stdout.split()[0]))
                print(f"{mode}: {got[mode][-1]:.0f} us/request", file=sys.stderr)
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)
    direct, relayed = (statistics.median(got[m]) for m in ("direct", "relay"))
    print(f"machine: {os.cpu_count()} cpus")
    print(f"direct: {', '.join(f'{v:.0f}' for v in got['direct'])} (median {direct:.0f}) us")
    print(f"relay:  {', '.join(f'{v:.0f}' for v in got['relay'])} (median {relayed:.0f}) us")
    print(f"a bare relay adds {relayed - direct:.0f} us per fresh connection")


if __name__ == "__main__":
    main()
