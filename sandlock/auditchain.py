"""The audit log's keyed hash chain: how a run seals its records.

Each run (one sandbox, one ``AuditLog``) seals its lines with a key of its own, made at
its first record and kept in the supervisor's memory (non-dumpable: the command cannot
read it) until the run ends::

    {"ts": ..., "sandbox": "4f1c9a2e", "event": "open", "seq": 0, "commit": SHA256(key), "mac": M0}
    {"ts": ..., "sandbox": "4f1c9a2e", ..., "action": "deny", ..., "seq": 1, "mac": M1}
    {"ts": ..., "sandbox": "4f1c9a2e", "event": "close", "seq": 2, "key": KEY, "mac": M2}

``Mi = HMAC-SHA256(key, M(i-1) || the line's bytes up to ', "mac": ')``, with M(-1)
empty. The close record reveals the key (the records before it are ``seq`` of them), so
anyone can check the run later; its MAC, the run's *head*, is what the supervisor prints
at exit, and ``verify --head`` checks a file against it. While the run lasts the command
has no key: it cannot make a record that passes, and a record it drops, moves or
duplicates breaks the numbering or the chain. See README "Audit log integrity" for what
is and is not detected; auditverify.py reads and checks a file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os

TYPE_CHECKING = False  # (this module loads at a run's first record: no typing, no dataclasses)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Chain", "commitment", "mac"]

KEY_BYTES = 32
SEP = b', "mac": "'  # what comes between a line's sealed bytes and its MAC


def mac(key: bytes, prev: bytes, body: bytes) -> bytes:
    return hmac.digest(key, prev + body, "sha256")


def commitment(key: bytes) -> str:
    """What the open record shows of the key: its SHA-256."""
    return hashlib.sha256(key).hexdigest()


class Chain:
    """One run's sealer: numbers each record and appends its MAC."""

    def __init__(self, sandbox: str, key: bytes | None = None) -> None:
        self.sandbox = sandbox
        self.key = key if key is not None else os.urandom(KEY_BYTES)
        self.seq = 0
        self.prev = b""

    def seal(self, fields: dict[str, Any]) -> bytes:
        """``fields`` as one sealed line (with its newline): ``seq`` and ``mac`` added."""
        fields["seq"] = self.seq
        body = json.dumps(fields, separators=(", ", ": "))[:-1].encode()  # without its "}"
        sealed = mac(self.key, self.prev, body)
        self.prev = sealed
        self.seq += 1
        return body + SEP + sealed.hex().encode() + b'"}\n'

    def open(self, ts: str) -> bytes:
        """The run's first line: its sandbox and the commitment to its key."""
        return self.seal(
            {"ts": ts, "sandbox": self.sandbox, "event": "open", "commit": commitment(self.key)}
        )

    def close(self, ts: str, log: str | None = None) -> bytes:
        """The run's last line: it reveals the key. ``log`` says what became of the file
        during the run ("removed", "replaced"), if the supervisor saw something."""
        fields: dict[str, Any] = {
            "ts": ts,
            "sandbox": self.sandbox,
            "event": "close",
            "key": self.key.hex(),
        }
        if log is not None:
            fields["log"] = log
        return self.seal(fields)

    @property
    def head(self) -> str:
        """The MAC of the last line sealed (after close: the run's head)."""
        return self.prev.hex()
