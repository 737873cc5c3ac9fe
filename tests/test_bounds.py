"""The supervisor's memory stays bounded whatever the command sends: a stream send is
copied a chunk at a time (a short count answers the rest), and the data that waiting
sends hold is capped per sandbox (the others wait, holding nothing)."""

from __future__ import annotations

import subprocess
import sys
import time

from .conftest import SANDLOCK, describe, kill_group, sandlock_env

# 48 threads send one shared 64 MiB buffer with sendmsg on an unread socketpair. The old
# supervisor copied each whole message and held it while the send waited (~3 GB).
HOARD = r"""
import socket, sys, threading
a, b = socket.socketpair()
buf = bytes(64 << 20)
for _ in range(48):
    threading.Thread(target=a.sendmsg, args=([buf],), daemon=True).start()
print("started", flush=True)
threading.Event().wait()
"""

# Many senders on sockets with tiny send buffers, so that every one of them waits holding
# most of a chunk: more than the budget in all. Then everything is read back and checked.
INTEGRITY = r"""
import hashlib, socket, sys, threading
N, SIZE = 200, 1 << 20
pairs = [socket.socketpair() for _ in range(N)]
for a, _ in pairs:
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
def send(i):
    a = pairs[i][0]
    data = bytes([i % 251]) * SIZE
    view = memoryview(data)
    while view:
        n = a.sendmsg([view])
        assert 0 < n <= len(view), n
        view = view[n:]
    a.close()
def recv(i):
    b = pairs[i][1]
    h, total = hashlib.sha256(), 0
    while chunk := b.recv(1 << 16):
        h.update(chunk)
        total += len(chunk)
    ok = total == SIZE and h.digest() == hashlib.sha256(bytes([i % 251]) * SIZE).digest()
    results[i] = ok
results = [None] * N
senders = [threading.Thread(target=send, args=(i,)) for i in range(N)]
for t in senders:
    t.start()
readers = [threading.Thread(target=recv, args=(i,)) for i in range(N)]
for t in readers:
    t.start()
for t in senders + readers:
    t.join()
print("intact", sum(1 for r in results if r), "of", N, flush=True)
"""


def _status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} for {pid}")


def _start(script: str) -> subprocess.Popen[str]:
    """``script`` under sandlock, in a process group of its own (killed as a whole)."""
    return subprocess.Popen(
        [*SANDLOCK, "--", sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=sandlock_env(),
        start_new_session=True,
    )


def test_waiting_stream_sends_keep_the_supervisor_small() -> None:
    """48 threads x a 64 MiB sendmsg on an unread socketpair: the supervisor's peak RSS
    stays under 256 MiB (the old one copied and held every whole message: ~3 GB)."""
    proc = _start(HOARD)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        peak = 0
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            peak = max(peak, _status(proc.pid, "VmHWM"))
            time.sleep(0.2)
        assert peak < 256 << 20, f"supervisor peak RSS {peak >> 20} MiB"
    finally:
        kill_group(proc.pid)
        proc.communicate(timeout=30)


def test_sends_over_the_budget_wait_and_lose_nothing() -> None:
    """200 senders of 1 MiB each on sockets with tiny buffers (more waiting data than the
    per-sandbox budget): every byte arrives once, in order, and the supervisor stays small."""
    proc = _start(INTEGRITY)
    peak = 0
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            peak = max(peak, _status(proc.pid, "VmHWM"))
        except (OSError, AssertionError):
            break
        time.sleep(0.1)
    if proc.poll() is None:
        kill_group(proc.pid)
    out, err = proc.communicate(timeout=30)
    res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert res.returncode == 0, describe(res)
    assert out.strip() == "intact 200 of 200", describe(res)
    assert peak < 256 << 20, f"supervisor peak RSS {peak >> 20} MiB"
