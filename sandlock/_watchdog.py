"""The watchdog of a ``run --daemon`` command that runs a while: a stopped or wedged
daemon never leaves its sandbox hanging.

A daemon that dies takes the sandbox's listener with it, and the kernel fails the calls
(ENOSYS). One that lives but does not serve (stopped by SIGSTOP or a debugger, its event
loop stuck) would leave every call that needs it waiting for ever. So while the command
runs, the client pings the daemon on its connection, and once a ping has waited the
grace period it ends the sandbox fail-closed: it kills the command and its descendants
and exits with ``EXIT_DAEMON_STALLED`` and one line saying why. It answers no call
itself (the listener stays the daemon's alone, so the daemon's death still fails them)
and does not ask whether one waits: a daemon silent that long is given up on.

Loaded only for a command that outlives half the grace period (client.py): no ping is
due before, and a short command never pays for this module.
"""

from __future__ import annotations

import _socket
import os
import select
import struct
import sys
import time

from . import _wire
from .launch import Child
from .session import TIMED_OUT, exit_status, wait_child

EXIT_DAEMON_STALLED = 125  # the command was killed because the daemon stopped answering
_SIGSTOP, _SIGKILL = 19, 9  # Linux's numbers: the signal module loads enum

__all__ = ["EXIT_DAEMON_STALLED", "kill_tree", "watch"]


def watch(
    child: Child, signal_fd: int, sock: _socket.socket, path: str, grace: float
) -> tuple[int, bool]:
    """Wait for the command as wait_child does (forwarding signals), watching the daemon
    at ``path`` meanwhile: (its exit status, whether the daemon's exit notice came).
    If the daemon stops answering: the command killed, one line on stderr, and
    (EXIT_DAEMON_STALLED, True)."""
    daemon = _Watch(sock, grace)
    while True:
        status = wait_child(
            child, signal_fd, until_notified=False, deadline=daemon.deadline(), streams=daemon
        )
        if status != TIMED_OUT:
            assert status is not None
            return status, daemon.finished
        if daemon.stalled():
            kill_tree(child.pid)
            exit_status(child.pidfd)
            print(
                f"sandlock: the daemon at {path} stopped answering ({_state(_peer_pid(sock))})"
                f" for {grace:g} s; the command was killed",
                file=sys.stderr,
            )
            return EXIT_DAEMON_STALLED, True


class _Watch:
    """Whether the daemon still serves, as the client sees it while the command runs:
    the Streams that wait_child serves besides the command (the daemon's connection).

    Every ``grace / 2`` seconds one ping goes out, unless one is still unanswered; any
    record the daemon sends (the reply, the exit notice) shows its event loop runs.
    ``stalled`` once a ping has waited ``grace`` seconds: so a daemon is given up
    between ``grace`` and ``1.5 * grace`` after it stopped answering. A connection the
    daemon closed is watched no longer: a daemon that died took the listener with it,
    and the kernel fails the calls."""

    def __init__(self, sock: _socket.socket, grace: float) -> None:
        sock.settimeout(0.0)  # the client never waits on the connection from here on
        self.sock = sock
        self.grace = grace
        self.sent: float | None = None  # when the unanswered ping went out
        self.last_ping = time.monotonic() - grace / 2  # (so the first goes out at once)
        self.closed = False  # the daemon closed the connection
        self.finished = False  # the exit notice came

    def watched(self) -> list[tuple[int, int]]:
        return [] if self.closed else [(self.sock.fileno(), select.POLLIN)]

    def ready(self, fd: int) -> bool:
        self._read()
        return self.closed

    def done(self) -> bool:
        return True  # the command's status never waits for the daemon

    def deadline(self) -> float | None:
        if self.closed or self.finished:
            return None
        if self.sent is None:
            return self.last_ping + self.grace / 2
        half = self.sent + self.grace / 2  # (a reply by then: the next ping is due)
        return half if time.monotonic() < half else self.sent + self.grace

    def stalled(self) -> bool:
        """Send the ping that is due; True if one has waited the grace period."""
        self._read()  # (replies that came while this process was stopped count)
        if self.closed or self.finished:
            return False
        now = time.monotonic()
        if self.sent is not None:
            return now - self.sent >= self.grace
        if now >= self.last_ping + self.grace / 2:
            self.sent = self.last_ping = now
            try:
                _wire.send(self.sock, {"op": "ping"})
            except BlockingIOError:
                pass  # the daemon reads nothing: it has the grace period to start again
            except OSError:
                self.closed = True
        return False

    def _read(self) -> None:
        while not self.closed:
            try:
                got = _wire.recv(self.sock)
            except BlockingIOError:
                return
            except _wire.WireError:
                got = ({}, [])  # garbled, but the daemon sent it: it runs
            except OSError:
                got = None
            if got is None:
                self.closed = True
                return
            message, fds = got
            _wire.close_all(fds)
            self.sent = None
            if "event" in message:
                self.finished = True  # (the exit notice: the sandbox is over)


def _peer_pid(sock: _socket.socket) -> int:
    try:
        raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    except OSError:
        return -1
    return int(struct.unpack("3i", raw)[0])


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].decode().split()
    except OSError:
        return None


def _state(pid: int) -> str:
    """Why the daemon (pid) does not answer, as far as /proc tells."""
    fields = _stat(pid) if pid > 0 else None
    if fields is None:
        return "gone"
    return {"T": "stopped", "t": "stopped by a tracer", "D": "waiting in the kernel"}.get(
        fields[0], "running, but its event loop does not answer"
    )


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` (a child not yet reaped) and its descendants. The command shares
    our process group, so it is found in /proc: every process found is stopped first,
    and the search repeated until it finds no more, so none forks away meanwhile."""
    stopped: set[int] = set()
    while True:
        children: dict[int, list[int]] = {}
        for name in os.listdir("/proc"):
            fields = _stat(int(name)) if name.isdigit() else None
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(name))
        tree, todo = {pid}, [pid]
        while todo:
            for kid in children.get(todo.pop(), []):
                if kid not in tree:
                    tree.add(kid)
                    todo.append(kid)
        new = tree - stopped
        if not new:
            break
        for target in new:
            _signal(target, _SIGSTOP)
        stopped |= new
    for target in stopped:
        _signal(target, _SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
