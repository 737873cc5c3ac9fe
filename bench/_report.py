"""The table: medians per row and mode, overheads over native, ours/peer, issue 3's targets.

Kinds of rows, by what their target compares (issue 3):
  overhead  (ours - native) <= 0.5 x (peer - native); the ratio column is that quotient
  free      ours - native <= 1 us (the call must not be trapped at all)
  total     ours <= LIMIT x peer, whole figures (start-up); the ratio is ours / peer
  ceiling   ours <= LIMIT in the row's unit (peak RSS)
  all-ok    every connect of every sandbox succeeded
  info      reported, no target
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from _measure import MODES, NATIVE, OURS, PEER, Failed

NOTES_MARKER = "<!-- Everything below this line is kept when run.py rewrites this file. -->"


@dataclass
class Cell:
    """One row x mode: a sample per round, or the reason it could not be measured."""

    samples: list[float] = field(default_factory=list)
    failure: str | None = None

    @property
    def value(self) -> float | None:
        if self.failure is not None or not self.samples:
            return None
        return statistics.median(self.samples)


@dataclass
class Row:
    key: str
    label: str
    unit: str
    kind: str  # overhead | free | total | ceiling | all-ok | info
    limit: float = 0.0
    cells: dict[str, Cell] = field(default_factory=lambda: {m: Cell() for m in MODES})
    details: dict[str, str] = field(default_factory=dict)  # per mode, last round's
    overflows: dict[str, int] = field(default_factory=dict)  # per mode, all rounds
    passed: bool | None = None  # for all-ok rows, set by the harness

    def record(self, mode: str, measure: Callable[[], float]) -> float | None:
        cell = self.cells[mode]
        if cell.failure is not None:
            return None
        try:
            value = measure()
        except Failed as err:
            cell.failure = str(err)
            return None
        cell.samples.append(value)
        return value

    def overflowed(self, mode: str, count: int) -> None:
        if count > 0:
            self.overflows[mode] = self.overflows.get(mode, 0) + count

    def fail(self, mode: str, reason: str) -> None:
        self.cells[mode].failure = reason

    def value(self, mode: str) -> float | None:
        return self.cells[mode].value

    def overhead(self, mode: str) -> float | None:
        native, val = self.value(NATIVE), self.value(mode)
        if self.kind in ("ceiling", "info") or native is None or val is None:
            return None
        return val - native

    def ratio(self) -> float | None:
        if self.kind == "info":
            return None
        if self.kind in ("total", "ceiling"):
            ours, peer = self.value(OURS), self.value(PEER)
        else:
            ours, peer = self.overhead(OURS), self.overhead(PEER)
        if ours is None or peer is None or peer == 0:
            return None
        return ours / peer

    def target(self) -> str:
        return {
            "overhead": f"ovh ratio <= {self.limit:g}",
            "free": f"ours ovh <= {self.limit:g} {self.unit.split('/')[0]}",
            "total": f"ours/peer <= {self.limit:g}",
            "ceiling": f"ours <= {self.limit:g} {self.unit}",
            "all-ok": "every connect ok",
            "info": "-",
        }[self.kind]

    def check(self) -> str:
        if self.kind == "info":
            return "-"
        if self.kind == "all-ok":
            return {None: "n/a", True: "pass", False: "miss"}[self.passed]
        if self.kind == "free":
            got = self.overhead(OURS)
        elif self.kind == "ceiling":
            got = self.value(OURS)
        else:
            got = self.ratio()
        if got is None:
            return "n/a"
        return "pass" if got <= self.limit else "miss"


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    mag = abs(value)
    if mag >= 100:
        return f"{value:.0f}"
    if mag >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render(rows: Sequence[Row]) -> tuple[str, list[str]]:
    """The markdown table, and the footnotes naming each cell that could not run."""
    footnotes: list[str] = []
    header = [
        "#", "workload", "unit", "native", "peer", "ours",
        "peer-native", "ours-native", "ours/peer", "target", "check",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        vals = []
        for mode in MODES:
            cell = row.cells[mode]
            if cell.failure is not None:
                footnotes.append(f"[{len(footnotes) + 1}] row {row.key} {mode}: {cell.failure}")
                vals.append(f"n/a [{len(footnotes)}]")
            else:
                vals.append(_num(cell.value))
        ratio = row.ratio()
        cols = [
            row.key, row.label, row.unit, *vals,
            _num(row.overhead(PEER)), _num(row.overhead(OURS)),
            f"{ratio:.2f}" if ratio is not None else "-", row.target(), row.check(),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cols) + " |")
    notes = [f"row {row.key}: {'; '.join(row.details.values())}" for row in rows if row.details]
    notes += [
        f"row {row.key}: SUSPECT, the sink's accept queue overflowed during it ("
        + ", ".join(f"{mode} {n} SYNs dropped" for mode, n in row.overflows.items())
        + "); each is a connect retried after 1 s"
        for row in rows
        if row.overflows
    ]
    return "\n".join(lines), footnotes + notes


def samples_md(rows: Sequence[Row]) -> str:
    """Every round's figure per row and mode, so the spread behind each median shows."""
    lines = ["| # | unit | native | peer | ours |", "|---|---|---|---|---|"]
    for row in rows:
        cols = [", ".join(_num(v) for v in row.cells[m].samples) or "-" for m in MODES]
        lines.append(f"| {row.key} | {row.unit} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def results_md(
    *, table: str, notes: Sequence[str], header: Sequence[str], samples: str, kept: str
) -> str:
    parts = [
        "# Benchmark results",
        "",
        "Written by `bench/run.py`; everything above the marker line is rewritten by each run "
        "(see bench/README.md for what each row measures).",
        "",
        *[f"- {line}" for line in header],
        "",
        table,
        "",
        *[f"- {line}" for line in notes],
        "",
        "Each round's figures (the table shows their median):",
        "",
        samples,
        "",
        NOTES_MARKER,
        "",
        kept.strip() or "## Notes\n\n(Profiles and what each optimisation bought go here.)",
        "",
    ]
    return "\n".join(parts)
