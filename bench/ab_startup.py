"""A/B of start-up: two builds of ours, alternating run by run (rows 8a and 8c).

    .venv/bin/python bench/ab_startup.py --base /tmp/base --rounds 41

* 8a: the wall time of a whole ``sandlock run -- /bin/true`` process, in ms;
* 8c: in one process per build, the median of ``Sandbox([]).run(["/bin/true"])`` calls,
  in ms (each round is one process making --calls of them).

A is another checkout of the project, built in place (see ab.py); B is this tree. Both
run with this venv's interpreter, the tree first on sys.path, as ab.py does.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
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
    sb.run(["/bin/true"])
    times.append(time.perf_counter() - t0)
print(statistics.median(times) * 1000)
"""


def _cli(tree: Path) -> float:
    main = f"import sys; sys.path.insert(0, {str(tree)!r}); from sandlock.cli import main; main()"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", main, "run", "--", "/bin/true"], check=True, cwd="/")
    return (time.perf_counter() - t0) * 1000


def _inproc(tree: Path, calls: int) -> float:
    code = _INPROC.format(tree=str(tree), calls=calls)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, required=True, help="A: another built checkout")
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--calls", type=int, default=50, help="in-process runs per round (8c)")
    args = p.parse_args()
    base = args.base.resolve()
    cli: dict[str, list[float]] = {"A": [], "B": []}
    inproc: dict[str, list[float]] = {"A": [], "B": []}
    for _ in range(args.rounds):
        for key, tree in (("A", base), ("B", ROOT)):
            cli[key].append(_cli(tree))
            inproc[key].append(_inproc(tree, args.calls))
    for row, runs in (("8a run -- /bin/true, ms", cli), ("8c in-process run, ms", inproc)):
        a, b = statistics.median(runs["A"]), statistics.median(runs["B"])
        print(f"{row}: median of {args.rounds}: A {a:.2f}, B {b:.2f}, B-A {b - a:+.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
