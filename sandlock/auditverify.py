"""``sandlock audit verify``: reading an audit log and checking each run's chain.

The chain is made in auditchain.py (its docstring says how). Here a file is split into
runs (an open record starts one, a close record ends it, records interleave freely with
other runs'), and each run is checked: numbered 0, 1, 2... in file order, its close
record's key the one its open record committed to, every MAC right. The first problem
of each run is reported with its line number.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .auditchain import SEP, commitment, mac

__all__ = ["Verdict", "parse_line", "verify_lines"]

_TAIL = len(SEP) + 64 + 2  # ', "mac": "' + 64 hex digits + '"}'
_HEX = frozenset(b"0123456789abcdef")

@dataclass(slots=True)
class Line:
    """One sealed line: its number, fields, the bytes its MAC covers, and the MAC."""

    number: int
    fields: dict[str, Any]
    body: bytes
    mac: bytes

    @property
    def seq(self) -> int:
        seq: int = self.fields["seq"]
        return seq

    @property
    def event(self) -> str | None:
        event = self.fields.get("event")
        return event if isinstance(event, str) else None


def parse_line(number: int, raw: bytes) -> Line | str:
    """The sealed line, or why ``raw`` is not one."""
    try:
        fields = json.loads(raw)
    except ValueError:
        return "not a JSON record"
    if not isinstance(fields, dict):
        return "not a JSON record"
    tail = raw[-_TAIL:]
    digits = tail[len(SEP) : -2]
    sealed = (
        len(raw) > _TAIL
        and tail.startswith(SEP)
        and tail.endswith(b'"}')
        and _HEX.issuperset(digits)
        and fields.get("mac") == digits.decode()
    )
    if not sealed:
        return 'not a sealed record (no "mac" of a sandlock supervisor)'
    seq = fields.get("seq")
    if not isinstance(fields.get("sandbox"), str) or type(seq) is not int or seq < 0:
        return 'not a sealed record (no "sandbox" or "seq")'
    return Line(number, fields, raw[:-_TAIL], bytes.fromhex(digits.decode()))


@dataclass(slots=True)
class Run:
    """The lines of one run, as found in the file."""

    sandbox: str
    lines: list[Line] = field(default_factory=list)
    opened: bool = False  # its first line is an open record
    closed: bool = False  # its last line is a close record

    @property
    def span(self) -> str:
        first, last = self.lines[0].number, self.lines[-1].number
        return f"line {first}" if first == last else f"lines {first}-{last}"


@dataclass(slots=True)
class Verdict:
    """What verify found: one line per run and per stray line; ``ok`` when all intact."""

    lines: list[str] = field(default_factory=list)
    runs: int = 0
    intact: int = 0
    unfinished: int = 0
    stray: int = 0
    heads: set[str] = field(default_factory=set)  # the heads of the intact runs
    missing_heads: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.intact == self.runs and not self.stray and not self.missing_heads

    def summary(self) -> str:
        parts = [f"{self.runs} run{'s' if self.runs != 1 else ''}", f"{self.intact} intact"]
        if self.unfinished:
            parts.append(f"{self.unfinished} without a close record")
        if self.runs - self.intact - self.unfinished:
            parts.append(f"{self.runs - self.intact - self.unfinished} damaged")
        if self.stray:
            parts.append(f"{self.stray} line{'s' if self.stray != 1 else ''} of no run")
        if self.missing_heads:
            parts.append(f"{len(self.missing_heads)} head(s) not found")
        verdict = "ok" if self.ok else "NOT INTACT"
        return f"{verdict}: " + ", ".join(parts)


def split_runs(raw_lines: Iterable[tuple[int, bytes]]) -> tuple[list[Run], list[str]]:
    """Group the sealed lines into runs, in file order; the other lines as problems.

    An open record starts a run (ending one of the same sandbox still open); a close
    record ends it; a record of a sandbox with no run open starts a run with no open."""
    runs: list[Run] = []
    current: dict[str, Run] = {}
    stray: list[str] = []
    for number, raw in raw_lines:
        line = parse_line(number, raw)
        if isinstance(line, str):
            stray.append(f"line {number}: {line}")
            continue
        sandbox = line.fields["sandbox"]
        run = current.get(sandbox)
        if line.event == "open" or run is None:
            run = Run(sandbox, opened=line.event == "open")
            runs.append(run)
            current[sandbox] = run
        run.lines.append(line)
        if line.event == "close":
            run.closed = True
            del current[sandbox]
    return runs, stray


def check_run(run: Run) -> tuple[str, str]:
    """("ok", its head), ("unfinished", why) or ("damaged", what is wrong)."""
    first = run.lines[0]
    if not run.opened:
        why = _close_note(run) or "records before it were removed or the file truncated"
        return "damaged", f"line {first.number}: no open record: {why}"
    problem = _check_numbers(run)
    if problem is not None:
        return "damaged", problem
    if not run.closed:
        n = len(run.lines)
        return (
            "unfinished",
            f"no close record after line {run.lines[-1].number}: still running, killed, or "
            f"the file was truncated ({n} record{'s' if n != 1 else ''} not checkable)",
        )
    close = run.lines[-1]
    try:
        key = bytes.fromhex(close.fields["key"])
    except (KeyError, TypeError, ValueError):
        return "damaged", f"line {close.number}: close record without a valid key"
    if commitment(key) != first.fields.get("commit"):
        return (
            "damaged",
            f"line {close.number}: the key of the close record is not the one line "
            f"{first.number} committed to (forged close)",
        )
    prev = b""
    for line in run.lines:
        sealed = mac(key, prev, line.body)
        if not hmac.compare_digest(sealed, line.mac):
            return "damaged", f"line {line.number}: record #{line.seq} changed or forged (bad MAC)"
        prev = sealed
    note = _close_note(run)
    if note is not None:
        return "damaged", f"line {close.number}: {note}"
    return "ok", prev.hex()


def _close_note(run: Run) -> str | None:
    log = run.lines[-1].fields.get("log") if run.closed else None
    if log is None:
        return None
    return f"the supervisor found the log {log} during the run (its records are elsewhere)"


def _check_numbers(run: Run) -> str | None:
    """Records numbered 0, 1, 2... in file order, the close record last."""
    seen: set[int] = set()
    seqs = [line.seq for line in run.lines]
    for i, line in enumerate(run.lines):
        if line.seq == i:
            seen.add(i)
            continue
        if line.seq in seen or seqs.count(line.seq) > 1:
            other = next(x.number for x in run.lines if x.seq == line.seq and x is not line)
            return (
                f"line {line.number}: record #{line.seq} appears twice (with line {other}: "
                "one is replayed or forged)"
            )
        if set(seqs) == set(range(len(seqs))):
            return f"line {line.number}: records out of order (#{line.seq} where #{i} belongs)"
        return f"line {line.number}: record #{i} missing before it (dropped; got #{line.seq})"
    return None


def verify_lines(data: bytes, heads: Iterable[str] = ()) -> Verdict:
    """Check every run in ``data`` (a whole audit file)."""
    verdict = Verdict()
    chunks = data.split(b"\n")
    torn = chunks.pop()  # b"" when the file ends with a newline
    numbered = [(i + 1, raw) for i, raw in enumerate(chunks) if raw.strip()]
    runs, stray = split_runs(numbered)
    if torn:
        stray.append(f"line {len(chunks) + 1}: incomplete last line (torn or truncated)")
    for run in runs:
        verdict.runs += 1
        kind, text = check_run(run)
        where = f"run {run.sandbox} ({run.span})"
        if kind == "ok":
            verdict.intact += 1
            verdict.heads.add(text)
            n = len(run.lines) - 2
            verdict.lines.append(f"{where}: ok, {n} record{'s' if n != 1 else ''}, head {text}")
        else:
            verdict.unfinished += kind == "unfinished"
            verdict.lines.append(f"{where}: {text}")
    verdict.stray = len(stray)
    verdict.lines.extend(stray)
    for head in heads:
        if head.lower() not in verdict.heads:
            verdict.missing_heads.append(head)
            verdict.lines.append(
                f"head {head}: no intact run ends with it (rewritten, replaced or removed)"
            )
    return verdict
