"""An agent harness in miniature: each tool call runs under its own egress policy.

    python examples/agent.py

A loopback "API" listens on 127.0.0.1 and a "metadata service" the agent must never
reach listens on 127.0.0.2. Three tool calls run one after another, each with the rules
its step needs; every decision lands in one audit log, and what was refused is read back
from ``Result.denied`` the way a model (or a person) would be shown it.
"""

from __future__ import annotations

import http.server
import json
import sys
import tempfile
import threading
from pathlib import Path

from sandlock import Sandbox, TimeoutExpired

FETCH = (
    "import sys, urllib.request; "
    "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
)


class Api(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "server": self.server.server_address[0]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def start_servers() -> tuple[http.server.ThreadingHTTPServer, http.server.ThreadingHTTPServer]:
    """The "API" on 127.0.0.1 and the "metadata service" on 127.0.0.2, on one port,
    each served by a thread."""
    api = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    metadata = http.server.ThreadingHTTPServer(("127.0.0.2", api.server_address[1]), Api)
    for server in (api, metadata):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return api, metadata


def main() -> int:
    api, metadata = start_servers()
    port = api.server_address[1]
    audit = Path(tempfile.mkdtemp()) / "decisions.jsonl"

    steps = [
        ("fetch the task", [f"127.0.0.1:{port}"], f"http://127.0.0.1:{port}/task"),
        ("exfiltrate (refused)", [f"127.0.0.1:{port}"], f"http://127.0.0.2:{port}/secrets"),
        ("offline step", [], f"http://127.0.0.1:{port}/again"),
    ]
    for title, rules, url in steps:
        sandbox = Sandbox(net_allow=rules, audit=audit)
        try:
            result = sandbox.run(
                [sys.executable, "-c", FETCH, url], capture_output=True, timeout=30
            )
        except TimeoutExpired as err:
            print(f"[{title}] timed out: {err}")
            continue
        print(f"[{title}] exit {result.exit_code} in {result.duration * 1000:.0f} ms")
        if result.success:
            print(f"    output: {result.stdout.decode().strip() if result.stdout else ''}")
        for d in result.denied:
            print(f"    refused: {d.proto} {d.dst}:{d.port} ({d.syscall}, {d.rule})")
    print(f"audit log ({audit}):")
    for line in audit.read_text().splitlines():
        print("   ", line)
    for server in (api, metadata):
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
