"""Copying a sendmsg/sendmmsg request out of a child, checked and capped.

Every length is checked before anything is copied (the kernel checks them only when the
real syscall runs, which is after our trap), and every read either yields exactly the
bytes asked for or an errno. The layouts are x86-64's.
"""

from __future__ import annotations

import errno
import struct
from typing import NamedTuple

from . import _syscalls as sys_
from ._syscalls import int32 as int32  # (onbehalf.py and inbound.py take it from here)

MSGHDR_SIZE = sys_.MSGHDR_SIZE  # struct msghdr
MMSGHDR_SIZE = sys_.MMSGHDR_SIZE  # struct mmsghdr: a msghdr and its unsigned msg_len
MSG_LEN_OFFSET = sys_.MSG_LEN_OFFSET
SOCKADDR_MAX = sys_.SOCKADDR_MAX  # sizeof(struct sockaddr_storage)
UIO_MAXIOV = sys_.UIO_MAXIOV
MAX_DATA = 16 << 20  # our cap on one datagram's payload: EMSGSIZE above (*)
STREAM_CHUNK = 256 << 10  # what one call copies of a stream send: the rest is a short count
MAX_CONTROL = 64 << 10  # the kernel's optmem_max is far smaller: ENOBUFS above
# (*) The kernel's own limits are smaller: 64 KiB for UDP, the send buffer (at most twice
# net.core.wmem_max, 416 KiB by default) for a unix datagram. A stream send (TCP, unix
# stream) is copied STREAM_CHUNK at a time and answered with a short count, as the kernel
# may answer a blocking send: a program sends the rest with its next call. So the
# supervisor never holds more than one chunk or one datagram per call in progress.

_CMSGHDR = struct.Struct("<Qii")  # cmsg_len, cmsg_level, cmsg_type

# Control messages that reroute a packet (a source route): refused like the socket options.
_REROUTING_CMSGS = frozenset({(0, 7), (41, 5), (41, 57)})  # IP_RETOPTS, IPV6_[2292]RTHDR


# Control messages of IP sends that no capability governs (ip_cmsg_send,
# ip6_datagram_send_ctl, __sock_cmsg_send, udp_cmsg_send): sent without asking whose call
# it is. Any other (SO_MARK, SO_PRIORITY, IPV6_HOPOPTS/DSTOPTS, whatever a newer kernel
# adds) is sent with the caller's capabilities (_caller.py).
_UNPRIVILEGED_CMSGS = frozenset(
    {
        (0, 1),  # IP_TOS
        (0, 2),  # IP_TTL
        (0, 8),  # IP_PKTINFO
        (41, 50),  # IPV6_PKTINFO
        (41, 52),  # IPV6_HOPLIMIT
        (41, 62),  # IPV6_DONTFRAG
        (41, 67),  # IPV6_TCLASS
        (17, 103),  # UDP_SEGMENT
        (1, 37),  # SO_TIMESTAMPING_OLD
        (1, 61),  # SCM_TXTIME
    }
)


class Message:
    """Our copy of one message: what we decide on and what we send. (Plain classes here
    and in events.py, onbehalf.py: dataclasses costs the first decision ~7 ms of imports.)"""

    __slots__ = ("control", "data", "name")

    def __init__(self, name: bytes | None, data: bytes, control: bytes) -> None:
        self.name = name
        self.data = data
        self.control = control


def read_name(tid: int, addr: int, length: int) -> bytes | int | None:
    """A destination address (``None`` for NULL/empty), or a negative errno."""
    if length < 0 or length > SOCKADDR_MAX:
        return -errno.EINVAL
    if addr == 0 or length == 0:
        return None
    return sys_.read_mem(tid, addr, length)


def read_msghdr(tid: int, raw: bytes, stream: bool = False) -> Message | int:
    """Copy the name, iovecs and control data a struct msghdr points at: of a stream
    send, at most STREAM_CHUNK bytes of data."""
    name_p, namelen, iov_p, iovlen, ctl_p, ctllen, _flags = sys_.MSGHDR.unpack_from(raw)
    namelen = int32(namelen)
    if name_p and namelen < 0:
        return -errno.EINVAL
    if iovlen > UIO_MAXIOV:
        return -errno.EMSGSIZE
    if ctllen > MAX_CONTROL:
        return -errno.ENOBUFS
    # The kernel clamps an oversized name length to sockaddr_storage.
    name = read_name(tid, name_p, min(namelen, SOCKADDR_MAX)) if name_p else None
    if isinstance(name, int):
        return name
    data = read_iovecs(tid, iov_p, iovlen, STREAM_CHUNK if stream else None)
    if isinstance(data, int):
        return data
    control = sys_.read_mem(tid, ctl_p, ctllen) if ctllen else b""
    if isinstance(control, int):
        return control
    return Message(name, data, control)


def read_iovecs(tid: int, iov_p: int, iovlen: int, chunk: int | None = None) -> bytes | int:
    """The bytes an iovec array describes, concatenated: the first ``chunk`` bytes of
    them (a stream send), or all of them, EMSGSIZE above MAX_DATA (a datagram)."""
    if iovlen == 0:
        return b""
    vec = sys_.read_mem(tid, iov_p, 16 * iovlen)
    if isinstance(vec, int):
        return vec
    pairs = struct.unpack_from(f"<{2 * iovlen}Q", vec)
    total = 0
    for length in pairs[1::2]:
        if length > 0x7FFF_FFFF_FFFF_FFFF:
            return -errno.EINVAL
        total += length
    if chunk is None and total > MAX_DATA:
        return -errno.EMSGSIZE
    left = total if chunk is None else min(total, chunk)
    parts = []
    for base, length in zip(pairs[::2], pairs[1::2], strict=True):
        length = min(length, left)
        if length:
            left -= length
            part = sys_.read_mem(tid, base, length)
            if isinstance(part, int):
                return part
            parts.append(part)
    return b"".join(parts)


def read_mmsg_vector(tid: int, vec_p: int, vlen: int) -> list[bytes] | int:
    """The readable prefix of an mmsghdr vector: one msghdr's bytes per entry.

    An unreadable first entry is EFAULT; a fault later ends the vector there, as the
    kernel's sendmmsg stops at the first entry it cannot read.
    """
    raw = sys_.read_mem(tid, vec_p, MMSGHDR_SIZE * vlen)
    if isinstance(raw, bytes):
        return [raw[i * MMSGHDR_SIZE : i * MMSGHDR_SIZE + MSGHDR_SIZE] for i in range(vlen)]
    entries: list[bytes] = []
    for i in range(vlen):
        one = sys_.read_mem(tid, vec_p + i * MMSGHDR_SIZE, MSGHDR_SIZE)
        if isinstance(one, int):
            return entries if entries else one
        entries.append(one)
    return entries


CMSG_HEADER = _CMSGHDR.size


class Cmsg(NamedTuple):
    """One control message: where it starts in the buffer, its length, level and type."""

    offset: int
    length: int
    level: int
    kind: int


def cmsgs(control: bytes) -> list[Cmsg] | int:
    """The control messages of a buffer, or -EINVAL when one is malformed (as the kernel
    would answer). Trailing bytes too short for a header are ignored, as it does."""
    out = []
    off = 0
    while off + _CMSGHDR.size <= len(control):
        length, level, kind = _CMSGHDR.unpack_from(control, off)
        if length < _CMSGHDR.size or off + length > len(control):
            return -errno.EINVAL
        out.append(Cmsg(off, length, level, kind))
        off += (length + 7) & ~7
    return out


def check_control(control: bytes) -> int:
    """0, or -EPERM when the control data carries a source route, -EINVAL when malformed."""
    found = cmsgs(control)
    if isinstance(found, int):
        return found
    if any((m.level, m.kind) in _REROUTING_CMSGS for m in found):
        return -errno.EPERM
    return 0


_SOL_SOCKET = 1
_SCM_CREDENTIALS = 2
_UCRED = struct.Struct("<iII")  # struct ucred: pid, uid, gid
_UCRED_CMSG_LEN = CMSG_HEADER + _UCRED.size


def credentials(control: bytes) -> list[tuple[int, tuple[int, int, int]]] | int:
    """Each SCM_CREDENTIALS of the control data: (offset of its ucred, (pid, uid, gid)),
    or -EINVAL when one is malformed (as the kernel answers). Checked by _caller.py."""
    found = cmsgs(control)
    if isinstance(found, int):
        return found
    out = []
    for m in found:
        if m.level != _SOL_SOCKET or m.kind != _SCM_CREDENTIALS:
            continue
        if m.length != _UCRED_CMSG_LEN:
            return -errno.EINVAL
        start = m.offset + CMSG_HEADER
        pid, uid, gid = _UCRED.unpack_from(control, start)
        out.append((start, (pid, uid, gid)))
    return out


def with_pids(control: bytes, offsets: list[int], old: int, new: int) -> bytes:
    """The control data with each ucred at ``offsets`` whose pid is ``old`` saying ``new``."""
    out = bytearray(control)
    for start in offsets:
        if struct.unpack_from("<i", out, start)[0] == old:
            struct.pack_into("<i", out, start, new)
    return bytes(out)


def privileged(control: bytes) -> bool:
    """Whether an IP send's control data holds a message some capability governs (or one
    we do not know): then it is sent with the caller's capabilities, not ours."""
    if not control:
        return False
    found = cmsgs(control)
    return isinstance(found, int) or any(
        (m.level, m.kind) not in _UNPRIVILEGED_CMSGS for m in found
    )
