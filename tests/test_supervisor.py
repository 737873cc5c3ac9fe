"""The supervisor in-process: live policy swaps, lifetimes, descriptors, fail-closed.

These drive ``launch.start`` and a Supervisor made here, run by a Session (as the Python
API and the daemon run theirs), with real children on loopback.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from sandlock import _syscalls as sys_
from sandlock import launch, plan
from sandlock.onbehalf import Event
from sandlock.session import Session
from sandlock.supervisor import Supervisor

from .conftest import SANDLOCK, Sinks

PY = sys.executable


async def supervise(child: launch.Child, sup: Supervisor) -> int:
    """Serve ``child`` with ``sup`` until it exits; its status (the caller closes it)."""
    session = Session(sup.policy)
    session.adopt(child, reap=True, supervisor=sup)
    return await session.run_async()


def _own_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


async def _until(condition: Callable[[], bool]) -> None:
    """Poll an outside condition (a file, our fd table) that no trio event can signal."""
    while not condition():  # noqa: ASYNC110 - the condition lives outside trio
        await trio.sleep(0.01)


# How the gate's thread waits: in RECV itself (kernel >= 6.6, the default there) or in
# poll() first (older kernels; GATE_POLL forces it, so both paths run here).
WAITS = {"recv": 0, "poll": sys_.GATE_POLL}


async def _run(
    argv: list[str], sup_for: Callable[[sys_.Gate], Supervisor], wait: str = "recv"
) -> int:
    child = launch.start(argv, gate=False)
    child.gate = sys_.Gate(child.listener, WAITS[wait])
    try:
        return await supervise(child, sup_for(child.gate))
    finally:
        child.close()


async def test_policy_swap_takes_effect_on_the_next_call(sinks: Sinks, tmp_path: Path) -> None:
    """Replacing Supervisor.policy while the child runs decides its very next connect,
    even to a destination the gate had been answering on its own."""
    sink = sinks.tcp("127.0.0.1")
    ready, go = tmp_path / "ready", tmp_path / "go"
    script = textwrap.dedent(f"""
        import os, socket, time
        def attempt():
            s = socket.socket()
            try:
                s.connect(("127.0.0.1", {sink.port})); return "ok"
            except OSError as e:
                return str(e.errno)
            finally:
                s.close()
        first = attempt()
        again = attempt()  # answered by the gate: remembered after the first
        open({str(ready)!r}, "w").close()
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
        print(first, again, attempt())
    """)
    out = tmp_path / "out"
    argv = ["/bin/sh", "-c", f'exec "$0" -c "$1" > {out}', PY, script]
    events: list[Event] = []
    allow = plan.make([sink.spec], []).policy
    sups: list[Supervisor] = []

    def make(gate: sys_.Gate) -> Supervisor:
        sups.append(Supervisor(gate, allow, events.append))
        return sups[0]

    async def swap() -> None:
        await _until(ready.exists)
        sups[0].policy = plan.make([], []).policy
        go.touch()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(swap)
            code = await _run(argv, make)
    assert code == 0
    assert out.read_text().split() == ["ok", "ok", "111"]
    assert sink.settle().count == 2
    assert sups[0].answered_by_gate == 1
    assert [e.decision.allowed for e in events] == [True, False]
    assert events[1].decision.reason == "default-deny"


async def test_killed_child_mid_connect_leaks_no_descriptor(full_listener: str) -> None:
    """A child killed while its blocking connect is pending leaves no fd behind."""
    host, port = full_listener.rsplit(":", 1)
    script = f"import socket; socket.create_connection(({host!r}, {port}))"
    before = _own_fds()
    policy = plan.make([full_listener], []).policy
    child = launch.start([PY, "-c", script])
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                assert child.gate is not None
                sup = Supervisor(child.gate, policy)
                codes: list[int] = []

                async def run() -> None:
                    codes.append(await supervise(child, sup))

                nursery.start_soon(run)
                # the connect is pending once our duplicate of its socket exists
                await _until(lambda: len(_own_fds()) > len(before) + 2)
                await trio.sleep(0.2)
                os.kill(child.pid, signal.SIGKILL)
    finally:
        child.close()
    assert codes == [128 + signal.SIGKILL]
    assert _own_fds() == before


@pytest.mark.parametrize("wait", WAITS)
async def test_many_calls_leak_no_descriptor(sinks: Sinks, wait: str) -> None:
    """Hundreds of allowed and refused calls leave the supervisor's fd table as it was,
    whichever way the gate waits."""
    sink = sinks.udp("127.0.0.1")
    script = textwrap.dedent(f"""
        import socket
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(200):
            u.sendto(b"x", ("127.0.0.1", {sink.port}))
            try:
                t.sendto(b"x", ("127.0.0.2", {sink.port}))
            except OSError:
                pass
    """)
    before = _own_fds()
    policy = plan.make([sink.spec], []).policy
    sups: list[Supervisor] = []

    def make(gate: sys_.Gate) -> Supervisor:
        sups.append(Supervisor(gate, policy))
        return sups[0]

    with trio.fail_after(60):
        code = await _run([PY, "-c", script], make, wait)
    assert code == 0
    assert sink.settle().count == 200
    assert sups[0].answered_by_gate == 199  # all but the first allowed send
    assert _own_fds() == before


@pytest.mark.parametrize("wait", [*WAITS, "recv, signal ignored since"])
def test_gate_stops_while_the_sandbox_lives(tmp_path: Path, wait: str) -> None:
    """Stopping a gate whose sandbox still runs returns at once, even while its thread
    waits in RECV (a signal of its own interrupts it, even if the application has set
    that signal to SIG_IGN since), and the sandbox then fails closed: its next network
    call gets ENOSYS, never an answer from nobody or a hang."""
    go = tmp_path / "go"
    script = textwrap.dedent(f"""
        import os, socket, time
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
        try:
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", 9))
        except OSError as e:
            raise SystemExit(e.errno)
    """)
    child = launch.start([PY, "-c", script], gate=False)
    try:
        gate = sys_.Gate(child.listener, WAITS.get(wait, 0))
        time.sleep(0.2)  # the thread is waiting by now
        gate_signal = signal.SIGRTMAX - 6
        if wait not in WAITS:
            signal.signal(gate_signal, signal.SIG_IGN)
        closer = threading.Thread(target=gate.close, daemon=True)
        closer.start()
        closer.join(10)  # generous: a hang is what this catches
        signal.signal(gate_signal, signal.SIG_DFL)
        if closer.is_alive():
            os.kill(child.pid, signal.SIGKILL)  # lets the thread go, once reaped
            os.waitpid(child.pid, 0)
            pytest.fail("Gate.close() did not return while the sandbox lived")
        os.close(child.listener)  # the filter's calls now fail with ENOSYS
        go.touch()
        _, status = os.waitpid(child.pid, 0)
    finally:
        os.close(child.pidfd)
    assert os.waitstatus_to_exitcode(status) == errno.ENOSYS


def test_a_closed_gate_is_inert_and_keeps_its_counts(sinks: Sinks) -> None:
    """After close, what may still reach a gate (a policy swap the daemon finished just
    after the sandbox ended) does nothing, a connect is not taken, and the counters stay
    as they were when it stopped, instead of touching freed memory."""
    sink = sinks.udp("127.0.0.1")
    send = (
        "import socket; s = socket.socket(2, 2)\n"
        f"for _ in range(3): s.sendto(b'x', ('127.0.0.1', {sink.port}))"
    )
    child = launch.start([PY, "-c", send])
    assert child.gate is not None
    gate = child.gate
    sup = Supervisor(gate, plan.make([sink.spec], []).policy)
    assert trio.run(supervise, child, sup) == 0
    child.close()
    assert gate.stats()[1] == 2  # the first send was Python's, the next two the gate's
    sup.policy = plan.make([], []).policy  # clear()
    gate.allow(socket.AF_INET, socket.SOCK_DGRAM, 17, bytes([127, 0, 0, 1]), 9)
    gate.set_flags(0)
    spare = os.dup(0)
    try:
        assert gate.park_connect(1, spare) is False
        os.fstat(spare)  # still ours
    finally:
        os.close(spare)
    assert gate.stats()[1] == 2
    assert sink.settle().count == 3


async def test_a_new_socket_at_a_sent_on_descriptor_is_checked_anew(sinks: Sinks) -> None:
    """The gate remembers what a socket is by its cookie, never by its descriptor number:
    a UDP-Lite socket (SOCK_DGRAM too; inherited, as the filter refuses to create one)
    put where a UDP socket was, sending to the same remembered destination, is decided
    by Python (UDP-Lite is no allowed protocol) and refused."""
    sink = sinks.udp("127.0.0.1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 136) as lite:  # IPPROTO_UDPLITE
        script = textwrap.dedent(f"""
            import os, socket
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for _ in range(3):
                u.sendto(b"x", ("127.0.0.1", {sink.port}))
            os.dup2({lite.fileno()}, u.fileno())
            try:
                u.sendto(b"x", ("127.0.0.1", {sink.port}))
            except OSError as e:
                raise SystemExit(e.errno)
        """)
        policy = plan.make([sink.spec], []).policy
        events: list[Event] = []
        child = launch.start([PY, "-c", script], keep_fds=[lite.fileno()])
        try:
            assert child.gate is not None
            with trio.fail_after(60):
                code = await supervise(child, Supervisor(child.gate, policy, events.append))
        finally:
            child.close()
    assert code == errno.ECONNREFUSED
    assert sink.settle().count == 3
    assert [e.decision.allowed for e in events] == [True, False]


def test_unix_sockets_work_relative_paths_and_fd_passing(tmp_path: Path) -> None:
    """AF_UNIX is not egress: connects by relative path and SCM_RIGHTS still work."""
    script = textwrap.dedent("""
        import os, socket
        from multiprocessing import reduction
        os.chdir(os.environ["WORK"])
        server = socket.socket(socket.AF_UNIX)
        server.bind("rel.sock")
        server.listen()
        client = socket.socket(socket.AF_UNIX)
        client.connect("rel.sock")
        peer, _ = server.accept()
        reduction.sendfds(client, [1])
        (fd,) = reduction.recvfds(peer, 1)
        os.write(fd, b"passed\\n")
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind("dgram.sock")
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender.sendto(b"dgram", "dgram.sock")
        print(receiver.recv(10).decode())
    """)
    env = {**os.environ, "WORK": str(tmp_path)}
    res = subprocess.run(
        [*SANDLOCK, "--", PY, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["passed", "dgram"]


def test_killed_supervisor_fails_closed(sinks: Sinks, tmp_path: Path) -> None:
    """With the supervisor SIGKILLed, the orphaned child's connect fails (ENOSYS), and
    nothing reaches the allowed sink either: the network closes, it never opens."""
    sink = sinks.tcp("127.0.0.1")
    ready, go, out = tmp_path / "ready", tmp_path / "go", tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, socket, time
        open({str(ready)!r}, "w").close()
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
        try:
            socket.create_connection(("127.0.0.1", {sink.port}), timeout=5)
            result = "connected"
        except OSError as e:
            result = str(e.errno)
        open({str(out)!r}, "w").write(result)
    """)
    proc = subprocess.Popen([*SANDLOCK, "--net-allow", sink.spec, "--", PY, "-c", script])
    _wait_for(ready)  # the child runs under the supervisor
    proc.kill()
    proc.wait(timeout=30)
    go.touch()
    _wait_for(out)
    assert out.read_text() == "38"  # ENOSYS: the kernel answers for a missing supervisor
    assert sink.settle().count == 0


@pytest.mark.parametrize("flags", ["", "--keep-fds"])
def test_inherited_descriptors_are_closed_unless_kept(flags: str) -> None:
    """An inherited fd above 2 (here a socket) is closed in the command unless kept."""
    import socket

    a, b = socket.socketpair()
    try:
        keep = [flags, str(a.fileno())] if flags else []
        script = f"import os; os.fstat({a.fileno()}); print('open')"
        res = subprocess.run(
            [*SANDLOCK, *keep, "--", PY, "-c", script],
            pass_fds=[a.fileno()],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        a.close()
        b.close()
    if flags:
        assert (res.returncode, res.stdout.strip()) == (0, "open")
    else:
        assert res.returncode == 1 and "Bad file descriptor" in res.stderr
