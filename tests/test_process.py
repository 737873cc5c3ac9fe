"""Long-lived commands: Sandbox.start (Process) and Sandbox.open_process (AsyncProcess)."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import trio

from sandlock import PIPE, AsyncProcess, PolicyError, Process, Sandbox, TimeoutExpired

from .conftest import Sinks
from .test_api import _dead

PY = sys.executable

# A command that stays alive: each line "HOST PORT" it reads is a connect, answered with
# a line of its errno (0: connected).
CONNECTOR = textwrap.dedent("""
    import socket, sys
    for line in sys.stdin:
        host, port = line.split()
        s = socket.socket()
        try:
            s.connect((host, int(port)))
            print(0, flush=True)
        except OSError as e:
            print(e.errno, flush=True)
        finally:
            s.close()
""")


def _ask(proc: Process, host: str, port: int) -> int:
    """One connect by the CONNECTOR, its errno."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(f"{host} {port}\n".encode())
    return int(proc.stdout.readline())


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_pipes_and_exit_status() -> None:
    """stdin, stdout and stderr are pipes; wait() gives the exit status."""
    script = (
        "import sys; d = sys.stdin.read(); print(d.upper()); "
        "print('e', file=sys.stderr); sys.exit(4)"
    )
    with Sandbox().start([PY, "-c", script]) as proc:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        assert proc.pid > 0 and proc.poll() is None
        proc.stdin.write(b"fed")
        proc.stdin.close()
        assert proc.stdout.read() == b"FED\n"
        assert proc.stderr.read() == b"e\n"
        assert proc.wait(timeout=30) == 4
        assert proc.poll() == 4 and proc.returncode == 4


def test_inherited_streams_are_none() -> None:
    """A stream not started with PIPE is None (None: inherited)."""
    with Sandbox().start(["true"], stdin=None, stdout=PIPE, stderr=None) as proc:
        assert proc.stdin is None and proc.stderr is None and proc.stdout is not None
        assert proc.wait(30) == 0


def test_wait_timeout_leaves_it_running_then_signal() -> None:
    """wait(timeout) raises TimeoutExpired and the command runs on; send_signal reaches it."""
    with Sandbox().start(["sleep", "60"]) as proc:
        with pytest.raises(TimeoutExpired):
            proc.wait(timeout=0.2)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 128 + signal.SIGTERM
        proc.send_signal(signal.SIGTERM)  # exited: nothing happens


def test_kill_kills_the_tree() -> None:
    """kill() SIGKILLs the command and what it started; close() does it to a running one."""
    script = "sleep 60 & echo $!; wait"
    with Sandbox().start(["sh", "-c", script]) as proc:
        assert proc.stdout is not None
        grandchild = int(proc.stdout.readline())
        proc.kill()
        assert proc.wait(30) == 128 + signal.SIGKILL
        assert _dead(grandchild)
    with Sandbox().start(["sh", "-c", script]) as proc:
        assert proc.stdout is not None
        grandchild, pid = int(proc.stdout.readline()), proc.pid
    assert _dead(pid) and _dead(grandchild)
    assert proc.returncode == 128 + signal.SIGKILL


def test_set_policy_decides_the_next_call(sinks: Sinks) -> None:
    """A swapped policy decides the next call: 127.0.0.1 allowed, then denied; the sink
    counts one connection."""
    sink = sinks.tcp("127.0.0.1")
    with Sandbox([sink.spec]).start([PY, "-c", CONNECTOR]) as proc:
        assert _ask(proc, "127.0.0.1", sink.port) == 0
        proc.set_policy([])
        assert _ask(proc, "127.0.0.1", sink.port) == 111
        proc.set_policy([sink.spec])
        assert _ask(proc, "127.0.0.1", sink.port) == 0
    assert sink.settle().count == 2


def test_bad_rule_keeps_the_old_policy(sinks: Sinks) -> None:
    """set_policy with a bad rule raises PolicyError, and the old rules go on deciding."""
    sink = sinks.tcp("127.0.0.1")
    with Sandbox([sink.spec]).start([PY, "-c", CONNECTOR]) as proc:
        with pytest.raises(PolicyError, match="--net-allow"):
            proc.set_policy(["127.0.0.1:99999"])
        with pytest.raises(PolicyError, match="--net-deny"):
            proc.set_policy([], ["127.0.0.0/33"])
        assert _ask(proc, "127.0.0.1", sink.port) == 0
    assert sink.settle().count == 1


def test_decisions_as_they_happen(sinks: Sinks) -> None:
    """decisions() yields each record as it is made: none yet, then the allow and the deny;
    after the exit, the iterator ends."""
    ok, bad = sinks.tcp("127.0.0.1"), sinks.tcp("127.0.0.2")
    with Sandbox([ok.spec]).start([PY, "-c", CONNECTOR]) as proc:
        assert list(proc.decisions()) == []
        assert _ask(proc, "127.0.0.1", ok.port) == 0
        first = next(proc.decisions(timeout=10))
        assert (first.dst, first.port, first.action) == ("127.0.0.1", ok.port, "allow")
        assert _ask(proc, "127.0.0.2", bad.port) == 111
        second = next(proc.decisions(timeout=10))
        assert (second.dst, second.action, second.rule) == ("127.0.0.2", "deny", "default-deny")
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(30) == 0
        assert list(proc.decisions(timeout=None)) == []  # over: ends, does not block
    assert bad.settle().count == 0


def test_decisions_wait_in_another_thread(sinks: Sinks) -> None:
    """A reader blocked in decisions(None) gets a record made meanwhile, and ends at exit."""
    bad = sinks.tcp("127.0.0.2")
    with Sandbox().start([PY, "-c", CONNECTOR]) as proc:
        seen: list[str] = []
        reader = threading.Thread(target=lambda: seen.extend(d.dst for d in proc.decisions(None)))
        reader.start()
        assert _ask(proc, "127.0.0.2", bad.port) == 111
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)
        reader.join(30)
        assert not reader.is_alive() and seen == ["127.0.0.2"]


def test_no_leaks() -> None:
    """Starting and closing processes leaves no descriptor and no thread behind."""
    Sandbox().start(["true"]).close()  # (first: lazy imports, caches)
    fds, threads = _fds(), set(threading.enumerate())
    for _ in range(5):
        with Sandbox().start(["sleep", "60"]) as proc:
            assert proc.stdout is not None
        proc.close()  # (twice: a no-op)
        with Sandbox().start(["true"]) as proc:
            proc.wait(30)
    assert set(threading.enumerate()) <= threads  # (one an earlier test left may end)
    assert _fds() == fds


def test_start_errors_leak_nothing() -> None:
    """A missing command raises at start, leaving no descriptor behind."""
    from sandlock import LaunchError, UsageError

    fds = _fds()
    with pytest.raises(LaunchError):
        Sandbox().start(["/nonexistent/command"])
    with pytest.raises(UsageError):
        Sandbox().start([])
    assert _fds() == fds


async def _ask_async(proc: AsyncProcess, host: str, port: int) -> int:
    assert proc.stdin is not None and proc.stdout is not None
    await proc.stdin.send_all(f"{host} {port}\n".encode())
    line = b""
    while not line.endswith(b"\n"):
        line += await proc.stdout.receive_some()
    return int(line)


async def test_open_process_streams_policy_and_decisions(sinks: Sinks) -> None:
    """The trio form: streams, set_policy between two calls, async for over decisions."""
    sink = sinks.tcp("127.0.0.1")
    with trio.fail_after(60):
        async with Sandbox([sink.spec]).open_process([PY, "-c", CONNECTOR]) as proc:
            assert await _ask_async(proc, "127.0.0.1", sink.port) == 0
            proc.set_policy([])
            assert await _ask_async(proc, "127.0.0.1", sink.port) == 111
            assert proc.stdin is not None
            await proc.stdin.aclose()
            assert await proc.wait() == 0 and proc.poll() == 0
            seen = [(d.action, d.rule) async for d in proc.decisions()]
    assert seen == [("allow", sink.spec), ("deny", "default-deny")]
    assert sink.settle().count == 1


async def test_open_process_decisions_while_running() -> None:
    """async for over decisions() wakes for a record made while it waits."""
    with trio.fail_after(60):
        async with Sandbox().open_process([PY, "-c", CONNECTOR]) as proc:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_ask_async, proc, "127.0.0.2", 9)
                async for d in proc.decisions():
                    assert (d.dst, d.port, d.action) == ("127.0.0.2", 9, "deny")
                    break


async def test_open_process_cancelled_kills_the_tree() -> None:
    """Cancelling the body kills the command's tree; the cancellation goes on as usual."""
    with trio.fail_after(60):
        with trio.move_on_after(0.5) as scope:
            async with Sandbox().open_process(["sh", "-c", "sleep 60 & echo $!; wait"]) as p:
                assert p.stdout is not None
                grandchild = int(await p.stdout.receive_some())
                await p.wait()
        assert scope.cancelled_caught
    assert _dead(p.pid) and _dead(grandchild)
    assert p.returncode is None  # killed while we left: no status to report


async def test_open_process_error_goes_on_unwrapped() -> None:
    """An error in the body comes out as raised (no exception group), the tree killed."""
    with trio.fail_after(60), pytest.raises(KeyError):
        async with Sandbox().open_process(["sleep", "60"]) as p:
            p.kill()  # (kill is immediate: the next wait sees the status)
            assert await p.wait() == 128 + signal.SIGKILL
            raise KeyError("x")
    with pytest.raises(PolicyError):
        async with Sandbox().open_process(["sleep", "60"]) as p:
            p.set_policy(["127.0.0.1:0-"])
    assert _dead(p.pid)


def test_with_audit_every_call_is_a_decision(sinks: Sinks, tmp_path: Path) -> None:
    """With an audit log every call is a record (the gate caches none); the seal comes at close."""
    sink = sinks.tcp("127.0.0.1")
    log = tmp_path / "audit.jsonl"
    with Sandbox([sink.spec], audit=log).start([PY, "-c", CONNECTOR]) as proc:
        assert _ask(proc, "127.0.0.1", sink.port) == 0
        assert _ask(proc, "127.0.0.1", sink.port) == 0
        assert [d.action for d in proc.decisions()] == ["allow", "allow"]
        assert proc.audit is None
    assert proc.audit is not None and proc.audit.records == 2
    assert sum('"action": "allow"' in line for line in log.read_text().splitlines()) == 2


def test_bad_audit_path_leaks_nothing(tmp_path: Path) -> None:
    """An audit log that cannot be opened raises at start and leaves no descriptor."""
    Sandbox().start(["true"]).close()  # (warm)
    fds = _fds()
    with pytest.raises(OSError):
        Sandbox(audit=tmp_path / "missing" / "a.jsonl").start(["true"])
    assert _fds() == fds
