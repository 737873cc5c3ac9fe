"""Audit integrity: a command cannot silently change or drop its audit records.

Each run's records are sealed in a keyed chain (sandlock/auditchain.py) that
`sandlock audit verify` checks. The end-to-end tests let a sandboxed command tamper with
its own log from inside (it runs as our uid, so it can write the file) and check that
`verify` exits 1 and names what was done; the unit tests hold the chain functions to
the same, as pure Python.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sandlock.auditchain import Chain
from sandlock.auditverify import verify_lines

from .conftest import (
    SANDLOCK,
    Sinks,
    describe,
    kill_group,
    run_command,
    run_sandboxed,
    sandlock_env,
)

PY = sys.executable
VERIFY = [PY, "-m", "sandlock", "audit", "verify"]
HEAD = re.compile(r"^sandlock: audit run (\w+): (\d+) records?, head ([0-9a-f]{64})$", re.M)

# The command: one allowed connect, one denied, then (once the deny record is in the
# file) it tampers with the log as `how` says, and makes one more allowed connect.
TAMPER = textwrap.dedent("""
    import json, os, socket, sys, time
    path, ok_port, bad_port, how = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    socket.create_connection(("127.0.0.1", ok_port)).close()
    try:
        socket.create_connection(("127.0.0.2", bad_port))
        sys.exit("the denied connect went through")
    except ConnectionRefusedError:
        pass
    deadline = time.monotonic() + 20
    while '"action": "deny"' not in open(path).read():
        assert time.monotonic() < deadline, "no deny record"
        time.sleep(0.01)
    with open(path) as f:
        lines = f.read().splitlines(keepends=True)
    records = [json.loads(line) for line in lines]
    deny = next(i for i, r in enumerate(records) if r.get("action") == "deny")

    def rewrite(new):  # in place: the file the supervisor still appends to
        with open(path, "r+") as f:
            f.truncate(0)
            f.write("".join(new))

    if how == "drop":
        rewrite(lines[:deny] + lines[deny + 1:])
    elif how == "edit":
        lines[deny] = lines[deny].replace('"deny"', '"allow"').replace('"errno": 111', '"errno": 0')
        rewrite(lines)
    elif how == "append":
        fake = dict(records[deny], action="allow", errno=0, seq=records[-1]["seq"] + 1)
        with open(path, "a") as f:
            f.write(json.dumps(fake) + "\\n")
    elif how == "truncate":
        os.truncate(path, 0)
    elif how == "reorder":
        lines[deny - 1], lines[deny] = lines[deny], lines[deny - 1]
        rewrite(lines)
    elif how in ("replace", "unlink"):
        os.unlink(path)
        if how == "replace":  # a whole run of its own, sealed with a key of its own
            from sandlock.auditchain import Chain
            chain = Chain(records[0]["sandbox"])
            allow = {k: v for k, v in records[deny - 1].items() if k not in ("seq", "mac")}
            fake = [chain.open(allow["ts"]), chain.seal(allow), chain.close(allow["ts"])]
            with open(path, "wb") as f:
                f.write(b"".join(fake))
    elif how == "fifo":  # the supervisor must not wait on it at the end
        os.unlink(path)
        os.mkfifo(path)
    elif how.startswith("symlink:"):  # nor append to what it points to
        os.unlink(path)
        os.symlink(how.split(":", 1)[1], path)
    elif how != "none":
        sys.exit(f"how? {how}")
    socket.create_connection(("127.0.0.1", ok_port)).close()
""")


def _run(log: Path, sinks: Sinks, how: str) -> subprocess.CompletedProcess[str]:
    ok, bad = sinks.tcp("127.0.0.1"), sinks.tcp("127.0.0.2")
    res = run_sandboxed(
        ["--audit", str(log), "--net-allow", ok.spec],
        [PY, "-c", TAMPER, str(log), str(ok.port), str(bad.port), how],
    )
    assert res.returncode == 0, describe(res)
    assert (ok.settle().count, bad.settle().count) == (2, 0)
    return res


def _verify(log: Path, *heads: str) -> subprocess.CompletedProcess[str]:
    argv = [*VERIFY, str(log)]
    for head in heads:
        argv += ["--head", head]
    return run_command(argv, env=sandlock_env())


def _head(res: subprocess.CompletedProcess[str]) -> str:
    (found,) = HEAD.findall(res.stderr)
    return found[2]


def test_an_untouched_log_verifies(sinks: Sinks, tmp_path: Path) -> None:
    """Open, three decisions, close: verify says ok (exit 0), also against the head
    sandlock printed at exit, and refuses a head that is not the run's."""
    log = tmp_path / "audit.jsonl"
    res = _run(log, sinks, "none")
    sandbox, records, head = HEAD.findall(res.stderr)[0]
    assert records == "3"
    events = [json.loads(line).get("event") for line in log.read_text().splitlines()]
    assert events == ["open", None, None, None, "close"]
    out = _verify(log, head)
    assert out.returncode == 0, describe(out)
    assert f"run {sandbox} (lines 1-5): ok, 3 records, head {head}" in out.stdout
    other = _verify(log, "0" * 64)
    assert other.returncode == 1, describe(other)
    assert f"head {'0' * 64}: no intact run ends with it" in other.stdout


@pytest.mark.parametrize(
    ("how", "named"),
    [
        ("drop", "record #2 missing"),
        ("edit", "record #2 changed or forged"),
        ("append", "record #3 appears twice"),
        ("truncate", "no open record"),
        ("reorder", "records out of order"),
        ("replace", "the supervisor found the log replaced during the run"),
        ("unlink", "the supervisor found the log removed during the run"),
    ],
)
def test_tampering_from_inside_is_caught(
    sinks: Sinks, tmp_path: Path, how: str, named: str
) -> None:
    """The command drops its deny record, turns it into an allow, appends a fake allow,
    truncates the log, swaps two records, replaces the file with a run it sealed itself,
    or unlinks it: `sandlock audit verify` exits 1 and names the problem."""
    log = tmp_path / "audit.jsonl"
    res = _run(log, sinks, how)
    out = _verify(log)
    assert out.returncode == 1, describe(out)
    assert named in out.stdout, describe(out)
    assert out.stdout.splitlines()[-1].startswith(f"{log}: NOT INTACT"), describe(out)
    if how in ("replace", "unlink"):
        # The supervisor saw it at the end of the run: one line on stderr, whatever
        # sandlock's own exit status (the command's, 0).
        gone = "replaced" if how == "replace" else "removed"
        warning = (
            f"sandlock: the audit log {log} was {gone} during the run: this run's records "
            f"went to the old file (its close record is in {log} now)"
        )
        assert warning in res.stderr.splitlines(), describe(res)
        # The run the command sealed itself verifies on its own, but not as the head
        # sandlock printed.
        with_head = _verify(log, _head(res))
        assert "no intact run ends with it" in with_head.stdout, describe(with_head)


def test_a_fifo_or_symlink_put_in_the_logs_place_gets_nothing(
    sinks: Sinks, tmp_path: Path
) -> None:
    """At the end of the run the supervisor leaves its close record at the path only in a
    regular file: a FIFO there does not make it wait, a symlink is not followed."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    for how in ("fifo", f"symlink:{victim}"):
        log = tmp_path / "audit.jsonl"
        res = _run(log, sinks, how)
        assert f"sandlock: the audit log {log} was replaced during the run" in res.stderr
        log.unlink()
    assert victim.read_text() == "precious\n"


def test_a_run_rewritten_after_its_close_fails_against_its_head(
    sinks: Sinks, tmp_path: Path
) -> None:
    """Once a run has closed, its key is in the file: a process left behind could seal
    the run anew, consistently. Only the head printed at exit tells."""
    log = tmp_path / "audit.jsonl"
    head = _head(_run(log, sinks, "none"))
    records = [json.loads(line) for line in log.read_text().splitlines()]
    chain = Chain(records[0]["sandbox"], bytes.fromhex(records[-1]["key"]))
    lines = [chain.open(records[0]["ts"])]
    for r in records[1:-1]:
        if r["action"] != "deny":  # the deny record left out
            lines.append(chain.seal({k: v for k, v in r.items() if k not in ("seq", "mac")}))
    lines.append(chain.close(records[-1]["ts"]))
    log.write_bytes(b"".join(lines))
    assert _verify(log).returncode == 0  # no way to tell from the file alone
    out = _verify(log, head)
    assert out.returncode == 1, describe(out)
    assert f"head {head}: no intact run ends with it" in out.stdout


def test_two_runs_interleaved_in_one_file_verify(sinks: Sinks, tmp_path: Path) -> None:
    """Two sandboxes appending to one log at once: their records interleave, each run's
    chain holds, verify says ok for both and knows both heads."""
    ok = sinks.tcp("127.0.0.1")
    log, flag = tmp_path / "audit.jsonl", tmp_path / "flag"
    waiting = textwrap.dedent(f"""
        import os, socket, time
        socket.create_connection(("127.0.0.1", {ok.port})).close()
        deadline = time.monotonic() + 30
        while not os.path.exists({str(flag)!r}):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        socket.create_connection(("127.0.0.1", {ok.port})).close()
    """)
    first = subprocess.Popen(
        [*SANDLOCK, "--audit", str(log), "--net-allow", ok.spec, "--", PY, "-c", waiting],
        env=sandlock_env(),
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while log.read_text().count("\n") < 2 if log.exists() else True:
            assert time.monotonic() < deadline and first.poll() is None, "no record of run 1"
            time.sleep(0.01)
        connect = f"import socket; socket.create_connection(('127.0.0.1', {ok.port})).close()"
        second = run_sandboxed(["--audit", str(log), "--net-allow", ok.spec], [PY, "-c", connect])
        assert second.returncode == 0, describe(second)
        flag.touch()  # (after the second run has closed)
        _, err = first.communicate(timeout=60)
        assert first.returncode == 0, err
    finally:
        kill_group(first.pid)
    sandboxes = [json.loads(line)["sandbox"] for line in log.read_text().splitlines()]
    a, b = sandboxes[0], sandboxes[2]
    assert sandboxes == [a, a, b, b, b, a, a]  # interleaved
    out = _verify(log, _head(second), HEAD.findall(err)[0][2])
    assert out.returncode == 0, describe(out)
    assert f"run {a} (lines 1-7): ok, 2 records" in out.stdout
    assert f"run {b} (lines 3-5): ok, 1 record" in out.stdout


def test_through_the_daemon_the_chain_and_the_warning_are_the_same(
    sinks: Sinks, tmp_path: Path
) -> None:
    """A run supervised by the daemon seals its records the same way and prints its head
    on the client's stderr; a log unlinked meanwhile is reported there (the daemon has
    only the descriptor, so it cannot name the path or leave a close record at it)."""
    from .test_daemon import Daemon

    ok, bad = sinks.tcp("127.0.0.1"), sinks.tcp("127.0.0.2")
    daemon = Daemon(tmp_path / "d.sock")
    try:
        results = {}
        for how in ("none", "unlink"):
            log = tmp_path / f"{how}.jsonl"
            cmd = [PY, "-c", TAMPER, str(log), str(ok.port), str(bad.port), how]
            results[how] = res = daemon.run(["--audit", str(log), "--net-allow", ok.spec], cmd)
            assert res.returncode == 0, describe(res)
    finally:
        daemon.stop()
    out = _verify(tmp_path / "none.jsonl", _head(results["none"]))
    assert out.returncode == 0, describe(out)
    warning = (
        "sandlock: the audit log was removed during the run: this run's records went to "
        "the old file"
    )
    assert warning in results["unlink"].stderr.splitlines(), describe(results["unlink"])


def test_the_audit_path_is_not_in_the_supervisors_cmdline(sinks: Sinks, tmp_path: Path) -> None:
    """The command reads /proc/<supervisor>/cmdline: the --audit path is blanked there
    (same length, '*'), the rest of the line is as it was."""
    log = tmp_path / "audit.jsonl"
    script = "import os; print(open(f'/proc/{os.getppid()}/cmdline', 'rb').read())"
    res = run_sandboxed(["--quiet", "--audit", str(log)], [PY, "-c", script])
    assert res.returncode == 0, describe(res)
    assert str(log) not in res.stdout, describe(res)
    assert f"\\x00--audit\\x00{'*' * len(str(log))}\\x00--\\x00" in res.stdout, describe(res)


def test_verify_usage_errors(tmp_path: Path) -> None:
    """A missing file or a malformed head is one line on stderr, exit 2."""
    missing = tmp_path / "nope.jsonl"
    res = _verify(missing)
    assert (res.returncode, res.stdout) == (2, ""), describe(res)
    why = "No such file or directory"
    assert res.stderr == f"sandlock: audit verify: cannot read {missing}: {why}\n"
    missing.write_text("")
    res = _verify(missing, "abc")
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1, describe(res)


def test_the_api_result_carries_the_seal(sinks: Sinks, tmp_path: Path) -> None:
    """Result.audit: the run's head and record count, as `verify --head` checks them."""
    from sandlock import Sandbox

    ok = sinks.tcp("127.0.0.1")
    log = tmp_path / "audit.jsonl"
    script = f"import socket; socket.create_connection(('127.0.0.1', {ok.port})).close()"
    result = Sandbox([ok.spec], audit=log).run([PY, "-c", script])
    assert result.exit_code == 0
    assert result.audit is not None
    assert (result.audit.records, result.audit.log) == (1, None)
    verdict = verify_lines(log.read_bytes(), [result.audit.head])
    assert verdict.ok, verdict.lines


# ---- the chain, as pure Python ---------------------------------------------------------


def _decision(sandbox: str, n: int, action: str = "allow") -> dict[str, object]:
    return {"ts": f"t{n}", "sandbox": sandbox, "dst": "127.0.0.1", "port": n, "action": action}


def _sealed_run(sandbox: str = "aaaa0001", n: int = 3) -> tuple[list[bytes], str]:
    chain = Chain(sandbox)
    lines = [chain.open("t0")]
    lines += [chain.seal(_decision(sandbox, i + 1)) for i in range(n)]
    lines.append(chain.close("t9"))
    return lines, chain.head


def _check(lines: list[bytes], *heads: str) -> tuple[bool, str]:
    verdict = verify_lines(b"".join(lines), heads)
    return verdict.ok, "\n".join(verdict.lines)


def test_chain_round_trip() -> None:
    """Sealed lines are JSON with seq and mac; verify finds the run intact, and its head."""
    lines, head = _sealed_run()
    records = [json.loads(line) for line in lines]
    assert [r["seq"] for r in records] == [0, 1, 2, 3, 4]
    assert records[0]["event"] == "open" and records[-1]["event"] == "close"
    assert records[-1]["mac"] == head
    ok, text = _check(lines, head)
    assert ok, text
    assert text == f"run aaaa0001 (lines 1-5): ok, 3 records, head {head}"


def test_chain_names_every_kind_of_damage() -> None:
    """Each edit of a sealed run is found, at its line, with its name."""
    lines, _ = _sealed_run()
    key = json.loads(lines[-1])["key"]
    forged, other_key = Chain("aaaa0001"), Chain("aaaa0001")
    forged.seq, other_key.seq = 2, 4
    cases = {
        "changed or forged": [*lines[:2], lines[2].replace(b'"allow"', b'"deny"'), *lines[3:]],
        "record #2 missing": lines[:2] + lines[3:],
        "out of order": [lines[0], lines[2], lines[1], *lines[3:]],
        "appears twice (with line 2": [*lines[:2], lines[1], *lines[2:]],
        "no close record": lines[:-1],
        "no open record": lines[1:],
        "not a sealed record": [*lines[:2], b'{"sandbox": "aaaa0001", "action": "allow"}\n'],
        "not a JSON record": [*lines, b"garbage\n"],
        "incomplete last line": [*lines, lines[1][:20]],
        "line 3: record #2 changed or forged": [
            *lines[:2],
            forged.seal(_decision("aaaa0001", 2)),
            *lines[3:],
        ],
        "is not the one line 1 committed to": [*lines[:-1], other_key.close("t9")],
    }
    for name, damaged in cases.items():
        ok, text = _check(damaged)
        assert not ok and name in text, (name, text)
    assert key in lines[-1].decode()


def test_chain_interleaved_runs_and_a_reused_sandbox_id() -> None:
    """Two runs' lines interleaved, and a later run with the same sandbox id: all intact."""
    a, b = Chain("aaaa0001"), Chain("bbbb0002")
    lines = [a.open("t"), a.seal(_decision("aaaa0001", 1)), b.open("t")]
    lines += [b.seal(_decision("bbbb0002", 1)), a.seal(_decision("aaaa0001", 2)), b.close("t")]
    lines.append(a.close("t"))
    again, head = _sealed_run("aaaa0001", 1)
    ok, text = _check(lines + again, a.head, b.head, head)
    assert ok, text
    assert len(text.splitlines()) == 3


def test_chain_head_catches_a_consistent_rewrite() -> None:
    """A run sealed anew with its revealed key verifies alone, not against its head."""
    lines, head = _sealed_run()
    key = bytes.fromhex(json.loads(lines[-1])["key"])
    again = Chain("aaaa0001", key)
    rewritten = [again.open("t0"), again.seal(_decision("aaaa0001", 1)), again.close("t9")]
    assert _check(rewritten)[0]
    ok, text = _check(rewritten, head)
    assert not ok and "no intact run ends with it" in text


def test_close_records_say_what_became_of_the_file() -> None:
    """A close record that says the file was replaced makes its run fail, even when all
    its records are there (the copy the supervisor wrote to is not where it was)."""
    chain = Chain("aaaa0001")
    lines = [chain.open("t"), chain.seal(_decision("aaaa0001", 1)), chain.close("t", "replaced")]
    ok, text = _check(lines)
    assert not ok and "found the log replaced during the run" in text
    ok, text = _check(lines[-1:])
    assert not ok and "no open record: the supervisor found the log replaced" in text
