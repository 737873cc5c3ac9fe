"""The cffi builder for sandlock._native (API mode).

The cdef is the block between the cdef markers of each header: csrc/abi.h (every number
C and Python share), csrc/sandlock.h (the syscalls, one job each), csrc/gate.h (the
notification thread that answers what Python already decided), csrc/caller.h (calls
made with the caller's credentials), csrc/relay.h (the relay's data path) and
csrc/owned.h (the sockets created on behalf where pidfd_getfd is refused). The headers
are the statement of the C boundary.
Each ``#define NAME VALUE`` of a block is given to cffi as ``#define NAME ...``, and each
array length named by one as ``[...]``: the compiler supplies the value, so the headers
stay plain C and kernel constants come from the system's headers. setup.py names
``build_ffi.py:ffibuilder``.
"""

from __future__ import annotations

import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
HEADERS = ("abi", "sandlock", "gate", "caller", "relay", "owned", "clienthello")  # csrc/<name>.h
# csrc/<name>.c; fastpath.h, destset.h, relaynotes.h, approved.h and connecting.h are C
# only (not in the cdef).
SOURCES = ("sandlock", "gate", "caller", "relay", "fastpath", "destset", "relaynotes")
SOURCES += ("connecting", "owned", "approved", "clienthello")


def _cdef(header: str) -> str:
    start = header.index("/* cdef-begin */")
    end = header.index("/* cdef-end */")
    block = re.sub(r"^#define (\w+) .*$", r"#define \1 ...", header[start:end], flags=re.M)
    return re.sub(r"\[SANDLOCK_\w+\]", "[...]", block)  # (an array sized by one: the compiler's)


ffibuilder = FFI()
ffibuilder.cdef("".join(_cdef((HERE / "csrc" / f"{h}.h").read_text()) for h in HEADERS))
ffibuilder.set_source(
    "sandlock._native",
    "".join(f'#include "{h}.h"\n' for h in HEADERS),
    sources=[f"csrc/{s}.c" for s in SOURCES],
    include_dirs=[str((HERE / "csrc").relative_to(HERE))],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11", "-pthread"],
    extra_link_args=["-pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
