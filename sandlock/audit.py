"""Decisions as records: the JSON-lines audit log, and what ``Result.denied`` holds.

One line per decision, written with a single ``write(2)`` on an ``O_APPEND`` descriptor
as it happens, so a crash loses nothing already written and several sandboxes may share
one file without tearing lines::

    {"ts": "2026-11-23T10:00:00.123456Z", "sandbox": "4f1c9a2e", "pid": 1234,
     "syscall": "connect", "proto": "tcp", "dst": "127.0.0.2", "port": 443,
     "host": null, "action": "deny", "rule": "default-deny", "errno": 111}

``dst`` is the address as the rules saw it: an IPv4-mapped address is shown as IPv4 and
an unspecified one as the loopback address it was decided as. An AF_UNIX decision
(``"proto": "unix"``) has the socket's real path, or ``@name`` for an abstract one, as
``dst`` and a null ``port``.

Each line also carries ``seq`` and ``mac``: the run's records are sealed in a keyed chain,
between an ``"event": "open"`` and an ``"event": "close"`` record, that
``sandlock audit verify`` checks (auditchain.py). The chain is started at the first
record, so a run that decides nothing writes nothing, as before.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from .events import Event
from .sockaddr import shown

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .auditchain import Chain

__all__ = ["AuditLog", "AuditSeal", "DecisionRecord"]

_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


def seen_destination(event: Event) -> tuple[str, int | None]:
    """(dst, port) of a decision as records show it (AF_UNIX: the path or @name, None)."""
    if event.proto == "unix":
        return event.dest.addr.decode("utf-8", "backslashreplace"), None
    return shown(event.dest.addr), event.dest.port


def timestamp() -> str:
    """Now, as the audit log stamps records: ``2026-11-23T03:15:21.991605Z``."""
    # time, not datetime: the first decision of a run imports this module (~3 ms less).
    ns = time.time_ns()
    seconds, micros = divmod(ns // 1000, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One decision of a sandbox, as the audit log writes it."""

    ts: str
    sandbox: str
    pid: int
    syscall: str
    proto: str
    dst: str
    port: int | None
    host: str | None
    action: str
    rule: str
    errno: int

    @classmethod
    def from_event(cls, event: Event, sandbox: str) -> DecisionRecord:
        """The record of one supervisor event, stamped now."""
        d = event.decision
        dst, port = seen_destination(event)
        return cls(
            ts=timestamp(),
            sandbox=sandbox,
            pid=event.pid,
            syscall=event.syscall,
            proto=event.proto,
            dst=dst,
            port=port,
            host=d.host,
            action="allow" if d.allowed else "deny",
            rule=d.reason,
            errno=event.errno,
        )

    def to_json(self) -> str:
        """The record as one line of JSON (no newline)."""
        import json  # (only where records are written: not on the launch path)

        return json.dumps(asdict(self), separators=(", ", ": "))

    def describe(self) -> str:
        """``tcp 127.0.0.2:443 (pid 1234, connect)``, ``unix /run/x.sock (pid 1234, connect)``"""
        if self.port is None:
            return f"{self.proto} {self.dst} (pid {self.pid}, {self.syscall})"
        dst = f"[{self.dst}]" if ":" in self.dst else self.dst
        return f"{self.proto} {dst}:{self.port} (pid {self.pid}, {self.syscall})"


@dataclass(frozen=True, slots=True)
class AuditSeal:
    """How a run's part of the audit log ended (what its close record says)."""

    sandbox: str
    records: int
    """Decision records the run wrote (its open and close records not counted)."""
    head: str
    """The close record's MAC: ``sandlock audit verify FILE --head HEAD`` checks the file
    still holds this run as it was written."""
    log: str | None = None
    """``"removed"`` or ``"replaced"`` when the file was not at its path any more at the
    end of the run (its records went to the old file); None when it was."""

    def head_line(self) -> str:
        """The line the CLI prints at exit (unless --quiet)."""
        n, s = self.records, "s" if self.records != 1 else ""
        return f"sandlock: audit run {self.sandbox}: {n} record{s}, head {self.head}"

    def warning(self, path: str | None) -> str | None:
        """The line the CLI always prints when the log was removed or replaced."""
        if self.log is None:
            return None
        where = f" {path}" if path else ""
        tail = f" (its close record is in{where} now)" if path else ""
        return (
            f"sandlock: the audit log{where} was {self.log} during the run: this run's "
            f"records went to the old file{tail}"
        )


class AuditLog:
    """Appends each decision to a JSON-lines file, one write per line, each line sealed
    in the run's chain (auditchain.py). One AuditLog is one run."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path: str | None = os.fspath(path)
        self._fd = os.open(self.path, _APPEND, 0o600)
        self._where: str | None = os.path.abspath(self.path)  # (an API caller may chdir)
        self._chain: Chain | None = None

    def write(self, record: DecisionRecord) -> None:
        """Append one line: a single write(2), so lines never tear."""
        self._append(asdict(record))

    def write_object(self, obj: Mapping[str, object]) -> None:
        """Append one JSON object (a DNS decision, see dns.py) as one line."""
        self._append(dict(obj))

    def _append(self, fields: dict[str, object]) -> None:
        opening = b""
        if self._chain is None:
            from .auditchain import Chain  # (hmac, hashlib: only for a run that audits)

            self._chain = Chain(str(fields["sandbox"]))
            ts = fields.get("ts")
            opening = self._chain.open(ts if isinstance(ts, str) else timestamp())
        self._emit(opening + self._chain.seal(fields))  # one append, both lines

    def _emit(self, data: bytes) -> None:
        os.write(self._fd, data)

    def close(self) -> AuditSeal | None:
        """Write the run's close record, which reveals its key, and close the log
        (idempotent). Returns how the run ended, or None if it wrote nothing."""
        if self._fd < 0:
            return None
        try:
            return self._seal() if self._chain is not None else None
        except OSError:
            return None  # (disk full...): `verify` reports the run has no close record
        finally:
            os.close(self._fd)
            self._fd = -1

    def _seal(self) -> AuditSeal:
        assert self._chain is not None
        fate = self._fate()
        line = self._chain.close(timestamp(), fate)
        self._emit(line)
        if fate is not None and self._where is not None:
            # Leave a trace where the user will look: a close record with no run before it,
            # which `sandlock audit verify` reports. Whatever the command put at the path,
            # only a regular file gets it (no symlink followed, no FIFO waited on).
            try:
                fd = os.open(self._where, _APPEND | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
                try:
                    if stat.S_ISREG(os.fstat(fd).st_mode):
                        os.write(fd, line)
                finally:
                    os.close(fd)
            except OSError:
                pass
        return AuditSeal(self._chain.sandbox, self._chain.seq - 2, self._chain.head, fate)

    def _fate(self) -> str | None:
        """"removed" or "replaced" when our file is not at its path any more."""
        mine = os.fstat(self._fd)
        if self._where is not None:
            try:
                there = os.stat(self._where)
            except FileNotFoundError:
                return "removed"
            except OSError:
                there = mine
            if (there.st_dev, there.st_ino) != (mine.st_dev, mine.st_ino):
                return "replaced"
        return "removed" if mine.st_nlink == 0 else None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
