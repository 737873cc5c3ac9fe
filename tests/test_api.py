"""The Python API: Sandbox.run / run_async, Result, errors, profiles."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import trio

import sandlock
from sandlock import PolicyError, Result, Sandbox, SandlockError, TimeoutExpired

from .conftest import Sinks

PY = sys.executable


def _dead(pid: int, timeout: float = 10) -> bool:
    """True once ``pid`` is gone or a zombie (killed, not yet reaped by its new parent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.02)
    return False


def _connect_script(host: str, port: int) -> str:
    return textwrap.dedent(f"""
        import socket, sys
        s = socket.socket()
        try:
            s.connect(({host!r}, {port}))
        except OSError as e:
            sys.exit(e.errno)
    """)


def test_run_allows_and_denies(sinks: Sinks) -> None:
    """run() enforces the rules and reports each refusal in Result.denied."""
    ok, bad = sinks.tcp("127.0.0.1"), sinks.tcp("127.0.0.2")
    sb = Sandbox(net_allow=[ok.spec])
    assert sb.run([PY, "-c", _connect_script("127.0.0.1", ok.port)]).success
    res = sb.run([PY, "-c", _connect_script("127.0.0.2", bad.port)])
    assert res.exit_code == 111 and not res.success
    assert [(d.dst, d.port, d.action, d.rule, d.errno) for d in res.denied] == [
        ("127.0.0.2", bad.port, "deny", "default-deny", 111)
    ]
    assert (ok.settle().count, bad.settle().count) == (1, 0)


def test_result_fields_capture_input_cwd_env(tmp_path: Path) -> None:
    """capture_output, input, cwd and env behave as in subprocess.run."""
    script = (
        "import os,sys; d=sys.stdin.read(); print(d, os.getcwd(), os.environ['X']); "
        "print('e', file=sys.stderr); sys.exit(3)"
    )
    res = Sandbox().run(
        [PY, "-c", script],
        capture_output=True,
        input=b"fed",
        cwd=tmp_path,
        env={**os.environ, "X": "y"},
    )
    assert isinstance(res, Result)
    assert (res.exit_code, res.signal, res.success) == (3, None, False)
    assert res.stdout == f"fed {tmp_path} y\n".encode()
    assert res.stderr == b"e\n"
    assert res.denied == [] and res.duration > 0


@pytest.fixture
def trio_runs(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Each trio.run a blocking Sandbox.run makes (it should make none unless a call
    must wait): the list of their arguments."""
    real_run, runs = trio.run, []

    def counting_run(*args: object, **kwargs: object) -> object:
        runs.append(args)
        return real_run(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trio, "run", counting_run)
    return runs


def test_big_pipes_move_without_an_event_loop(trio_runs: list[object]) -> None:
    """4 MB in, 4 MB out on each of stdout and stderr, interleaved (every pipe fills
    many times over): all of it arrives, in order, with no trio loop."""
    data = bytes(range(256)) * (4 << 12)
    script = (
        "import sys; d = sys.stdin.buffer.read(); "
        "[(sys.stdout.buffer.write(d[i:i + 65536]), sys.stderr.buffer.write(d[i:i + 65536][::-1])) "
        "for i in range(0, len(d), 65536)]"
    )
    res = Sandbox().run([PY, "-c", script], capture_output=True, input=data, timeout=60)
    assert res.exit_code == 0 and res.stdout == data
    assert res.stderr == b"".join(data[i : i + 65536][::-1] for i in range(0, len(data), 65536))
    assert trio_runs == []


@pytest.mark.parametrize("script", ["pass", "import os; os.close(0)"])
def test_input_nobody_reads_is_no_error(script: str) -> None:
    """Input for a command that exits, or closes stdin, without reading it: as in
    subprocess.run, the run just ends (no BrokenPipeError)."""
    res = Sandbox().run([PY, "-c", script], input=b"x" * (1 << 20), timeout=60)
    assert res.exit_code == 0


def test_pipes_carry_on_under_trio_when_a_call_must_wait(
    tmp_path: Path, full_listener: str, trio_runs: list[object]
) -> None:
    """A command reads part of its input and writes output, then makes a connect that
    hangs until SO_SNDTIMEO (finished by Python under trio: the audit log wants its
    outcome), then reads the rest and writes again: nothing is lost or repeated across
    the move from wait_child's loop into trio's."""
    data = bytes(range(256)) * 4096  # 1 MB: the feeding is cut short by the move
    host, port = full_listener.rsplit(":", 1)
    script = textwrap.dedent(f"""
        import socket, struct, sys
        head = sys.stdin.buffer.read(300000)
        sys.stdout.buffer.write(head); sys.stdout.flush()
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("qq", 0, 300000))
        print("connect", s.connect_ex(({host!r}, {port})), file=sys.stderr)
        sys.stdout.buffer.write(sys.stdin.buffer.read())
    """)
    sandbox = Sandbox([full_listener], audit=tmp_path / "a.jsonl")
    res = sandbox.run([PY, "-c", script], capture_output=True, input=data, timeout=60)
    assert res.exit_code == 0 and res.stdout == data
    assert res.stderr == b"connect 115\n"
    assert len(trio_runs) == 1


def test_not_captured_means_none() -> None:
    """Without capture_output, stdout and stderr are None (the caller's are inherited)."""
    res = Sandbox().run(["/bin/true"])
    assert (res.stdout, res.stderr, res.exit_code) == (None, None, 0)


def test_signal_death_is_reported() -> None:
    """A command killed by signal N: exit_code 128+N, signal N."""
    res = Sandbox().run(["/bin/sh", "-c", "kill -TERM $$"])
    assert (res.exit_code, res.signal) == (128 + 15, 15)


def test_timeout_kills_the_tree_and_keeps_partial_output(tmp_path: Path) -> None:
    """A timeout kills every process of the sandbox and carries the output so far."""
    pidfile = tmp_path / "pid"
    script = f"sleep 60 & echo $! > {pidfile}; echo partial; sleep 60"
    with pytest.raises(TimeoutExpired) as info:
        Sandbox().run(["/bin/sh", "-c", script], timeout=1, capture_output=True)
    assert info.value.stdout == b"partial\n"
    assert isinstance(info.value, SandlockError)
    assert _dead(int(pidfile.read_text()))


def test_timeout_covers_output_held_open_by_a_descendant(tmp_path: Path) -> None:
    """The command exits at once but a background child keeps its stdout open: the run
    still ends at the timeout (with the output so far), and the child is killed."""
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(TimeoutExpired) as info:
        Sandbox().run(
            ["/bin/sh", "-c", f"sleep 60 & echo $! > {pidfile}; echo hi"],
            timeout=1,
            capture_output=True,
        )
    assert time.monotonic() - started < 30
    assert info.value.stdout == b"hi\n"
    assert _dead(int(pidfile.read_text()))


@pytest.mark.parametrize("calls", ["none", "one answered", "one waiting"])
def test_timeout_without_pipes_kills_the_tree(
    tmp_path: Path, sinks: Sinks, full_listener: str, calls: str
) -> None:
    """run() without pipes waits without trio while every call is answered at once: its
    timeout kills the tree there too, and after a call that must wait (here a hanging
    connect whose outcome the audit log needs) has moved the wait into trio."""
    sink = sinks.udp("127.0.0.1")
    pidfile = tmp_path / "pid"
    send = f"import socket; socket.socket(2, 2).sendto(b'x', ('127.0.0.1', {sink.port}))"
    host, port = full_listener.rsplit(":", 1)
    hang = f"import socket; socket.create_connection(('{host}', {port}))"
    first = {
        "none": "",
        "one answered": f'{PY} -c "{send}"; ',
        "one waiting": f'{PY} -c "{hang}" & ',
    }
    script = f"{first[calls]}sleep 60 & echo $! > {pidfile}; sleep 60"
    sandbox = Sandbox([sink.spec, full_listener], audit=tmp_path / "audit.jsonl")
    started = time.monotonic()
    with pytest.raises(TimeoutExpired) as info:
        sandbox.run(["/bin/sh", "-c", script], timeout=1.5)
    assert time.monotonic() - started < 30
    assert info.value.stdout is None
    assert _dead(int(pidfile.read_text()))
    assert sink.settle().count == (1 if calls == "one answered" else 0)


@pytest.mark.parametrize(("audit", "loops"), [(False, 0), (True, 1)], ids=["gate", "audit"])
def test_blocking_run_without_pipes_needs_no_event_loop(
    tmp_path: Path,
    sinks: Sinks,
    full_listener: str,
    trio_runs: list[object],
    audit: bool,
    loops: int,
) -> None:
    """run() without pipes answers an allowed and a refused connect, and a connect that
    hangs until SO_SNDTIMEO, with no trio loop: the gate's thread finishes the hanging one.
    With an audit log, which records each call's outcome, Python finishes it, in trio."""
    ok, bad = sinks.tcp("127.0.0.1"), sinks.tcp("127.0.0.2")
    host, port = full_listener.rsplit(":", 1)
    script = textwrap.dedent(f"""
        import errno, socket, struct, sys
        socket.create_connection(("127.0.0.1", {ok.port})).close()
        try:
            socket.create_connection(("127.0.0.2", {bad.port}))
            sys.exit(1)
        except ConnectionRefusedError:
            pass
        s = socket.socket()  # blocking: the kernel gives up after SO_SNDTIMEO (0.7 s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("qq", 0, 700000))
        sys.exit(0 if s.connect_ex(({host!r}, {port})) == errno.EINPROGRESS else 2)
    """)
    sandbox = Sandbox([ok.spec, full_listener], audit=tmp_path / "a.jsonl" if audit else None)
    res = sandbox.run([PY, "-c", script], timeout=60)
    assert res.exit_code == 0
    assert [(d.dst, d.port) for d in res.denied] == [("127.0.0.2", bad.port)]
    assert len(trio_runs) == loops
    assert (ok.settle().count, bad.settle().count) == (1, 0)


def test_interrupted_run_kills_the_tree(tmp_path: Path) -> None:
    """Ctrl-C in a program blocked in run() (waiting without trio) kills the sandbox's
    tree before KeyboardInterrupt reaches the program: nothing is left running."""
    pidfile = tmp_path / "pid"
    script = textwrap.dedent(f"""
        from sandlock import Sandbox
        try:
            Sandbox().run(["/bin/sh", "-c", "sleep 60 & echo $! > {pidfile}; sleep 60"])
        except KeyboardInterrupt:
            print("interrupted")
    """)
    proc = subprocess.Popen([PY, "-c", script], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert out.split() == ["interrupted"]
    assert _dead(int(pidfile.read_text()))


async def test_run_async_cancellation_kills_the_tree(tmp_path: Path) -> None:
    """Cancelling run_async kills the command and its children, then re-raises."""
    pidfile = tmp_path / "pid"
    script = f"sleep 60 & echo $! > {pidfile}; sleep 60"
    with trio.move_on_after(1.5) as scope:
        await Sandbox().run_async(["/bin/sh", "-c", script])
    assert scope.cancelled_caught
    assert _dead(int(pidfile.read_text()))


def test_policy_errors_raise_before_anything_runs(tmp_path: Path) -> None:
    """A bad rule raises PolicyError (a ValueError and a SandlockError) at construction."""
    with pytest.raises(PolicyError) as info:
        Sandbox(net_allow=["udp://127.0.0.1:0"])
    assert "--net-allow" in str(info.value) and "`udp://127.0.0.1:0`" in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, SandlockError)


def test_launch_errors() -> None:
    """A missing command raises LaunchError with the shell's exit code."""
    with pytest.raises(sandlock.LaunchError) as info:
        Sandbox().run(["no-such-command-sandlock"])
    assert info.value.exit_code == 127


def test_every_way_a_run_ends_leaves_no_descriptor(tmp_path: Path, full_listener: str) -> None:
    """A run that exits, captures, moves into trio for a call that must wait, times out
    (before and after that move), fails to start, or is cancelled (run_async) leaves the
    caller's descriptor table as it was: the session closes all it opened."""
    host, port = full_listener.rsplit(":", 1)
    hang = f"import socket, time; socket.create_connection(('{host}', {port})); time.sleep(60)"
    sandbox = Sandbox([full_listener], audit=tmp_path / "a.jsonl")

    async def cancelled() -> None:
        with trio.move_on_after(1):
            await sandbox.run_async(["/bin/sleep", "60"], capture_output=True, input=b"x")

    def runs() -> None:
        sandbox.run(["/bin/true"])
        sandbox.run([PY, "-c", "print(input())"], capture_output=True, input=b"hi\n")
        sandbox.run([PY, "-c", "import socket; socket.create_connection(('127.0.0.2', 9))"])
        for cmd in (["/bin/sleep", "60"], [PY, "-c", hang]):
            with pytest.raises(TimeoutExpired):
                sandbox.run(cmd, capture_output=True, timeout=1.5)
        with pytest.raises(sandlock.LaunchError):
            sandbox.run(["no-such-command-sandlock"], capture_output=True)
        trio.run(cancelled)

    runs()  # (the first runs load modules and caches that open descriptors once)
    before = sorted(os.listdir("/proc/self/fd"))
    runs()
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_run_from_threads_concurrently(sinks: Sinks) -> None:
    """run() needs no trio: eight threads run sandboxes at once."""
    ok = sinks.tcp("127.0.0.1")
    sb = Sandbox(net_allow=[ok.spec])
    results: list[int] = []

    def work() -> None:
        results.append(sb.run([PY, "-c", _connect_script("127.0.0.1", ok.port)]).exit_code)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == [0] * 8
    assert ok.settle().count == 8


def test_profile_round_trip(tmp_path: Path, sinks: Sinks) -> None:
    """Sandbox.from_profile reads net_allow/net_deny from TOML."""
    ok = sinks.tcp("127.0.0.1")
    prof = tmp_path / "p.toml"
    prof.write_text(f'net_allow = ["{ok.spec}"]\nnet_deny = ["127.0.0.2"]\n')
    sb = Sandbox.from_profile(prof)
    assert sb.run([PY, "-c", _connect_script("127.0.0.1", ok.port)]).success


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("net_allow = [1]", "`net_allow` must be a list of strings"),
        ("net_alow = []", "unknown key `net_alow`"),
        ('verify_names = "yes"', "`verify_names` must be true or false"),
        ("net_allow = [", "is not valid TOML"),
    ],
)
def test_bad_profiles(tmp_path: Path, text: str, message: str) -> None:
    """A malformed profile is a PolicyError that says what is wrong."""
    prof = tmp_path / "p.toml"
    prof.write_text(text)
    with pytest.raises(PolicyError, match=message):
        Sandbox.from_profile(prof)


async def test_blocking_run_inside_trio_says_what_to_use() -> None:
    """Sandbox.run() from a trio task raises a SandlockError pointing to run_async."""
    with pytest.raises(SandlockError, match="run_async"):
        Sandbox().run(["/bin/true"])


@pytest.mark.parametrize("handler_first", [True, False])
def test_the_gates_signal_leaves_a_handler_of_the_application_alone(
    sinks: Sinks, handler_first: bool
) -> None:
    """The gate interrupts its thread's RECV with a signal of its own (SIGRTMAX-6). An
    application that handles that signal keeps its handler, installed before or after
    sandboxes run (the gate then waits in poll instead), and sandboxes keep working."""
    sink = sinks.udp("127.0.0.1")
    script = textwrap.dedent(f"""
        import os, signal, sys
        from sandlock import Sandbox
        sig = signal.SIGRTMAX - 6
        got = []
        def install():
            signal.signal(sig, lambda *_: got.append(1))
        if {handler_first}:
            install()
        box = Sandbox(["{sink.spec}"])
        send = "import socket; socket.socket(2, 2).sendto(b'x', ('127.0.0.1', {sink.port}))"
        for _ in range(3):
            assert box.run([sys.executable, "-c", send]).exit_code == 0
        install()
        assert box.run([sys.executable, "-c", send]).exit_code == 0
        os.kill(os.getpid(), sig)
        print(len(got))
    """)
    res = subprocess.run([PY, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["1"]
    assert sink.settle().count == 4
