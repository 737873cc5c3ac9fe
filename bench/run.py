"""The benchmark: native / peer (sandlock 0.9.0, Rust) / ours, side by side, in one run.

    python bench/run.py            # the full run (5 rounds), a few minutes on 2 cores
    python bench/run.py --quick    # a smoke run, about a minute

Prints the table and rewrites bench/RESULTS.md (keeping its notes section). The peer is
installed into bench/.peer-venv on first use; the workload is compiled into bench/.build.
See bench/README.md for what each row measures.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from _env import (
    BENCH,
    PEER_REQUIREMENT,
    Product,
    SetupError,
    build_workload,
    cpu_seconds,
    ensure_peer,
    machine,
    sink,
)
from _measure import (
    MODES,
    NATIVE,
    OURS,
    PEER,
    Failed,
    Setup,
    WorkloadOut,
    many,
    peak_rss_mb,
    run_workload,
    startup_daemon,
    startup_inproc,
    startup_standalone,
)
from _report import NOTES_MARKER, Row, render, results_md, samples_md

RESULTS = BENCH / "RESULTS.md"
OVERHEAD_RATIO = 0.5  # issue 3: ours' overhead at most half the peer's
FREE_US = 1.0  # issue 3: send() on a connected socket costs at most 1 us
RSS_MB = 40.0


@dataclass(frozen=True)
class Counts:
    """Operations per workload run (per round, per mode)."""

    tcp: int
    udp64: int
    udp60k: int
    sendmsg: int
    sendmmsg: int  # calls of 16 messages
    send: int
    threads: int  # connects in total, over 16 threads
    startup: int  # processes (or in-process runs) timed per round; the median is kept
    sandboxes: int
    each: int  # connects per sandbox in row 10

    @classmethod
    def full(cls) -> Counts:
        return cls(3000, 10000, 5000, 10000, 1000, 50000, 3000, 10, 32, 500)

    @classmethod
    def quick(cls) -> Counts:
        return cls(600, 2000, 1000, 2000, 200, 10000, 800, 3, 32, 100)


def make_rows(c: Counts) -> dict[str, Row]:
    rows = [
        Row("1", "TCP connect+close", "us/op", "overhead", OVERHEAD_RATIO),
        Row("2", "UDP sendto 64 B", "us/op", "overhead", OVERHEAD_RATIO),
        Row("3", "UDP sendto 60000 B", "us/op", "overhead", OVERHEAD_RATIO),
        Row("4", "UDP sendmsg, 2 iovecs", "us/op", "overhead", OVERHEAD_RATIO),
        Row("5a", "sendmmsg x16, per message", "us/msg", "overhead", OVERHEAD_RATIO),
        Row("5b", "sendmmsg x16, per call", "us/call", "overhead", OVERHEAD_RATIO),
        Row("6", "send() on connected UDP", "us/op", "free", FREE_US),
        Row("7", "16 threads connecting", "us/connect", "overhead", OVERHEAD_RATIO),
        Row("7b", "16 threads connecting", "connects/s", "info"),
        Row("8a", "start-up: run -- /bin/true", "ms", "total", 1.0),
        Row("8b", "start-up via daemon", "ms", "total", 0.5),
        Row("8c", "start-up in-process", "ms", "total", 1.0),
        Row("8d", "start-up in-process, output captured", "ms", "total", 1.0),
        Row("9", "supervisor peak RSS", "MB", "ceiling", RSS_MB),
        Row("10", f"{c.sandboxes} sandboxes x {c.each} connects", "ms", "all-ok"),
    ]
    return {row.key: row for row in rows}


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _rotated(r: int) -> list[str]:
    """Mode order for round r: rotated, so no mode always runs first or last."""
    return [MODES[(i + r) % len(MODES)] for i in range(len(MODES))]


def run_round(setup: Setup, rows: dict[str, Row], c: Counts, r: int, only: set[str]) -> None:
    def want(*keys: str) -> bool:
        return not only or any(k.rstrip("abcd") in only for k in keys)

    def record(key: str, mode: str, measure: Callable[[], float]) -> None:
        value = rows[key].record(mode, measure)
        shown = f"{value:.2f}" if value is not None else f"n/a: {rows[key].cells[mode].failure}"
        _log(f"  round {r + 1} row {key:>3} {mode:<6} {shown} {rows[key].unit}")

    workloads: list[tuple[str, str, int]] = [
        ("1", "tcp", c.tcp),
        ("2", "udp64", c.udp64),
        ("3", "udp60k", c.udp60k),
        ("4", "sendmsg", c.sendmsg),
        ("6", "send", c.send),
    ]
    for key, name, count in workloads:
        if want(key):
            for mode in _rotated(r):
                record(key, mode, partial(_us, setup, rows[key], mode, name, count))
    if want("5"):
        for mode in _rotated(r):
            out = _workload_for(rows, ("5a", "5b"), setup, mode, "sendmmsg", c.sendmmsg)
            if out is not None:
                record("5a", mode, partial(_const, out.ns_per_op / 1e3))
                record("5b", mode, partial(_const, (out.ns_per_call or 0.0) / 1e3))
    if want("7"):
        for mode in _rotated(r):
            out = _workload_for(rows, ("7", "7b"), setup, mode, "threads", c.threads)
            if out is not None:
                record("7", mode, partial(_const, out.ns_per_op / 1e3))
                record("7b", mode, partial(_const, out.ops / (out.elapsed_ns / 1e9)))
    if want("8"):
        for mode in _rotated(r):
            record("8a", mode, partial(_ms, startup_standalone, setup, mode, c.startup))
            record("8c", mode, partial(_ms, startup_inproc, setup, mode, c.startup))
            captured = partial(startup_inproc, capture=True)
            record("8d", mode, partial(_ms, captured, setup, mode, c.startup))
        # 8b compares ours through the daemon with the peer's standalone figure (the peer
        # has no daemon); its native and peer cells repeat this round's 8a.
        for mode in (NATIVE, PEER):
            src = rows["8a"].cells[mode]
            if src.failure is not None:
                rows["8b"].fail(mode, src.failure)
            elif src.samples:
                record("8b", mode, partial(_const, src.samples[-1]))
        record("8b", OURS, lambda: startup_daemon(setup, c.startup) * 1e3)
    if want("9"):
        rows["9"].fail(NATIVE, "no supervisor")
        for mode in (PEER, OURS):
            record("9", mode, partial(peak_rss_mb, setup, mode, c.threads))
    if want("10"):
        for mode in _rotated(r):
            record("10", mode, partial(_many, setup, rows["10"], mode, c))


def _us(setup: Setup, row: Row, mode: str, name: str, count: int) -> float:
    out = run_workload(setup, mode, name, count)
    row.overflowed(mode, out.overflows)
    return out.ns_per_op / 1e3


def _ms(measure: Callable[[Setup, str, int], float], setup: Setup, mode: str, count: int) -> float:
    return measure(setup, mode, count) * 1e3


def _const(value: float) -> float:
    return value


def _workload_for(
    rows: dict[str, Row], keys: Sequence[str], setup: Setup, mode: str, name: str, count: int
) -> WorkloadOut | None:
    """One workload run feeding several rows; a failure is recorded in each of them."""
    if any(rows[key].cells[mode].failure is not None for key in keys):
        return None
    try:
        out = run_workload(setup, mode, name, count)
    except Failed as err:
        _log(f"  {name} {mode}: n/a: {err}")
        for key in keys:
            rows[key].fail(mode, str(err))
        return None
    rows[keys[0]].overflowed(mode, out.overflows)
    return out


def _many(setup: Setup, row: Row, mode: str, c: Counts) -> float:
    out = many(setup, mode, c.sandboxes, c.each)
    row.overflowed(mode, out.overflows)
    if mode == OURS:
        ok = out.ok_connects == out.total_connects
        row.passed = ok if row.passed is None else row.passed and ok
    row.details[mode] = (
        f"{mode} {out.ok_connects}/{out.total_connects} connects ok, slowest sandbox "
        f"{out.slowest_ns / 1e6:.0f} ms in-child"
    )
    return out.wall_s * 1e3


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="native / peer / ours, side by side (issue 3). Loopback only.",
    )
    parser.add_argument(
        "--rounds", type=int, help="rounds; the table shows medians (default 5, --quick 3)"
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a ~1 min smoke run")
    parser.add_argument("--only", default="", help="rows to run, e.g. 1,5,8 (default all)")
    parser.add_argument("--sandlock", help="our console script (default .venv/bin/sandlock)")
    parser.add_argument(
        "--no-write", action="store_true", help="print the table only; leave RESULTS.md alone"
    )
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 3 if args.quick else 5
    if args.rounds < 3:
        parser.error("--rounds must be at least 3 (the table shows medians)")
    return args


def _kept_notes() -> str:
    try:
        text = RESULTS.read_text()
    except FileNotFoundError:
        return ""
    return text.split(NOTES_MARKER, 1)[1] if NOTES_MARKER in text else ""


def _precompile(peer_python: Path | None) -> None:
    """Write both products' bytecode caches before anything is timed."""
    repo = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(repo / "sandlock")], check=False)
    if peer_python is not None:
        code = (
            "import compileall, sysconfig; "
            "compileall.compile_dir(sysconfig.get_paths()['purelib'], quiet=1)"
        )
        subprocess.run([str(peer_python), "-P", "-c", code], check=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Measure what an installed product looks like: with its bytecode cached. (A shell
    # that sets PYTHONDONTWRITEBYTECODE would make every start-up recompile.)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    counts = Counts.quick() if args.quick else Counts.full()
    only = {part.strip() for part in args.only.split(",") if part.strip()}
    started = datetime.datetime.now(datetime.UTC)
    load = os.getloadavg()
    busy0, own0 = cpu_seconds()
    try:
        build_workload()
        product = Product.find(args.sandlock)
    except SetupError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 2
    peer_python: Path | None = None
    peer_reason = ""
    try:
        peer_python = ensure_peer()
    except SetupError as err:
        peer_reason = str(err)
        _log(f"bench: peer unavailable: {err}")
    _precompile(peer_python)
    rows = make_rows(counts)
    with sink() as ports:
        setup = Setup(ports, product, peer_python, peer_reason)
        _log(f"bench: sink tcp={ports.tcp} udp={ports.udp}; rules {' '.join(setup.rules)}")
        for r in range(args.rounds):
            _log(f"bench: round {r + 1}/{args.rounds}")
            run_round(setup, rows, counts, r, only)
    chosen = [row for row in rows.values() if not only or row.key.rstrip("abcd") in only]
    table, notes = render(chosen)
    mach = machine()
    elapsed = datetime.datetime.now(datetime.UTC) - started
    busy1, own1 = cpu_seconds()
    others = max(0.0, (busy1 - busy0) - (own1 - own0))
    capacity = elapsed.total_seconds() * int(mach["nproc"])
    header = [
        f"date: {started:%Y-%m-%d %H:%M} UTC, took {elapsed.total_seconds():.0f} s",
        f"command: `{shlex.join([sys.executable, *sys.argv])}`",
        f"machine: nproc {mach['nproc']}, kernel {mach['kernel']}, CPU {mach['cpu']}, "
        f"Python {mach['python']}",
        f"other processes: load average {load[0]:.2f} {load[1]:.2f} at start; during the run "
        f"they used about {others:.0f} of {capacity:.0f} CPU-seconds "
        f"({100 * others / capacity:.0f}%, an upper bound)",
        f"peer: {PEER_REQUIREMENT} (bench/.peer-venv), also given Landlock read access to "
        f"{', '.join(setup.peer_kwargs([])['fs_readable'])} (it cannot exec anything "
        f"otherwise); ours: {product.sandlock}, {product.install_kind()}",
        f"rounds: {args.rounds} (median){', --quick counts' if args.quick else ''}; {counts}",
        "ours/peer: (ours - native) / (peer - native) per op; for 8a-8d and 9 the whole "
        "figures, as issue 3's targets compare them",
        "8c/8d: the peer's run always captures the command's output; ours without "
        "capture_output (8c) and with it (8d), native with subprocess.run's likewise",
    ]
    print()
    print("\n".join(header))
    print()
    print(table)
    for line in notes:
        print(line)
    if not args.no_write:
        text = results_md(
            table=table, notes=notes, header=header, samples=samples_md(chosen), kept=_kept_notes()
        )
        RESULTS.write_text(text)
        _log(f"bench: wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
