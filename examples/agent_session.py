"""One shell for a whole agent session, its egress policy swapped per step.

    python examples/agent_session.py

Agent harnesses keep a shell alive across tool calls. Here one bash runs under sandlock
for three steps; before each, ``set_policy`` puts in the rules that step needs (the
shell's next connect is decided by them), the step's command is written to the shell,
its output read up to a marker, and the step's decisions read back from
``decisions()``. A loopback "API" listens on 127.0.0.1 and a "metadata service" the
agent must never reach on 127.0.0.2.
"""

from __future__ import annotations

import shlex
import sys

from agent import start_servers  # examples/agent.py: the same loopback servers

from sandlock import Process, Sandbox

FETCH = """
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())
except OSError as err:
    sys.exit(f"fetch failed: {err}")
"""
MARKER = "__step_done__"


def step(shell: Process, command: str) -> tuple[int, list[str]]:
    """Write one command to the shell; its exit status and output lines."""
    assert shell.stdin is not None and shell.stdout is not None
    shell.stdin.write(f"{command} 2>&1; echo {MARKER} $?\n".encode())
    lines = []
    while True:
        line = shell.stdout.readline().decode()
        if not line:
            raise RuntimeError("the shell exited")
        if line.startswith(MARKER):
            return int(line.split()[1]), lines
        lines.append(line.rstrip("\n"))


def main() -> int:
    api, metadata = start_servers()
    port = api.server_address[1]

    def fetch(url: str) -> str:
        return shlex.join([sys.executable, "-c", FETCH, url])

    steps = [
        ("fetch the task", [f"127.0.0.1:{port}"], fetch(f"http://127.0.0.1:{port}/task")),
        ("reach for metadata", [f"127.0.0.1:{port}"], fetch(f"http://127.0.0.2:{port}/keys")),
        ("offline step", [], fetch(f"http://127.0.0.1:{port}/again")),
    ]
    with Sandbox().start(["bash", "--norc", "--noprofile"], stderr=None) as shell:
        for title, rules, command in steps:
            shell.set_policy(rules)
            status, output = step(shell, command)
            print(f"[{title}] rules {rules or 'none'}: exit {status}")
            for line in output:
                print(f"    output: {line}")
            for d in shell.decisions():
                print(f"    {d.action}: {d.proto} {d.dst}:{d.port} ({d.syscall}, {d.rule})")
        assert shell.stdin is not None
        shell.stdin.write(b"exit\n")
        shell.wait(timeout=30)
    print(f"shell closed: exit {shell.returncode}")
    for server in (api, metadata):
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
