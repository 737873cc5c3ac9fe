"""Who woke whom, on which CPU: counts from `perf script` of sched:sched_wakeup events.

What RESULTS.md's notes on row 1 (TCP connect) come from. With a sink running
(`sleep 3600 | bench/.build/workload sink &`, which prints tcp=PORT):

    perf record -e sched:sched_wakeup -a -o /tmp/wake.data -- \\
        .venv/bin/sandlock run --net-allow 127.0.0.1:PORT -- \\
        bench/.build/workload tcp 127.0.0.1 PORT 2000
    perf script -i /tmp/wake.data -F comm,tid,cpu,event,trace | python3 bench/wakeups.py

Each line counts (waker, wakee, same|other): whether the wakee was put on the waker's
CPU. The workload's threads are told apart by role: the one that wakes `sandlock` (the
gate) is the sandboxed client, every other `workload` thread belongs to the sink. A
wake-up by `swapper` is one an idle CPU ran for another CPU (an IPI).
"""

from __future__ import annotations

import collections
import re
import sys

_EVENT = re.compile(r"\s*(\S+)\s+(\d+)\s+\[(\d+)\].*comm=(\S+) pid=(\d+).*target_cpu=(\d+)")


def main() -> int:
    events = [m.groups() for m in map(_EVENT.match, sys.stdin) if m]
    clients = {
        tid for waker, tid, _, wakee, _, _ in events if waker == "workload" and wakee == "sandlock"
    }

    def role(comm: str, tid: str) -> str:
        if comm != "workload":
            return comm
        return "client" if tid in clients else "sink"

    counts = collections.Counter(
        (role(waker, tid), role(wakee, pid), "same" if int(cpu) == int(target) else "other")
        for waker, tid, cpu, wakee, pid, target in events
    )
    for (waker, wakee, where), n in counts.most_common(12):
        print(f"{n:7d}  {waker} woke {wakee} ({where} CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
