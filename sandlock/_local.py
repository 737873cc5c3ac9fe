"""Non-IP sockets (AF_UNIX, AF_NETLINK): not egress, but still done on our duplicate.

Letting the kernel continue such a call would be a hole: between our look at fd N and
the kernel resuming the call, another thread of the child can dup2() an AF_INET socket
onto N, and the kernel would then read an address we never saw. So these calls are
performed on behalf of the child too, with no policy decision, after two translations
that make the supervisor's call mean what the child's would have meant:

* an AF_UNIX path is resolved where the child stands: a relative path against the
  child's working directory and an absolute one against its root, through
  ``/proc/self/fd/N/...`` on an O_PATH descriptor of that directory;
* descriptors passed with SCM_RIGHTS are the child's numbers: each is duplicated into
  the supervisor (pidfd_getfd) and the message carries our duplicates.

The call runs with the child's credentials where ours are more (_caller.py). What cannot
be made identical: a peer that asks for credentials (SO_PEERCRED, SO_PASSCRED) sees the
supervisor's pid (with the child's uid and gid).
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from . import _syscalls as sys_
from ._msg import CMSG_HEADER, cmsgs

SUN_PATH_MAX = 108
_SUN_OFFSET = 2  # sun_path follows sa_family
_SOL_SOCKET = socket.SOL_SOCKET
_SCM_RIGHTS = socket.SCM_RIGHTS


def unix_name(tid: int, name: bytes, keep: list[int]) -> bytes | int:
    """The child's sockaddr_un as the supervisor must write it, or a negative errno.

    Descriptors opened to resolve it are appended to ``keep`` (close them after the call).
    """
    path = name[_SUN_OFFSET:]
    if len(name) < 2 or not path or path[0] == 0:
        return name  # unnamed (autobind) or abstract: no filesystem involved
    end = path.find(b"\0")
    path = path if end < 0 else path[:end]
    if path.startswith(b"/"):
        if _root_is_ours(tid):
            return name
        base, rel = f"/proc/{tid}/root", path.lstrip(b"/")
    else:
        base, rel = f"/proc/{tid}/cwd", path
    try:
        dirfd = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        return -(err.errno or errno.ENOENT)
    keep.append(dirfd)
    moved = b"/proc/self/fd/%d/%s" % (dirfd, rel)
    if len(moved) >= SUN_PATH_MAX:
        return -errno.ENAMETOOLONG
    return name[:_SUN_OFFSET] + moved + b"\0"


def _root_is_ours(tid: int) -> bool:
    try:
        return os.readlink(f"/proc/{tid}/root") == "/" and os.readlink("/proc/self/root") == "/"
    except OSError:
        return False


def translate_rights(tid: int, control: bytes, keep: list[int]) -> bytes | int:
    """Control data with every SCM_RIGHTS descriptor replaced by our duplicate of it."""
    found = cmsgs(control)
    if isinstance(found, int):
        return found
    out = bytearray(control)
    for m in found:
        if m.level != _SOL_SOCKET or m.kind != _SCM_RIGHTS:
            continue
        start = m.offset + CMSG_HEADER
        count = (m.length - CMSG_HEADER) // 4
        for i, fd in enumerate(struct.unpack_from(f"<{count}i", control, start)):
            dup = sys_.getfd(tid, fd)
            if dup < 0:
                return -errno.EBADF
            keep.append(dup)
            struct.pack_into("<i", out, start + 4 * i, dup)
    return bytes(out)
