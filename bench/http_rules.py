"""HTTP rules: what the per-request relay (httprelay.py) costs plain HTTP.

    .venv/bin/python bench/http_rules.py [--rounds 5] [--curl 200] [--requests 500] [--mb 200]

Three modes, the same client timed inside the command (start-up excluded): native (no
sandbox); ``net``: ours with ``--net-allow 127.0.0.1:PORT`` (no HTTP rules: the gate's
path); ``http``: ours with ``--http-ports PORT --http-allow 'GET 127.0.0.1/b*'`` (every
connection through the relay, every request checked). After its timed part, each run
asks ``GET /denied`` once and the round fails unless the answer is 403 in the modes with
HTTP rules (ours and the peer's) and 200 in the others: each side is proven to check
HTTP, on the bench server's port, in the very run measured. Rounds alternate the modes so load
hits them alike. The server (threads here, on 127.0.0.1) answers each request with a short
body, or MB megabytes for the bulk row. Rows:

- curl: CURL runs of ``curl -s -o /dev/null URL`` in one sandbox, ms per request (a
  Python loop of subprocess.run inside the command: the same spawn cost in every mode);
- python: REQUESTS ``http.client`` GETs from one process, each on a fresh connection,
  us per request;
- bulk: one GET of MB megabytes; MB/s.

With ``--tls`` the same rows over HTTPS: the server presents a leaf of a CA minted here
(sandlock.httptls, so this script needs the product's venv), named to every client by
``SSL_CERT_FILE`` and ``CURL_CA_BUNDLE``; the ``http`` mode adds ``--http-tls
--http-upstream-ca`` (the command then trusts the run's CA through the injected bundle:
the file those variables name).

With ``--peer`` a fourth mode: the Rust peer (PyPI sandlock 0.9.0, in bench/.peer-venv,
set up as bench/run.py does) driven through its SDK (bench/sdk_driver.py) with the same
rules: ``http_allow=["GET 127.0.0.1/b*"]``, ``http_ports=[PORT]``,
``net_allow=["127.0.0.1:PORT"]`` and read access (Landlock) to the system and the
interpreter's directories.

``--tls --peer``: the peer intercepts TLS on port 443 only and drops a TLS connection
without SNI (an IP-literal URL), so there the server listens on 127.0.0.1:443 (root, or
CAP_NET_BIND_SERVICE) and every mode's client asks for ``https://localhost`` (which
``/etc/hosts`` gives as 127.0.0.1) under the rule ``GET localhost/b*``. The peer gets a
CA minted here as ``http_ca``/``http_key`` (its SDK does not wire ``http_inject_ca``), and
its clients and its own verification of the server read ``SSL_CERT_FILE``: a bundle of
the server's CA and the peer's (rustls' native-certs loader reads that variable).
"""

from __future__ import annotations

import argparse
import json
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
SHORT = b"ok"
CHUNK = bytes(1 << 20)
BASE: list[str] = []  # (--base)


CLIENT = r"""
import http.client, ssl, subprocess, sys, time
port, how, n, scheme, host = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), *sys.argv[4:6]
url = f"{scheme}://{host}:{port}/bench"
denied = f"{scheme}://{host}:{port}/denied"
ctx = ssl.create_default_context() if scheme == "https" else None
def connection():
    if ctx is None:
        return http.client.HTTPConnection(host, port)
    return http.client.HTTPSConnection(host, port, context=ctx)
if how == "curl":
    subprocess.run(["curl", "-s", "-f", "-o", "/dev/null", url], check=True)  # (warm-up)
    t = time.perf_counter_ns()
    for _ in range(n):
        subprocess.run(["curl", "-s", "-f", "-o", "/dev/null", url], check=True)
    figure = (time.perf_counter_ns() - t) / n / 1e6
    code = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", denied],
        capture_output=True, text=True, check=True,
    ).stdout
elif how == "python":
    def one():
        c = connection()
        c.request("GET", "/bench")
        r = c.getresponse()
        assert r.status == 200 and r.read() == b"ok", r.status
        c.close()
    one()
    t = time.perf_counter_ns()
    for _ in range(n):
        one()
    figure = (time.perf_counter_ns() - t) / n / 1e3
    c = connection()
    c.request("GET", "/denied")
    code = c.getresponse().status
else:
    c = connection()
    t = time.perf_counter_ns()
    c.request("GET", "/bulk")
    r = c.getresponse()
    got = 0
    while data := r.read(1 << 20):
        got += len(data)
    assert got == n << 20, got
    figure = got / 1e6 / ((time.perf_counter_ns() - t) / 1e9)
    c = connection()
    c.request("GET", "/denied")
    code = c.getresponse().status
print(figure, code)
"""


def serve(listener: socket.socket, mb: list[int], tls: ssl.SSLContext | None) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=answer, args=(conn, mb[0], tls), daemon=True).start()


def answer(conn: socket.socket, mb: int, tls: ssl.SSLContext | None = None) -> None:
    """Answer each request of a kept-alive connection (bodiless GETs only)."""
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # (head and body: 2 writes)
    if tls is not None:
        try:
            conn = tls.wrap_socket(conn, server_side=True)
        except OSError:
            conn.close()
            return
    with conn:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                bulk = mb and not head.startswith(b"GET /denied ")
                size = mb << 20 if bulk else len(SHORT)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                if bulk:
                    for _ in range(mb):
                        conn.sendall(CHUNK)
                else:
                    conn.sendall(SHORT)
        except OSError:
            pass


class Setup:
    """Where the server is and what every mode is told: host, port, the rule, the CA
    files (``--tls``)."""

    def __init__(self, host: str, port: int, ca: str | None, peer_ca: tuple[str, str] | None):
        self.host = host
        self.port = port
        self.allow = f"GET {host}/b*"  # (/bench and /bulk; after the timed part, GET /denied)
        self.ca = ca  # the server's CA (PEM), or None: plain HTTP
        self.peer_ca = peer_ca  # the peer's MITM CA and key (--tls --peer)
        self.bundle: str | None = None  # the server's CA and the peer's: what clients trust


def measure(mode: str, setup: Setup, how: str, n: int) -> float:
    port, ca = setup.port, setup.ca
    scheme = "https" if ca else "http"
    argv = [sys.executable, "-c", CLIENT, str(port), how, str(n), scheme, setup.host]
    if mode == "peer":
        readable = ["/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc", "/tmp"]
        readable += [sys.prefix, sys.base_prefix, os.path.realpath(sys.base_prefix), str(REPO)]
        kwargs: dict[str, object] = {
            "net_allow": [f"{setup.host}:{port}"],
            "http_allow": [setup.allow],
            "fs_readable": [p for p in readable if os.path.exists(p)],
            "fs_writable": ["/dev/null"],  # (curl -o /dev/null)
        }
        if setup.peer_ca is not None:  # (TLS: port 443 is intercepted with http_ca)
            kwargs["http_ca"], kwargs["http_key"] = setup.peer_ca
        else:
            kwargs["http_ports"] = [port]
        spec = {"kwargs": kwargs, "argv": argv}
        peer = REPO / "bench" / ".peer-venv" / "bin" / "python"
        argv = [str(peer), str(REPO / "bench" / "sdk_driver.py"), "run", json.dumps(spec)]
    elif mode == "net":
        argv = [str(SANDLOCK), "run", "--net-allow", f"{setup.host}:{port}", "--", *argv]
    elif mode in ("http", "base"):
        rules = ["--http-ports", str(port), "--http-allow", setup.allow]
        if ca:
            rules += ["--http-tls", "--http-upstream-ca", ca]
        argv = [str(SANDLOCK), "run", *rules, "--", *argv]
    env = dict(os.environ)
    if mode == "base":  # (the same console script, the base tree's sandlock first on the path)
        env["PYTHONPATH"] = BASE[0]
    elif mode == "peer":  # (a tree under test put first on the path is ours, not the peer's)
        env.pop("PYTHONPATH", None)
    trusted = setup.bundle or ca
    if trusted:
        env |= {"SSL_CERT_FILE": trusted, "CURL_CA_BUNDLE": trusted}
    out = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{mode} {how}: {out.stderr.strip()}")
    figure, code = out.stdout.split()
    want = "403" if mode in ("http", "base", "peer") else "200"
    if code != want:  # (each side proven to check, in the very run measured)
        raise SystemExit(f"{mode} {how}: GET /denied answered {code}, not {want}")
    return float(figure)


def _pem_file(data: bytes) -> str:
    with tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False) as f:
        f.write(data)
    return f.name


def _mitm_ca() -> tuple[bytes, bytes]:
    """A CA certificate and its key (PEM) for the peer's HTTPS interception."""
    from cryptography.hazmat.primitives import serialization

    sys.path.insert(0, str(REPO))  # (tests/ is a package of the repository)
    from tests.tlsfake import make_ca

    cert, key = make_ca("bench peer MITM CA", path_length=None)
    pem = serialization.Encoding.PEM
    plain = serialization.NoEncryption()
    return cert.public_bytes(pem), key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, plain
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--curl", type=int, default=200, help="curl runs per round")
    parser.add_argument("--requests", type=int, default=500, help="Python requests per round")
    parser.add_argument("--mb", type=int, default=200, help="megabytes of the bulk row")
    parser.add_argument("--tls", action="store_true", help="HTTPS instead of HTTP")
    parser.add_argument("--peer", action="store_true", help="also the Rust peer")
    parser.add_argument(
        "--base",
        metavar="DIR",
        help="also ours from another source tree (e.g. `git archive main`, with the built "
        "_native copied in), run as PYTHONPATH=DIR: an A/B row per round",
    )
    args = parser.parse_args()
    if args.base:
        BASE.append(os.path.abspath(args.base))
    if args.peer:
        from _env import ensure_peer  # (bench/: installs the peer on first use)

        ensure_peer()
    peer_tls = args.tls and args.peer
    try:  # (the peer intercepts TLS on 443 only)
        listener = socket.create_server(("127.0.0.1", 443 if peer_tls else 0), backlog=4096)
    except OSError as err:
        raise SystemExit(f"http_rules: --tls --peer needs 127.0.0.1:443: {err.strerror}") from None
    setup = Setup("localhost" if peer_tls else "127.0.0.1", listener.getsockname()[1], None, None)
    mb = [0]
    tls = None
    if args.tls:
        from sandlock.httptls import Interceptor

        authority = Interceptor()
        tls = authority.base_context("127.0.0.1")
        setup.ca = _pem_file(authority.ca_pem)
        if peer_tls:
            cert, key = _mitm_ca()
            setup.peer_ca = (_pem_file(cert), _pem_file(key))
            setup.bundle = _pem_file(authority.ca_pem + cert)
    threading.Thread(target=serve, args=(listener, mb, tls), daemon=True).start()
    modes = (("native", "net", "http", "peer") if args.peer else ("native", "net", "http")) + (
        ("base",) if args.base else ()
    )
    rows: dict[str, dict[str, list[float]]] = {}
    load = os.getloadavg()
    for row, n in (("curl", args.curl), ("python", args.requests), ("bulk", args.mb)):
        mb[0] = args.mb if row == "bulk" else 0
        for _ in range(args.rounds):
            for mode in modes:
                figure = measure(mode, setup, row, n)
                rows.setdefault(row, {}).setdefault(mode, []).append(figure)
                print(f"{row} {mode}: {rows[row][mode][-1]:.2f}", file=sys.stderr)
    listener.close()
    med = {row: {m: statistics.median(v) for m, v in r.items()} for row, r in rows.items()}
    c, p, b = med["curl"], med["python"], med["bulk"]
    print(
        f"machine: {os.cpu_count()} cpus, load average at start {load[0]:.2f}, "
        f"at end {os.getloadavg()[0]:.2f}"
    )
    if "peer" in modes:
        print("| row | unit | native | peer (HTTP rule) | ours (HTTP rule) | ours/peer overhead |")
        print("|---|---|---|---|---|---|")
        for name, row, unit in (("curl", c, "ms"), ("python", p, "us")):
            over = (row["http"] - row["native"]) / (row["peer"] - row["native"])
            print(
                f"| {name} | {unit}/request | {row['native']:.2f} | {row['peer']:.2f} | "
                f"{row['http']:.2f} | {over:.2f} |"
            )
        print(f"| bulk | MB/s | {b['native']:.0f} | {b['peer']:.0f} | {b['http']:.0f} | - |")
    print("| row | unit | native | ours (net rule) | ours (HTTP rule) | HTTP - native |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.curl} curl runs | ms/request | {c['native']:.2f} | {c['net']:.2f} | "
        f"{c['http']:.2f} | {c['http'] - c['native']:.2f} ms |"
    )
    print(
        f"| {args.requests} Python requests, fresh connections | us/request | "
        f"{p['native']:.0f} | {p['net']:.0f} | {p['http']:.0f} | "
        f"{p['http'] - p['native']:.0f} us |"
    )
    print(
        f"| bulk {args.mb} MB down | MB/s | {b['native']:.0f} | {b['net']:.0f} | "
        f"{b['http']:.0f} | {b['http'] / b['native']:.2f}x |"
    )
    if args.base:
        print("| row | unit | base (HTTP rule) | ours (HTTP rule) |")
        print("|---|---|---|---|")
        for name, row, unit in (("curl", c, "ms/request"), ("python", p, "us/request")):
            print(f"| {name} | {unit} | {row['base']:.2f} | {row['http']:.2f} |")
        print(f"| bulk | MB/s | {b['base']:.0f} | {b['http']:.0f} |")
    for row, r in rows.items():
        for mode, values in r.items():
            print(f"{row} {mode}: " + ", ".join(f"{v:.2f}" for v in values))


if __name__ == "__main__":
    main()
