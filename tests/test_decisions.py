"""Decisions a person can read: --audit, the stderr report, --summary, learn mode."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
import textwrap
from pathlib import Path

from .conftest import Sinks, describe, run_sandboxed

PY = sys.executable


def _traffic(tcp_ok: int, udp_ok: int, denied_ports: range) -> str:
    return textwrap.dedent(f"""
        import socket
        socket.create_connection(("127.0.0.1", {tcp_ok})).close()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.sendto(b"x", ("127.0.0.1", {udp_ok}))
        for port in {list(denied_ports)!r}:
            try:
                u.sendto(b"x", ("127.0.0.2", port))
            except OSError:
                pass
    """)


def test_audit_log_has_one_line_per_decision(sinks: Sinks, tmp_path: Path) -> None:
    """--audit writes every decision as a JSON object with the documented fields."""
    tcp, udp = sinks.tcp("127.0.0.1"), sinks.udp("127.0.0.1")
    log = tmp_path / "audit.jsonl"
    script = _traffic(tcp.port, udp.port, range(40000, 40003))
    res = run_sandboxed(
        ["--audit", str(log), "--quiet", "--net-allow", tcp.spec, "--net-allow", udp.spec],
        [PY, "-c", script],
    )
    assert res.returncode == 0, describe(res)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    # The run's records are sealed between an open and a close record (test_audit_integrity.py).
    assert [r.get("event") for r in records] == ["open", *[None] * 5, "close"]
    lines = records[1:-1]
    fields = {
        "ts",
        "sandbox",
        "pid",
        "syscall",
        "proto",
        "dst",
        "port",
        "host",
        "action",
        "rule",
        "errno",
        "seq",
        "mac",
    }
    assert all(set(line) == fields for line in lines)
    assert len({line["sandbox"] for line in records}) == 1
    first = lines[0]
    assert (
        first["syscall"],
        first["proto"],
        first["dst"],
        first["port"],
        first["action"],
        first["rule"],
        first["errno"],
    ) == ("connect", "tcp", "127.0.0.1", tcp.port, "allow", tcp.spec, 0)
    assert dt.datetime.fromisoformat(first["ts"]).tzinfo is not None
    denied = [line for line in lines if line["action"] == "deny"]
    assert [(d["port"], d["rule"], d["errno"]) for d in denied] == [
        (p, "default-deny", 111) for p in range(40000, 40003)
    ]


def test_denials_reported_once_each_and_rate_limited(tmp_path: Path) -> None:
    """stderr names each refused destination once, at most a burst, then counts the rest."""
    script = textwrap.dedent("""
        import socket
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for rep in range(3):
            for port in range(41000, 41030):
                try:
                    u.sendto(b"x", ("127.0.0.2", port))
                except OSError:
                    pass
    """)
    res = run_sandboxed([], [PY, "-c", script])
    assert res.returncode == 0, describe(res)
    lines = res.stderr.splitlines()
    shown = [line for line in lines if line.startswith("sandlock: denied udp 127.0.0.2:")]
    assert 1 <= len(shown) <= 10
    assert len(set(shown)) == len(shown)
    assert shown[0].endswith("sendto) — no rule allows it")
    hidden = 30 - len(shown)
    assert (
        f"sandlock: {hidden} more denied destinations not shown (use --audit FILE for all)" in lines
    )


def test_quiet_and_summary(sinks: Sinks) -> None:
    """--quiet silences the report; --summary prints a table of destinations at exit."""
    tcp, udp = sinks.tcp("127.0.0.1"), sinks.udp("127.0.0.1")
    script = _traffic(tcp.port, udp.port, range(42000, 42002))
    res = run_sandboxed(
        ["--quiet", "--summary", "--net-allow", tcp.spec, "--net-allow", udp.spec],
        [PY, "-c", script],
    )
    assert res.returncode == 0, describe(res)
    assert "sandlock: denied" not in res.stderr
    table = res.stderr.splitlines()
    assert table[0].split() == ["PROTO", "DESTINATION", "CALLS", "ACTION"]
    assert f"tcp    127.0.0.1:{tcp.port}" in res.stderr
    assert ["udp", "127.0.0.2:42001", "1", "deny"] in [row.split() for row in table]


def test_learn_prints_rules_and_writes_a_profile_run_accepts(sinks: Sinks, tmp_path: Path) -> None:
    """learn allows everything, prints the minimal rules, and --profile reads them back."""
    tcp, udp = sinks.tcp("127.0.0.1"), sinks.udp("127.0.0.1")
    script = _traffic(tcp.port, udp.port, range(0))
    prof = tmp_path / "learned.toml"
    argv = [
        sys.executable,
        "-m",
        "sandlock",
        "learn",
        "--profile-out",
        str(prof),
        "--",
        PY,
        "-c",
        script,
    ]
    from .conftest import run_command, sandlock_env

    res = run_command(argv, env=sandlock_env())
    assert res.returncode == 0, describe(res)
    assert f"  --net-allow 127.0.0.1:{tcp.port}" in res.stderr
    assert f"  --net-allow udp://127.0.0.1:{udp.port}" in res.stderr
    assert (tcp.settle().count, udp.settle().count) == (1, 1)
    again = run_sandboxed(["--profile", str(prof)], [PY, "-c", script])
    assert again.returncode == 0, describe(again)
    assert (tcp.settle().count, udp.settle().count) == (2, 2)


def test_learn_still_applies_deny_rules(sinks: Sinks) -> None:
    """learn keeps --net-deny: a denied destination is refused and not learned."""
    bad = sinks.tcp("127.0.0.2")
    script = _traffic(1, 1, range(0)).replace("127.0.0.1", "127.0.0.2")
    from .conftest import run_command, sandlock_env

    argv = [
        sys.executable,
        "-m",
        "sandlock",
        "learn",
        "--net-deny",
        "127.0.0.2",
        "--",
        PY,
        "-c",
        script,
    ]
    res = run_command(argv, env=sandlock_env())
    assert res.returncode != 0
    assert "127.0.0.2" not in res.stderr.split("the command needs", 1)[-1]
    assert bad.settle().count == 0


def test_hostname_rule_allows_its_addresses_and_names_itself(sinks: Sinks, tmp_path: Path) -> None:
    """A hostname rule allows the addresses it resolved to at start (localhost: from
    /etc/hosts, no DNS query leaves), and the audit log names the host it came from."""
    ok, other = sinks.tcp("127.0.0.1"), sinks.tcp("127.0.0.2")
    log = tmp_path / "audit.jsonl"
    script = textwrap.dedent(f"""
        import socket, sys
        socket.create_connection(("127.0.0.1", {ok.port})).close()
        try:
            socket.create_connection(("127.0.0.2", {other.port}))
        except OSError as e:
            sys.exit(0 if e.errno == 111 else 1)
        sys.exit(1)
    """)
    res = run_sandboxed(
        ["--quiet", "--audit", str(log), "--net-allow", f"localhost:{ok.port}"], [PY, "-c", script]
    )
    assert res.returncode == 0, describe(res)
    first = json.loads(log.read_text().splitlines()[1])  # (after the run's open record)
    assert (first["host"], first["rule"], first["action"]) == (
        "localhost",
        f"localhost:{ok.port}",
        "allow",
    )
    assert (ok.settle().count, other.settle().count) == (1, 0)


def test_audit_lines_are_on_disk_as_they_happen(tmp_path: Path) -> None:
    """Each decision is written when it is made: it is in the file while the command still
    runs, and a SIGKILLed sandlock loses none of it."""
    import subprocess
    import time

    from .conftest import SANDLOCK, sandlock_env

    log = tmp_path / "audit.jsonl"
    script = textwrap.dedent("""
        import socket, time
        try:
            socket.create_connection(("127.0.0.2", 9), timeout=5)
        except OSError:
            pass
        time.sleep(60)
    """)
    proc = subprocess.Popen(
        [*SANDLOCK, "--quiet", "--audit", str(log), "--", PY, "-c", script],
        env=sandlock_env(),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and log.read_text().endswith("\n")):
            assert time.monotonic() < deadline, "no audit line while the command runs"
            time.sleep(0.02)
        proc.kill()  # sandlock itself, mid-run
        proc.wait(timeout=30)
    finally:
        try:
            os.killpg(proc.pid, 9)  # the orphaned command, still sleeping
        except ProcessLookupError:
            pass
    # The open record and the decision, and no close record: sandlock was killed.
    opening, line = log.read_text().splitlines()
    assert json.loads(opening)["event"] == "open"
    record = json.loads(line)
    assert (record["dst"], record["port"], record["action"]) == ("127.0.0.2", 9, "deny")


def test_unwritable_audit_path_is_one_line_and_nothing_runs(tmp_path: Path) -> None:
    """--audit to a path that cannot be opened: one line, exit 2, the command never ran."""
    marker = tmp_path / "ran"
    bad = tmp_path / "no-such-dir" / "audit.jsonl"
    res = run_sandboxed(["--audit", str(bad)], ["touch", str(marker)])
    assert res.returncode == 2
    assert res.stderr == f"sandlock: --audit: cannot open {bad}: No such file or directory\n"
    assert not marker.exists()


def test_timestamps_are_utc_with_microseconds() -> None:
    """audit.timestamp(): `2026-11-23T03:15:21.991605Z`, the time now in UTC."""
    from sandlock.audit import timestamp

    before = dt.datetime.now(dt.UTC)
    stamp = timestamp()
    after = dt.datetime.now(dt.UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp), stamp
    assert before - dt.timedelta(microseconds=1) <= dt.datetime.fromisoformat(stamp) <= after


def test_getaddrinfo_probe_refused_and_logged_not_reported(tmp_path: Path) -> None:
    """A UDP connect to port 0 (glibc's getaddrinfo probe) is refused and audited, not shown."""
    script = textwrap.dedent("""
        import socket, sys
        codes = []
        for port in (0, 9):
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                u.connect(("127.0.0.2", port))
                codes.append(0)
            except OSError as e:
                codes.append(e.errno)
        print(codes)
    """)
    log = tmp_path / "audit.jsonl"
    res = run_sandboxed(["--audit", str(log)], [PY, "-c", script])
    assert res.returncode == 0, describe(res)
    assert res.stdout.strip() == "[111, 111]"
    denied = [line for line in res.stderr.splitlines() if line.startswith("sandlock: denied")]
    assert len(denied) == 1, res.stderr
    assert re.fullmatch(r"sandlock: denied udp 127\.0\.0\.2:9 \(pid \d+, connect\) — .*", denied[0])
    records = [json.loads(line) for line in log.read_text().splitlines()]
    decided = [(r["proto"], r["port"], r["action"]) for r in records if "event" not in r]
    assert decided == [("udp", 0, "deny"), ("udp", 9, "deny")]
