"""Running one started command to completion under its supervisor (trio).

The command stays in sandlock's process group, so the terminal treats the two as one
job: Ctrl-C, Ctrl-\\ and Ctrl-Z reach both directly. Signals sent to sandlock alone
(kill, a job runner's SIGTERM, SIGHUP) are forwarded to the command. They arrive through
a signalfd, which says who sent them: a signal the terminal sent the whole group
(si_code SI_KERNEL) is not forwarded again, so the command never sees it twice.
"""

from __future__ import annotations

import errno
import os
import signal
import struct

import trio

from . import _syscalls as sys_
from .launch import Child, exit_status
from .supervisor import Supervisor

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_SI_KERNEL = 0x80
_SIGINFO = struct.Struct("<IiiI")  # ssi_signo, ssi_errno, ssi_code, ssi_pid
_SIGINFO_SIZE = 128


async def supervise(child: Child, sup: Supervisor, *, signal_fd: int | None = None) -> int:
    """Serve the child's notifications until it exits; return its exit status.

    ``sup`` answers for ``child.listener``; its policy may be replaced meanwhile."""
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.serve)
        if signal_fd is not None:
            nursery.start_soon(_forward_signals, signal_fd, child)
        await trio.lowlevel.wait_readable(child.pidfd)
        status = exit_status(child.pidfd)
        nursery.cancel_scope.cancel()
    return status


async def _forward_signals(fd: int, child: Child) -> None:
    session_leader = os.getsid(0) == os.getpid()
    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            data = os.read(fd, _SIGINFO_SIZE * 16)
        except BlockingIOError:
            continue
        for off in range(0, len(data) - _SIGINFO_SIZE + 1, _SIGINFO_SIZE):
            signo, _, code, _ = _SIGINFO.unpack_from(data, off)
            from_terminal = code == _SI_KERNEL and not (signo == signal.SIGHUP and session_leader)
            if from_terminal:
                continue  # the terminal sent it to the whole group: the child has it
            try:
                sys_.pidfd_send_signal(child.pidfd, signo)
            except OSError as err:
                if err.errno != errno.ESRCH:
                    raise
