"""What ``Process.set_policy`` costs: the call, and a swap followed by the call it decides.

    .venv/bin/python bench/set_policy.py [N]

One long-lived command (a Python loop that connects to a loopback sink once per line it
reads) runs under ``Sandbox.start``. Measured, N times each (default 500), medians and
95th percentiles printed:

* ``set_policy``: the call alone (rules parsed into a Policy in the caller's thread,
  then swapped in the serving thread's trio loop, which the call waits for);
* ``connect``: one connect round trip through the pipes, rules unchanged (the gate
  answers it from its cache after the first);
* ``swap+connect``: a ``set_policy`` to rules that allow it, then that connect: it is
  decided in Python under the new policy (the swap made the gate forget).
"""

from __future__ import annotations

import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable

from sandlock import Process, Sandbox

CONNECTOR = """
import socket, sys
for line in sys.stdin:
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", int(line)))
        print(0, flush=True)
    except OSError as e:
        print(e.errno, flush=True)
    finally:
        s.close()
"""


def _sink() -> int:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(128)

    def accept() -> None:
        while True:
            conn, _ = srv.accept()
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    return int(srv.getsockname()[1])


def _timed(n: int, fn: Callable[[int], None]) -> list[float]:
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t) * 1e6)
    return times


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    port = _sink()
    rules = [[f"127.0.0.1:{port}"], [f"127.0.0.1:{port}", "127.0.0.1:1"]]
    with Sandbox(rules[0]).start([sys.executable, "-c", CONNECTOR], stderr=None) as proc:

        def connect(_: int, proc: Process = proc) -> None:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(f"{port}\n".encode())
            assert proc.stdout.readline() == b"0\n"

        def swap(i: int) -> None:
            proc.set_policy(rules[i % 2])

        def swap_connect(i: int) -> None:
            swap(i)
            connect(i)

        connect(0)  # (warm: the supervisor's first call)
        results = {
            "set_policy": _timed(n, swap),
            "connect": _timed(n, connect),
            "swap+connect": _timed(n, swap_connect),
        }
    for name, times in results.items():
        p95 = statistics.quantiles(times, n=20)[-1]
        print(f"{name:14} median {statistics.median(times):7.1f} us   p95 {p95:7.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
