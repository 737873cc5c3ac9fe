"""What asking costs (issue 13 part 1, sandlock.ask): in-process runs, loopback sinks.

    .venv/bin/python bench/ask.py [ROUNDS]

Every figure is timed inside the command (perf_counter around its own connects), so the
run's start-up is not in it. Rounds alternate the variants compared (A, B, A, B, ...)
so that load from elsewhere hits them alike; medians (and p95 where per call) printed.

* ``first``: the first connect of a run, to a destination a rule allows, against one no
  rule allows whose ask the callback answers Allow.ONCE at once. The ask moves the run
  from the no-trio path to trio (session.py), runs the callback in a worker thread,
  then handles the call again.
* ``asked each``: 200 connects in one run, each asked (Allow.ONCE: the next one asks
  again), against 200 connects a rule allows decided in Python (SANDLOCK_GATE=python).
* ``others``: a thread's 200 connects to an allowed destination while another thread's
  connect waits for an answer (the callback answers once the 200 are done), against the
  same 200 with no ask pending but a second thread blocked likewise: served without
  trio (as a blocking run is until a call must wait) and under trio from the start (as
  an ask makes it); with the gate (it answers remembered destinations in C) and with
  SANDLOCK_GATE=python (Python answers each, in the loop that also waits for the answer).
"""

from __future__ import annotations

import functools
import os
import socket
import statistics
import sys
import threading

import trio

from sandlock import Allow, AskRequest, Sandbox

PY = sys.executable

FIRST = """
import socket, sys, time
s = socket.socket()
t = time.perf_counter()
s.connect(("127.0.0.1", int(sys.argv[1])))
print((time.perf_counter() - t) * 1e6)
"""

MANY = """
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
for _ in range(n):
    s = socket.socket()
    t = time.perf_counter()
    s.connect(("127.0.0.1", port))
    print((time.perf_counter() - t) * 1e6)
    s.close()
"""

OTHERS = """
import socket, sys, threading, time
allowed, unlisted, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def connect(port):
    s = socket.socket()
    s.connect(("127.0.0.1", port))
    s.close()
# A second thread either way, blocked: waiting for an answer, or on an event (a process
# of one thread takes the kernel's faster paths for its descriptor table).
done = threading.Event()
if unlisted:
    waiter = threading.Thread(target=connect, args=(unlisted,))
else:
    waiter = threading.Thread(target=done.wait)
waiter.start()
time.sleep(0.2)  # (the ask is pending by now)
times = []
for _ in range(n):
    t = time.perf_counter()
    connect(allowed)
    times.append((time.perf_counter() - t) * 1e6)
print(*times)
sys.stdout.flush()
if unlisted:
    open(sys.argv[4], "w").close()  # the callback may answer now (a fifo it waits on)
done.set()
waiter.join()
"""


def _sink() -> int:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)

    def accept() -> None:
        while True:
            conn, _ = srv.accept()
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    return int(srv.getsockname()[1])


def _floats(out: bytes | None) -> list[float]:
    assert out is not None
    return [float(x) for x in out.split()]


def _once(request: AskRequest) -> Allow:
    return Allow.ONCE


def _python_gate(on: bool) -> None:
    if on:
        os.environ["SANDLOCK_GATE"] = "python"
    else:
        os.environ.pop("SANDLOCK_GATE", None)


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    allowed, unlisted = _sink(), _sink()
    rule = Sandbox([f"127.0.0.1:{allowed}"])
    asking = Sandbox([f"127.0.0.1:{allowed}"], on_unlisted=_once)
    first: dict[str, list[float]] = {"rule": [], "asked": []}
    each: dict[str, list[float]] = {"rule (python)": [], "asked": []}
    others: dict[str, list[float]] = {}
    flag = f"/tmp/sandlock-bench-ask-{os.getpid()}"
    for _ in range(rounds):
        for name, sb, port in (("rule", rule, allowed), ("asked", asking, unlisted)):
            res = sb.run([PY, "-c", FIRST, str(port)], capture_output=True)
            first[name] += _floats(res.stdout)
        _python_gate(True)
        res = rule.run([PY, "-c", MANY, str(allowed), "200"], capture_output=True)
        _python_gate(False)
        each["rule (python)"] += _floats(res.stdout)
        res = asking.run([PY, "-c", MANY, str(unlisted), "200"], capture_output=True)
        each["asked"] += _floats(res.stdout)
        for mode in ("gate", "python"):
            for pending in (False, True):
                _python_gate(mode == "python")

                def when_done(request: AskRequest) -> Allow:
                    with open(flag, "rb") as fifo:  # (blocks, idle, until the child opens it)
                        fifo.read()
                    return Allow.ONCE

                sb = Sandbox([f"127.0.0.1:{allowed}"], on_unlisted=when_done)
                argv = [PY, "-c", OTHERS, str(allowed), str(unlisted if pending else 0), "200"]
                if not os.path.exists(flag):
                    os.mkfifo(flag)
                res = sb.run([*argv, flag], capture_output=True)
                key = f"{mode}, {'ask pending' if pending else 'none pending'}"
                others.setdefault(key, []).extend(_floats(res.stdout))
                if not pending:  # the same under trio from the start, as a pending ask is
                    res = trio.run(
                        functools.partial(sb.run_async, [*argv, flag], capture_output=True)
                    )
                    key = f"{mode}, none pending, trio"
                    others.setdefault(key, []).extend(_floats(res.stdout))
        _python_gate(False)
    if os.path.exists(flag):
        os.unlink(flag)
    print(f"load average at the end: {os.getloadavg()}")
    for title, table in (("first connect", first), ("each connect", each), ("others", others)):
        for name, times in table.items():
            p95 = statistics.quantiles(times, n=20)[-1] if len(times) > 1 else times[0]
            med = statistics.median(times)
            print(f"{title:14} {name:28} median {med:8.1f} us  p95 {p95:8.1f} us  (n={len(times)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
