"""The sandbox cannot reach into other processes: no ptrace, /proc/PID/mem, process_vm_*,
pidfd_getfd or signals against a same-uid neighbour, the supervisor or the daemon.

Each attack runs with Landlock (the sandbox's own domain), with Landlock capped at ABI 5
(SANDLOCK_LANDLOCK=5: a domain without scopes, as on kernels before 6.12) and with the
fallback forced by SANDLOCK_LANDLOCK=off, where the filter refuses what it can; in the
last two one stderr line says what is not contained. The neighbour is
tests/probes/reach.c in "serve" mode, started outside the sandbox; it answers every line
on its stdin with the value of the word the attacks try to overwrite, so "it still runs,
untouched" is checked by asking.

Neighbour and attacker run as uid 12345 (the command drops to it with setpriv inside the
sandbox): between root processes the ptrace class is already refused, because a root
command loses CAP_SYS_PTRACE and its capabilities are then no superset of a root
neighbour's. Signals need no such thing (root keeps CAP_KILL), and the supervisor and
the daemon are root's here: those attacks come from a root command.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandlock.api import Sandbox

from .conftest import Sinks, describe, probe_results, run_plain, run_sandboxed, sandlock_env
from .test_daemon import Daemon

EPERM = 1
EACCES = 13
UNTOUCHED = 0x1111111111111111  # the neighbour's word as reach.c starts it
WARNING = (
    "sandlock: warning: Landlock off (SANDLOCK_LANDLOCK=off): "
    "signals and /proc/PID/mem of processes outside the sandbox are not contained\n"
)
WARNING_ABI5 = (
    "sandlock: warning: Landlock ABI 5 has no scopes: "
    "signals to processes outside the sandbox are not contained\n"
)
NOBODY = 12345
SETPRIV = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]


def _landlock_abi() -> int:
    """The kernel's Landlock ABI, asked without sandlock (0: none)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = int(libc.syscall(444, None, 0, 1))  # landlock_create_ruleset(NULL, 0, VERSION)
    return max(abi, 0)


LANDLOCK_ABI = _landlock_abi()
needs_scopes = pytest.mark.skipif(
    LANDLOCK_ABI < 6, reason="needs Landlock ABI >= 6 (scoped signals)"
)


class Neighbour:
    """An unsandboxed reach.c "serve" process of ours, with a UDP socket to a sink."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        fields = dict(kv.split("=") for kv in self._line(30).split())
        self.pid, self.fd, self.addr = int(fields["pid"]), fields["fd"], fields["addr"]

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline() if ready else ""

    def value(self) -> int | None:
        """Its word, as it answers now; None if it does not answer (stopped or gone)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write("?\n")
        except BrokenPipeError:
            return None
        line = self._line(10)
        return int(line.split("=")[1], 16) if line.startswith("value=") else None

    def attack(self, *vectors: str) -> list[str]:
        """The argv of reach.c attacking this neighbour with ``vectors``."""
        return ["attack", str(self.pid), self.fd, self.addr, *vectors]

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        self.proc.kill()
        self.proc.communicate()


@pytest.fixture(scope="module")
def reach(probe: Callable[[str], str]) -> Iterator[str]:
    """reach.c where uid 12345 can run it (it cannot enter pytest's temporary dirs)."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        yield shutil.copy(probe("reach"), os.path.join(tmp, "reach"))


@pytest.fixture
def neighbour(reach: str, sinks: Sinks) -> Iterator[Neighbour]:
    """A uid-12345 neighbour whose socket is connected to a UDP sink on 127.0.0.1."""
    n = Neighbour([*SETPRIV, reach, "serve", sinks.udp("127.0.0.1").target])
    try:
        yield n
    finally:
        n.close()


SETTING = {"landlock": None, "abi5": "5", "fallback": "off"}  # SANDLOCK_LANDLOCK


@pytest.fixture(params=list(SETTING))
def mode(request: pytest.FixtureRequest) -> str:
    """The containments: Landlock's, Landlock's without scopes, and the filter's."""
    if request.param != "fallback" and LANDLOCK_ABI == 0:
        pytest.skip("Landlock is not available on this kernel")
    return str(request.param)


def _stderr(mode: str) -> str:
    """The one warning line of a mode (none with Landlock and its scopes)."""
    if mode == "fallback":
        return WARNING
    abi = LANDLOCK_ABI if mode == "landlock" else min(LANDLOCK_ABI, 5)
    return "" if abi >= 6 else WARNING_ABI5.replace("ABI 5", f"ABI {abi}")


def _run(mode: str, argv: list[str], sandlock_args: tuple[str, ...] = ()) -> Any:
    env = sandlock_env()
    env.pop("SANDLOCK_LANDLOCK", None)
    if SETTING[mode] is not None:
        env["SANDLOCK_LANDLOCK"] = SETTING[mode]
    return run_sandboxed(list(sandlock_args), argv, env=env, timeout=30)


def _attack(reach: str, mode: str, n: Neighbour, *vectors: str) -> Any:
    """reach.c in the sandbox, as uid 12345, against ``n``; the mode's stderr checked."""
    res = _run(mode, [*SETPRIV, reach, *n.attack(*vectors)])
    assert res.returncode == 0, describe(res)
    assert res.stderr == _stderr(mode), describe(res)
    return res


def _errnos(res: Any) -> dict[str, int | None]:
    return {label: line.errno for label, line in probe_results(res.stdout).items()}


def test_the_attacks_work_unsandboxed(reach: str, sinks: Sinks) -> None:
    """The baseline: outside a sandbox every vector reaches a same-uid neighbour here."""
    sink = sinks.udp("127.0.0.1")
    n = Neighbour([*SETPRIV, reach, "serve", sink.target])
    try:
        vectors = ("attach", "attach32", "seize", "vmread", "getfd", "mem", "vmwrite", "stop")
        res = run_plain([*SETPRIV, reach, *n.attack(*vectors)], timeout=30)
        assert len(probe_results(res.stdout)) == 11, describe(res)
        assert all(line.ok for line in probe_results(res.stdout).values()), describe(res)
        assert sink.settle().count == 1  # the stolen socket's datagram
        os.kill(n.pid, signal.SIGCONT)
        assert n.value() == 0x5A5A5A5A5A5A5A5A
    finally:
        n.close()


def test_no_ptrace_of_a_neighbour(reach: str, neighbour: Neighbour, mode: str) -> None:
    """PTRACE_ATTACH and PTRACE_SEIZE of a same-uid process outside fail with EPERM."""
    res = _attack(reach, mode, neighbour, "attach", "seize")
    assert _errnos(res) == {"attach": EPERM, "seize": EPERM}, describe(res)
    assert neighbour.value() == UNTOUCHED


def test_no_ptrace_through_the_i386_entry(
    reach: str, neighbour: Neighbour, mode: str, features: Any
) -> None:
    """PTRACE_ATTACH through int 0x80 fails with EPERM too (the filter's IA-32 half)."""
    features.require("ia32")
    res = _attack(reach, mode, neighbour, "attach32")
    assert _errnos(res) == {"attach32": EPERM}, describe(res)
    assert neighbour.value() == UNTOUCHED


def test_no_process_vm_access_to_a_neighbour(reach: str, neighbour: Neighbour, mode: str) -> None:
    """process_vm_writev and process_vm_readv into a same-uid process fail with EPERM."""
    res = _attack(reach, mode, neighbour, "vmwrite", "vmread")
    assert _errnos(res) == {"vm_write": EPERM, "vm_read": EPERM}, describe(res)
    assert neighbour.value() == UNTOUCHED


def test_no_socket_taken_from_a_neighbour(
    reach: str, neighbour: Neighbour, sinks: Sinks, mode: str
) -> None:
    """pidfd_getfd of a same-uid process's connected socket fails with EPERM."""
    res = _attack(reach, mode, neighbour, "getfd")
    assert _errnos(res) == {"pidfd_open": None, "getfd": EPERM}, describe(res)


@pytest.mark.parametrize("domain", ["landlock", "abi5"])
def test_no_proc_mem_write_into_a_neighbour(reach: str, neighbour: Neighbour, domain: str) -> None:
    """Opening /proc/PID/mem of a same-uid process fails (Landlock only: see the warning)."""
    if LANDLOCK_ABI == 0:
        pytest.skip("Landlock is not available on this kernel")
    res = _attack(reach, domain, neighbour, "mem")
    assert _errnos(res) == {"mem_open": EACCES}, describe(res)
    assert neighbour.value() == UNTOUCHED


@needs_scopes
def test_no_signal_to_a_neighbour(reach: str, neighbour: Neighbour) -> None:
    """kill(SIGSTOP), kill(SIGTERM) and pidfd_send_signal(SIGSTOP) of a same-uid process
    fail with EPERM; the neighbour still answers."""
    res = _attack(reach, "landlock", neighbour, "stop", "term", "pstop")
    assert _errnos(res) == {"stop": EPERM, "term": EPERM, "pidfd_stop": EPERM}, describe(res)
    assert neighbour.value() == UNTOUCHED


@needs_scopes
def test_a_root_command_cannot_signal_a_root_neighbour(reach: str, sinks: Sinks) -> None:
    """Root keeps CAP_KILL in the sandbox, and still cannot signal a process outside."""
    n = Neighbour([reach, "serve", sinks.udp("127.0.0.1").target])
    try:
        res = _run("landlock", [reach, *n.attack("stop", "pstop")])
        assert _errnos(res) == {"stop": EPERM, "pidfd_stop": EPERM}, describe(res)
        assert n.value() == UNTOUCHED
    finally:
        n.close()


@needs_scopes
def test_no_signal_to_the_supervisor(reach: str, sinks: Sinks) -> None:
    """SIGSTOP/SIGTERM to the supervisor fail with EPERM, and it still serves a connect."""
    sink = sinks.tcp("127.0.0.1")
    argv = [reach, "attack", "ppid", "-", "-", "stop", "term", "pstop"]
    res = _run("landlock", [*argv, f"connect:{sink.target}"], ("--net-allow", sink.spec))
    assert res.returncode == 0, describe(res)
    want = {"stop": EPERM, "term": EPERM, "pidfd_stop": EPERM, "connect": None}
    assert _errnos(res) == want, describe(res)
    assert sink.settle().count == 1


@needs_scopes
def test_a_daemon_sandbox_cannot_stop_the_daemon(reach: str, sinks: Sinks, tmp_path: Path) -> None:
    """SIGSTOP to `sandlock serve` from one of its sandboxes fails with EPERM, and another
    sandbox of that daemon still connects."""
    sink = sinks.tcp("127.0.0.1")
    daemon = Daemon(tmp_path / "d.sock")
    # The client hands its stderr to the daemon: a pipe would stay open in a stopped one.
    err = (tmp_path / "stderr").open("w")
    try:
        attack = [reach, "attack", str(daemon.proc.pid), "-", "-", "stop", "pstop"]
        res = daemon.run([], attack, timeout=20, stderr=err)
        assert _errnos(res) == {"stop": EPERM, "pidfd_stop": EPERM}, describe(res)
        connect = [reach, "attack", "ppid", "-", "-", f"connect:{sink.target}"]
        res = daemon.run(["--net-allow", sink.spec], connect, timeout=20, stderr=err)
        assert _errnos(res) == {"connect": None}, describe(res)
        assert sink.settle().count == 1
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
        daemon.stop()
        err.close()


def test_the_api_contains_too(reach: str, neighbour: Neighbour) -> None:
    """Sandbox.run (this process supervises) puts the command in the same containment."""
    vectors = ["attach", "vmwrite", "getfd"]
    vectors += ["mem"] if LANDLOCK_ABI else []
    vectors += ["stop"] if LANDLOCK_ABI >= 6 else []
    result = Sandbox().run([*SETPRIV, reach, *neighbour.attack(*vectors)], capture_output=True)
    assert result.stdout is not None
    got = {k: v.errno for k, v in probe_results(result.stdout.decode()).items()}
    got.pop("pidfd_open")
    assert set(got.values()) <= {EPERM, EACCES} and len(got) == len(vectors), got
    assert neighbour.value() == UNTOUCHED


def test_a_shell_still_signals_its_own_children(mode: str) -> None:
    """Inside the sandbox kill, job-control signals, traps and timeout(1) work as usual."""
    script = (
        "sleep 30 & p=$!; kill -STOP $p; kill -CONT $p; kill $p; wait $p; echo killed=$?; "
        "trap 'echo usr1' USR1; kill -USR1 $$; "
        "timeout 0.2 sleep 30; echo timeout=$?; "
        "sh -c 'kill -TERM $$'; echo self=$?"
    )
    res = _run(mode, ["/bin/sh", "-c", script])
    assert res.returncode == 0, describe(res)
    assert res.stdout.split() == ["killed=143", "usr1", "timeout=124", "self=143"], describe(res)


def test_the_command_still_traces_its_own_processes(reach: str) -> None:
    """With Landlock, ptrace inside the sandbox works: the domain only guards its edge."""
    script = f"sleep 30 & {reach} attack $! - - attach seize; kill $!"
    res = _run("landlock", ["/bin/sh", "-c", script])
    assert _errnos(res) == {"attach": None, "seize": None}, describe(res)


def test_abstract_unix_sockets_outside_follow_the_unix_rules() -> None:
    """The supervisor connects on the command's behalf, outside the domain, so Landlock's
    abstract-socket scope is not what decides: the --unix-allow rules are (refused
    without one, reachable with one)."""
    name = f"sandlock-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind("\0" + name)
        server.listen()
        code = (
            "import socket, sys\n"
            "try:\n"
            f"    socket.socket(socket.AF_UNIX).connect({chr(0) + name!r}); print('ok')\n"
            "except OSError as e:\n"
            "    print(e.errno)\n"
        )
        res = _run("landlock", [sys.executable, "-c", code])
        assert (res.returncode, res.stdout) == (0, f"{errno.ECONNREFUSED}\n"), describe(res)
        res = _run("landlock", [sys.executable, "-c", code], ("--unix-allow", "@" + name))
        assert (res.returncode, res.stdout) == (0, "ok\n"), describe(res)


def test_files_still_move_between_directories(mode: str, tmp_path: Path) -> None:
    """link(2) and rename(2) into another directory work in every mode (a Landlock
    domain that handles file access refuses them unless it grants REFER)."""
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    (tmp_path / "a" / "f").write_text("x")
    code = "import os, sys; os.link(sys.argv[1], sys.argv[2]); os.rename(sys.argv[1], sys.argv[3])"
    a, b = tmp_path / "a", tmp_path / "b"
    res = _run(mode, [sys.executable, "-c", code, str(a / "f"), str(b / "link"), str(b / "f")])
    assert res.returncode == 0, describe(res)
    assert sorted(p.name for p in b.iterdir()) == ["f", "link"]
