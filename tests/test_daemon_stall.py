"""A daemon that stops serving (SIGSTOP, a stuck event loop) never leaves a sandbox
hanging: after the grace period the client kills the command and says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Sinks, TcpSink, describe, sandlock_env
from .test_daemon import DAEMON, PY, Daemon, _connect

GRACE = 2  # seconds (SANDLOCK_DAEMON_TIMEOUT): short, so that the tests stay short
STALLED = 125  # client.EXIT_DAEMON_STALLED

# The daemon, with a SIGUSR1 handler that blocks its main thread (where trio's event
# loop runs) for $WEDGE seconds: a daemon that runs but does not serve. Its gate threads
# go on; with --summary every call waits for the event loop.
WEDGEABLE = textwrap.dedent("""
    import os, signal, sys, time
    signal.signal(signal.SIGUSR1, lambda *_: time.sleep(float(os.environ["WEDGE"])))
    from sandlock.cli import main
    main(sys.argv[1:])
""")


class WedgeableDaemon(Daemon):
    def __init__(self, path: Path, wedge: float) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            [PY, "-c", WEDGEABLE, "serve", "--socket", str(path)],
            env=sandlock_env() | {"WEDGE": str(wedge)},
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while not self._accepting():
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.02)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "d.sock")
    yield d
    if d.proc.poll() is None:
        os.kill(d.proc.pid, signal.SIGCONT)  # (a failed test may leave it stopped)
    d.stop()


def _connect_loop(sink: TcpSink, pids: Path) -> str:
    """The command: it and a child it forks connect to the sink in a loop, each noting
    its pid in ``pids`` first."""
    return textwrap.dedent(f"""
        import os, socket, time
        os.fork()
        with open({str(pids)!r}, "a") as f:
            f.write(f"{{os.getpid()}}\\n")
        while True:
            socket.create_connection(("127.0.0.1", {sink.port}), timeout=60).close()
            time.sleep(0.01)
    """)


class Sandbox:
    """`run --daemon --summary` of the connect loop, its output in files (the daemon holds
    the client's stderr: a pipe would not end while the daemon is stopped)."""

    def __init__(self, d: Daemon, sink: TcpSink, tmp_path: Path) -> None:
        self.pids = tmp_path / "pids"
        self.err = tmp_path / "err"
        rules = ["--summary", "--net-allow", sink.spec]
        cmd = [PY, "-c", _connect_loop(sink, self.pids)]
        with open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [*DAEMON, "run", "--daemon", str(d.path), *rules, "--", *cmd],
                env=sandlock_env() | {"SANDLOCK_DAEMON_TIMEOUT": str(GRACE)},
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while not (self.pids.exists() and len(self.command()) == 2 and sink.settle().count > 4):
            assert self.proc.poll() is None, self.err.read_text()
            assert time.monotonic() < deadline, "the sandbox did not start connecting"
            time.sleep(0.05)

    def command(self) -> list[int]:
        return [int(line) for line in self.pids.read_text().split()]

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the client still waited after {timeout} s: {self.err.read_text()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pid in self.command():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _gone(pid: int) -> bool:
    """True once ``pid`` has ended (a zombie no parent reaped yet counts)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False


def _still_serves(d: Daemon, sink: TcpSink) -> None:
    before = sink.settle().count
    res = d.run(["--net-allow", sink.spec], [PY, "-c", _connect("127.0.0.1", sink.port)])
    assert res.returncode == 0, describe(res)
    assert sink.settle().count == before + 1


def test_a_stopped_daemon_ends_its_sandbox_fail_closed(
    daemon: Daemon, sinks: Sinks, tmp_path: Path
) -> None:
    """SIGSTOP the daemon mid-run: within the grace period (and a little) the client
    kills the command and its child and exits with its own status and one line; the
    daemon, continued, serves new sandboxes."""
    ok = sinks.tcp()
    box = Sandbox(daemon, ok, tmp_path)
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        status = box.wait(GRACE * 1.5 + 15)
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
        box.kill()
    assert status == STALLED, box.err.read_text()
    line = (
        f"sandlock: the daemon at {daemon.path} stopped answering (stopped) for {GRACE} s; "
        "the command was killed\n"
    )
    assert line in box.err.read_text()
    assert all(_gone(pid) for pid in box.command())
    _still_serves(daemon, ok)
    daemon.wait_for_sandboxes(0)


def test_a_daemon_whose_event_loop_is_stuck_ends_its_sandbox(sinks: Sinks, tmp_path: Path) -> None:
    """A daemon that runs but does not serve (its event loop blocked; /proc says it
    sleeps, not stopped): the unanswered ping ends the sandbox the same way."""
    ok = sinks.tcp()
    d = WedgeableDaemon(tmp_path / "d.sock", wedge=GRACE * 1.5 + 3)
    try:
        box = Sandbox(d, ok, tmp_path)
        os.kill(d.proc.pid, signal.SIGUSR1)
        try:
            status = box.wait(GRACE * 1.5 + 15)
        finally:
            box.kill()
        assert status == STALLED, box.err.read_text()
        assert (
            f"sandlock: the daemon at {d.path} stopped answering (running, but its event "
            f"loop does not answer) for {GRACE} s; the command was killed\n"
        ) in box.err.read_text()
        assert all(_gone(pid) for pid in box.command())
        _still_serves(d, ok)  # (once the loop runs again)
    finally:
        d.stop()


def test_a_daemon_stopped_briefly_kills_nothing(
    daemon: Daemon, sinks: Sinks, tmp_path: Path
) -> None:
    """A stop shorter than the grace period only delays the calls: the command goes on
    connecting once the daemon continues, and ends only when it is told to."""
    ok = sinks.tcp()
    box = Sandbox(daemon, ok, tmp_path)
    try:
        os.kill(daemon.proc.pid, signal.SIGSTOP)
        time.sleep(GRACE / 2)
        os.kill(daemon.proc.pid, signal.SIGCONT)
        count = ok.settle().count
        deadline = time.monotonic() + 20
        while ok.settle().count < count + 20:  # connecting again, through the daemon
            assert box.proc.poll() is None, box.err.read_text()
            assert time.monotonic() < deadline, "the sandbox did not connect again"
            time.sleep(0.05)
        time.sleep(GRACE * 1.5)  # (beyond a grace period from the stop)
        assert box.proc.poll() is None, box.err.read_text()
        os.kill(box.proc.pid, signal.SIGTERM)  # forwarded to the command
        assert box.wait(20) == 128 + signal.SIGTERM, box.err.read_text()
    finally:
        box.kill()
    assert "stopped answering" not in box.err.read_text()


def test_ping_is_answered_by_the_event_loop(daemon: Daemon) -> None:
    with daemon.raw() as s:
        s.send(b'{"op": "ping"}')
        assert json.loads(s.recv(65536)) == {"ok": True}
        s.send(b'{"op": "ping", "x": 1}')
        reply = json.loads(s.recv(65536))
        assert (reply["ok"], reply["error"]) == (False, "ping: unknown field 'x'")


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf", "nan", ""])
def test_a_bad_daemon_timeout_is_one_line(daemon: Daemon, value: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    res = subprocess.run(
        [*DAEMON, "run", "--daemon", str(daemon.path), "--", "touch", str(marker)],
        env=sandlock_env() | {"SANDLOCK_DAEMON_TIMEOUT": value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2, describe(res)
    assert res.stderr == (
        f"sandlock: SANDLOCK_DAEMON_TIMEOUT: expected a positive number of seconds, not {value!r}\n"
    )
    assert not marker.exists()


# A client that sends requests and reads no reply while its command runs, until the
# daemon's reply to it waits; then its command exits and the daemon's exit notice meets
# that reply on the connection.
FLOOD = textwrap.dedent("""
    import os, select, sys, time
    from sandlock import _wire, client
    from sandlock.launch import start
    sock = client.connect(sys.argv[1])
    client.request(sock, {"op": "rules", "allow": [], "deny": []})
    child = start(["sleep", "1"], gate=False)
    message = {"op": "supervise", "cmd": ["sleep"], "quiet": True, "summary": False}
    client.request(sock, message, [child.listener, child.pidfd, 2])
    os.close(child.listener)
    sock.settimeout(0)
    blocked = None
    while blocked is None or time.monotonic() - blocked < 0.3:  # until the daemon waits
        try:
            _wire.send(sock, {"op": sys.argv[2]})
            blocked = None
        except BlockingIOError:
            blocked = blocked or time.monotonic()
            time.sleep(0.01)
    select.select([child.pidfd], [], [], 30)  # the command exited
    time.sleep(0.5)
    print("flooded", flush=True)
""")


@pytest.mark.parametrize("op", ["ping", "ps"])
def test_a_client_that_reads_no_reply_cannot_end_the_daemon(
    daemon: Daemon, sinks: Sinks, op: str
) -> None:
    """Its exit notice cannot be sent while a reply waits: that client loses it, and
    the daemon goes on serving the others."""
    res = subprocess.run(
        [PY, "-c", FLOOD, str(daemon.path), op],
        env=sandlock_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.stdout == "flooded\n", describe(res)
    assert daemon.proc.poll() is None, daemon.proc.stderr.read() if daemon.proc.stderr else ""
    _still_serves(daemon, sinks.tcp())
