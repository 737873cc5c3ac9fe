"""The relay's accept loop when the supervisor runs out of descriptors: it waits instead
of spinning, and serves again once descriptors are free.

The supervisor runs under a low RLIMIT_NOFILE. The command's threads open connections
through the relay (--verify-names, a hostname rule) and hold them without sending a
byte, until their connects fail with EMFILE: the supervisor's table is full (an accepted
connection costs it one descriptor for up to relay.FIRST_TIMEOUT, the gate keeps a pidfd
per thread, and a connect takes two more for a moment: a pidfd and the copy of the
socket). The handler has closed those before the relay accepts, so connects from several
threads, handled in a batch, queue at the relay's listener more connections than the
table has room for: the listener stays readable while every accept fails with EMFILE
(the test checks that some wait there all along).
"""

from __future__ import annotations

import os
import resource
import selectors
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandlock._gatemode import GATE_ENV

from .conftest import GATE_MODES, SANDLOCK, kill_group, sandlock_env
from .httpfake import EchoServer

SUPERVISOR_FDS = 64  # the supervisor's soft RLIMIT_NOFILE: a few dozen connections fill it
THREADS = 32  # the command's threads that connect at once
WINDOW = 2.5  # seconds measured while it is full (well within relay.FIRST_TIMEOUT, 10 s)
MAX_CPU = 0.5  # CPU seconds it may use meanwhile (spinning: about one per second)
TIMEOUT = 30.0  # for each step of the exchange with the command

COMMAND = r"""
import errno, http.client, resource, socket, sys, threading, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # (the supervisor's stays low)
port, threads = int(sys.argv[1]), int(sys.argv[2])
held, failed, lock = [], set(), threading.Lock()
start = threading.Barrier(threads)

def hold():
    start.wait()
    while True:
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", port))
        except OSError as e:
            s.close()
            with lock:
                failed.add(errno.errorcode.get(e.errno, str(e.errno)))
            return
        with lock:
            held.append(s)

print("ready", flush=True)  # (started, its own limit raised: the supervisor's may fall)
sys.stdin.readline()  # (the test has lowered the supervisor's limit)
workers = [threading.Thread(target=hold) for _ in range(threads)]
for t in workers:
    t.start()
for t in workers:
    t.join()
relay = held[0].getpeername()[1] if held else 0
print("held", len(held), "relay", relay, "failed", *sorted(failed), flush=True)
sys.stdin.readline()
for s in held:
    s.close()
deadline = time.monotonic() + 10
while True:  # (the supervisor frees its descriptors as it sees the closes)
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        break
    except OSError as e:
        if e.errno != errno.EMFILE or time.monotonic() > deadline:
            raise
        time.sleep(0.05)
s.sendall(b"GET /fresh HTTP/1.1\r\nHost: localhost\r\n\r\n")
reply = http.client.HTTPResponse(s)
reply.begin()
print("reply", reply.read().decode(), flush=True)
"""


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (every thread), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # (from field 3, the state)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def queued_at(port: int) -> int:
    """How many connections wait in the accept queue of the listener on 127.0.0.1:port."""
    local = f"0100007F:{port:04X}"  # (/proc/net/tcp: the address in host order, hex)
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[1] == local and cols[3] == "0A":  # (LISTEN: rx_queue is the accept queue)
            return int(cols[4].split(":")[1], 16)
    raise AssertionError(f"no listener on 127.0.0.1:{port}")


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The command's next line of output ('' at its end), within ``timeout``."""
    assert proc.stdout is not None
    line = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise AssertionError(f"no line from the command in {timeout} s: {line!r}")
            byte = os.read(proc.stdout.fileno(), 1)
            if not byte:
                break
            line += byte
    return line.decode()


@pytest.mark.parametrize("mode", GATE_MODES)
def test_accept_waits_while_descriptors_run_out(tmp_path: Path, mode: str) -> None:
    """With the supervisor's table full and connections queued at the relay, the
    supervisor stays nearly idle (no accept loop at full speed); once the command closes
    what it holds, the relay takes the queued ones and a fresh connection (queued behind
    them) is relayed to the server and answered. In the python mode relay.py's accept
    loop does the accepting; in the gate mode the gate connects and the relay's C thread
    accepts (csrc/relay.h's front), which takes them as fast as they come: there the
    table fills with accepted connections and nothing need be queued."""
    stderr_path = tmp_path / "stderr"
    with EchoServer() as server, stderr_path.open("wb") as stderr:
        rules = ["--no-dns-proxy", "--net-allow", f"localhost:{server.port}", "--verify-names"]
        command = [sys.executable, "-c", COMMAND, str(server.port), str(THREADS)]
        proc = subprocess.Popen(
            [*SANDLOCK, *rules, "--", *command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=sandlock_env({**os.environ, GATE_ENV: mode}),
            start_new_session=True,
        )
        assert proc.stdin is not None

        def said() -> str:
            return f"supervisor's stderr:\n{stderr_path.read_text(errors='replace')}"

        try:
            assert read_line(proc, TIMEOUT) == "ready\n", said()
            # (the hard limit too: with --verify-names the CLI raises its soft one to it)
            limit = (SUPERVISOR_FDS, SUPERVISOR_FDS)
            resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, limit)
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            words = read_line(proc, TIMEOUT).split()
            assert words[:1] == ["held"] and "EMFILE" in words[5:], f"{words}\n{said()}"
            relay_port = int(words[3])
            assert relay_port not in (0, server.port), f"not relayed: {words}\n{said()}"

            before = cpu_seconds(proc.pid)
            time.sleep(WINDOW)
            used = cpu_seconds(proc.pid) - before
            queued = queued_at(relay_port)  # (the premise: some waited there all along)
            assert queued > 0 or mode == "gate", f"none queued at the relay: {words}\n{said()}"
            assert used < MAX_CPU, f"{used:.2f} CPU s in {WINDOW} s, {queued} queued\n{said()}"

            proc.stdin.write(b"close\n")
            proc.stdin.flush()
            assert read_line(proc, TIMEOUT) == "reply ok GET /fresh 0\n", said()
            assert proc.wait(TIMEOUT) == 0, said()
        finally:
            kill_group(proc.pid)
            proc.wait()
            proc.stdin.close()
            if proc.stdout is not None:
                proc.stdout.close()
