"""The sandbox cannot reach around its supervisor: no ptrace of it, no capabilities that
rewrite where packets go."""

from __future__ import annotations

import shutil
import sys

import pytest

from .conftest import SANDLOCK, describe, run_command, run_plain, run_sandboxed, sandlock_env

# Dropped from a root command: SYS_PTRACE, NET_ADMIN, NET_RAW, SYS_ADMIN, SYS_MODULE, BPF.
DROPPED = {
    19: "SYS_PTRACE",
    12: "NET_ADMIN",
    13: "NET_RAW",
    21: "SYS_ADMIN",
    16: "SYS_MODULE",
    39: "BPF",
}


def test_the_command_cannot_ptrace_its_supervisor(probe) -> None:  # type: ignore[no-untyped-def]
    """Attaching to the supervisor fails (it is non-dumpable and the command lacks
    CAP_SYS_PTRACE); the same probe attaches to an ordinary parent."""
    path = probe("ptrace_parent")
    plain = run_plain(["/bin/sh", "-c", f'{path} "$PPID"'])
    assert plain.stdout.strip() == "attach ok", describe(plain)
    res = run_sandboxed([], ["/bin/sh", "-c", f'exec {path} "$PPID"'])
    assert res.stdout.strip() == "attach errno=1", describe(res)  # EPERM


def test_a_root_command_loses_the_capabilities_that_reroute() -> None:
    """The command's bounding, permitted and effective sets lack the dropped capabilities."""
    script = "print(open('/proc/self/status').read())"
    res = run_sandboxed([], [sys.executable, "-c", script])
    assert res.returncode == 0, describe(res)
    caps = {
        line.split(":")[0]: int(line.split()[1], 16)
        for line in res.stdout.splitlines()
        if line.startswith("Cap")
    }
    for bit, name in DROPPED.items():
        for kind in ("CapBnd", "CapPrm", "CapEff", "CapAmb"):
            assert not caps[kind] >> bit & 1, f"{name} still in {kind}"
    assert caps["CapEff"] >> 0 & 1  # CAP_CHOWN: the rest of root's powers are untouched


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_a_supervisor_without_cap_sys_ptrace_still_takes_the_listener() -> None:
    """Without CAP_SYS_PTRACE (any non-root user) the supervisor still gets the listener:
    the child makes itself dumpable again before the handover."""
    argv = [
        "setpriv",
        "--inh-caps",
        "-sys_ptrace",
        "--bounding-set",
        "-sys_ptrace",
        *SANDLOCK,
        "--",
        "/bin/echo",
        "ran",
    ]
    res = run_command(argv, env=sandlock_env())
    assert (res.returncode, res.stdout) == (0, "ran\n"), describe(res)
