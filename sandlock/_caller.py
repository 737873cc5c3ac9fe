"""On behalf never means more privilege: whose credentials an on-behalf call runs with.

The kernel checks a call against whoever makes it, and on behalf that is the supervisor.
Where that matters (an AF_UNIX path's permissions, the SO_PEERCRED a peer sees, netlink
groups, control messages that need a capability such as SO_MARK or IPV6_HOPOPTS) the
call runs with the calling thread's credentials, read from ``/proc/<tid>/status`` and
taken by our thread for that one syscall (csrc/caller.c). Only AF_UNIX/netlink calls and
sends with control data ask for them; plain IP calls never do.

What a supervisor can take: any effective capability set within its permitted set
(lowering needs nothing); ids and groups only with CAP_SETUID and CAP_SETGID permitted. A
supervisor without capabilities (any non-root one) never switches and never reads the
caller's credentials for that: its commands are its own children, which cannot hold more
than it (no_new_privs), or, through the daemon, clients of its own uid (whose groups it
does not take: it cannot).

SCM_CREDENTIALS are checked here as the kernel would check the caller's own
(``scm_check_creds``): the pid must be the caller's (as it sees it, in its own pid
namespace), uid and gid among its real, effective and saved ids, unless it holds
CAP_SYS_ADMIN / CAP_SETUID / CAP_SETGID. A forged one is EPERM and nothing is sent.
A valid one is sent with the caller's pid as we see it, which the kernel lets only a
supervisor with CAP_SYS_ADMIN send: a non-root supervisor's send fails with EPERM.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from . import _msg
from . import _syscalls as sys_

CAP_SETGID = 6
CAP_SETUID = 7
CAP_SYS_ADMIN = 21
_NO_ID = 0xFFFF_FFFF


class Creds:
    """One thread's credentials, as /proc/<tid>/status shows them to us."""

    __slots__ = ("caps", "gids", "groups", "permitted", "tgid", "tgid_inner", "uids", "userns")

    def __init__(
        self,
        tgid: tuple[int, int],
        uids: tuple[int, ...],
        gids: tuple[int, ...],
        groups: tuple[int, ...],
        caps: tuple[int, int],
        userns: str,
    ) -> None:
        self.tgid, self.tgid_inner = tgid  # as we see it, as it sees itself
        self.uids = uids  # real, effective, saved, fs
        self.gids = gids
        self.groups = groups
        self.caps, self.permitted = caps  # CapEff, CapPrm
        self.userns = userns

    def has(self, cap: int) -> bool:
        return bool(self.caps >> cap & 1)


def _field(text: bytes, key: bytes) -> bytes | None:
    start = text.find(key)
    if start < 0:
        return None
    start += len(key)
    end = text.find(b"\n", start)
    return text[start:] if end < 0 else text[start:end]


def parse_status(text: bytes, userns: str) -> Creds | None:
    """The credentials in a /proc/<tid>/status text (None if a field is missing)."""
    text = b"\n" + text  # (every key is then looked up as a line's start)
    tgid, nstgid, uid, gid, groups, eff, prm = (
        _field(text, key)
        for key in (
            b"\nTgid:",
            b"\nNStgid:",
            b"\nUid:",
            b"\nGid:",
            b"\nGroups:",
            b"\nCapEff:",
            b"\nCapPrm:",
        )
    )
    if None in (tgid, uid, gid, groups, eff, prm):
        return None
    assert tgid and uid and gid and groups is not None and eff and prm  # (for mypy)
    try:
        uids = tuple(int(v) for v in uid.split())
        gids = tuple(int(v) for v in gid.split())
        if len(uids) != 4 or len(gids) != 4:
            return None
        return Creds(
            (int(tgid), int((nstgid or tgid).split()[-1])),
            uids,
            gids,
            tuple(int(v) for v in groups.split()),
            (int(eff, 16), int(prm, 16)),
            userns,
        )
    except ValueError:
        return None


def read(tid: int | str) -> Creds | int:
    """A thread's credentials, or -ESRCH when it is gone."""
    try:
        fd = os.open(f"/proc/{tid}/status", os.O_RDONLY | os.O_CLOEXEC)
        try:
            text = os.read(fd, 1 << 16)
        finally:
            os.close(fd)
        userns = os.readlink(f"/proc/{tid}/ns/user")
    except OSError:
        return -errno.ESRCH
    return parse_status(text, userns) or -errno.ESRCH


_own: list[Creds] = []


def own() -> Creds:
    """The supervisor's credentials, read once (from a thread running Python: never one
    that is acting as a caller, which happens only inside one C call)."""
    if not _own:
        creds = read("thread-self")
        if isinstance(creds, int):
            raise OSError(-creds, "cannot read /proc/thread-self/status")
        _own.append(creds)
    return _own[0]


def switch_for(caller: Creds, ours: Creds, extra_caps: int = 0) -> sys_.Creds | None:
    """What to take to act as ``caller`` (None: acting as ourselves is the same).

    ``extra_caps`` are added to the caller's effective set (for a checked SCM_CREDENTIALS)."""
    # Capabilities count in their own user namespace: a caller's from another one (its
    # own, made with unshare) give nothing in ours.
    caps = caller.caps if caller.userns == ours.userns else 0
    caps = (caps | extra_caps) & ours.permitted
    ids = ours
    if ours.permitted >> CAP_SETUID & ours.permitted >> CAP_SETGID & 1:
        ids = caller
    uid = (ids.uids[0], ids.uids[1], ids.uids[3])
    gid = (ids.gids[0], ids.gids[1], ids.gids[3])
    same_ids = (uid, gid, ids.groups) == (
        (ours.uids[0], ours.uids[1], ours.uids[3]),
        (ours.gids[0], ours.gids[1], ours.gids[3]),
        ours.groups,
    )
    if same_ids and caps == ours.caps:
        return None
    return sys_.Creds(uid, gid, ids.groups, caps)


def check_credentials(sent: list[tuple[int, int, int]], caller: Creds) -> int:
    """0 if the caller could send each SCM_CREDENTIALS (pid, uid, gid) itself, else
    -EINVAL (an invalid id) or -EPERM, as the kernel would answer it."""
    own_ns = caller.userns == own().userns
    for pid, uid, gid in sent:
        if uid == _NO_ID or gid == _NO_ID:
            return -errno.EINVAL
        if not own_ns:  # its ids and capabilities are its namespace's: not checked here
            return -errno.EPERM
        if pid != caller.tgid_inner and not caller.has(CAP_SYS_ADMIN):
            return -errno.EPERM
        if uid not in caller.uids[:3] and not caller.has(CAP_SETUID):
            return -errno.EPERM
        if gid not in caller.gids[:3] and not caller.has(CAP_SETGID):
            return -errno.EPERM
    return 0


class Caller:
    """The notifying thread of one call, its credentials read when first needed.

    ``valid`` says whether the notification still waits: checked after the read, so that
    the tid was not recycled for another thread in between."""

    __slots__ = ("_creds", "_valid", "tid")

    def __init__(self, tid: int, valid: Callable[[], bool]) -> None:
        self.tid = tid
        self._valid = valid
        self._creds: Creds | None = None

    def creds(self) -> Creds | int:
        if self._creds is None:
            creds = read(self.tid)
            if isinstance(creds, int):
                return creds
            if not self._valid():
                return -errno.ENOENT
            self._creds = creds
        return self._creds

    def switch(self, msg: _msg.Message | None = None) -> sys_.Creds | int | None:
        """The credentials to perform this call (or send ``msg``) with: None for ours.

        A message's SCM_CREDENTIALS are checked first (-EPERM if forged) and their pid
        rewritten to the caller's as we see it."""
        extra = 0
        if msg is not None and msg.control:
            found = _msg.credentials(msg.control)
            if isinstance(found, int):
                return found
            if found:
                creds = self.creds()
                if isinstance(creds, int):
                    return creds
                rc = check_credentials([s for _, s in found], creds)
                if rc < 0:
                    return rc
                offsets = [o for o, _ in found]
                msg.control = _msg.with_pids(msg.control, offsets, creds.tgid_inner, creds.tgid)
                extra = 1 << CAP_SYS_ADMIN | 1 << CAP_SETUID | 1 << CAP_SETGID
        ours = own()
        if not ours.permitted:
            return None  # nothing to lower, nothing to switch to
        creds = self.creds()
        if isinstance(creds, int):
            return creds
        return switch_for(creds, ours, extra)
