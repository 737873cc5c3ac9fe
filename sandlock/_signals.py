"""Signals sent to sandlock, forwarded to the command (trio only in ``forward``: the
daemon client uses the rest).

The command stays in sandlock's process group, so the terminal treats the two as one
job: Ctrl-C, Ctrl-\\ and Ctrl-Z reach both directly. Signals sent to sandlock alone
(kill, a job runner's SIGTERM, SIGHUP) are forwarded. They arrive through a signalfd,
which says who sent them: one the terminal sent the whole group (si_code SI_KERNEL) is
not forwarded again, so the command never sees it twice.
"""

from __future__ import annotations

import errno
import os
import struct

from . import _syscalls as sys_

# Linux's numbers (asm-generic/signal.h), not the signal module's: it loads enum, a few
# milliseconds of every launch.
SIGHUP, SIGINT, SIGQUIT, SIGTERM = 1, 2, 3, 15
FORWARDED_SIGNALS = (SIGINT, SIGTERM, SIGHUP, SIGQUIT)
_SI_KERNEL = 0x80
_SIGINFO = struct.Struct("<IiiI")  # ssi_signo, ssi_errno, ssi_code, ssi_pid
_SIGINFO_SIZE = 128


def open_signalfd() -> int:
    """Block the forwarded signals in this thread and return a signalfd for them."""
    return sys_.signalfd(FORWARDED_SIGNALS)


def forward_pending(fd: int, pidfd: int) -> None:
    """Forward to the command every signal waiting on the signalfd ``fd``."""
    session_leader = os.getsid(0) == os.getpid()
    try:
        data = os.read(fd, _SIGINFO_SIZE * 16)
    except BlockingIOError:
        return
    for off in range(0, len(data) - _SIGINFO_SIZE + 1, _SIGINFO_SIZE):
        signo, _, code, _ = _SIGINFO.unpack_from(data, off)
        if code == _SI_KERNEL and not (signo == SIGHUP and session_leader):
            continue  # the terminal sent it to the whole group: the command has it
        try:
            sys_.pidfd_send_signal(pidfd, signo)
        except OSError as err:
            if err.errno != errno.ESRCH:
                raise


async def forward(fd: int, pidfd: int) -> None:
    """Forward what arrives on the signalfd ``fd`` until cancelled (a trio task)."""
    import trio

    while True:
        await trio.lowlevel.wait_readable(fd)
        forward_pending(fd, pidfd)
