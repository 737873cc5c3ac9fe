"""The cached BPF program: equal to a fresh build, trusted only when it is ours."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandlock import _bpf
from sandlock._filter import build_bpf


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _bpf.forget()
    yield tmp_path
    _bpf.forget()


def test_cache_is_written_and_equals_a_fresh_build(cache_home: Path) -> None:
    """The first launch builds and caches the program; it is exactly pyseccomp's output."""
    program = _bpf.filter_bpf()
    path = Path(_bpf.cache_path())
    assert path.parent.parent == cache_home
    assert path.read_bytes() == program == build_bpf()
    assert path.stat().st_mode & 0o077 == 0


def test_a_tampered_writable_cache_is_ignored(cache_home: Path) -> None:
    """A cache file others could have written is not trusted: the program is rebuilt."""
    path = Path(_bpf.cache_path())
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x06\x00\x00\x00\x00\x00\xff\x7f")  # "allow everything"
    os.chmod(path, 0o666)
    assert _bpf.filter_bpf() == build_bpf()


def test_a_truncated_cache_is_ignored(cache_home: Path) -> None:
    """A cache file that is not whole BPF instructions is rebuilt, not loaded."""
    path = Path(_bpf.cache_path())
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x06\x00\x00")
    os.chmod(path, 0o600)
    assert _bpf.filter_bpf() == build_bpf()
