"""SANDLOCK_GATE=python (sandlock/_gatemode.py): the gate hands every call to Python.

The differential tests (conftest.gate_mode) compare the gate with Python only if the
python mode really leaves the gate idle, so that they cannot quietly compare the gate with
itself. Here one scenario runs in both modes through the CLI, the API and the daemon: the
command and the sink must see the same, and the gate's own counters (Gate.stats, read as
it stops) must show it answering in the gate mode and answering nothing in the python
mode. A hostname rule makes the virtual /etc/hosts, so that opens are trapped and the gate
also has opens to let continue (GATE_OPEN), and the sends to the allowed sink give it
remembered destinations to answer (GATE_CACHE).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandlock import Sandbox, UsageError
from sandlock import _syscalls as sys_
from sandlock._gatemode import GATE_ENV
from sandlock.plan import NameOptions

from .conftest import GATE_MODES, Sinks, UdpSink, describe, probe_kv, run_command, sandlock_env

PY = sys.executable
COUNT = 20  # sends to the allowed sink: the first decided in Python, the rest remembered

# The command: what it sees of the switch and of the virtual /etc/hosts, then the sends.
SCRIPT = 'echo "SANDLOCK_GATE=${SANDLOCK_GATE-unset}"; cat /etc/hosts; exec "$0" "$@"'

# `python -m sandlock`, with every gate's counters written to stderr as it stops: a spy,
# in the supervising process, on the one method every way of running a sandbox ends with.
SPY = """
import runpy, sys
from sandlock import _syscalls

_close = _syscalls.Gate.close

def close(gate):
    was_open = gate.fd >= 0
    _close(gate)
    if was_open:
        print("gate-stats connects=%d sends=%d opens=%d handoffs=%d" % gate.stats(),
              file=sys.stderr, flush=True)

_syscalls.Gate.close = close
runpy.run_module("sandlock", run_name="__main__", alter_sys=True)
"""
SPIED = [PY, "-c", SPY]

Stats = dict[str, int]
Seen = tuple[str, int, Stats]  # the command's stdout, what the sink counted, the gate's


def _stats(stderr: str) -> Stats:
    lines = [line for line in stderr.splitlines() if line.startswith("gate-stats ")]
    assert len(lines) == 1, f"one gate expected: {stderr!r}"
    return probe_kv(lines[0])


def _args(sink: UdpSink, probe: Callable[[str], str]) -> tuple[list[str], list[str]]:
    """The rules (a hostname, resolved at start) and the command, for sandlock run."""
    rules = ["--no-dns-proxy", "--net-allow", f"udp://localhost:{sink.port}"]
    cmd = ["sh", "-c", SCRIPT, probe("netprobe"), "-c", str(COUNT), "sendto", "udp", sink.target]
    return rules, cmd


def _both_modes(
    monkeypatch: pytest.MonkeyPatch, sinks: Sinks, run: Callable[[UdpSink], tuple[str, Stats]]
) -> dict[str, Seen]:
    """``run`` once per gate mode (set as conftest.gate_mode sets it), each with a sink."""
    seen = {}
    for mode in GATE_MODES:
        monkeypatch.setenv(GATE_ENV, mode)
        sink = sinks.udp("127.0.0.1")
        stdout, stats = run(sink)
        seen[mode] = (stdout, sink.settle().count, stats)
    return seen


def _check(seen: dict[str, Seen]) -> None:
    """The same in the command and at the sink; the gate busy, then idle."""
    (out, count, gate), (py_out, py_count, python) = seen["gate"], seen["python"]
    assert out == py_out and "SANDLOCK_GATE=unset" in out and "localhost" in out, seen
    assert count == py_count == COUNT, seen
    assert gate["sends"] > 0 and gate["opens"] > 0, f"the gate answered nothing: {gate}"
    assert python["connects"] == python["sends"] == python["opens"] == 0, python
    assert python["handoffs"] > gate["handoffs"] >= 1, seen  # what the gate answered, Python did


def test_cli_python_mode_leaves_the_gate_idle(probe, sinks, monkeypatch):
    """`sandlock run`: the same output and the same datagrams both ways; the gate answered
    sends and opens in the gate mode and nothing in the python mode."""

    def run(sink: UdpSink) -> tuple[str, Stats]:
        rules, cmd = _args(sink, probe)
        res = run_command([*SPIED, "run", *rules, "--", *cmd], env=sandlock_env())
        assert res.returncode == 0, describe(res)
        return res.stdout, _stats(res.stderr)

    _check(_both_modes(monkeypatch, sinks, run))


def test_api_python_mode_leaves_the_gate_idle(probe, sinks, monkeypatch):
    """Sandbox.run, in this process: the same both ways, the gate idle in the python mode."""
    stopped: list[tuple[int, int, int, int]] = []
    close = sys_.Gate.close

    def spy(gate: sys_.Gate) -> None:
        was_open = gate.fd >= 0
        close(gate)
        if was_open:
            stopped.append(gate.stats())

    monkeypatch.setattr(sys_.Gate, "close", spy)

    def run(sink: UdpSink) -> tuple[str, Stats]:
        sandbox = Sandbox([f"udp://localhost:{sink.port}"], names=NameOptions(dns_proxy=False))
        res = sandbox.run(_args(sink, probe)[1], capture_output=True)
        assert res.exit_code == 0, res
        assert len(stopped) == 1, stopped
        keys = ("connects", "sends", "opens", "handoffs")
        return (res.stdout or b"").decode(), dict(zip(keys, stopped.pop(), strict=True))

    _check(_both_modes(monkeypatch, sinks, run))


class _SpiedDaemon:
    """`sandlock serve` under the spy, in the gate mode of our environment now."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.proc = subprocess.Popen(
            [*SPIED, "serve", "--socket", self.path],
            env=sandlock_env(),
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not self._accepting():
            assert self.proc.poll() is None, self.stop()
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.02)

    def _accepting(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            return s.connect_ex(self.path) == 0

    def stop(self) -> str:
        """Its stderr, once it has ended."""
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.communicate(timeout=30)[1]


@pytest.fixture
def spied_daemon(tmp_path: Path) -> Iterator[Callable[[], _SpiedDaemon]]:
    """Starts spied daemons on demand; stops them all at teardown."""
    started: list[_SpiedDaemon] = []

    def start() -> _SpiedDaemon:
        started.append(_SpiedDaemon(tmp_path / f"d{len(started)}.sock"))
        return started[-1]

    yield start
    for daemon in started:
        daemon.stop()


def test_daemon_python_mode_leaves_the_gate_idle(probe, sinks, monkeypatch, spied_daemon):
    """`sandlock serve` started in each mode serves `run --daemon` so: the same both
    ways, its gate idle in the python mode."""

    def run(sink: UdpSink) -> tuple[str, Stats]:
        daemon = spied_daemon()
        rules, cmd = _args(sink, probe)
        argv = [PY, "-m", "sandlock", "run", "--daemon", daemon.path, *rules, "--", *cmd]
        res = run_command(argv, env=sandlock_env())
        assert res.returncode == 0, describe(res)
        return res.stdout, _stats(daemon.stop())

    _check(_both_modes(monkeypatch, sinks, run))


UNKNOWN = "sandlock: SANDLOCK_GATE=pyhton: unknown value (python, or gate: the default)\n"


@pytest.mark.parametrize("how", ["run", "run --daemon", "serve"])
def test_an_unknown_value_is_a_usage_error(tmp_path, monkeypatch, spied_daemon, how):
    """A misspelt mode is one line and exit 2 before anything starts (no command run, no
    socket bound), never a quiet fall back to the gate; `run --daemon` checks it too."""
    marker, sock = tmp_path / "ran", tmp_path / "serve.sock"
    argv = ["run", "--", "touch", str(marker)]
    if how == "run --daemon":
        argv[1:1] = ["--daemon", spied_daemon().path]  # (started with a good value)
    elif how == "serve":
        argv = ["serve", "--socket", str(sock)]
    monkeypatch.setenv(GATE_ENV, "pyhton")
    res = run_command([PY, "-m", "sandlock", *argv], env=sandlock_env())
    assert (res.returncode, res.stderr) == (2, UNKNOWN), describe(res)
    assert not marker.exists() and not sock.exists()


def test_an_unknown_value_raises_in_the_api(tmp_path, monkeypatch):
    """Sandbox.run raises UsageError (a ValueError) for it, and runs nothing."""
    monkeypatch.setenv(GATE_ENV, "pyhton")
    marker = tmp_path / "ran"
    with pytest.raises(UsageError, match="SANDLOCK_GATE=pyhton: unknown value"):
        Sandbox().run(["touch", str(marker)])
    assert not marker.exists()


@pytest.mark.parametrize("value", ["", "gate"])
def test_empty_and_gate_are_the_default(value, monkeypatch):
    """An empty SANDLOCK_GATE and `gate` both let the gate answer (as unset does)."""
    from sandlock._gatemode import gate_answers

    monkeypatch.setenv(GATE_ENV, value)
    assert gate_answers()
    monkeypatch.delenv(GATE_ENV)
    assert gate_answers()
