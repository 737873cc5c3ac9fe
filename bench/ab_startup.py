"""A/B of start-up: two builds of ours, alternating run by run (rows 8a-8d).

    .venv/bin/python bench/ab_startup.py --base /tmp/base --rounds 41

* 8a: the wall time of a whole ``sandlock run -- /bin/true`` process, in ms;
* 8b: the same with ``run --daemon SOCK``, each build against its own ``sandlock serve``
  (started once, before the rounds);
* 8c: in one process per build, the median of ``Sandbox([]).run(["/bin/true"])`` calls,
  in ms (each round is one process making --calls of them);
* 8d: as 8c with ``capture_output=True``.

A is another checkout of the project, built in place (see ab.py); B is this tree. Both
run with this venv's interpreter, the tree first on sys.path, as ab.py does. With
--container (no --base), A is this tree on the host and B this tree inside the simulated
default container (tests/container.py, as root: its launcher's exec is in B's figure
for 8a and 8b, not for 8c and 8d, which time calls inside one process).
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


LAUNCHER = ROOT / "tests" / "container.py"
_boxed: set[str] = set()  # the keys run inside the container


def _sandlock(tree: Path, key: str = "") -> list[str]:
    main = f"import sys; sys.path.insert(0, {str(tree)!r}); from sandlock.cli import main; main()"
    prefix = [sys.executable, str(LAUNCHER), "--"] if key in _boxed else []
    return [*prefix, sys.executable, "-c", main]


def _cli(tree: Path, key: str, daemon: str | None = None) -> float:
    via = ["--daemon", daemon] if daemon else []
    t0 = time.perf_counter()
    subprocess.run([*_sandlock(tree, key), "run", *via, "--", "/bin/true"], check=True, cwd="/")
    return (time.perf_counter() - t0) * 1000


def _inproc(tree: Path, key: str, calls: int, capture: bool = False) -> float:
    code = _INPROC.format(tree=str(tree), calls=calls, capture=capture)
    prefix = [sys.executable, str(LAUNCHER), "--"] if key in _boxed else []
    argv = [*prefix, sys.executable, "-c", code]
    out = subprocess.run(argv, check=True, capture_output=True, text=True)
    return float(out.stdout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, help="A: another built checkout")
    p.add_argument("--container", action="store_true", help="A: host, B: in a container")
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--calls", type=int, default=50, help="in-process runs per round (8c)")
    args = p.parse_args()
    if (args.base is None) == (not args.container):
        p.error("give --base or --container")
    if args.container:
        _boxed.add("B")
    trees = {"A": ROOT if args.container else args.base.resolve(), "B": ROOT}
    rows: dict[str, Callable[[Path, str, str], float]] = {
        "8a run -- /bin/true, ms": lambda t, k, d: _cli(t, k),
        "8b run --daemon -- /bin/true, ms": lambda t, k, d: _cli(t, k, d),
        "8c in-process run, ms": lambda t, k, d: _inproc(t, k, args.calls),
        "8d in-process run, output captured, ms": lambda t, k, d: _inproc(t, k, args.calls, True),
    }
    runs: dict[str, dict[str, list[float]]] = {row: {"A": [], "B": []} for row in rows}
    with tempfile.TemporaryDirectory(prefix="sandlock-ab-") as tmp, ExitStack() as stack:
        daemons = {
            key: _serve(stack, tree, key, os.path.join(tmp, key)) for key, tree in trees.items()
        }
        for _ in range(args.rounds):
            for key, tree in trees.items():
                for row, measure in rows.items():
                    runs[row][key].append(measure(tree, key, daemons[key]))
    for row, got in runs.items():
        a, b = statistics.median(got["A"]), statistics.median(got["B"])
        print(f"{row}: median of {args.rounds}: A {a:.2f}, B {b:.2f}, B-A {b - a:+.2f}")
    return 0


def _serve(stack: ExitStack, tree: Path, key: str, sock: str) -> str:
    """Start ``sandlock serve`` of ``tree`` on ``sock`` until the stack closes."""
    daemon = subprocess.Popen([*_sandlock(tree, key), "serve", "--socket", sock], cwd="/")
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
