"""The relay's C data path alone (csrc/relay.c, no sandbox): what two loopback hops and a
splice thread cost a bulk download, against the same download direct.

    .venv/bin/python bench/splice_path.py [--rounds 5] [--mb 200]

One process: a server thread sends MB megabytes on 127.0.0.1; the client (the main
thread) reads them either straight from it ("direct") or through a pair handed to a
``Splicer`` ("splicer": client <-> relay socket, Splicer, relay <-> server socket), the
path a --verify-names connection takes once its name is checked. Rounds alternate the
two; prints MB/s per round and the medians.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import threading
import time

from sandlock import _syscalls as sys_

CHUNK = bytes(1 << 20)


def once(mode: str, mb: int) -> float:
    server = socket.create_server(("127.0.0.1", 0))

    def send() -> None:
        conn, _ = server.accept()
        with conn:
            for _ in range(mb):
                conn.sendall(CHUNK)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    splicer = None
    if mode == "direct":
        client = socket.create_connection(server.getsockname())
    else:
        relay = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(relay.getsockname())
        conn, _ = relay.accept()
        relay.close()
        upstream = socket.create_connection(server.getsockname())
        splicer = sys_.Splicer()
        if splicer.join(conn.fileno(), upstream.fileno()) != 0:
            raise SystemExit("Splicer.join refused the pair")
        conn.detach()
        upstream.detach()
    start = time.perf_counter()
    got = 0
    while data := client.recv(1 << 20):
        got += len(data)
    rate = got / 1e6 / (time.perf_counter() - start)
    client.close()
    thread.join()
    server.close()
    if splicer is not None:
        splicer.close()
    assert got == mb << 20, got
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mb", type=int, default=200)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"direct": [], "splicer": []}
    for _ in range(args.rounds):
        for mode in rates:
            rates[mode].append(once(mode, args.mb))
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for mode, values in rates.items():
        shown = ", ".join(f"{v:.0f}" for v in values)
        print(f"{mode}: median {statistics.median(values):.0f} MB/s ({shown})")
    ratio = statistics.median(rates["splicer"]) / statistics.median(rates["direct"])
    print(f"splicer / direct: {ratio:.2f}")


if __name__ == "__main__":
    main()
