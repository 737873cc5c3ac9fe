"""Blanking an argument (the audit log's path) in this process's /proc/PID/cmdline.

The command runs as our uid and may read /proc/<supervisor>/cmdline, which shows the
kernel's copy of our argv (Python keeps its own). Overwriting the value there, before
the command starts, keeps the path out of sight: defence in depth only, since the
command may find the file by other means; the hash chain (auditchain.py) is what makes
tampering show.
"""

from __future__ import annotations

import os

__all__ = ["hide"]


def hide(value: str) -> bool:
    """Overwrite ``value`` (an argument before ``--``, or its ``--opt=value`` part) with
    ``*`` in our argv. Must run while this process is still dumpable (before
    launch.start): /proc/self/mem is root's afterwards. False when it could not."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
        fd = os.open("/proc/self/mem", os.O_RDWR | os.O_CLOEXEC)
    except (OSError, ValueError, IndexError):
        return False
    try:
        area = os.pread(fd, end - start, start)
        wanted = os.fsencode(value)
        offset, hidden = 0, False
        for arg in area.split(b"\0"):
            if arg == b"--":
                break
            at = -1
            if arg == wanted:
                at = offset
            elif arg.endswith(b"=" + wanted) and arg.startswith(b"-"):
                at = offset + len(arg) - len(wanted)
            if at >= 0 and wanted:
                os.pwrite(fd, b"*" * len(wanted), start + at)
                hidden = True
            offset += len(arg) + 1
        return hidden
    except OSError:
        return False
    finally:
        os.close(fd)
