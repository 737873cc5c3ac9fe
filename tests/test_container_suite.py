"""The enforcement matrix, the attack tests, the API and the daemon, run again inside the
simulated default container (tests/container.py), as root and as uid 12345 (issue 15).

Each mode runs pytest on SUITE from a copy of the project that uid 12345 can read
(container.public_tree), inside the launcher: the sandlock under test, its sinks and its
probes all live in the container, as they would in ``docker run``. Tests that need a
root supervisor skip themselves as uid 12345, as they would on any host. Set
SANDLOCK_CONTAINER_SUITE=0 to leave these two long tests out (about 2 minutes each).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from . import container
from .conftest import run_command

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


@pytest.mark.parametrize("uid", [None, UID], ids=["root", "uid12345"])
def test_suite_in_a_container(uid: int | None) -> None:
    """SUITE passes inside the container, sockets made on behalf (pidfd_getfd refused)."""
    dest = Path(tempfile.mkdtemp(prefix="sandlock-suite-"))
    try:
        python = container.public_tree(dest)
        cache = dest / "cache"  # the filter's cache (its user cannot write under /root)
        cache.mkdir()
        if uid is not None:
            os.chown(cache, uid, uid)
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "SANDLOCK_"))
        }
        env.update(XDG_CACHE_HOME=str(cache), HOME=str(cache))
        argv = [
            *container.launcher(uid),
            str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITE,
        ]  # fmt: skip
        res = run_command(argv, timeout=900, cwd=dest / "src", env=env)
        tail = "\n".join(res.stdout.splitlines()[-40:])
        assert res.returncode == 0, f"{tail}\n{res.stderr[-3000:]}"
        assert " passed" in tail and "failed" not in tail, tail
    finally:
        shutil.rmtree(dest, ignore_errors=True)
