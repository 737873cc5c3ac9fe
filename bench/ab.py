"""A/B: one workload under two builds of ours, alternating run by run, plus native.

What RESULTS.md's "what each step bought" figures come from. Differences of a microsecond
drown in the noise between two separate bench/run.py runs; alternating A and B within one
run, on the same sink, does not. B is this tree; A is another checkout of the project,
built in place:

    git worktree add /tmp/base <commit>
    (cd /tmp/base && /path/to/this/.venv/bin/python setup.py build_ext --inplace)
    .venv/bin/python bench/ab.py udp64 20000 --base /tmp/base --rounds 9

Both run with this venv's interpreter (A's tree first on sys.path). Loopback only.

With --wall, each figure is the wall time of the whole `run` process in ms (start-up and
exit included), e.g. a start-up that makes one connect:

    .venv/bin/python bench/ab.py tcp 1 --base /tmp/base --rounds 41 --wall

With --container, A is this tree on the host and B this tree inside the simulated default
container (tests/container.py, as root; no --base): where pidfd_getfd is refused and the
sockets are made on behalf. The "socket" workload times socket() + close():

    .venv/bin/python bench/ab.py socket 20000 --container --rounds 9
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _env import ROOT, WORKLOAD, build_workload, sink
from _measure import TCP_WORKLOADS, parse_workload

WORKLOADS = ("tcp", "udp64", "udp60k", "sendmsg", "sendmmsg", "send", "threads", "socket")
LAUNCHER = ROOT / "tests" / "container.py"


def _in_container(cmd: list[str]) -> list[str]:
    return [sys.executable, str(LAUNCHER), "--", *cmd]


def _ours(tree: Path, rule: str, argv: list[str]) -> list[str]:
    main = f"import sys; sys.path.insert(0, {str(tree)!r}); from sandlock.cli import main; main()"
    return [sys.executable, "-c", main, "run", "--net-allow", rule, "--", *argv]


def _ns_per_op(cmd: list[str], wall: bool = False) -> float:
    """The workload's ns per op, or with ``wall`` the whole process's wall time in us."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd="/")
    elapsed = time.perf_counter() - t0
    out = parse_workload(proc.stdout, proc.stderr, proc.returncode)
    return elapsed * 1e6 if wall else out.ns_per_op


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workload", choices=WORKLOADS)
    p.add_argument("count", type=int, help="operations per run")
    p.add_argument("--base", type=Path, help="A: another built checkout")
    p.add_argument("--container", action="store_true", help="A: host, B: in a container")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--wall", action="store_true", help="whole-process wall time, in ms")
    args = p.parse_args()
    if (args.base is None) == (not args.container):
        p.error("give --base or --container")
    build_workload()
    runs: dict[str, list[float]] = {"A": [], "B": [], "native": []}
    with sink() as s:
        tcp = args.workload in TCP_WORKLOADS
        port = s.tcp if tcp else s.udp
        rule = f"{'tcp' if tcp else 'udp'}://127.0.0.1:{port}"
        argv = [str(WORKLOAD), args.workload, "127.0.0.1", str(port), str(args.count)]
        if args.workload == "threads":
            argv.append("16")
        a_tree = ROOT if args.container else args.base.resolve()
        wrap = _in_container if args.container else list
        for _ in range(args.rounds):
            runs["A"].append(_ns_per_op(_ours(a_tree, rule, argv), args.wall))
            runs["B"].append(_ns_per_op(wrap(_ours(ROOT, rule, argv)), args.wall))
            runs["native"].append(_ns_per_op(argv, args.wall))
    med = {k: statistics.median(v) / 1000 for k, v in runs.items()}
    unit = "ms per run" if args.wall else "us/op"
    print(
        f"{args.workload}: median of {args.rounds}, {unit}: A {med['A']:.2f} "
        f"(overhead {med['A'] - med['native']:.2f}), B {med['B']:.2f} "
        f"(overhead {med['B'] - med['native']:.2f}), native {med['native']:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
