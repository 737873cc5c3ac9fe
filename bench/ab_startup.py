"""A/B of start-up: two builds of ours, alternating run by run (rows 8a-8d).

    .venv/bin/python bench/ab_startup.py --base /tmp/base --rounds 41

* 8a: the wall time of a whole ``sandlock run -- /bin/true`` process, in ms;
* 8b: the same with ``run --daemon SOCK``, each build against its own ``sandlock serve``
  (started once, before the rounds);
* 8c: in one process per build, the median of ``Sandbox([]).run(["/bin/true"])`` calls,
  in ms (each round is one process making --calls of them);
* 8d: as 8c with ``capture_output=True``.

A is another checkout of the project, built in place (see ab.py); B is this tree. Both
run with this venv's interpreter, the tree first on sys.path, as ab.py does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_INPROC = """
import statistics, sys, time
sys.path.insert(0, {tree!r})
from sandlock import Sandbox
sb = Sandbox([])
times = []
for _ in range({calls}):
    t0 = time.perf_counter()
    sb.run(["/bin/true"], capture_output={capture})
    times.append(time.perf_counter() - t0)
print(statistics.median(times) * 1000)
"""


def _sandlock(tree: Path) -> list[str]:
    main = f"import sys; sys.path.insert(0, {str(tree)!r}); from sandlock.cli import main; main()"
    return [sys.executable, "-c", main]


def _cli(tree: Path, daemon: str | None = None) -> float:
    via = ["--daemon", daemon] if daemon else []
    t0 = time.perf_counter()
    subprocess.run([*_sandlock(tree), "run", *via, "--", "/bin/true"], check=True, cwd="/")
    return (time.perf_counter() - t0) * 1000


def _inproc(tree: Path, calls: int, capture: bool = False) -> float:
    code = _INPROC.format(tree=str(tree), calls=calls, capture=capture)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, required=True, help="A: another built checkout")
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--calls", type=int, default=50, help="in-process runs per round (8c)")
    args = p.parse_args()
    trees = {"A": args.base.resolve(), "B": ROOT}
    rows: dict[str, Callable[[Path, str], float]] = {
        "8a run -- /bin/true, ms": lambda t, d: _cli(t),
        "8b run --daemon -- /bin/true, ms": lambda t, d: _cli(t, d),
        "8c in-process run, ms": lambda t, d: _inproc(t, args.calls),
        "8d in-process run, output captured, ms": lambda t, d: _inproc(t, args.calls, True),
    }
    runs: dict[str, dict[str, list[float]]] = {row: {"A": [], "B": []} for row in rows}
    with tempfile.TemporaryDirectory(prefix="sandlock-ab-") as tmp, ExitStack() as stack:
        daemons = {key: _serve(stack, tree, os.path.join(tmp, key)) for key, tree in trees.items()}
        for _ in range(args.rounds):
            for key, tree in trees.items():
                for row, measure in rows.items():
                    runs[row][key].append(measure(tree, daemons[key]))
    for row, got in runs.items():
        a, b = statistics.median(got["A"]), statistics.median(got["B"])
        print(f"{row}: median of {args.rounds}: A {a:.2f}, B {b:.2f}, B-A {b - a:+.2f}")
    return 0


def _serve(stack: ExitStack, tree: Path, sock: str) -> str:
    """Start ``sandlock serve`` of ``tree`` on ``sock`` until the stack closes."""
    daemon = subprocess.Popen([*_sandlock(tree), "serve", "--socket", sock], cwd="/")
    stack.callback(daemon.wait, 10)
    stack.callback(daemon.terminate)
    deadline = time.monotonic() + 10
    while not os.path.exists(sock):
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"ab_startup: sandlock serve of {tree} did not start")
        time.sleep(0.01)
    return sock


if __name__ == "__main__":
    raise SystemExit(main())
