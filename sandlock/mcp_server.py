"""`sandlock mcp`: a Model Context Protocol server (stdio) that runs commands under one policy.

An agent client starts it as a tool server; it offers

- the tool ``run_command`` (``argv`` or ``shell``, ``cwd``, ``timeout``, ``stdin``): the
  command runs under the sandbox made once from the profile and flags, and the tool
  answers its exit status, its output (each stream bounded: head and tail kept, the cut
  said) and the destinations it was refused, counted;
- the resource ``sandlock://network-policy`` (``network_policy``): the rules, as given.

The protocol is the ``mcp`` package's (an optional extra: ``pip install 'sandlock[mcp]'``),
whose server is written against anyio. anyio runs on trio (``backend="trio"``), so the
whole server is one trio loop and a tool call awaits ``Sandbox.run_async`` directly:
commands run side by side in the loop that serves the protocol, no worker thread, and a
call the client cancels cancels the run, which kills the command's tree.

(No ``from __future__ import annotations`` here: the SDK reads the tool's signature,
descriptions included, to publish its schema, so the annotations must be objects.)
"""

import json
from collections import Counter
from collections.abc import Sequence
from typing import Annotated

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from .api import Sandbox
from .audit import DecisionRecord
from .errors import SandlockError, TimeoutExpired
from .plan import NameOptions

__all__ = ["CommandResult", "Refusal", "build_server", "serve"]

POLICY_URI = "sandlock://network-policy"


class Refusal(BaseModel):
    """A destination the command was refused, and how often."""

    proto: str = Field(description="tcp, udp, icmp or unix")
    dst: str = Field(description="the address (or socket path, @name for abstract)")
    port: int | None = Field(description="the port; null for unix sockets")
    host: str | None = Field(description="the hostname, when the address came from one")
    syscall: str = Field(description="the refused call: connect, sendto, sendmsg, dns, ...")
    count: int = Field(description="how many calls to it were refused")


class CommandResult(BaseModel):
    """What a command run under the sandbox came to."""

    exit_code: int | None = Field(
        description="the exit status (128+N if signal N killed it); null on timeout"
    )
    signal: int | None = Field(description="the signal that killed the command, if one did")
    timed_out: bool = Field(description="the command ran past its timeout and was killed")
    stdout: str = Field(description="standard output (UTF-8, bounded: see stdout_truncated)")
    stderr: str = Field(description="standard error (UTF-8, bounded: see stderr_truncated)")
    stdout_bytes: int = Field(description="how many bytes the command wrote to stdout")
    stderr_bytes: int = Field(description="how many bytes the command wrote to stderr")
    stdout_truncated: bool = Field(description="stdout was cut in the middle to the limit")
    stderr_truncated: bool = Field(description="stderr was cut in the middle to the limit")
    refused: list[Refusal] = Field(description="destinations the policy refused, in order")


def bounded(data: bytes, limit: int) -> tuple[str, bool]:
    """``data`` as text, at most ``limit`` bytes of it: the head and the tail kept (an
    error is often at the end), a line in their place saying how much was cut."""
    if len(data) <= limit:
        return data.decode("utf-8", "replace"), False
    head, tail = data[: limit // 2], data[len(data) - (limit - limit // 2) :]
    cut = len(data) - len(head) - len(tail)
    mark = f"\n[sandlock: {cut} bytes of {len(data)} cut here]\n"
    return head.decode("utf-8", "replace") + mark + tail.decode("utf-8", "replace"), True


def refusals(denied: Sequence[DecisionRecord]) -> list[Refusal]:
    """Each refused destination once, in the order first refused, with its count."""
    counts = Counter((d.proto, d.dst, d.port, d.host, d.syscall) for d in denied)
    return [
        Refusal(proto=proto, dst=dst, port=port, host=host, syscall=syscall, count=n)
        for (proto, dst, port, host, syscall), n in counts.items()
    ]


def policy_text(
    allow: Sequence[str], deny: Sequence[str], unix_allow: Sequence[str], sandbox: Sandbox
) -> str:
    """The network_policy resource: the rules as given, and what they came to."""
    return json.dumps(
        {
            "net_allow": list(allow),
            "net_deny": list(deny),
            "unix_allow": list(unix_allow),
            "summary": sandbox.policy.describe(),
            "default": "a protocol with no net_allow rule is refused; net_deny always wins; "
            "a refused call fails with ECONNREFUSED in the command",
        },
        indent=2,
    )


def build_server(
    sandbox: Sandbox,
    policy: str,
    *,
    timeout: float,
    max_output: int,
) -> MCPServer:
    """The MCP server: ``run_command`` under ``sandbox``, ``policy`` as the resource."""
    limit = timeout  # (the tool's own argument is called timeout too)
    server: MCPServer = MCPServer(
        name="sandlock",
        instructions="Runs commands with their network egress limited to a fixed policy "
        f"(read {POLICY_URI}). A refused connection fails with ECONNREFUSED in the "
        "command and is listed in the result's `refused`.",
    )

    @server.resource(
        POLICY_URI,
        name="network_policy",
        description="The rules every run_command runs under (JSON).",
        mime_type="application/json",
    )
    def network_policy() -> str:
        return policy

    @server.tool(
        name="run_command",
        description="Run a command (argv, or a shell string for /bin/sh -c) with network "
        "egress limited to the sandlock policy (resource network_policy). Answers the exit "
        "status, stdout and stderr (each bounded; the middle cut if too long) and the "
        f"destinations refused. Timeout default and maximum: {limit:g} s.",
    )
    async def run_command(
        argv: Annotated[
            list[str] | None, Field(description="the command and its arguments")
        ] = None,
        shell: Annotated[str | None, Field(description="a command line for /bin/sh -c")] = None,
        cwd: Annotated[str | None, Field(description="the working directory")] = None,
        timeout: Annotated[  # noqa: ASYNC109 (the protocol's argument, not our deadline)
            float | None, Field(description=f"seconds, at most {limit:g} (the default)")
        ] = None,
        stdin: Annotated[str | None, Field(description="text for standard input")] = None,
    ) -> CommandResult:
        cmd = _command(argv, shell)
        seconds = _timeout(timeout, limit=limit)
        try:
            result = await sandbox.run_async(
                cmd,
                timeout=seconds,
                capture_output=True,
                input=(stdin or "").encode(),
                cwd=cwd,
            )
        except TimeoutExpired as err:
            return _answer(None, None, err.stdout or b"", err.stderr or b"", [], max_output)
        except SandlockError as err:  # cannot be started: no such command, cwd, ...
            raise ToolError(str(err)) from None
        out, err_out = result.stdout or b"", result.stderr or b""
        return _answer(
            result.exit_code, result.signal, out, err_out, refusals(result.denied), max_output
        )

    return server


def _command(argv: list[str] | None, shell: str | None) -> list[str]:
    if (argv is None) == (shell is None):
        raise ToolError("give either argv (a list of words) or shell (a string), not both")
    if shell is not None:
        if not shell.strip():
            raise ToolError("shell: empty command")
        return ["/bin/sh", "-c", shell]
    assert argv is not None
    if not argv or not argv[0]:
        raise ToolError("argv: empty command")
    return argv


def _timeout(asked: float | None, *, limit: float) -> float:
    if asked is None:
        return limit
    if not 0 < asked <= limit:
        raise ToolError(f"timeout: {asked:g} is not a number of seconds in (0, {limit:g}]")
    return asked


def _answer(
    code: int | None,
    signal: int | None,
    out: bytes,
    err: bytes,
    refused: list[Refusal],
    max_output: int,
) -> CommandResult:
    stdout, out_cut = bounded(out, max_output)
    stderr, err_cut = bounded(err, max_output)
    return CommandResult(
        exit_code=code,
        signal=signal,
        timed_out=code is None,
        stdout=stdout,
        stderr=stderr,
        stdout_bytes=len(out),
        stderr_bytes=len(err),
        stdout_truncated=out_cut,
        stderr_truncated=err_cut,
        refused=refused,
    )


def serve(
    allow: Sequence[str],
    deny: Sequence[str],
    unix_allow: Sequence[str],
    names: NameOptions,
    *,
    audit: str | None,
    timeout: float,
    max_output: int,
) -> int:
    """`sandlock mcp`: the sandbox built (a bad rule raises before anything is served),
    then the protocol served on stdin/stdout until the client closes it."""
    sandbox = Sandbox(allow, deny, audit, unix_allow=unix_allow, names=names)
    policy = policy_text(allow, deny, unix_allow, sandbox)
    server = build_server(sandbox, policy, timeout=timeout, max_output=max_output)
    anyio.run(server.run_stdio_async, backend="trio")
    return 0
