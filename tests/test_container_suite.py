"""The enforcement matrix, the attack tests, the API and the daemon, run again inside the
simulated default container (tests/container.py), as root and as uid 12345 (issue 15).

Each mode runs pytest on SUITE from a copy of the project that uid 12345 can read
(container.public_tree), inside the launcher: the sandlock under test, its sinks and its
probes all live in the container, as they would in ``docker run``. Tests that need a
root supervisor skip themselves as uid 12345, as they would on any host. Set
SANDLOCK_CONTAINER_SUITE=0 to leave these two long tests out (about 2 minutes, the two
modes side by side).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import container
from .conftest import kill_group

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the launcher starts as root"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)"),
    pytest.mark.skipif(
        os.environ.get("SANDLOCK_CONTAINER_SUITE") == "0", reason="SANDLOCK_CONTAINER_SUITE=0"
    ),
]

UID = 12345
SUITE = (
    "tests/test_enforce_matrix.py",
    "tests/test_enforce_attacks.py",  # the address flip among them
    "tests/test_toctou_fd.py",  # the fd flip
    "tests/test_api.py",  # sync and trio
    "tests/test_daemon.py",
)


MODES = {"root": None, "uid12345": UID}


@pytest.fixture(scope="module")
def suite_runs(public_python: str) -> Iterator[dict[str, tuple[subprocess.Popen[bytes], Path]]]:
    """Both modes started at once (they mostly wait on sockets and children, so side by
    side they take little more than one): each mode's pytest, its output in a file."""
    dest = Path(tempfile.mkdtemp(prefix="sandlock-suite-"))
    dest.chmod(0o755)  # (uid 12345 reaches its cache below it)
    src = Path(public_python).parents[2] / "src"
    runs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    try:
        for name, uid in MODES.items():
            cache = dest / name  # the filter's cache (its user cannot write under /root)
            cache.mkdir()
            if uid is not None:
                os.chown(cache, uid, uid)
            env = {
                k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "SANDLOCK_"))
            }
            env.update(XDG_CACHE_HOME=str(cache), HOME=str(cache))
            argv = [
                *container.launcher(uid),
                public_python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITE,
            ]  # fmt: skip
            output = dest / f"{name}.out"
            with open(output, "wb") as out:
                proc = subprocess.Popen(
                    argv, cwd=src, env=env, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            runs[name] = (proc, output)
        yield runs
    finally:
        for proc, _ in runs.values():
            kill_group(proc.pid)
            proc.wait()
        shutil.rmtree(dest, ignore_errors=True)


@pytest.mark.parametrize("mode", list(MODES))
def test_suite_in_a_container(
    mode: str, suite_runs: dict[str, tuple[subprocess.Popen[bytes], Path]]
) -> None:
    """SUITE passes inside the container, sockets made on behalf (pidfd_getfd refused)."""
    proc, output = suite_runs[mode]
    try:
        code = proc.wait(timeout=900)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        code = proc.wait()
    tail = "\n".join(output.read_text(errors="replace").splitlines()[-60:])
    assert code == 0, tail
    assert " passed" in tail and "failed" not in tail, tail
