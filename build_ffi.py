"""The cffi builder for sandlock._native (API mode).

The cdef is the block between the cdef markers of each header: csrc/sandlock.h (the
syscalls, one job each) and csrc/gate.h (the notification thread that answers what
Python already decided). The headers are the statement of the C boundary. setup.py
names ``build_ffi.py:ffibuilder``.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
UNITS = ("sandlock", "gate", "caller")  # csrc/<unit>.h and csrc/<unit>.c


def _cdef(header: str) -> str:
    start = header.index("/* cdef-begin */")
    end = header.index("/* cdef-end */")
    return header[start:end]


ffibuilder = FFI()
ffibuilder.cdef("".join(_cdef((HERE / "csrc" / f"{u}.h").read_text()) for u in UNITS))
ffibuilder.set_source(
    "sandlock._native",
    "".join(f'#include "{u}.h"\n' for u in UNITS),
    sources=[f"csrc/{u}.c" for u in (*UNITS, "connecting")],  # (connecting.h: C only)
    include_dirs=[str((HERE / "csrc").relative_to(HERE))],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11", "-pthread"],
    extra_link_args=["-pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
