"""What a person sees of the decisions: denial lines on stderr and an exit summary.

``Observer`` is the one listener a supervisor gets; it fans each decision out to the
audit log, the run's list of denials, the stderr report and the summary, and does
nothing more than a dictionary update for an allowed call nobody asked to hear about.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping

from .events import Event

# The audit module (dataclasses, ~7 ms) is loaded when a record is first made: a run
# whose calls are all allowed, with no --audit, never needs one.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

    from _typeshed import SupportsWrite

    from .audit import AuditLog, AuditSeal, DecisionRecord

__all__ = ["DenialReport", "Observer", "Summary", "is_probe"]


class DenialReport:
    """``sandlock: denied tcp 127.0.0.2:443 (pid 1234, connect) — no rule allows it``.

    Each destination is reported once; at most ``rate`` lines a second (a burst of
    ``rate``), the rest counted and mentioned at the end. glibc's ``getaddrinfo`` probe
    (``is_probe``) is refused and recorded, but not reported: it is not a line a person
    needs, and every name lookup of every command would print one."""

    def __init__(self, stream: TextIO | None = None, rate: float = 5.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.rate = rate
        self._tokens = rate
        self._last = time.monotonic()
        self._seen: set[tuple[str, str, int | None]] = set()
        self.suppressed = 0

    def __call__(self, record: DecisionRecord, detail: str | None = None) -> None:
        """Report a refused destination, unless already reported, a probe, or over the rate
        (``detail``: the event's, :class:`sandlock.events.Event`)."""
        if is_probe(record):
            return
        key = (record.proto, record.dst, record.port)
        if key in self._seen:
            return
        self._seen.add(key)
        if not self._take():
            return
        print(
            f"sandlock: denied {record.describe()} — {_why(record, detail)}",
            file=self.stream,
            flush=True,
        )

    def _take(self) -> bool:
        """A token of the rate limit, or False (and one more suppressed line)."""
        now = time.monotonic()
        self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1:
            self.suppressed += 1
            return False
        self._tokens -= 1
        return True

    def dns(self, host: str, qtype: str, why: str) -> None:
        """Report a refused lookup (DNS mode), once per name and type, within the rate."""
        key = ("dns", f"{host} {qtype}", 0)
        if key in self._seen or not self._take():
            return
        self._seen.add(key)
        line = f"sandlock: denied DNS lookup of {host} ({qtype}) — {why}"
        print(line, file=self.stream, flush=True)

    def http(self, record: Mapping[str, object]) -> None:
        """Report a refused HTTP request (httprelay.py), once per method, host and path."""
        shown = f"{record.get('method')} {record.get('host')}{record.get('path')}"
        key = ("http", shown, 0)
        if key in self._seen or not self._take():
            return
        self._seen.add(key)
        line = f"sandlock: denied HTTP {shown} (pid {record.get('pid')}) — {_http_why(record)}"
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """Say how many destinations the rate limit kept quiet."""
        if self.suppressed:
            print(
                f"sandlock: {self.suppressed} more denied destinations not shown "
                "(use --audit FILE for all)",
                file=self.stream,
                flush=True,
            )


def _dns_why(record: Mapping[str, object]) -> str:
    """Why a lookup was refused, from its record (dns.py)."""
    from .rebinding import RULE  # (DNS mode only: dns.py has loaded it already)

    rule = record.get("rule")
    if rule is None:
        return "no --net-allow rule names it"
    if rule == RULE:
        answers = record.get("answers")
        shown = ", ".join(map(str, answers)) if isinstance(answers, list) else ""
        return f"rebinding guard: local or private answers {shown} (see --dns-allow-private)"
    if rule == "ask:deny":
        return "no --net-allow rule names it, and the answer was no"
    if rule == "ask:timeout":
        return "no --net-allow rule names it, and no answer came in time"
    if record.get("rcode") == "REFUSED":
        return f"{record.get('qtype')} queries are not forwarded"
    return f"--net-deny `{rule}` names it"


_HTTP_WHY = {
    "http-default-deny": "no --http-allow rule allows it",
    "http-host-mismatch": "its host is not the address it was sent to (or no rule names it)",
    "http-bad-path": "its target is not a path a rule can match",
    "http-upgrade": "only a WebSocket upgrade of an allowed GET is relayed",
}


def _http_why(record: Mapping[str, object]) -> str:
    """Why an HTTP request was refused, from its record (httprelay.py)."""
    rule = str(record.get("rule"))
    return _HTTP_WHY.get(rule, f"--http-deny `{rule}`")


def is_probe(record: DecisionRecord) -> bool:
    """Whether a refused call is glibc's ``getaddrinfo`` probe: a UDP ``connect`` to port 0
    (RFC 6724 sorting: the socket learns its source address and sends nothing)."""
    return record.proto == "udp" and record.port == 0 and record.syscall == "connect"


def _why(record: DecisionRecord, detail: str | None = None) -> str:
    if record.proto == "unix":
        from .unixrules import DAEMON_RULE, LINKED_RULE

        if record.rule == DAEMON_RULE:
            return "a sandlock daemon's socket is never reachable from a sandbox"
        if record.rule == LINKED_RULE:
            return "a socket file with several hard links matches no --unix-allow rule"
        return "served outside the sandbox; no --unix-allow rule allows it"
    if record.rule == "ask:deny":
        return "no rule allows it, and the answer was no"
    if record.rule == "ask:timeout":
        return "no rule allows it, and no answer came in time"
    if record.rule == "name-mismatch":  # (relay.MISMATCH: --verify-names)
        if detail == "ech":  # (relay.ECH: the host it asks for is encrypted)
            outer = f" ({record.host} is only its outer, public name)" if record.host else ""
            return (
                "its TLS ClientHello is encrypted (ECH), so it names no host that can be"
                f" checked{outer} (--verify-names)"
            )
        named = f"it named {record.host}" if record.host else "it named no host"
        return f"{named}, which no rule allows at this address (--verify-names)"
    return "no rule allows it" if record.rule == "default-deny" else f"--net-deny {record.rule}"


class Summary:
    """Counts per (proto, destination, action), printed as a table at exit."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str, int, str]] = Counter()

    def add(self, event: Event) -> None:
        """Count one decision."""
        rule = event.decision.rule
        if rule is not None and rule.startswith("ask:"):  # asked (ask.py): how answered
            action = rule
        else:
            action = "allow" if event.decision.allowed else "deny"
        from .audit import seen_destination

        dst, port = seen_destination(event)
        self.counts[(event.proto, dst, -1 if port is None else port, action)] += 1

    def add_http(self, record: Mapping[str, object]) -> None:
        """Count one HTTP request (httprelay.py's record): one row per method, host and
        path."""
        shown = f"{record.get('method')} {record.get('host')}{record.get('path')}"
        self.counts[("http", shown, -1, str(record.get("action")))] += 1

    def render(self) -> str:
        """The table, one row per (protocol, destination, action)."""
        rows = [("PROTO", "DESTINATION", "CALLS", "ACTION")]
        for (proto, dst, port, action), n in sorted(self.counts.items()):
            host = f"[{dst}]" if ":" in dst else dst
            rows.append((proto, dst if port < 0 else f"{host}:{port}", str(n), action))
        if len(rows) == 1:
            return "sandlock: no network calls were decided"
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        return "\n".join(
            "  ".join(
                cell.ljust(w) if i != 2 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(r, widths, strict=True))
            ).rstrip()
            for r in rows
        )


class Observer:
    """Fans one decision out to whoever listens. ``tap`` gets the record of every decision
    it hears of (a Process's ``decisions()``), without asking to hear of every call."""

    def __init__(
        self,
        sandbox: str,
        *,
        audit: AuditLog | None = None,
        report: DenialReport | None = None,
        summary: Summary | None = None,
        keep_denied: bool = False,
        also: Callable[[Event], None] | None = None,
        tap: Callable[[DecisionRecord], None] | None = None,
        records: Callable[[Mapping[str, object]], None] | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.also = also
        self.records = records  # hears every record dns() gets (learn mode's HTTP lines)
        self.tap = tap
        self.audit = audit
        self.report = report
        self.summary = summary
        self.denied: list[DecisionRecord] | None = [] if keep_denied else None
        self.allowed_count = 0
        self.denied_count = 0

    @property
    def hears_every_call(self) -> bool:
        """Whether some listener wants every allowed call, not only the first to each
        destination (the audit log, the summary, learn mode)."""
        return self.also is not None or self.summary is not None or self.audit is not None

    def dns(self, record: Mapping[str, object], *, reported: bool = False) -> None:
        """Hand one DNS decision (dns.py's record) to the audit log and the report
        (``reported``: said already, as start-up resolution's lines are: plan.py)."""
        if self.audit is not None:
            from .audit import timestamp

            self.audit.write_object({"ts": timestamp(), "sandbox": self.sandbox, **record})
        if self.records is not None:
            self.records(record)
        http = record.get("syscall") == "http"
        if http and self.summary is not None:
            self.summary.add_http(record)
        if record.get("action") == "deny":
            self.denied_count += 1
            if self.report is not None and not reported:
                if http:
                    self.report.http(record)
                else:
                    host, qtype = str(record.get("host")), str(record.get("qtype"))
                    self.report.dns(host, qtype, _dns_why(record))

    def __call__(self, event: Event) -> None:
        """Hand one decision to every listener that wants it."""
        if self.also is not None:
            self.also(event)
        if self.summary is not None:
            self.summary.add(event)
        if event.decision.allowed:
            self.allowed_count += 1
            if self.audit is not None or self.tap is not None:
                record = _record(event, self.sandbox)
                if self.audit is not None:
                    self.audit.write(record)
                if self.tap is not None:
                    self.tap(record)
            return
        self.denied_count += 1
        record = _record(event, self.sandbox)
        if self.audit is not None:
            self.audit.write(record)
        if self.tap is not None:
            self.tap(record)
        if self.denied is not None:
            self.denied.append(record)
        if self.report is not None:
            self.report(record, event.detail)

    def finish(self, stream: SupportsWrite[str] | None) -> AuditSeal | None:
        """The run is over: its audit log sealed and closed, and on ``stream`` (None: say
        nothing) the report's last line, the summary, and the seal's lines: the warning
        of a log moved away always, the head unless the report is off (--quiet).
        Returns the seal (None if the run wrote no record)."""
        seal = self.audit.close() if self.audit is not None else None
        if stream is None:
            return seal
        if self.report is not None:
            self.report.close()
        if self.summary is not None:
            print(self.summary.render(), file=stream)
        if seal is not None:
            assert self.audit is not None
            head = None if self.report is None else seal.head_line()
            for line in (seal.warning(self.audit.path), head):
                if line is not None:
                    print(line, file=stream)
        return seal


def _record(event: Event, sandbox: str) -> DecisionRecord:
    from .audit import DecisionRecord

    return DecisionRecord.from_event(event, sandbox)
