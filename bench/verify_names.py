"""--verify-names: what the relay costs a connection's set-up and a bulk download.

    .venv/bin/python bench/verify_names.py [--rounds 5] [--count 2000] [--mb 200] [--tls]

Three modes, the same Python client timed inside the command (start-up excluded):
native (no sandbox), ours with `--net-allow localhost:PORT` resolved at start
(`--no-dns-proxy`), and the same with `--verify-names`. The server (threads here, on
127.0.0.1) answers each connection after its first line: for the set-up rows with a
short reply, for the bulk row with MB megabytes. Rows:

- set-up: connect, send one HTTP request head naming localhost, read the reply to its
  end, close; microseconds per connection (median of the rounds);
- bulk: one connection, MB megabytes down; MB/s;
- TLS set-up (``--tls``): the set-up row over TLS 1.3 (the client's SNI and the
  certificate's name: localhost; a throwaway CA from tests/tlsfake.py): the row where
  the relay's C thread lets connections through on its own once Python approved the name.

Standard library only; prints a table and every round's figure.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SANDLOCK = REPO / ".venv" / "bin" / "sandlock"
REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
CHUNK = bytes(1 << 20)

CLIENT = r"""
import socket, ssl, sys, time
port, mode, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
head = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
ctx = ssl.create_default_context(cafile=sys.argv[4]) if len(sys.argv) > 4 else None
def one():
    s = socket.create_connection(("127.0.0.1", port))
    if ctx is not None:
        s = ctx.wrap_socket(s, server_hostname="localhost")
    s.sendall(head)
    got = 0
    while data := s.recv(1 << 20):
        got += len(data)
    s.close()
    return got
if mode == "setup":
    one()
    t = time.perf_counter_ns()
    for _ in range(n):
        one()
    print((time.perf_counter_ns() - t) / n / 1000)
else:
    t = time.perf_counter_ns()
    got = one()
    assert got == n << 20, got
    print(got / 1e6 / ((time.perf_counter_ns() - t) / 1e9))
"""


def serve(listener: socket.socket, body_mb: list[int], tls: ssl.SSLContext | None) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=answer, args=(conn, body_mb[0], tls), daemon=True).start()


def answer(conn: socket.socket, mb: int, tls: ssl.SSLContext | None) -> None:
    with conn:
        try:
            if tls is not None:
                conn = tls.wrap_socket(conn, server_side=True)
            conn.recv(4096)
            if mb:
                for _ in range(mb):
                    conn.sendall(CHUNK)
            else:
                conn.sendall(REPLY)
        except OSError:
            pass


def measure(mode: str, port: int, how: str, n: int, ca: Path | None = None) -> float:
    argv = [sys.executable, "-c", CLIENT, str(port), how, str(n), *([str(ca)] if ca else [])]
    rules = ["--no-dns-proxy", "--net-allow", f"localhost:{port}"]
    if mode == "ours":
        argv = [str(SANDLOCK), "run", *rules, "--", *argv]
    elif mode == "verify":
        argv = [str(SANDLOCK), "run", *rules, "--verify-names", "--", *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"{mode} {how}: {out.stderr.strip()}")
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=2000, help="connections per set-up round")
    parser.add_argument("--mb", type=int, default=200, help="megabytes of the bulk row")
    parser.add_argument("--modes", default="native,ours,verify")
    parser.add_argument("--tls", action="store_true", help="add the TLS set-up row")
    args = parser.parse_args()
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    port = listener.getsockname()[1]
    body_mb = [0]
    threading.Thread(target=serve, args=(listener, body_mb, None), daemon=True).start()
    modes = args.modes.split(",")
    rows: dict[str, dict[str, list[float]]] = {"setup": {}, "bulk": {}}
    plan = [("setup", "setup", args.count, port, None), ("bulk", "bulk", args.mb, port, None)]
    temp = tempfile.TemporaryDirectory()
    if args.tls:
        sys.path.insert(0, str(REPO))
        from tests.tlsfake import Authority

        authority = Authority(["localhost"], Path(temp.name))
        tls_listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
        tls_port = tls_listener.getsockname()[1]
        context = authority.server_context()
        threading.Thread(target=serve, args=(tls_listener, [0], context), daemon=True).start()
        plan.insert(1, ("tls", "setup", args.count, tls_port, authority.ca_file))
        rows["tls"] = {}
    for row, how, n, row_port, ca in plan:
        body_mb[0] = args.mb if row == "bulk" else 0
        for _ in range(args.rounds):
            for mode in modes:
                rows[row].setdefault(mode, []).append(measure(mode, row_port, how, n, ca))
                print(f"{row} {mode}: {rows[row][mode][-1]:.1f}", file=sys.stderr)
    listener.close()
    temp.cleanup()
    if len(modes) < 3:
        return
    med = {row: {m: statistics.median(v) for m, v in r.items()} for row, r in rows.items()}
    s, b = med["setup"], med["bulk"]
    print(f"machine: {os.cpu_count()} cpus, {' '.join(os.uname()[2:3])}")
    print("| row | unit | native | ours | ours --verify-names | verify - ours | verify / native |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| set-up (connect, request, reply, close) | us/conn | {s['native']:.1f} | "
        f"{s['ours']:.1f} | {s['verify']:.1f} | {s['verify'] - s['ours']:.1f} | - |"
    )
    if "tls" in med:
        t = med["tls"]
        print(
            f"| TLS set-up (connect, handshake, request, reply, close) | us/conn | "
            f"{t['native']:.1f} | {t['ours']:.1f} | {t['verify']:.1f} | "
            f"{t['verify'] - t['ours']:.1f} | - |"
        )
    print(
        f"| bulk {args.mb} MB down | MB/s | {b['native']:.0f} | {b['ours']:.0f} | "
        f"{b['verify']:.0f} | - | {b['verify'] / b['native']:.2f} |"
    )
    for row, r in rows.items():
        for mode, values in r.items():
            print(f"{row} {mode}: " + ", ".join(f"{v:.1f}" for v in values))


if __name__ == "__main__":
    main()
