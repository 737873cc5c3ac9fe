"""`sandlock mcp`: the MCP server, driven by the mcp package's own stdio client.

The server runs as `python -m sandlock mcp` under a profile allowing 127.0.0.1 and
denying 127.0.0.2; the commands it runs fetch from loopback HTTP servers the test starts,
which count what reached them.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from mcp import ClientSession, StdioServerParameters, stdio_client

from tests.test_cli import _CountingServer

REPO = Path(__file__).resolve().parents[1]
LIMIT = 60  # seconds for a whole test: a hang fails it, it does not time it

FETCH = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=20).read())"


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text('net_allow = ["127.0.0.1:*"]\nnet_deny = ["127.0.0.2"]\n')
    return path


@pytest.fixture
def servers() -> Any:
    pair = _CountingServer("127.0.0.1"), _CountingServer("127.0.0.2")
    try:
        yield pair
    finally:
        for s in pair:
            s.close()


@asynccontextmanager
async def connect(profile: Path, *flags: str) -> AsyncIterator[ClientSession]:
    """A client session with `sandlock mcp --profile PROFILE FLAGS...` over stdio."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "sandlock", "mcp", "--profile", str(profile), *flags],
        cwd=REPO,
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def call(session: ClientSession, **arguments: Any) -> tuple[bool, Any]:
    """run_command's answer: (is_error, the structured result or the error text)."""
    result = await session.call_tool("run_command", arguments)
    if result.is_error:
        return True, " ".join(getattr(c, "text", "") for c in result.content)
    return False, result.structured_content


async def test_lists_the_tool_and_the_policy(profile: Path) -> None:
    """The tool is listed with its arguments; the resource shows the profile's rules."""
    with trio.fail_after(LIMIT):
        async with connect(profile) as session:
            tools = {t.name: t for t in (await session.list_tools()).tools}
            assert set(tools) == {"run_command"}
            props = tools["run_command"].input_schema["properties"]
            assert set(props) == {"argv", "shell", "cwd", "timeout", "stdin"}
            resources = (await session.list_resources()).resources
            assert [(str(r.uri), r.name) for r in resources] == [
                ("sandlock://network-policy", "network_policy")
            ]
            read = await session.read_resource("sandlock://network-policy")
            policy = json.loads(getattr(read.contents[0], "text", ""))
            assert policy["net_allow"] == ["127.0.0.1:*"]
            assert policy["net_deny"] == ["127.0.0.2"]


async def test_allowed_fetch_and_refused_fetch(profile: Path, servers: Any) -> None:
    """A fetch from 127.0.0.1 arrives and is answered; one to 127.0.0.2 never arrives
    and is listed as refused, with the command's own error."""
    allowed, denied = servers
    with trio.fail_after(LIMIT):
        async with connect(profile) as session:
            error, ok = await call(session, argv=[sys.executable, "-c", FETCH, allowed.url])
            assert not error, ok
            assert ok["exit_code"] == 0
            assert "hello from the sink" in ok["stdout"]
            assert ok["refused"] == []

            error, no = await call(session, argv=[sys.executable, "-c", FETCH, denied.url])
            assert not error, no
            assert no["exit_code"] != 0
            assert "Connection refused" in no["stderr"]
            port = int(denied.url.rsplit(":", 1)[1].strip("/"))
            assert {
                "proto": "tcp",
                "dst": "127.0.0.2",
                "port": port,
                "host": None,
                "syscall": "connect",
                "count": 1,
            } in no["refused"]
    assert (allowed.requests, denied.requests) == (1, 0)


async def test_shell_stdin_and_cwd(profile: Path, tmp_path: Path) -> None:
    """A shell string runs under /bin/sh, reads the stdin given, in the cwd given."""
    with trio.fail_after(LIMIT):
        async with connect(profile) as session:
            error, out = await call(
                session, shell="tr a-z A-Z; pwd; exit 3", stdin="quiet\n", cwd=str(tmp_path)
            )
    assert not error, out
    assert out["exit_code"] == 3
    assert out["stdout"] == f"QUIET\n{tmp_path}\n"


async def test_bad_arguments_are_tool_errors(profile: Path) -> None:
    """Each bad argument is an error result naming it; the server goes on serving."""
    bad = [
        ({"argv": ["true"], "shell": "true"}, "not both"),
        ({}, "either argv"),
        ({"argv": []}, "empty command"),
        ({"argv": "true"}, "argv"),  # not a list: the schema's check
        ({"shell": "true", "timeout": 1e9}, "timeout"),
        ({"shell": "true", "timeout": -1}, "timeout"),
        ({"shell": "true", "cwd": "/nonexistent/dir"}, "cannot change directory"),
        ({"argv": ["/nonexistent/command"]}, "/nonexistent/command"),
    ]
    with trio.fail_after(LIMIT):
        async with connect(profile, "--timeout", "30") as session:
            for arguments, words in bad:
                error, text = await call(session, **arguments)
                assert error, (arguments, text)
                assert words in text, (arguments, text)
            error, out = await call(session, argv=["true"])
            assert not error and out["exit_code"] == 0


async def test_output_is_bounded(profile: Path) -> None:
    """Past --max-output a stream keeps its head and tail, and the answer says the cut."""
    script = "head -c 100000 /dev/zero | tr '\\0' x; echo END; echo oops >&2"
    with trio.fail_after(LIMIT):
        async with connect(profile, "--max-output", "1000") as session:
            error, out = await call(session, shell=f"printf START; {script}")
    assert not error, out
    assert out["stdout_bytes"] == 5 + 100000 + 4
    assert out["stdout_truncated"] and not out["stderr_truncated"]
    assert out["stdout"].startswith("START") and out["stdout"].endswith("END\n")
    assert "bytes of 100009 cut here" in out["stdout"]
    assert len(out["stdout"]) < 1100
    assert out["stderr"] == "oops\n"


async def test_timeout_kills_and_says_so(profile: Path) -> None:
    """A command past its timeout is killed and answered as timed out, output so far kept."""
    with trio.fail_after(LIMIT):
        async with connect(profile) as session:
            start = trio.current_time()
            error, out = await call(session, shell="echo started; sleep 50", timeout=1)
            assert trio.current_time() - start < 20
    assert not error, out
    assert out["timed_out"] and out["exit_code"] is None
    assert out["stdout"] == "started\n"


async def test_calls_run_side_by_side(profile: Path) -> None:
    """Two calls in flight run at once in the server's trio loop, not one after the other."""
    answers: list[Any] = []

    async def sleeper(session: ClientSession) -> None:
        answers.append(await call(session, shell="sleep 2; echo done"))

    with trio.fail_after(LIMIT):
        async with connect(profile) as session:
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sleeper, session)
                nursery.start_soon(sleeper, session)
            took = trio.current_time() - start
    assert [a[1]["stdout"] for a in answers] == ["done\n", "done\n"]
    assert took < 3.5, took


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def test_cancelled_call_kills_the_command(profile: Path, tmp_path: Path) -> None:
    """A call the client abandons is cancelled in the server, and the command's tree dies."""
    pidfile = trio.Path(tmp_path / "pid")
    script = f"sleep 60 & echo $! > {pidfile}.new && mv {pidfile}.new {pidfile}; wait"
    with trio.fail_after(LIMIT):
        async with connect(profile) as session:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(call, session, shell=script))
                while not await pidfile.exists():  # noqa: ASYNC110 (another process's file)
                    await trio.sleep(0.05)
                pid = int(await pidfile.read_text())
                assert _alive(pid)
                nursery.cancel_scope.cancel()
            while _alive(pid):  # noqa: ASYNC110 (another process's end)
                await trio.sleep(0.05)
            error, out = await call(session, argv=["true"])
            assert not error and out["exit_code"] == 0


def test_without_the_extra_one_line_exit_2(profile: Path) -> None:
    """Without the mcp package, `sandlock mcp` says how to install it, exit 2."""
    code = (
        "import sys; sys.modules['mcp'] = None; from sandlock.cli import main; "
        f"main(['mcp', '--profile', {str(profile)!r}])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=LIMIT, cwd=REPO
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert "pip install 'sandlock[mcp]'" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--net-allow", "tcp://127.0.0.1:99999"],
        ["--profile", "/nonexistent.toml"],
        ["--timeout", "0"],
    ],
)
def test_bad_rules_stop_it_before_serving(args: list[str]) -> None:
    """A bad rule, profile or option is one line and exit 2; nothing is served."""
    proc = subprocess.run(
        [sys.executable, "-m", "sandlock", "mcp", *args],
        capture_output=True,
        text=True,
        timeout=LIMIT,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    assert (proc.returncode, proc.stdout, proc.stderr.count("\n")) == (2, "", 1), proc.stderr
