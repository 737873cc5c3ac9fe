"""What the harness needs before it measures anything: the peer's venv, the compiled
workload, the loopback sink, the product's executables, and a description of the machine.

Everything here is idempotent: a second run reuses bench/.peer-venv and bench/.build.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BUILD = BENCH / ".build"
WORKLOAD_SRC = BENCH / "workload.c"
WORKLOAD = BUILD / "workload"
DRIVER = BENCH / "sdk_driver.py"
PEER_VENV = BENCH / ".peer-venv"
PEER_PYTHON = PEER_VENV / "bin" / "python"
PEER_REQUIREMENT = "sandlock==0.9.0"
PEER_VERSION = PEER_REQUIREMENT.split("==")[1]

_PEER_CHECK = (
    "import importlib.metadata as m, sandlock; "
    f"assert m.version('sandlock') == {PEER_VERSION!r}, m.version('sandlock')"
)


class SetupError(RuntimeError):
    """Something the harness needs could not be made ready; the message says what."""


def _run_quiet(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise SetupError(f"{what} failed (exit {proc.returncode}): {' / '.join(tail)}")


def peer_ready() -> bool:
    if not PEER_PYTHON.exists():
        return False
    # -P: no cwd on sys.path, or run from the repository root this would import *our*
    # sandlock package instead of the peer's.
    probe = subprocess.run(
        [str(PEER_PYTHON), "-P", "-c", _PEER_CHECK], capture_output=True, check=False
    )
    return probe.returncode == 0


def ensure_peer() -> Path:
    """bench/.peer-venv with the peer installed; created on first use, reused after."""
    if peer_ready():
        return PEER_PYTHON
    print(f"bench: installing {PEER_REQUIREMENT} into {PEER_VENV} ...", file=sys.stderr)
    python3 = shutil.which("python3") or sys.executable
    _run_quiet([python3, "-m", "venv", "--clear", str(PEER_VENV)], "python3 -m venv")
    _run_quiet(
        [str(PEER_PYTHON), "-m", "pip", "install", "--quiet", PEER_REQUIREMENT],
        f"pip install {PEER_REQUIREMENT}",
    )
    if not peer_ready():
        raise SetupError(f"{PEER_REQUIREMENT} installed but `import sandlock` fails in it")
    return PEER_PYTHON


def build_workload() -> Path:
    """bench/.build/workload, rebuilt when workload.c is newer."""
    if WORKLOAD.exists() and WORKLOAD.stat().st_mtime >= WORKLOAD_SRC.stat().st_mtime:
        return WORKLOAD
    BUILD.mkdir(exist_ok=True)
    cc = os.environ.get("CC", "gcc")
    _run_quiet(
        [cc, "-O2", "-Wall", "-pthread", "-o", str(WORKLOAD), str(WORKLOAD_SRC)],
        f"{cc} workload.c",
    )
    return WORKLOAD


@dataclass(frozen=True)
class Product:
    """Our executables: the console script and the python of the venv it belongs to."""

    sandlock: Path
    python: Path

    @classmethod
    def find(cls, given: str | None) -> Product:
        candidates = [given] if given else [str(ROOT / ".venv" / "bin" / "sandlock"), "sandlock"]
        for cand in candidates:
            found = shutil.which(cand)
            if found:
                script = Path(found)
                return cls(script, _interpreter_of(script))
        raise SetupError(
            f"sandlock not found (tried {', '.join(candidates)}); install the product first "
            "(see README.md) or pass --sandlock PATH"
        )

    def install_kind(self) -> str:
        """How the product is installed, as far as start-up cares: setuptools' default
        editable install loads an import hook at every interpreter start (~15 ms here)."""
        venv = self.python.parent.parent
        if any(venv.glob("lib/python*/site-packages/__editable___sandlock*_finder.py")):
            return (
                "editable install WITH an import hook: start-up rows include ~15 ms of it; "
                "reinstall with --config-settings editable_mode=compat (see README.md)"
            )
        return "no import hook (a regular install, or an editable one in compat mode)"

    def help_text(self, *args: str) -> str:
        proc = subprocess.run(
            [str(self.sandlock), *args, "--help"], capture_output=True, text=True, check=False
        )
        return proc.stdout + proc.stderr


def _interpreter_of(script: Path) -> Path:
    """The interpreter named by a console script's shebang (its venv's python)."""
    with script.open("rb") as f:
        first = f.readline().decode(errors="replace")
    if first.startswith("#!") and "python" in first:
        return Path(first[2:].strip().split()[0])
    return script.parent / "python"


class Sink:
    """The running loopback sink: its two ports, and a way to ask it for dropped SYNs."""

    def __init__(self, proc: subprocess.Popen[str], tcp: int, udp: int) -> None:
        self._proc = proc
        self.tcp = tcp
        self.udp = udp

    def drops(self) -> int:
        """SYNs the sink's listeners dropped so far because their accept queue was full.

        Each one is a connection whose SYN is retried a whole second later, which swamps
        a per-connect figure: the harness flags the rows where this number moved."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write("\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line.startswith("drops="):
            raise SetupError(f"workload sink: unexpected reply {line!r}")
        return int(line.split("=", 1)[1])


@contextmanager
def sink() -> Iterator[Sink]:
    """Run ``workload sink`` (C, 127.0.0.1, port 0) for the duration of the block."""
    proc = subprocess.Popen(
        [str(WORKLOAD), "sink"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        fields = dict(part.split("=", 1) for part in line.split())
        if "tcp" not in fields or "udp" not in fields:
            raise SetupError(f"workload sink did not report its ports: {line!r}")
        yield Sink(proc, int(fields["tcp"]), int(fields["udp"]))
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # the sink exits when its stdin closes
        reap(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def reap(proc: subprocess.Popen[Any]) -> None:
    """Wait for a helper process that was asked to exit; kill it after 5 s."""
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def machine() -> dict[str, str]:
    """nproc, kernel, CPU model and interpreter, for the results header."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "kernel": platform.release(),
        "cpu": model,
        "python": platform.python_version(),
    }


def cpu_seconds() -> tuple[float, float]:
    """(CPU busy on the whole machine, CPU used by us and our waited-for children), in s.

    Their difference over a run estimates what other processes took from it (an upper
    bound: interrupt time spent on our loopback traffic lands in the first figure)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # up to steal, no guest
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        own += usage.ru_utime + usage.ru_stime
    return busy, own
