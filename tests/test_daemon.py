"""The supervisor daemon: run --daemon, ps, policy, and its faults."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import sysconfig
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandlock import _wire

from .conftest import Sinks, describe, run_command, sandlock_env

PY = sys.executable
DAEMON = [PY, "-m", "sandlock"]


class Daemon:
    def __init__(self, path: Path, user: int | None = None) -> None:
        self.path = path
        kw = {"user": user} if user is not None else {}
        self.proc = subprocess.Popen(
            [*DAEMON, "serve", "--socket", str(path)],
            env=sandlock_env(),
            stderr=subprocess.PIPE,
            text=True,
            **kw,
        )
        deadline = time.monotonic() + 30
        while not self._accepting():
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.02)

    def _accepting(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            try:
                s.connect(str(self.path))
            except OSError:
                return False
            return True

    def run(
        self, args: list[str], cmd: list[str], **kw: object
    ) -> subprocess.CompletedProcess[str]:
        return run_command(
            [*DAEMON, "run", "--daemon", str(self.path), *args, "--", *cmd],
            env=sandlock_env(),
            **kw,
        )  # type: ignore[arg-type]

    def raw(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(str(self.path))
        s.settimeout(30)
        return s

    def wait_for_sandboxes(self, count: int) -> None:
        deadline = time.monotonic() + 60
        while True:
            with self.raw() as s:
                s.send(b'{"op": "ps"}')
                if len(json.loads(s.recv(65536))["sandboxes"]) >= count:
                    return
            assert time.monotonic() < deadline, "the sandbox never reached the daemon"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.communicate(timeout=30)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "d.sock")
    yield d
    d.stop()


def _connect(host: str, port: int) -> str:
    return textwrap.dedent(f"""
        import socket, sys
        try:
            socket.create_connection(({host!r}, {port}), timeout=20).close()
        except OSError as e:
            sys.exit(e.errno or 1)
    """)


def test_run_through_the_daemon_enforces_and_keeps_stdio(daemon: Daemon, sinks: Sinks) -> None:
    """run --daemon: the policy holds, exit status and stdout/stderr are the command's."""
    ok, bad = sinks.tcp("127.0.0.1"), sinks.tcp("127.0.0.2")
    res = daemon.run(["--net-allow", ok.spec], [PY, "-c", _connect("127.0.0.1", ok.port)])
    assert res.returncode == 0, describe(res)
    res = daemon.run(["--net-allow", ok.spec], [PY, "-c", _connect("127.0.0.2", bad.port)])
    assert res.returncode == 111, describe(res)
    assert f"sandlock: denied tcp 127.0.0.2:{bad.port}" in res.stderr
    res = daemon.run(
        [], ["/bin/sh", "-c", "read x; echo out:$x; echo err >&2; exit 7"], input="in\n"
    )
    assert (res.returncode, res.stdout, res.stderr) == (7, "out:in\n", "err\n")
    assert (ok.settle().count, bad.settle().count) == (1, 0)


def test_sandlock_daemon_variable_selects_the_daemon(daemon: Daemon, sinks: Sinks) -> None:
    """With SANDLOCK_DAEMON set, a plain `sandlock run` is supervised by that daemon."""
    ok = sinks.tcp("127.0.0.1")
    go = daemon.path.parent / "go"
    script = textwrap.dedent(f"""
        import os, socket, time
        while not os.path.exists({str(go)!r}):
            time.sleep(0.02)
        socket.create_connection(("127.0.0.1", {ok.port}), timeout=20).close()
    """)
    env = {**sandlock_env(), "SANDLOCK_DAEMON": str(daemon.path)}
    proc = subprocess.Popen(
        [*DAEMON, "run", "--net-allow", ok.spec, "--", PY, "-c", script], env=env
    )
    try:
        daemon.wait_for_sandboxes(1)  # the daemon, not the client, supervises it
        go.touch()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert ok.settle().count == 1


def test_socket_is_private(daemon: Daemon) -> None:
    """The daemon's socket is created mode 0600."""
    assert stat.S_IMODE(daemon.path.stat().st_mode) == 0o600


def test_ps_and_live_policy_swap(daemon: Daemon, sinks: Sinks, tmp_path: Path) -> None:
    """ps lists a live sandbox; policy replaces its rules from its next call on."""
    ok = sinks.tcp("127.0.0.1")
    go = tmp_path / "go"
    script = textwrap.dedent(f"""
        import os, socket, time
        def attempt():
            try:
                socket.create_connection(("127.0.0.1", {ok.port}), timeout=10).close()
                return "ok"
            except OSError as e:
                return str(e.errno)
        first = attempt()
        while not os.path.exists({str(go)!r}):
            time.sleep(0.02)
        print(first, attempt())
    """)
    proc = subprocess.Popen(
        [
            *DAEMON,
            "run",
            "--daemon",
            str(daemon.path),
            "--quiet",
            "--net-allow",
            ok.spec,
            "--",
            PY,
            "-c",
            script,
        ],
        env=sandlock_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            ps = run_command([*DAEMON, "ps", "--daemon", str(daemon.path)], env=sandlock_env())
            rows = [line.split() for line in ps.stdout.splitlines()[1:]]
            if rows and rows[0][3] == "1":  # the first connect was allowed
                break
            assert time.monotonic() < deadline, ps.stdout
            time.sleep(0.05)
        box_id, _pid, rules, allowed, denied = rows[0][:5]
        assert (rules, allowed, denied) == ("1", "1", "0")
        pol = run_command(
            [*DAEMON, "policy", "--daemon", str(daemon.path), box_id, "--net-deny", "127.0.0.1"],
            env=sandlock_env(),
        )
        assert pol.returncode == 0, describe(pol)
        go.touch()
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert out.split() == ["ok", "111"]
    assert ok.settle().count == 1


def test_killed_daemon_fails_closed_and_a_new_one_serves(tmp_path: Path, sinks: Sinks) -> None:
    """SIGKILL the daemon mid-run: the sandbox's calls fail (never pass, never hang);
    a daemon restarted on the same path serves new sandboxes."""
    ok = sinks.tcp("127.0.0.1")
    d = Daemon(tmp_path / "d.sock")
    go = tmp_path / "go"
    script = textwrap.dedent(f"""
        import os, socket, sys, time
        while not os.path.exists({str(go)!r}):
            time.sleep(0.02)
        try:
            socket.create_connection(("127.0.0.1", {ok.port}), timeout=10).close()
        except OSError as e:
            print(e.errno)
    """)
    proc = subprocess.Popen(
        [*DAEMON, "run", "--daemon", str(d.path), "--net-allow", ok.spec, "--", PY, "-c", script],
        env=sandlock_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    d.wait_for_sandboxes(1)  # the daemon has taken the sandbox over
    d.proc.kill()
    d.stop()
    go.touch()
    out, _ = proc.communicate(timeout=60)
    assert out.strip() == "38"  # ENOSYS: nobody supervises, the kernel refuses
    assert ok.settle().count == 0
    again = Daemon(d.path)
    try:
        res = again.run(["--net-allow", ok.spec], [PY, "-c", _connect("127.0.0.1", ok.port)])
        assert res.returncode == 0, describe(res)
        assert ok.settle().count == 1
    finally:
        again.stop()


def test_bad_requests_get_errors_and_the_daemon_keeps_serving(daemon: Daemon) -> None:
    """Garbage, oversized or too deeply nested records, a reply too long to send, unknown
    ops and a client that leaves mid-handshake get an error (or nothing) and do not
    disturb the daemon."""
    with daemon.raw() as s:
        s.send(b"not json")
        reply = json.loads(s.recv(65536))
        assert reply["ok"] is False and "not JSON" in reply["error"]
        s.send(b"x" * (_wire.MAX_RECORD + 10))
        reply = json.loads(s.recv(65536))
        assert reply["ok"] is False and "too large" in reply["error"]
        s.send(b'{"op": "fly"}')
        assert "unknown op" in json.loads(s.recv(65536))["error"]
        s.send(b'{"op": "supervise", "cmd": ["x"]}')
        assert "after a rules request" in json.loads(s.recv(65536))["error"]
        s.send(b'{"op": "rules", "allow": ["udp://h:0"]}')
        reply = json.loads(s.recv(65536))
        assert reply["policy_error"] is True and "`udp://h:0`" in reply["error"]
        s.send(b'{"op": "rules", "allow": [], "names": {"ttl_min": 0}}')
        reply = json.loads(s.recv(65536))
        assert reply["policy_error"] is True and "--dns-ttl-min" in reply["error"]
        s.send(b'{"op": "rules", "allow": [], "names": "fast"}')
        assert "name options must be an object" in json.loads(s.recv(65536))["error"]
        s.send(b'{"op": "rules", "allow": []}')
        assert json.loads(s.recv(65536)) == {"ok": True, "trap_open": False}
        s.send(b'{"op": "supervise", "cmd": ["x"]}')
        assert "needs descriptors" in json.loads(s.recv(65536))["error"]
        s.send(b"[1, 2]")
        assert "JSON object" in json.loads(s.recv(65536))["error"]
        s.send(b"[" * 30000 + b"]" * 30000)  # deeper than Python's recursion limit
        assert "too deeply nested" in json.loads(s.recv(65536))["error"]
        s.send(json.dumps({"op": "rules", "allow": ["a" * 60000]}).encode())
        reply = json.loads(s.recv(65536))  # refused before it is parsed
        assert reply["policy_error"] is True and "longer than 1024" in reply["error"]
    with daemon.raw() as s:  # a client that connects and disappears mid-handshake
        s.send(b'{"op": "supervise"')
    with daemon.raw() as s:
        s.send(b'{"op": "ps"}')
        assert json.loads(s.recv(65536)) == {"ok": True, "sandboxes": []}
    res = daemon.run([], ["/bin/true"])
    assert res.returncode == 0, describe(res)


def test_a_client_may_only_supervise_its_own_processes() -> None:
    """The daemon refuses to supervise a process of another uid than the client's, or
    one that is not the client's own child."""
    from sandlock import launch
    from sandlock._request import RequestError, check_supervise_fds

    child = launch.start(["sleep", "30"], gate=False)  # root's, and the client claims 65534
    try:
        fds = [child.listener, child.pidfd, 2]
        with pytest.raises(RequestError, match=f"process {child.pid} is not yours"):
            check_supervise_fds(fds, os.getpid(), 65534)
        with pytest.raises(RequestError, match="not a child of the client"):
            check_supervise_fds(fds, os.getppid(), os.getuid())
        assert check_supervise_fds(fds, os.getpid(), os.getuid()) == (child.pid, os.getuid())
    finally:
        os.kill(child.pid, 9)
        os.waitpid(child.pid, 0)
        child.close()


def test_bad_rule_through_the_daemon_is_one_line_and_nothing_runs(
    daemon: Daemon, tmp_path: Path
) -> None:
    """The daemon checks the rules before the client starts the command."""
    marker = tmp_path / "ran"
    res = daemon.run(["--net-allow", "udp://127.0.0.1:0"], ["touch", str(marker)])
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "--net-allow" in res.stderr
    assert "`udp://127.0.0.1:0`" in res.stderr
    assert not marker.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="runs a client as another uid")
def test_other_users_cannot_reach_the_socket() -> None:
    """A client of another uid cannot even connect: the socket is 0600."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="sandlock-daemon-"))
    base.chmod(0o755)
    d = Daemon(base / "d.sock")
    try:
        code = (
            "import socket; s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); "
            f"s.connect({str(d.path)!r})"
        )
        res = subprocess.run(
            ["/usr/bin/python3", "-c", code], user=65534, capture_output=True, text=True, timeout=30
        )
        assert res.returncode == 1 and "PermissionError" in res.stderr
    finally:
        d.stop()
        (base / "d.sock").unlink(missing_ok=True)
        base.rmdir()


def test_sixty_four_sandboxes_at_once(daemon: Daemon, sinks: Sinks) -> None:
    """64 sandboxes through one daemon, each connecting, all succeed."""
    ok = sinks.tcp("127.0.0.1")
    procs = [
        subprocess.Popen(
            [
                *DAEMON,
                "run",
                "--daemon",
                str(daemon.path),
                "--net-allow",
                ok.spec,
                "--",
                PY,
                "-c",
                _connect("127.0.0.1", ok.port),
            ],
            env=sandlock_env(),
        )
        for _ in range(64)
    ]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0] * 64
    assert ok.settle().count == 64


def test_serve_never_replaces_a_file_that_is_not_a_socket(tmp_path: Path) -> None:
    """`serve --socket FILE` on an existing regular file refuses, and the file survives."""
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    res = run_command([*DAEMON, "serve", "--socket", str(precious)], env=sandlock_env())
    assert res.returncode == 1
    assert res.stderr == f"sandlock: serve: {precious} exists and is not a socket\n"
    assert precious.read_text() == "keep me"


def test_a_second_daemon_on_the_same_path_is_one_line(daemon: Daemon) -> None:
    """A path a live daemon listens on is refused in one line, and that daemon survives."""
    res = run_command([*DAEMON, "serve", "--socket", str(daemon.path)], env=sandlock_env())
    assert res.returncode == 1
    assert res.stderr == f"sandlock: serve: a daemon is already listening on {daemon.path}\n"
    assert daemon.run([], ["/bin/true"]).returncode == 0


def test_unwritable_audit_path_through_the_daemon(daemon: Daemon, tmp_path: Path) -> None:
    """The same --audit mistake gives the same line and status through the daemon."""
    marker = tmp_path / "ran"
    bad = tmp_path / "no-such-dir" / "audit.jsonl"
    res = daemon.run(["--audit", str(bad)], ["touch", str(marker)])
    assert res.returncode == 2
    assert res.stderr == f"sandlock: --audit: cannot open {bad}: No such file or directory\n"
    assert not marker.exists()


def test_unreachable_daemon_is_one_line(tmp_path: Path) -> None:
    """A daemon path with nobody listening: one line, exit 1, the command never ran."""
    marker = tmp_path / "ran"
    res = run_command(
        [*DAEMON, "run", "--daemon", str(tmp_path / "none.sock"), "--", "touch", str(marker)],
        env=sandlock_env(),
    )
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "cannot reach a daemon" in res.stderr
    assert not marker.exists()


# ---------------------------------------------------------------- the fast launch path

# `python -S`: no site, whose .pth files (the editable install's finder among them) load
# re and pathlib before sandlock starts; -c rather than -m, whose runpy loads more.
# What is loaded is then what sandlock loads.
LEAN = [PY, "-S", "-X", "importtime", "-c", "from sandlock.cli import main; main()", "run"]
# What the launch path does without: argparse, socket, json and re cost it over 15 ms,
# enum, signal, collections, functools and importlib a few more.
SLOW_MODULES = set(
    "argparse gettext socket selectors json re typing dataclasses"
    " enum signal collections functools importlib".split()
)


def _lean_run(
    daemon: Daemon, args: list[str], cmd: list[str]
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `sandlock run --daemon` in a bare interpreter: the result (stderr without the
    import times) and the modules it loaded."""
    env = sandlock_env()
    site_dirs = [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in [env.get("PYTHONPATH"), *site_dirs] if p)
    res = run_command([*LEAN, "--daemon", str(daemon.path), *args, "--", *cmd], env=env)
    lines = res.stderr.splitlines(keepends=True)
    loaded = {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}
    res.stderr = "".join(line for line in lines if not line.startswith("import time:"))
    return res, loaded


def _two_connects(ok: int, bad: int) -> str:
    return textwrap.dedent(f"""
        import socket, sys
        for host, port in (("127.0.0.1", {ok}), ("127.0.0.2", {bad})):
            try:
                socket.create_connection((host, port), timeout=20).close()
                print("ok")
            except OSError as e:
                print(e.errno)
        sys.exit(5)
    """)


def test_the_daemon_launch_path_stays_lean(daemon: Daemon, sinks: Sinks) -> None:
    """`run --daemon` with the common options loads none of the slow modules (argparse,
    socket, json, re, typing, dataclasses...), and the rules still hold."""
    ok, bad = sinks.tcp("127.0.0.1"), sinks.tcp("127.0.0.2")
    # A first launch with a cold filter cache builds the program with libseccomp (and its
    # imports) once: warm it (/bin/true) so that what is measured is every launch after.
    _lean_run(daemon, ["--net-allow", ok.spec, "--net-deny=127.0.0.2"], ["/bin/true"])
    res, loaded = _lean_run(
        daemon,
        ["--net-allow", ok.spec, "--net-deny=127.0.0.2"],
        [PY, "-c", _two_connects(ok.port, bad.port)],
    )
    assert (res.returncode, res.stdout) == (5, "ok\n111\n"), describe(res)
    assert {"sandlock._fastrun", "sandlock.client", "sandlock.launch"} <= loaded
    assert not loaded & SLOW_MODULES, (sorted(loaded & SLOW_MODULES), res.stderr, sorted(loaded))
    assert (ok.settle().count, bad.settle().count) == (1, 0)


def test_the_fast_reader_and_the_parser_run_alike(
    daemon: Daemon, sinks: Sinks, tmp_path: Path
) -> None:
    """The same lines read by the fast reader and by argparse (made to read them by an
    option only it knows, at its default value) pass the daemon the same rules: the same
    exit status, output and denial report, and the same one-line error for a bad rule."""
    ok, bad = sinks.tcp("127.0.0.1"), sinks.tcp("127.0.0.2")
    deny = "--net-deny 127.0.0.2"  # the rule the report names, so it reached the daemon
    marker = tmp_path / "ran"
    seen = []
    for extra in ([], ["--dns-ttl-min", "30"]):
        good, good_loaded = _lean_run(
            daemon,
            [*extra, f"--net-allow={ok.spec}", *deny.split()],
            [PY, "-c", _two_connects(ok.port, bad.port)],
        )
        wrong, wrong_loaded = _lean_run(
            daemon, [*extra, "--net-allow", "udp://127.0.0.1:0"], ["touch", str(marker)]
        )
        assert ("argparse" in good_loaded) == ("argparse" in wrong_loaded) == bool(extra)
        seen.append(
            [(r.returncode, r.stdout, re.sub(r"pid \d+", "pid N", r.stderr)) for r in (good, wrong)]
        )
    assert seen[0] == seen[1]
    (status, out, err), (wrong_status, _, wrong_err) = seen[0]
    assert (status, out) == (5, "ok\n111\n"), err
    assert err == f"sandlock: denied tcp 127.0.0.2:{bad.port} (pid N, connect) — {deny}\n"
    assert wrong_status == 2 and wrong_err.count("\n") == 1
    assert wrong_err.startswith("sandlock: --net-allow") and "`udp://127.0.0.1:0`" in wrong_err
    assert not marker.exists()
    assert (ok.settle().count, bad.settle().count) == (2, 0)


def test_options_left_to_the_parser_still_reach_the_daemon(
    daemon: Daemon, sinks: Sinks, tmp_path: Path
) -> None:
    """--quiet and --audit, which only argparse reads, work through the daemon as before:
    no report on stderr, every decision in the audit log."""
    ok, bad = sinks.tcp("127.0.0.1"), sinks.tcp("127.0.0.2")
    log = tmp_path / "audit.jsonl"
    res, loaded = _lean_run(
        daemon,
        ["--quiet", "--audit", str(log), "--net-allow", ok.spec],
        [PY, "-c", _two_connects(ok.port, bad.port)],
    )
    assert "argparse" in loaded
    assert (res.returncode, res.stdout, res.stderr) == (5, "ok\n111\n", ""), describe(res)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    records = [r for r in records if "event" not in r]  # (not the run's open and close)
    assert [(r["dst"], r["port"], r["action"]) for r in records] == [
        ("127.0.0.1", ok.port, "allow"),
        ("127.0.0.2", bad.port, "deny"),
    ]
