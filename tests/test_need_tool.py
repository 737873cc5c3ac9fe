"""The suite's own need_tool (tests/conftest.py): a missing client skips a test outside
CI and fails it in CI, so that CI cannot go green by skipping curl, node or git."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import in_ci, need_tool

MISSING = "sandlock-test-no-such-tool"


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH of one directory holding one executable, `present`."""
    tool = tmp_path / "present"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    return tool


def set_ci(monkeypatch: pytest.MonkeyPatch, ci: str | None) -> None:
    """CI as given (None: unset)."""
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)


@pytest.mark.parametrize("ci", [None, "", "0", "false", "true", "1", "yes"])
def test_a_found_tool_is_its_path_in_and_out_of_ci(
    tools: Path, monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> None:
    """A tool on PATH: its path, whatever CI says."""
    set_ci(monkeypatch, ci)
    assert need_tool("present") == str(tools)


@pytest.mark.parametrize("ci", [None, "", "0", "false", "FALSE"])
def test_a_missing_tool_skips_outside_ci(
    tools: Path, monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> None:
    """CI unset, empty, 0 or false: a missing tool skips the test, saying which."""
    set_ci(monkeypatch, ci)
    assert not in_ci()
    with pytest.raises(pytest.skip.Exception, match=f"{MISSING} is not installed"):
        need_tool(MISSING)


@pytest.mark.parametrize("ci", ["true", "1", "True"])
def test_a_missing_tool_fails_in_ci(tools: Path, monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    """CI set (`CI=true bash .ci/run`): a missing tool fails the test, saying which."""
    monkeypatch.setenv("CI", ci)
    assert in_ci()
    with pytest.raises(pytest.fail.Exception, match=f"{MISSING} is not installed, and CI"):
        need_tool(MISSING)
