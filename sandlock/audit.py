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
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from .events import Event

__all__ = ["AuditLog", "DecisionRecord", "seen_address"]

_UNSPECIFIED = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def seen_address(addr: bytes) -> str:
    """The packed address as the rules saw it (mapped as IPv4, unspecified as loopback)."""
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    text = str(ip)
    return _UNSPECIFIED.get(text, text)


def seen_destination(event: Event) -> tuple[str, int | None]:
    """(dst, port) of a decision as records show it (AF_UNIX: the path or @name, None)."""
    if event.proto == "unix":
        return event.dest.addr.decode("utf-8", "backslashreplace"), None
    return seen_address(event.dest.addr), event.dest.port


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


class AuditLog:
    """Appends each decision to a JSON-lines file, one write per line."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    @classmethod
    def from_fd(cls, fd: int) -> AuditLog:
        """A log on a descriptor opened elsewhere (the daemon gets the client's)."""
        log = cls.__new__(cls)
        log.path = f"fd:{fd}"
        log._fd = fd
        return log

    def write(self, record: DecisionRecord) -> None:
        """Append one line: a single write(2), so lines never tear."""
        os.write(self._fd, (record.to_json() + "\n").encode())

    def write_object(self, obj: Mapping[str, object]) -> None:
        """Append one JSON object (a DNS decision, see dns.py) as one line."""
        import json

        os.write(self._fd, (json.dumps(obj, separators=(", ", ": ")) + "\n").encode())

    def close(self) -> None:
        """Close the log (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
