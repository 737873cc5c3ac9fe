"""The examples in examples/ run as the README says."""

from __future__ import annotations

import sys

import pytest

from .conftest import REPO, describe, run_command, sandlock_env


@pytest.mark.parametrize("name", ["demo.py", "agent.py", "agent_session.py"])
def test_example_runs(name: str) -> None:
    """Each example exits 0 (the demo checks its own allowed-then-refused outcome)."""
    res = run_command([sys.executable, str(REPO / "examples" / name)], env=sandlock_env())
    assert res.returncode == 0, describe(res)
    if name == "agent.py":
        assert "refused: tcp 127.0.0.2:" in res.stdout
    if name == "agent_session.py":  # each step decided by its own rules
        assert [line.split(":")[0] for line in res.stdout.splitlines() if "tcp" in line] == [
            "    allow",
            "    deny",
            "    deny",
        ]
        assert "shell closed: exit 0" in res.stdout
