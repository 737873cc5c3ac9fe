"""One measurement of one workload under one mode: native, peer or ours.

The three modes run the same compiled workload against the same loopback sink with the
same rules (``tcp://127.0.0.1:TCP`` and ``udp://127.0.0.1:UDP``):
  native  the workload, no sandbox;
  peer    ``Sandbox(net_allow=RULES, fs_readable=...).run(argv)`` in bench/.peer-venv's
          python (sdk_driver.py). The peer also confines the filesystem with Landlock and
          its default is "nothing readable", so it gets read access to the system
          directories and bench/.build; without that it cannot exec the workload;
  ours    ``sandlock run --net-allow RULE... -- argv``.
Every function raises Failed (with the reason) rather than return a wrong number.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from _env import BUILD, DRIVER, WORKLOAD, Product, Sink, reap

NATIVE, PEER, OURS = "native", "peer", "ours"
MODES = (NATIVE, PEER, OURS)
TCP_WORKLOADS = ("tcp", "threads")
TIMEOUT = 600.0
_PEER_READABLE = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc")


class Failed(Exception):
    """A measurement that could not be made; str() is the reason shown in the table."""


@dataclass(frozen=True)
class WorkloadOut:
    """The workload's own report: per-op time measured inside the process."""

    ops: int
    fail: int
    elapsed_ns: int
    ns_per_op: float
    ns_per_call: float | None
    overflows: int = 0  # SYNs the sink dropped meanwhile (see Sink.drops)


@dataclass(frozen=True)
class ManyOut:
    """N sandboxes started at once: total wall time and what each one reported."""

    wall_s: float
    ok_connects: int
    total_connects: int
    slowest_ns: int
    overflows: int


@dataclass(frozen=True)
class Setup:
    """Everything a measurement needs to build its command line."""

    sink: Sink
    product: Product
    peer_python: Path | None  # None: the peer could not be installed
    peer_reason: str

    @property
    def tcp_rule(self) -> str:
        return f"tcp://127.0.0.1:{self.sink.tcp}"

    @property
    def rules(self) -> list[str]:
        return [self.tcp_rule, f"udp://127.0.0.1:{self.sink.udp}"]

    def peer_kwargs(self, rules: Sequence[str]) -> dict[str, Any]:
        readable = [p for p in _PEER_READABLE if os.path.exists(p)] + [str(BUILD)]
        return {"net_allow": list(rules), "fs_readable": readable}

    def peer(self) -> Path:
        if self.peer_python is None:
            raise Failed(f"peer not installed: {self.peer_reason}")
        return self.peer_python

    def command(self, mode: str, argv: Sequence[str]) -> list[str]:
        if mode == NATIVE:
            return list(argv)
        if mode == PEER:
            spec = {"kwargs": self.peer_kwargs(self.rules), "argv": list(argv)}
            return [str(self.peer()), str(DRIVER), "run", json.dumps(spec)]
        allow = [arg for rule in self.rules for arg in ("--net-allow", rule)]
        return [str(self.product.sandlock), "run", *allow, "--", *argv]

    def workload_argv(self, name: str, count: int, threads: int = 16) -> list[str]:
        port = self.sink.tcp if name in TCP_WORKLOADS else self.sink.udp
        argv = [str(WORKLOAD), name, "127.0.0.1", str(port), str(count)]
        return [*argv, str(threads)] if name == "threads" else argv


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-2:])[:200] or "no output"


def parse_workload(stdout: str, stderr: str, returncode: int) -> WorkloadOut:
    lines = [line for line in stdout.splitlines() if line.startswith("ops=")]
    if not lines:
        raise Failed(f"exit {returncode}: {_tail(stderr or stdout)}")
    fields = dict(part.split("=", 1) for part in lines[-1].split())
    out = WorkloadOut(
        ops=int(fields["ops"]),
        fail=int(fields["fail"]),
        elapsed_ns=int(fields["elapsed_ns"]),
        ns_per_op=float(fields["ns_per_op"]),
        ns_per_call=float(fields["ns_per_call"]) if "ns_per_call" in fields else None,
    )
    if out.fail or returncode != 0:
        raise Failed(f"{out.fail}/{out.ops} calls failed, exit {returncode}: {_tail(stderr)}")
    return out


def run_workload(setup: Setup, mode: str, name: str, count: int) -> WorkloadOut:
    cmd = setup.command(mode, setup.workload_argv(name, count))
    before = setup.sink.drops()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise Failed(f"timed out after {TIMEOUT:.0f} s") from None
    out = parse_workload(proc.stdout, proc.stderr, proc.returncode)
    return replace(out, overflows=setup.sink.drops() - before)


def _wall(cmd: Sequence[str], count: int) -> float:
    """Median wall time of ``count`` runs of the whole process ``cmd``."""
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        proc = subprocess.run(
            list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
        )
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise Failed(f"exit {proc.returncode}: {_tail(proc.stderr.decode(errors='replace'))}")
    return statistics.median(times)


def startup_standalone(setup: Setup, mode: str, count: int) -> float:
    """Wall seconds of a whole ``run -- /bin/true`` process (median of ``count``)."""
    if mode == NATIVE:
        return _wall(["/bin/true"], count)
    if mode == PEER:
        kwargs = setup.peer_kwargs([setup.tcp_rule])
        code = (
            "import sys; from sandlock import Sandbox; "
            f"sys.exit(Sandbox(**{kwargs!r}).run(['/bin/true']).exit_code)"
        )
        # -P keeps the cwd off sys.path: from the repository root, `import sandlock` would
        # otherwise find ours.
        return _wall([str(setup.peer()), "-P", "-c", code], count)
    cmd = [str(setup.product.sandlock), "run", "--net-allow", setup.tcp_rule, "--", "/bin/true"]
    return _wall(cmd, count)


def daemon_available(product: Product) -> bool:
    return "serve" in product.help_text() and "--daemon" in product.help_text("run")


def startup_daemon(setup: Setup, count: int) -> float:
    """Wall seconds of ``sandlock run --daemon PATH -- /bin/true`` (issue 4's daemon)."""
    if not daemon_available(setup.product):
        raise Failed("not available (needs issue 4: sandlock serve / run --daemon)")
    sandlock = str(setup.product.sandlock)
    with tempfile.TemporaryDirectory(prefix="sandlock-bench-") as tmp:
        sock = os.path.join(tmp, "daemon.sock")
        daemon = subprocess.Popen(
            [sandlock, "serve", "--socket", sock],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(sock):
                if daemon.poll() is not None or time.monotonic() > deadline:
                    err = daemon.stderr.read().decode(errors="replace") if daemon.stderr else ""
                    raise Failed(f"sandlock serve did not start: {_tail(err)}")
                time.sleep(0.01)
            cmd = [sandlock, "run", "--daemon", sock, "--net-allow", setup.tcp_rule]
            return _wall([*cmd, "--", "/bin/true"], count)
        finally:
            daemon.send_signal(signal.SIGTERM)
            reap(daemon)
            if daemon.stderr is not None:
                daemon.stderr.close()


def startup_inproc(setup: Setup, mode: str, count: int, capture: bool = False) -> float:
    """Seconds for one more ``Sandbox(...).run(["/bin/true"])`` in a warm process; with
    ``capture``, ours runs with ``capture_output=True`` and native with subprocess.run's
    (the peer's run always captures)."""
    argv = ["/bin/true"]
    spec: dict[str, Any]
    if mode == NATIVE:
        python, spec, kind = str(setup.product.python), {"argv": argv}, "native"
        spec["capture"] = capture
    elif mode == PEER:
        spec = {"kwargs": setup.peer_kwargs([setup.tcp_rule]), "argv": argv}
        python, kind = str(setup.peer()), "inproc"
    else:
        spec = {"kwargs": {"net_allow": [setup.tcp_rule]}, "argv": argv}
        spec["run_kwargs"] = {"capture_output": True} if capture else {}
        python, kind = str(setup.product.python), "inproc"
    spec["count"] = count
    proc = subprocess.run(
        [python, str(DRIVER), kind, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    if proc.returncode == 3 and mode == OURS:
        raise Failed("not available (needs issue 4: `from sandlock import Sandbox`)")
    if proc.returncode != 0:
        raise Failed(f"exit {proc.returncode}: {_tail(proc.stderr)}")
    times: list[float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return statistics.median(times)


def _vm_hwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def peak_rss_mb(setup: Setup, mode: str, count: int) -> float:
    """Peak RSS (VmHWM, MB) of the supervising process while the threads workload runs.

    Ours: the ``sandlock`` process (its supervisor is in-process). Peer: the python
    process driving its SDK (the Rust supervisor runs in it). Polled from /proc every
    5 ms; VmHWM only grows, so the last sample before exit is the peak."""
    if mode == NATIVE:
        raise Failed("no supervisor")
    cmd = setup.command(mode, setup.workload_argv("threads", count))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    deadline = time.monotonic() + TIMEOUT
    while proc.poll() is None:
        peak = max(peak, _vm_hwm_kb(proc.pid) or 0)
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.005)
    stdout, stderr = proc.communicate()
    parse_workload(stdout, stderr, proc.returncode)
    if peak == 0:
        raise Failed("exited before /proc could be read")
    return peak / 1024


def many(setup: Setup, mode: str, sandboxes: int, each: int) -> ManyOut:
    """``sandboxes`` sandboxes started at once, each making ``each`` TCP connects."""
    cmd = setup.command(mode, setup.workload_argv("tcp", each))
    before = setup.sink.drops()
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(sandboxes)
    ]
    outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
    wall = time.perf_counter() - t0
    ok, slowest, errors = 0, 0, []
    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
        try:
            out = parse_workload(stdout, stderr, proc.returncode)
        except Failed as err:
            errors.append(str(err))
            continue
        ok += out.ops - out.fail
        slowest = max(slowest, out.elapsed_ns)
    if errors:
        raise Failed(f"{len(errors)}/{sandboxes} sandboxes failed, first: {errors[0]}")
    return ManyOut(wall, ok, sandboxes * each, slowest, setup.sink.drops() - before)
