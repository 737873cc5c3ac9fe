"""Many threads, signals, slow peers and process trees under one sandbox."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .conftest import (
    SANDLOCK,
    describe,
    kill_group,
    parse_probe,
    probe_kv,
    run_command,
    sandlock_env,
)

# Every test twice: the gate answering what Python remembered, and Python answering every
# call (SANDLOCK_GATE=python): the same must reach the sinks and the command (conftest.py).
pytestmark = pytest.mark.usefixtures("gate_mode")


def _wait_for(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ------------------------------------------------------------------- threads


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_16_threads_x_100(probe, sinks, run_sandboxed, proto):
    """16 threads x 100 connects (or sendtos) all succeed and all 1600 arrive."""
    sink = sinks.tcp("127.0.0.1") if proto == "tcp" else sinks.udp("127.0.0.1")
    res = run_sandboxed(
        ["--net-allow", sink.spec], [probe("threads"), proto, sink.target, "16", "100"]
    )
    assert res.returncode == 0 and probe_kv(res.stdout)["ok"] == 1600, describe(res)
    assert sink.settle().count == 1600


def test_threads_denied(probe, sinks, run_sandboxed):
    """16 threads x 50 connects to a denied address all fail with ECONNREFUSED."""
    allow, deny = sinks.tcp("127.0.0.1"), sinks.tcp("127.0.0.2")
    res = run_sandboxed(
        ["--net-allow", allow.spec], [probe("threads"), "tcp", deny.target, "16", "50"]
    )
    kv = probe_kv(res.stdout)
    assert (kv["ok"], kv["fail"], kv["lasterrno"]) == (0, 800, errno.ECONNREFUSED), describe(res)
    assert deny.settle().count == 0


# ------------------------------------------------------------------- signals


def test_signal_storm_exact_count(probe, sinks, run_sandboxed):
    """Thousands of SIGUSR1 (SA_RESTART) during blocking sendtos: every call succeeds
    once and the sink counts exactly as many datagrams, each sequence number once."""
    sink = sinks.udp("127.0.0.1")
    res = run_sandboxed(
        ["--net-allow", sink.spec], [probe("storm"), sink.target, "3000", "20", "2000"]
    )
    kv = probe_kv(res.stdout)
    assert res.returncode == 0, describe(res)
    sent = kv["sent"]
    assert sent >= 3000 and kv["failed"] == 0, describe(res)
    assert kv["signals"] >= 2000, f"too few signals to test anything: {res.stdout}"
    sink.settle()
    seqs = sorted(int.from_bytes(p[:4], "little") for p in sink.payloads)
    assert sink.count == sent, f"{sink.count} datagrams for {sent} sends: duplicated or lost"
    assert seqs == list(range(sent))


def test_signal_storm_denied(probe, sinks, run_sandboxed):
    """Under the same storm, refused sends fail with ECONNREFUSED, never EINTR, and send
    nothing."""
    allow, deny = sinks.udp("127.0.0.1"), sinks.udp("127.0.0.2")
    res = run_sandboxed(["--net-allow", allow.spec], [probe("storm"), deny.target, "1000"])
    kv = probe_kv(res.stdout)
    assert (kv["sent"], kv["failed"], kv["lasterrno"]) == (0, 1000, errno.ECONNREFUSED), describe(
        res
    )
    assert deny.settle().count == 0


# ------------------------------------------------------------------- slow peers

# Who finishes a blocking connect in progress: the gate's thread for connects in progress
# (csrc/connecting.h) when nobody needs each call's outcome, else Python under trio
# (--summary hears every call; and under gate_mode "python" the gate parks nothing).
FINISHERS = pytest.mark.parametrize("finisher", [[], ["--summary"]], ids=["no-summary", "summary"])


@FINISHERS
def test_slow_connect_beside_fast(probe, sinks, run_sandboxed, full_listener, finisher):
    """While one thread's connect hangs on a full backlog, another thread's 50 connects
    all complete (the slow one is still pending when they are done)."""
    fast = sinks.tcp("127.0.0.1")
    res = run_sandboxed(
        [*finisher, "--net-allow", full_listener, "--net-allow", fast.spec],
        [probe("slowconnect"), full_listener, fast.target, "50", "2000"],
    )
    kv = probe_kv(res.stdout.splitlines()[0] if res.stdout else "")
    assert (kv.get("fast_ok"), kv.get("slow_pending")) == (50, 1), describe(res)
    assert fast.settle().count == 50


@FINISHERS
def test_blocking_connect_honours_sndtimeo(probe, sinks, run_sandboxed, full_listener, finisher):
    """A blocking connect that cannot complete returns EINPROGRESS when the socket's
    SO_SNDTIMEO (here 3 s) expires, as it does without the sandbox."""
    fast = sinks.tcp("127.0.0.1")
    res = run_sandboxed(
        [*finisher, "--net-allow", full_listener, "--net-allow", fast.spec],
        [probe("slowconnect"), full_listener, fast.target, "1", "3000"],
    )
    kv = probe_kv(res.stdout)
    assert kv.get("slow_errno") == errno.EINPROGRESS, describe(res)
    assert 2500 <= kv["slow_ms"] <= 8000, describe(res)
    assert res.returncode == 0, describe(res)


@FINISHERS
def test_child_killed_mid_connect(probe, sinks, run_sandboxed, full_listener, finisher):
    """A process SIGKILLed while its connect hangs in the supervisor leaves no hang: the
    next connect works and sandlock exits promptly with the command's status."""
    fast = sinks.tcp("127.0.0.1")
    script = (
        '"$0" connect tcp "$1" & p=$!; sleep 0.5; kill -9 $p; wait $p; '
        'echo "killed=$?"; exec "$0" connect tcp "$2"'
    )
    t0 = time.monotonic()
    res = run_sandboxed(
        [*finisher, "--net-allow", full_listener, "--net-allow", fast.spec],
        ["sh", "-c", script, probe("netprobe"), full_listener, fast.target],
        timeout=60,
    )
    elapsed = time.monotonic() - t0
    assert "killed=137" in res.stdout, describe(res)
    assert [(x.label, x.ok) for x in parse_probe(res.stdout)] == [("0 connect", True)], describe(
        res
    )
    assert res.returncode == 0, describe(res)
    assert elapsed < 20, f"sandlock took {elapsed:.1f}s to exit after its command"
    assert fast.settle().count == 1


def _syn_sent_to(port: int) -> int:
    """Sockets of this machine whose connect to 127.0.0.1:port is still in its handshake."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sum(r[2] == f"0100007F:{port:04X}" and r[3] == "02" for r in rows)


@FINISHERS
def test_connect_of_a_killed_process_is_dropped_while_the_sandbox_lives(
    probe, full_listener, finisher
):
    """Our duplicate of a connecting socket whose caller was SIGKILLed is closed within
    about a second (the "still waiting?" check), not kept until the sandbox ends: its
    handshake, which nobody waits for any more, stops."""
    port = int(full_listener.rsplit(":", 1)[1])
    script = '"$0" connect tcp "$1" & p=$!; sleep 0.5; kill -9 $p; wait $p; sleep 30'
    argv = [*SANDLOCK, *finisher, "--net-allow", full_listener, "--"]
    base = _syn_sent_to(port)  # (the fixture's own check, for one)
    proc = subprocess.Popen(
        [*argv, "sh", "-c", script, probe("netprobe"), full_listener],
        env=sandlock_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert _wait_for(lambda: _syn_sent_to(port) == base + 1, 10), "no connect started"
        assert _wait_for(lambda: _syn_sent_to(port) == base, 10), "the handshake went on"
        assert proc.poll() is None, "the sandbox ended first: nothing was tested"
    finally:
        kill_group(proc.pid)
        proc.wait(10)


# ------------------------------------------------------------------- process trees


def test_exec_chain(probe, sinks, run_sandboxed):
    """sh -> exec sh -> exec probe: the exec'd process is still policed."""
    allow, deny = sinks.tcp("127.0.0.1"), sinks.tcp("127.0.0.2")
    env = dict(os.environ, P=probe("netprobe"), A=allow.target, D=deny.target)
    res = run_sandboxed(
        ["--net-allow", allow.spec],
        ["sh", "-c", 'exec sh -c "exec \\"$P\\" connect tcp \\"$D\\" \\"$A\\""'],
        env=env,
    )
    got = [(x.label, x.ok, x.value) for x in parse_probe(res.stdout)]
    assert got == [("0 connect", False, errno.ECONNREFUSED), ("1 connect", True, 0)], describe(res)
    assert deny.settle().count == 0 and allow.settle().count == 1


FORK_TREE = textwrap.dedent(
    """
    import os, socket, sys, threading

    def hp(t):
        host, port = t.rsplit(":", 1)
        return host, int(port)

    A, D, P = hp(sys.argv[1]), hp(sys.argv[2]), sys.argv[3]

    def attempt(t):
        s = socket.socket()
        try:
            s.connect(t)
            return "ok"
        except OSError as e:
            return f"errno={e.errno}"
        finally:
            s.close()

    pid = os.fork()
    if pid == 0:
        box = {}
        th = threading.Thread(target=lambda: box.setdefault("t", attempt(D)))
        th.start(); th.join()
        g = os.fork()
        if g == 0:
            print("grandchild", attempt(D), attempt(A), flush=True)
            os._exit(0)
        os.waitpid(g, 0)
        print("child", attempt(D), "thread", box["t"], flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
    # posix_spawn uses clone(CLONE_VM|CLONE_VFORK)
    sp = os.posix_spawn(P, [P, "connect", "tcp", sys.argv[2]], os.environ)
    os.waitpid(sp, 0)
    print("parent", attempt(D), attempt(A), flush=True)
    """
)


def test_fork_thread_vfork_tree(probe, sinks, run_sandboxed):
    """fork, a thread in the forked child, a grandchild, posix_spawn (vfork): every
    denied connect is refused, every allowed one works."""
    allow, deny = sinks.tcp("127.0.0.1"), sinks.tcp("127.0.0.2")
    res = run_sandboxed(
        ["--net-allow", allow.spec],
        [sys.executable, "-c", FORK_TREE, allow.target, deny.target, probe("netprobe")],
    )
    refused = f"errno={errno.ECONNREFUSED}"
    assert res.returncode == 0, describe(res)
    assert f"grandchild {refused} ok" in res.stdout, describe(res)
    assert f"child {refused} thread {refused}" in res.stdout, describe(res)
    assert f"0 connect errno={errno.ECONNREFUSED}" in res.stdout, describe(res)
    assert f"parent {refused} ok" in res.stdout, describe(res)
    assert deny.settle().count == 0
    assert allow.settle().count == 2


DAEMON_WHILE_ALIVE = """\
( setsid sh -c '"$0" connect tcp "$1" "$2" > "$3.tmp" 2>&1 < /dev/null; mv "$3.tmp" "$3"' \
    "$P" "$D" "$A" "$OUT" < /dev/null > /dev/null 2>&1 & )
i=0
while [ ! -e "$OUT" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
"""


def test_daemonised_grandchild(probe, sinks, run_sandboxed, tmp_path):
    """A double-forked, setsid grandchild (reparented away from the command) is still
    policed while the command runs."""
    allow, deny = sinks.tcp("127.0.0.1"), sinks.tcp("127.0.0.2")
    out = tmp_path / "out"
    env = dict(os.environ, P=probe("netprobe"), A=allow.target, D=deny.target, OUT=str(out))
    res = run_sandboxed(["--net-allow", allow.spec], ["sh", "-c", DAEMON_WHILE_ALIVE], env=env)
    assert res.returncode == 0, describe(res)
    assert out.exists(), "the daemonised grandchild never finished"
    got = [(x.label, x.ok, x.value) for x in parse_probe(out.read_text())]
    assert got == [("0 connect", False, errno.ECONNREFUSED), ("1 connect", True, 0)], (
        out.read_text()
    )
    assert deny.settle().count == 0 and allow.settle().count == 1


DAEMON_OUTLIVES = """\
( setsid sh -c 'echo $$ > "$2.pid"; while [ ! -e "$2.go" ]; do sleep 0.05; done;
    "$0" connect tcp "$1" > "$2.tmp" 2>&1; mv "$2.tmp" "$2"' \
    "$P" "$A" "$OUT" < /dev/null > /dev/null 2>&1 & )
i=0
while [ ! -s "$OUT.pid" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
"""


def _start(args, cmd, env):
    return subprocess.Popen(
        [*SANDLOCK, *args, "--", *cmd],
        env=sandlock_env(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _check_after_supervisor_gone(out: Path, pid: int, allow) -> None:
    """The process was told to connect to an allowed sink after the supervisor was gone:
    it must have failed or died, and nothing may have arrived."""
    try:
        Path(f"{out}.go").touch()
        _wait_for(lambda: out.exists() or not _alive(pid), 15)
        if out.exists():
            lines = parse_probe(out.read_text())
            assert len(lines) == 1 and not lines[0].ok, (
                f"a call passed with no supervisor: {out.read_text()}"
            )
        else:
            assert not _alive(pid), "the orphan neither finished nor died"
        assert allow.settle().count == 0
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_descendant_outliving_sandlock(probe, sinks, tmp_path):
    """A daemonised descendant that connects after sandlock has exited gets an error (or
    is gone): with no supervisor its calls never pass unchecked, even to an allowed
    address.  (If sandlock instead waits for it, its connect must be policed as usual.)"""
    allow = sinks.tcp("127.0.0.1")
    out = tmp_path / "out"
    env = dict(os.environ, P=probe("netprobe"), A=allow.target, OUT=str(out))
    proc = _start(["--net-allow", allow.spec], ["sh", "-c", DAEMON_OUTLIVES], env)
    with proc:
        try:
            assert _wait_for(
                lambda: Path(f"{out}.pid").exists() and Path(f"{out}.pid").read_text().strip(), 20
            ), "no pid file"
            pid = int(Path(f"{out}.pid").read_text())
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                # sandlock waits for its descendants: then it is still policing them
                Path(f"{out}.go").touch()
                proc.wait(30)
                assert _wait_for(out.exists, 10)
                assert [(x.label, x.ok) for x in parse_probe(out.read_text())] == [
                    ("0 connect", True)
                ]
                assert allow.settle().count == 1
                return
            assert proc.returncode == 0, proc.stderr.read()
            _check_after_supervisor_gone(out, pid, allow)
        finally:
            kill_group(proc.pid)
            proc.communicate()


SUPERVISED_WAITER = """\
echo $$ > "$OUT.pid"
while [ ! -e "$OUT.go" ]; do sleep 0.05; done
"$P" connect tcp "$A" > "$OUT.tmp" 2>&1; mv "$OUT.tmp" "$OUT"
"""


def test_supervisor_killed(probe, sinks, tmp_path):
    """SIGKILL to sandlock (the supervisor): the command's later connect to an allowed
    address fails (or the command is gone); nothing arrives."""
    allow = sinks.tcp("127.0.0.1")
    out = tmp_path / "out"
    env = dict(os.environ, P=probe("netprobe"), A=allow.target, OUT=str(out))
    proc = _start(["--net-allow", allow.spec], ["sh", "-c", SUPERVISED_WAITER], env)
    with proc:
        try:
            assert _wait_for(
                lambda: Path(f"{out}.pid").exists() and Path(f"{out}.pid").read_text().strip(), 20
            ), "no pid file"
            pid = int(Path(f"{out}.pid").read_text())
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            _check_after_supervisor_gone(out, pid, allow)
        finally:
            kill_group(proc.pid)
            proc.communicate()


def test_many_short_sandboxes_in_parallel(probe, sinks):
    """Eight sandboxes at once, each with its own policy, do not see each other's rules."""
    allow = [sinks.tcp("127.0.0.1") for _ in range(8)]
    procs = []
    try:
        for i, sink in enumerate(allow):
            other = allow[(i + 1) % 8]
            procs.append(
                _start(
                    ["--net-allow", sink.spec],
                    [probe("netprobe"), "connect", "tcp", sink.target, other.target],
                    None,
                )
            )
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            got = [(x.label, x.ok) for x in parse_probe(out)]
            assert got == [("0 connect", True), ("1 connect", False)], (out, err)
        assert [s.settle().count for s in allow] == [1] * 8
    finally:
        for proc in procs:
            kill_group(proc.pid)
            proc.communicate()
            proc.__exit__(None, None, None)


def test_run_command_helper_reports_hangs():
    """The runner's timeout kills the whole process group and fails the test loudly."""
    with pytest.raises(pytest.fail.Exception, match="hang"):
        run_command(["sh", "-c", "sleep 30 & sleep 30"], timeout=0.5)
