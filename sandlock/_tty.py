"""`sandlock run --ask`: the questions, asked on the controlling terminal.

The prompt goes to /dev/tty, never to the command's stdout or stderr (they may be a
pipe, a file, another program's input), and the answer is read from there:

    sandlock: tcp 127.0.0.1:8080 by curl (pid 4242) — allow? [o]nce / [a]lways / [N]o

One prompt at a time (a lock: concurrent asks about other destinations wait their
turn; asks about the same destination share one prompt already, ask.py). Input typed
before the question is thrown away (a line typed ahead, for the command or by accident,
must not answer a question it never saw). No answer before the ask's timeout is No:
the prompt says so and gives the terminal back for the next one.

The command shares this terminal. It cannot type our answer with TIOCSTI (the filter
refuses it, _filter.py); it can read the terminal too, and take the keystrokes meant for
us: then no answer comes, which is a No.
"""

from __future__ import annotations

import os
import select
import termios
import threading
import time

from .ask import Allow, AskRequest, Deny, Verdict
from .errors import UsageError

__all__ = ["TtyPrompt", "open_tty"]

_MAX_LINE = 256


def open_tty() -> int:
    """The controlling terminal, open for the prompts; UsageError if there is none."""
    try:
        return os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as err:
        raise UsageError(
            f"--ask: no terminal to ask on (/dev/tty: {err.strerror}); "
            "run it from a terminal, or without --ask"
        ) from None


class TtyPrompt:
    """An ask callback (ask.py) that asks a person on the terminal ``fd``; a question
    not answered within ``timeout`` seconds is No."""

    def __init__(self, fd: int, timeout: float) -> None:
        self.fd = fd
        self.timeout = timeout
        self._lock = threading.Lock()

    def __call__(self, request: AskRequest) -> Verdict:
        deadline = time.monotonic() + self.timeout
        if not self._lock.acquire(timeout=self.timeout):
            return Deny
        try:
            return self._ask(request, deadline)
        except OSError:
            return Deny  # (the terminal went away: nobody to say yes)
        finally:
            self._lock.release()

    def _ask(self, request: AskRequest, deadline: float) -> Verdict:
        who = f"{_comm(request.pid) or request.process_name} (pid {request.pid})"
        if request.proto == "dns":
            who = "the command"  # (the forwarder does not know which process asked)
        line = f"sandlock: {_shown(request.describe())} by {_shown(who)} — allow? "
        line += "[o]nce / [a]lways / [N]o "
        try:
            termios.tcflush(self.fd, termios.TCIFLUSH)  # no answer typed ahead
        except termios.error:
            pass
        os.write(self.fd, line.encode("utf-8", "replace"))
        answer = self._read_line(deadline)
        if answer is None:
            os.write(self.fd, b"\r\nsandlock: no answer in time: denied\r\n")
            return Deny
        choice = answer.strip()[:1].lower()
        if choice == b"o":
            return Allow.ONCE
        if choice == b"a":
            return Allow.RUN
        return Deny

    def _read_line(self, deadline: float) -> bytes | None:
        """One line typed on the terminal (canonical mode or raw), or None at the deadline."""
        got = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.fd, _MAX_LINE)
            if not chunk:
                return got  # end of file: what there was (none: No)
            got += chunk
            for end in (b"\n", b"\r"):
                if end in got:
                    return got.split(end, 1)[0]
            if len(got) >= _MAX_LINE:
                return got


def _shown(text: str) -> str:
    """``text`` with every character that is not printable (escape sequences, control
    characters: a process name is the command's to choose) shown as ``?``."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().strip().decode("utf-8", "replace") or None
    except OSError:
        return None
