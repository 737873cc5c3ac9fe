"""Running one started command to completion under its supervisor (trio)."""

from __future__ import annotations

import trio

from ._signals import forward_pending
from .launch import Child, exit_status
from .supervisor import Supervisor


async def supervise(child: Child, sup: Supervisor, *, signal_fd: int | None = None) -> int:
    """Serve the child's notifications until it exits; return its exit status.

    ``sup`` answers for ``child.listener``; its policy may be replaced meanwhile. Signals
    arriving on ``signal_fd`` (see _signals.py) are forwarded to the child."""
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.serve)
        if signal_fd is not None:
            nursery.start_soon(_forward_signals, signal_fd, child)
        await trio.lowlevel.wait_readable(child.pidfd)
        status = exit_status(child.pidfd)
        nursery.cancel_scope.cancel()
    return status


async def _forward_signals(fd: int, child: Child) -> None:
    while True:
        await trio.lowlevel.wait_readable(fd)
        forward_pending(fd, child.pidfd)
