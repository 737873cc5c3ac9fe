"""The cffi builder for sandlock._native (API mode).

The cdef is the block of csrc/sandlock.h between the cdef markers: the header is the
single statement of the C boundary. setup.py names ``build_ffi.py:ffibuilder``.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
HEADER = HERE / "csrc" / "sandlock.h"


def _cdef(header: str) -> str:
    start = header.index("/* cdef-begin */")
    end = header.index("/* cdef-end */")
    return header[start:end]


ffibuilder = FFI()
ffibuilder.cdef(_cdef(HEADER.read_text()))
ffibuilder.set_source(
    "sandlock._native",
    '#include "sandlock.h"',
    sources=[str((HERE / "csrc" / "sandlock.c").relative_to(HERE))],
    include_dirs=[str((HERE / "csrc").relative_to(HERE))],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
