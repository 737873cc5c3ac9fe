"""The filter's BPF program, cached on disk so that a launch need not load libseccomp.

Building the program means importing pyseccomp (ctypes, libseccomp: ~10 ms of a launch
that should cost little more than a fork). The program depends only on _filter.py, so it
is cached under a checksum of that file's source (it tells versions apart; trust comes
from the file's ownership and mode below, not from the checksum):

    $XDG_CACHE_HOME/sandlock/filter-<crc32>-<size>.bpf        (default ~/.cache/sandlock/)
    $XDG_CACHE_HOME/sandlock/filter-<crc32>-<size>-open.bpf   (the trap_open variant)
    $XDG_CACHE_HOME/sandlock/filter-<crc32>-<size>[-open]-reach.bpf   (refuse_reach)
    $XDG_CACHE_HOME/sandlock/filter-<crc32>-<size>[-open][-reach]-own.bpf   (own_sockets)

The variants of the program (with and without the open traps of sandlock.vfiles; with
and without the reach refusals that stand in for Landlock) are built from the same
source, so the variant is part of the name.

A cached file is used only if it belongs to us, is not writable by group or others, and
holds a whole number of BPF instructions; anything else is ignored and the program is
built again. Writing is atomic (a temporary file renamed into place) and best effort:
an unwritable cache only costs the build.
"""

from __future__ import annotations

import os
import stat
import zlib

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_filter.py")
_INSN = 8  # sizeof(struct sock_filter)


def cache_path(trap_open: bool = False, refuse_reach: bool = False, own: bool = False) -> str:
    """Where the program (the ``trap_open`` and ``refuse_reach`` variants or not) is cached."""
    with open(_SOURCE, "rb") as f:
        source = f.read()
    key = f"{zlib.crc32(source):08x}-{len(source)}"
    variant = ("-open" if trap_open else "") + ("-reach" if refuse_reach else "")
    variant += "-own" if own else ""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sandlock", f"filter-{key}{variant}.bpf")


_loaded: dict[tuple[bool, bool, bool], bytes] = {}  # not functools.cache: it costs a launch ~3 ms


def filter_bpf(trap_open: bool = False, refuse_reach: bool = False, own: bool = False) -> bytes:
    """The program: from the cache when it can be trusted, else built (and cached).

    ``trap_open`` selects the variant that also traps read-only opens (sandlock.vfiles),
    ``refuse_reach`` the one that refuses ptrace attach, process_vm_* and pidfd_getfd
    (where Landlock cannot keep the sandbox out of other processes), ``own`` the one that
    traps socket() and socketpair() (where the supervisor makes the sockets: _owned.py)."""
    key = (trap_open, refuse_reach, own)
    program = _loaded.get(key)
    if program is None:
        program = _loaded[key] = _load(trap_open, refuse_reach, own)
    return program


def forget() -> None:
    """Drop what this process loaded (tests: the next call reads or builds again)."""
    _loaded.clear()


def _load(trap_open: bool, refuse_reach: bool, own: bool) -> bytes:
    path = cache_path(trap_open, refuse_reach, own)
    cached = _read_trusted(path)
    if cached is not None:
        return cached
    from ._filter import build_bpf

    program = build_bpf(trap_open, refuse_reach, own)
    _write(path, program)
    return program


def _read_trusted(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return None
        if not stat.S_ISREG(st.st_mode) or not st.st_size or st.st_size % _INSN:
            return None
        data = os.read(fd, st.st_size)
        return data if len(data) == st.st_size else None
    finally:
        os.close(fd)


def _write(path: str, program: bytes) -> None:
    import tempfile

    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".filter-")
        try:
            os.write(fd, program)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        pass  # no cache: the next launch builds it again
