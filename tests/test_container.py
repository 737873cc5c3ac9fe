"""The simulated default container (tests/container.py) and sandlock inside it (issue 15).

First the launcher itself: what it refuses must be refused under it and allowed outside
it, or the container-mode runs prove nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import container
from .conftest import SANDLOCK, describe, run_command, sandlock_env

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the launcher starts as root"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)"),
]

UID = 12345
MODES = [None, UID]
MODE_IDS = ["root", "uid12345"]


@pytest.fixture(scope="module")
def public_python() -> Iterator[str]:
    """A python that uid 12345 can run with sandlock importable (container.public_tree)."""
    dest = Path(tempfile.mkdtemp(prefix="sandlock-container-"))
    try:
        yield str(container.public_tree(dest))
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def in_container(uid: int | None, public_python: str, *args: str) -> list[str]:
    """``sandlock ARGS`` inside the simulated container, as root or as ``uid``."""
    return [*container.launcher(uid), public_python, "-m", "sandlock", *args]


# Run by /usr/bin/python3 (uid 12345 cannot enter a venv under /root): each call's errno.
_PROBE = textwrap.dedent("""
    import ctypes, os, socket
    libc = ctypes.CDLL(None, use_errno=True)
    def call(name, nr, *args):
        rc = libc.syscall(nr, *args)
        print(name, "ok" if rc >= 0 else "errno=%d" % ctypes.get_errno())
    pidfd = os.pidfd_open(os.getpid())
    call("pidfd_getfd", 438, pidfd, 0, 0)
    call("kcmp", 312, os.getpid(), os.getpid(), 0, 0, 0)
    call("clone3", 435, 0, 0)
    call("unshare", 272, 0x40000000)
    call("io_uring_setup", 425, 1, 0)
    try:
        socket.socket(40, socket.SOCK_STREAM)
        print("vsock ok")
    except OSError as e:
        print("vsock errno=%d" % e.errno)
    for line in open("/proc/self/status"):
        if line.startswith(("CapEff", "Uid")):
            print(line.split()[0], line.split()[1])
""")


def _probe(prefix: list[str]) -> dict[str, str]:
    res = run_command([*prefix, "/usr/bin/python3", "-c", _PROBE], timeout=30)
    assert res.returncode == 0, describe(res)
    return dict(line.split(" ", 1) for line in res.stdout.splitlines())


@pytest.mark.parametrize("uid", [None, UID], ids=["root", "uid12345"])
def test_launcher_refuses_what_docker_refuses(uid: int | None) -> None:
    """Under the launcher pidfd_getfd, kcmp, unshare(CLONE_NEWNET), io_uring and AF_VSOCK
    are refused (EPERM), clone3 answers ENOSYS and the capabilities are Docker's default
    set (root) or none (uid 12345); outside it the same calls are not refused."""
    inside = _probe(container.launcher(uid))
    assert inside["pidfd_getfd"] == "errno=1"
    assert inside["kcmp"] == "errno=1"
    assert inside["clone3"] == "errno=38"
    assert inside["unshare"] == "errno=1"
    assert inside["io_uring_setup"] == "errno=1"
    assert inside["vsock"] == "errno=1"
    assert inside["CapEff:"] == ("00000000a80425fb" if uid is None else "0000000000000000")
    assert inside["Uid:"] == str(0 if uid is None else UID)

    outside = _probe([])
    assert outside["pidfd_getfd"] == "ok"
    assert outside["kcmp"] == "ok"
    assert outside["clone3"] != "errno=38"  # (EFAULT or EINVAL: it reached the kernel)
    assert outside["io_uring_setup"] != "errno=1"


def test_supervisor_threads_stay_outside_the_filter() -> None:
    """The filter, no_new_privs and the Landlock domain are taken on by a short-lived
    spawning thread only: every thread left in the supervisor has no filter and no
    no_new_privs, while the command has both."""
    script = (
        "grep -h -E '^(Seccomp|NoNewPrivs):' /proc/$PPID/task/*/status | sort | uniq -c;"
        " echo self; grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status"
    )
    res = run_command(
        [*SANDLOCK, "--net-allow", "127.0.0.1:1", "--", "sh", "-c", script], env=sandlock_env()
    )
    assert res.returncode == 0, describe(res)
    supervisor, _, child = res.stdout.partition("self\n")
    assert "Seccomp:\t0" in supervisor and "NoNewPrivs:\t0" in supervisor, supervisor
    assert "Seccomp:\t2" not in supervisor and "NoNewPrivs:\t1" not in supervisor, supervisor
    assert "Seccomp:\t2" in child and "NoNewPrivs:\t1" in child, child


@pytest.mark.parametrize("uid", MODES, ids=MODE_IDS)
def test_cli_runs_in_a_container(uid: int | None, public_python: str) -> None:
    """`sandlock run` starts its command inside a default container, as root and as uid
    12345, with the command's exit status passed through and the command under the
    filter (before: "taking the seccomp listener (pidfd_getfd) failed", exit 1)."""
    script = "grep -E '^Seccomp:' /proc/self/status; id -u; exit 3"
    res = run_command(
        in_container(
            uid, public_python, "run", "--net-allow", "127.0.0.1:1", "--", "sh", "-c", script
        )
    )
    assert res.returncode == 3, describe(res)
    assert "Seccomp:\t2" in res.stdout, describe(res)
    assert res.stdout.split()[-1] == str(uid or 0), describe(res)
    assert res.stderr == "", describe(res)
