"""A bounded non-blocking writer: how the daemon writes to descriptors its clients own.

The daemon writes each sandbox's denial lines and audit records to descriptors the
client handed over (its stderr, its --audit file). A reader that stops reading must not
stall the daemon, whose one loop serves every sandbox. So a ``Sink`` never blocks: what
the descriptor does not take at once waits in a buffer of at most ``limit`` bytes, which
``run`` (a task of the sandbox) writes out whenever the descriptor becomes writable. A
record that does not fit is dropped and counted; the count (``note``) is written before
the next record that fits, and at the end.

Non-blocking without touching the client's open file (O_NONBLOCK on it would be seen by
the client's command too):

* a pipe or FIFO is reopened through /proc/self/fd: a description of our own, O_NONBLOCK
  (no reader left: nothing is written, everything is counted);
* a socket is written with ``RWF_NOWAIT`` (pwritev2), which the kernel honours there;
* a terminal or another character device is reopened O_NONBLOCK as well;
* a regular file is written as it is: a local file takes a write at once. (One on a
  FUSE or NFS mount whose server stalls could hold a write: a known limit.)

``check`` says, without side effects, whether a descriptor can be a sink at all.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

import trio

from .audit import AuditLog, AuditSeal, timestamp

__all__ = ["DEFAULT_LIMIT", "AuditSink", "Sink", "SinkText", "audit_note", "check", "report_note"]

DEFAULT_LIMIT = 64 * 1024
_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF, errno.EIO, errno.ENXIO)


def check(fd: int, what: str) -> str | None:
    """Why ``fd`` cannot be written as ``what`` (a directory, read-only, an odd kind of
    file), or None if it can."""
    try:
        st = os.fstat(fd)
        access = _access(fd)
    except OSError as err:
        return f"{what}: {err.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return f"{what} is a directory"
    if not (
        stat.S_ISREG(st.st_mode)
        or stat.S_ISFIFO(st.st_mode)
        or stat.S_ISSOCK(st.st_mode)
        or stat.S_ISCHR(st.st_mode)
    ):
        return f"{what} is not a file, pipe, socket or terminal"
    if access == os.O_RDONLY:
        return f"{what} is not open for writing"
    return None


def _access(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE


class Sink:
    """Writes records to one descriptor (which it owns from now on) without ever
    blocking; see the module docstring."""

    def __init__(
        self, fd: int, note: Callable[[int], bytes], *, limit: int = DEFAULT_LIMIT
    ) -> None:
        """A sink writing to what ``fd`` is open on (``check`` it first); it opens a
        descriptor of its own, ``fd`` stays the caller's. OSError if that fails."""
        self.note = note
        self.limit = limit
        self.dropped = 0  # records dropped since the last note
        self.dropped_total = 0
        self._pending = bytearray()
        self._wake = trio.Event()
        self._nowait = False  # write with RWF_NOWAIT (sockets)
        self._pollable = True
        mode = os.fstat(fd).st_mode
        if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            try:
                flags = os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
                self.fd = os.open(f"/proc/self/fd/{fd}", flags)
            except OSError as err:
                if err.errno not in (errno.ENXIO, errno.EACCES, errno.EBUSY, errno.EPERM):
                    raise
                self.fd = -1  # no reader left, or not ours to reopen: written nowhere
        else:
            self.fd = os.dup(fd)
            self._nowait = stat.S_ISSOCK(mode)
            self._pollable = self._nowait  # a regular file: epoll refuses it, needs none

    @property
    def dead(self) -> bool:
        """Whether nothing more can reach the descriptor."""
        return self.fd < 0

    def write(self, record: bytes) -> None:
        """Queue one record (written now if the descriptor takes it); never blocks."""
        if self.dropped:
            record = self.note(self.dropped) + record
        if self.dead or len(self._pending) + len(record) > self.limit:
            self.dropped += 1
            self.dropped_total += 1
            return
        self.dropped = 0
        self._pending += record
        self._flush()
        if self._pending:
            self._wake.set()

    def _flush(self) -> None:
        while self._pending and not self.dead:
            try:
                if self._nowait:
                    n = os.pwritev(self.fd, [self._pending], -1, os.RWF_NOWAIT)
                else:
                    n = os.write(self.fd, self._pending)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError as err:
                if not self._pollable and err.errno not in _GONE:
                    self._drop_pending()  # ENOSPC, EFBIG...: these records are lost
                    return
                self._close_fd()
                return
            del self._pending[:n]

    def _drop_pending(self) -> None:
        if self._pending:
            self.dropped += 1
            self.dropped_total += 1
            self._pending.clear()

    def _close_fd(self) -> None:
        self._drop_pending()
        if self.fd >= 0:
            if self._pollable:
                trio.lowlevel.notify_closing(self.fd)
            os.close(self.fd)
            self.fd = -1

    def abort(self) -> None:
        """Close at once, whatever waits (a request refused after all)."""
        self._pending.clear()
        self._close_fd()

    async def run(self) -> None:
        """Write what waits whenever the descriptor takes it, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._pending and self._pollable and not self.dead:
                await trio.lowlevel.wait_writable(self.fd)
                self._flush()

    async def close(self, grace: float) -> None:
        """Write the last note, try for ``grace`` seconds to get the rest out, and close
        (even when cancelled: the wait is shielded and bounded)."""
        if self.dropped:
            self.write(b"")  # the note, with no record after it
        with trio.CancelScope(shield=True), trio.move_on_after(grace):
            while self._pending and self._pollable and not self.dead:
                await trio.lowlevel.wait_writable(self.fd)
                self._flush()
        self._close_fd()


class SinkText:
    """The text stream a DenialReport prints to: each whole line becomes one record."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        if "\n" in self._partial:
            lines, _, self._partial = self._partial.rpartition("\n")
            self.sink.write((lines + "\n").encode())
        return len(text)

    def flush(self) -> None:
        """Lines are written as they end: nothing to do."""


class AuditSink(AuditLog):
    """The audit log of a daemon's sandbox: its lines, sealed as any run's, go through a
    Sink (which the daemon closes after their last records)."""

    def __init__(self, sink: Sink, sandbox: str) -> None:
        self.path = None
        self._where = None  # (the daemon has the descriptor, not the path)
        self._fd = sink.fd
        self._chain = None
        self.sink = sink
        self.sandbox = sandbox

    def _emit(self, data: bytes) -> None:
        self.sink.write(data)

    def close(self) -> AuditSeal | None:
        """Write the run's close record (the descriptor stays the Sink's)."""
        if self._chain is None or self._fd < 0:
            return None
        try:
            return self._seal()
        except OSError:
            return None
        finally:
            self._fd = -1


def report_note(count: int) -> bytes:
    return f"sandlock: {count} report lines dropped (stderr was not being read)\n".encode()


def audit_note(sandbox: str, count: int) -> bytes:
    return f'{{"ts": "{timestamp()}", "sandbox": "{sandbox}", "dropped": {count}}}\n'.encode()
