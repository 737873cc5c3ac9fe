"""The daemon under load (issue 16): start-up per sandbox, many sandboxes at once, and
the daemon's memory and descriptors after many sandbox lifetimes.

Three parts, each against its own `sandlock serve` on a temporary socket:

  startup     wall time of `sandlock run --daemon SOCK --net-allow RULE -- /bin/true`
              (row 8b of run.py). With --base OTHER_TREE, that build's client against
              that build's daemon alternates run by run with this tree's (one daemon
              each), as bench/ab.py does; the figure is the ratio of the medians.
  concurrent  --sandboxes N (256) `run --daemon` at once on one daemon, each making
              --connects (100) TCP connects to the loopback sink. Each command waits on
              a pipe until all N have started (so all N are live at once), then
              connects; every sandbox must exit 0 with every connect made.
  lifetimes   warm up (100 sandboxes), note the daemon's VmRSS and open descriptors,
              run --lifetimes N (10000) short sandboxes, --parallel (4) at a time, note
              them again. One in --mixed-every (5) makes one allowed connect and one
              denied one (127.0.0.2, so the denial report path runs and is checked on
              stderr); the others run /bin/true.

    .venv/bin/python bench/daemon_load.py                     # all three, this tree
    .venv/bin/python bench/daemon_load.py --base /tmp/base170 --only startup
    .venv/bin/python bench/daemon_load.py --lifetimes 1000 --sandboxes 64   # quicker

A base tree is any other checkout built in place (see bench/ab.py):
    git worktree add /tmp/base170 170601a
    (cd /tmp/base170 && /path/to/this/.venv/bin/python setup.py build_ext --inplace)

Both builds run under this venv's interpreter with their tree first on sys.path
(`python -c "...; from sandlock.cli import main; main()"`, like ab.py): the same form for
both, so the ratio is fair; the console script adds a few ms of its own to each.
Loopback only: the sink on 127.0.0.1 is allowed, 127.0.0.2 is the denied address.
Standard library only. Output: one block of results on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import datetime
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from _env import ROOT, WORKLOAD, Sink, build_workload, cpu_seconds, machine, reap, sink

PARTS = ("startup", "concurrent", "lifetimes")
TIMEOUT = 600.0
BARRIER_WAIT = 120.0  # concurrent: seconds all sandboxes may take to start


class Failed(Exception):
    """A part that could not be measured; str() says why."""


def ours(tree: Path, *args: str) -> list[str]:
    """The sandlock command line of the build in ``tree``."""
    main = f"import sys; sys.path.insert(0, {str(tree)!r}); from sandlock.cli import main; main()"
    return [sys.executable, "-c", main, *args]


@dataclass
class Daemon:
    """A running `sandlock serve`: its pid, socket and stderr log."""

    proc: subprocess.Popen[bytes]
    sock: str
    log: Path

    def usage(self) -> tuple[int, int]:
        """(VmRSS in kB, open descriptors) of the daemon process now."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return rss, len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def run(self, tree: Path, rule: str, argv: list[str], *opts: str) -> list[str]:
        """`run --daemon` of the build in ``tree``, against this daemon."""
        return ours(tree, "run", "--daemon", self.sock, "--net-allow", rule, *opts, "--", *argv)


@contextmanager
def daemon(tree: Path) -> Iterator[Daemon]:
    """`sandlock serve` of the build in ``tree`` on a fresh socket, for the block."""
    with tempfile.TemporaryDirectory(prefix="sandlock-dload-") as tmp:
        sock, log = os.path.join(tmp, "d.sock"), Path(tmp, "serve.err")
        with log.open("wb") as err:
            proc = subprocess.Popen(ours(tree, "serve", "--socket", sock), stderr=err)
        d = Daemon(proc, sock, log)
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(sock):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise Failed(f"sandlock serve did not start: {log.read_text()[-300:]}")
                time.sleep(0.01)
            yield d
        finally:
            proc.send_signal(signal.SIGTERM)
            reap(proc)
            text = log.read_text(errors="replace")
            if "Traceback" in text:
                print(f"NOTE: the daemon of {tree} logged a traceback:\n{text[-2000:]}")


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def startup(args: argparse.Namespace, s: Sink) -> None:
    rule, trees = f"tcp://127.0.0.1:{s.tcp}", {"B (this tree)": ROOT}
    if args.base is not None:
        trees = {"A (base)": args.base.resolve(), **trees}
    times: dict[str, list[float]] = {k: [] for k in trees}
    with ExitStack() as stack:
        cmds = {
            k: stack.enter_context(daemon(t)).run(t, rule, ["/bin/true"]) for k, t in trees.items()
        }
        for i in range(args.runs):
            order = list(cmds) if i % 2 == 0 else list(reversed(cmds))  # ABBA: no order bias
            for k in order:
                t0 = time.perf_counter()
                proc = subprocess.run(cmds[k], capture_output=True, check=False, cwd="/")
                times[k].append((time.perf_counter() - t0) * 1e3)
                if proc.returncode != 0:
                    raise Failed(f"{k}: exit {proc.returncode}: {proc.stderr.decode()[-300:]}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        q = statistics.quantiles(v, n=4)
        print(f"  {k}: median {med[k]:.2f} ms (quartiles {q[0]:.2f} / {q[2]:.2f}, {len(v)} runs)")
    if args.base is not None:
        print(f"  ratio B/A of the medians: {med['B (this tree)'] / med['A (base)']:.3f}")


def concurrent(args: argparse.Namespace, s: Sink) -> None:
    n, rule = args.sandboxes, f"tcp://127.0.0.1:{s.tcp}"
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()
    script = (
        f"echo >&{ready_w}; exec {ready_w}>&-; read _ <&{go_r}; exec {go_r}<&-; "
        f"exec {WORKLOAD} tcp 127.0.0.1 {s.tcp} {args.connects}"
    )
    with daemon(ROOT) as d:
        base_rss, base_fds = d.usage()
        cmd = d.run(ROOT, rule, ["/bin/sh", "-c", script], "--keep-fds", f"{go_r},{ready_w}")
        drops0 = s.drops()
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(go_r, ready_w)
            )
            for _ in range(n)
        ]
        os.close(go_r)
        os.close(ready_w)
        got, deadline = 0, time.monotonic() + BARRIER_WAIT
        while got < n and select.select([ready_r], [], [], max(0, deadline - time.monotonic()))[0]:
            chunk = os.read(ready_r, n - got)  # (a failed client leaves the count short)
            if not chunk:
                break
            got += len(chunk)
        t_ready = time.perf_counter()
        fds = _settled_fds(d)
        rss_live, _ = d.usage()
        os.close(go_w)  # all commands read EOF and connect
        t_go = time.perf_counter()
        outs = [p.communicate(timeout=TIMEOUT) for p in procs]
        t_end = time.perf_counter()
        os.close(ready_r)
        drops = s.drops() - drops0
    ok_boxes, ok_connects, errors = 0, 0, []
    for p, (out, err) in zip(procs, outs, strict=True):
        fields = dict(x.split("=", 1) for x in out.decode().split() if "=" in x)
        made = int(fields.get("ops", 0)) - int(fields.get("fail", 0))
        ok_connects += made
        if p.returncode == 0 and made == args.connects:
            ok_boxes += 1
        else:
            errors.append(f"exit {p.returncode}: {err.decode(errors='replace').strip()[-200:]}")
    print(f"  {n} sandboxes on one daemon, {args.connects} connects each")
    print(f"  started (all {got} commands waiting at the barrier): {(t_ready - t0):.2f} s")
    print(f"  then a pause to count the daemon's fds: {(t_go - t_ready):.2f} s")
    print(f"  connect phase (barrier opened to last exit): {(t_end - t_go):.2f} s")
    total = (t_ready - t0) + (t_end - t_go)  # without the pause to count the daemon's fds
    print(f"  total wall (first spawn to last exit, less that pause): {total:.2f} s")
    print(f"  sandboxes succeeded: {ok_boxes}/{n}, failed: {n - ok_boxes}")
    print(f"  connects made: {ok_connects}/{n * args.connects}; sink SYN drops: {drops}")
    print(
        f"  daemon with all {n} live: {fds} fds (idle {base_fds}), VmRSS {rss_live / 1024:.1f} MB"
        f" (idle {base_rss / 1024:.1f} MB)"
    )
    for e in errors[:5]:
        print(f"  failure: {e}")


def _settled_fds(d: Daemon) -> int:
    """The daemon's descriptor count once it stops changing (its last handovers done)."""
    last, same = -1, 0
    deadline = time.monotonic() + 10
    while same < 3 and time.monotonic() < deadline:
        now = d.usage()[1]
        same = same + 1 if now == last else 0
        last = now
        time.sleep(0.1)
    return last


def lifetimes(args: argparse.Namespace, s: Sink) -> None:
    rule = f"tcp://127.0.0.1:{s.tcp}"
    mixed = f"{WORKLOAD} tcp 127.0.0.1 {s.tcp} 1 && ! {WORKLOAD} tcp 127.0.0.2 {s.tcp} 1"
    with daemon(ROOT) as d:
        plain_cmd = d.run(ROOT, rule, ["/bin/true"])
        mixed_cmd = d.run(ROOT, rule, ["/bin/sh", "-c", mixed])

        def one(i: int) -> str | None:
            is_mixed = i % args.mixed_every == 0
            proc = subprocess.run(
                mixed_cmd if is_mixed else plain_cmd, capture_output=True, check=False, cwd="/"
            )
            err = proc.stderr.decode(errors="replace")
            if proc.returncode != 0:
                return f"#{i} exit {proc.returncode}: {err.strip()[-200:]}"
            if is_mixed and "sandlock: denied tcp 127.0.0.2" not in err:
                return f"#{i} no denial report: {err.strip()[-200:]}"
            return None

        def batch(start: int, count: int) -> list[str]:
            with ThreadPoolExecutor(args.parallel) as pool:
                return [e for e in pool.map(one, range(start, start + count)) if e]

        errors = batch(0, args.warmup)
        time.sleep(1)  # the last exits' drain grace
        base = d.usage()
        print(f"  after {args.warmup} warm-up sandboxes: VmRSS {base[0]} kB, {base[1]} fds")
        t0, step, done = time.perf_counter(), max(1, args.lifetimes // 10), 0
        trail = []
        while done < args.lifetimes:
            k = min(step, args.lifetimes - done)
            errors += batch(args.warmup + done, k)
            done += k
            trail.append((done, *d.usage()))
            print(
                f"  ... {done} lifetimes: VmRSS {trail[-1][1]} kB, {trail[-1][2]} fds",
                file=sys.stderr,
            )
        wall = time.perf_counter() - t0
        time.sleep(1)
        end = d.usage()
    n_mixed = sum(
        1 for i in range(args.warmup, args.warmup + args.lifetimes) if i % args.mixed_every == 0
    )
    print(
        f"  {args.lifetimes} lifetimes ({n_mixed} with one allowed + one denied connect), "
        f"{args.parallel} at a time: {wall:.1f} s ({wall / args.lifetimes * 1e3:.1f} ms each)"
    )
    print(f"  after them: VmRSS {end[0]} kB, {end[1]} fds")
    print(f"  ratio after/before: VmRSS {end[0] / base[0]:.3f}, fds {end[1] / base[1]:.3f}")
    print(
        "  along the way (lifetimes: VmRSS kB / fds): "
        + ", ".join(f"{n}: {r}/{f}" for n, r, f in trail)
    )
    print(
        f"  failed sandboxes: {len(errors)} (of {args.warmup + args.lifetimes}, warm-up included)"
    )
    for e in errors[:5]:
        print(f"  failure: {e}")


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--only", default=",".join(PARTS), help=f"some of {','.join(PARTS)}")
    p.add_argument("--base", type=Path, help="startup: another built checkout to compare with")
    p.add_argument("--runs", type=int, default=101, help="startup: runs per build (101)")
    p.add_argument("--sandboxes", type=int, default=256, help="concurrent: sandboxes (256)")
    p.add_argument("--connects", type=int, default=100, help="concurrent: connects each (100)")
    p.add_argument("--lifetimes", type=int, default=10000, help="lifetimes: count (10000)")
    p.add_argument("--warmup", type=int, default=100, help="lifetimes: before the baseline (100)")
    p.add_argument("--parallel", type=int, default=4, help="lifetimes: at a time (4)")
    p.add_argument("--mixed-every", type=int, default=5, help="lifetimes: 1 in N connects (5)")
    args = p.parse_args()
    parts = [x for x in args.only.split(",") if x]
    if bad := [x for x in parts if x not in PARTS]:
        p.error(f"--only: unknown part(s) {', '.join(bad)}")
    build_workload()
    m = machine()
    print(f"# daemon_load.py {' '.join(sys.argv[1:])}")
    print(
        f"date {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; {m['nproc']} cores, "
        f"kernel {m['kernel']}, {m['cpu']}, Python {m['python']}; commit {_commit()}"
    )
    status = 0
    with sink() as s:
        for name in parts:
            busy0, own0 = cpu_seconds()
            t0 = time.monotonic()
            print(f"{name}: ({load()} at the start)", flush=True)
            try:
                PART_FUNCS[name](args, s)
            except Failed as err:
                print(f"  FAILED: {err}")
                status = 1
            busy1, own1 = cpu_seconds()
            others = max(0.0, (busy1 - busy0) - (own1 - own0)) / (time.monotonic() - t0)
            print(f"  ({load()} at the end; other processes, the sink included, took", end="")
            print(f" ~{others:.2f} cores meanwhile)", flush=True)
    return status


PART_FUNCS = {"startup": startup, "concurrent": concurrent, "lifetimes": lifetimes}


def _commit() -> str:
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() or "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
