"""The descriptor-swap race: why no trapped call is ever let continue in the kernel."""

from __future__ import annotations

import pytest

from .conftest import Sinks, describe, run_plain, run_sandboxed

# Every test twice: the gate answering what Python remembered, and Python answering every
# call (SANDLOCK_GATE=python): the same must reach the sinks and the command (conftest.py).
pytestmark = pytest.mark.usefixtures("gate_mode")


def test_fd_flip_between_unix_and_inet_never_connects(probe, sinks: Sinks) -> None:  # type: ignore[no-untyped-def]
    """dup2()ing an INET socket over an AF_UNIX one mid-connect reaches no denied sink."""
    allowed, denied = sinks.tcp("127.0.0.1"), sinks.tcp("127.0.0.2")
    path = probe("fdflip")
    # The probe can fail: unsandboxed, the swap lets at least one connect through.
    plain = run_plain([path, denied.target, "3000"])
    assert plain.returncode == 1 and denied.settle().count >= 1, describe(plain)
    before = denied.count
    res = run_sandboxed(["--net-allow", allowed.spec], [path, denied.target, "5000"])
    assert res.returncode == 0, describe(res)
    assert res.stdout.strip() == "connected=0"
    assert denied.settle().count == before
