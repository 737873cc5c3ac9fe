"""A one-minute tour: one loopback web server, two fetches under `sandlock run`.

    python examples/demo.py

The server listens on 127.0.0.1 and 127.0.0.2. The policy allows 127.0.0.1 on the
server's port only, so the first fetch succeeds and the second is refused (ECONNREFUSED)
without a packet leaving for 127.0.0.2. Everything stays on loopback.
"""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading

FETCH = """
import sys, urllib.request
try:
    body = urllib.request.urlopen(sys.argv[1], timeout=5).read()
    print(f"  fetched {sys.argv[1]}: {body.decode().strip()!r}")
except OSError as err:
    print(f"  refused {sys.argv[1]}: {err}")
    sys.exit(1)
"""


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from loopback\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def main() -> int:
    allowed = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    port = allowed.server_address[1]
    denied = http.server.ThreadingHTTPServer(("127.0.0.2", port), Hello)
    for server in (allowed, denied):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    rule = f"127.0.0.1:{port}"
    print(f"$ sandlock run --net-allow {rule} -- python -c <fetch> URL")
    codes = []
    for host in ("127.0.0.1", "127.0.0.2"):
        cmd = [
            sys.executable,
            "-m",
            "sandlock",
            "run",
            "--net-allow",
            rule,
            "--",
            sys.executable,
            "-c",
            FETCH,
            f"http://{host}:{port}/",
        ]
        codes.append(subprocess.run(cmd, check=False).returncode)
    for server in (allowed, denied):
        server.shutdown()
    ok = codes == [0, 1]
    print(
        "demo:", "as expected (allowed, then refused)" if ok else f"unexpected exit codes {codes}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
