"""The `sandlock run` command line: exit statuses, stdio, environment, signals,
descriptors, errors, help, and real clients."""

from __future__ import annotations

import errno
import fcntl
import http.server
import json
import os
import pty
import select
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from .conftest import (
    SANDLOCK,
    describe,
    kill_group,
    need_tool,
    parse_probe,
    run_command,
    sandlock_env,
)


def _one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    """The single `sandlock: ...` line on stderr (and nothing else, no traceback)."""
    lines = res.stderr.splitlines()
    assert len(lines) == 1, describe(res)
    assert lines[0].startswith("sandlock: "), describe(res)
    assert "Traceback" not in res.stderr
    return lines[0]


# ------------------------------------------------------------------- exit status


@pytest.mark.parametrize(
    ("script", "status"),
    [
        ("exit 0", 0),
        ("exit 7", 7),
        ("exit 255", 255),
        ("kill -USR1 $$", 128 + signal.SIGUSR1),
        ("kill -KILL $$", 128 + signal.SIGKILL),
        ("kill -SEGV $$", 128 + signal.SIGSEGV),
    ],
)
def test_exit_status(run_sandboxed, script, status):
    """sandlock exits with the command's status, 128+N when signal N killed it."""
    res = run_sandboxed([], ["sh", "-c", script])
    assert res.returncode == status, describe(res)
    assert "Traceback" not in res.stderr


def test_stdin_stdout_stderr_pass_through(run_sandboxed):
    """stdin reaches the command; its stdout and stderr come out unmixed."""
    res = run_sandboxed(
        [], ["sh", "-c", "cat; echo to-err >&2; echo to-out"], input="line one\nline two\n"
    )
    assert res.returncode == 0, describe(res)
    assert res.stdout == "line one\nline two\nto-out\n"
    assert res.stderr == "to-err\n"


STDIO_IDS = textwrap.dedent(
    """
    import os, sys
    ids = [(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in (0, 1)]
    tty = os.ttyname(2) if os.isatty(2) else "-"
    sys.stdout.write(repr((ids, tty)))
    """
)


def test_stdio_are_the_callers_files(run_sandboxed, tmp_path):
    """The command's fds 0, 1, 2 are the caller's own files and terminal, not relays."""
    src, dst = tmp_path / "in", tmp_path / "out"
    src.write_text("x")
    master, slave = pty.openpty()
    try:
        with open(src) as fin, open(dst, "w") as fout:
            res = run_sandboxed(
                [], [sys.executable, "-c", STDIO_IDS], stdin=fin, stdout=fout, stderr=slave
            )
        want_ids = [(os.stat(p).st_dev, os.stat(p).st_ino) for p in (src, dst)]
        assert res.returncode == 0
        assert dst.read_text() == repr((want_ids, os.ttyname(slave)))
    finally:
        os.close(master)
        os.close(slave)


def test_environment_untouched(run_sandboxed):
    """The command sees exactly the environment sandlock was given."""
    env = sandlock_env(
        {"PATH": os.environ["PATH"], "SANDLOCK_TEST_MARKER": "a b=c\tä", "EMPTY": ""}
    )
    res = run_sandboxed([], ["env", "-0"], env=env)
    assert res.returncode == 0, describe(res)
    got = dict(item.split("=", 1) for item in res.stdout.split("\0") if item)
    assert got == env


def test_cwd_untouched(run_sandboxed, tmp_path):
    """The command runs in sandlock's working directory."""
    res = run_sandboxed([], ["pwd", "-P"], cwd=tmp_path)
    assert res.stdout.strip() == str(tmp_path.resolve()), describe(res)


# ------------------------------------------------------------------- signals

SIGNAL_CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    def handler(signo, frame):
        print(f"got {signo}", flush=True)
        os._exit(100 + signo)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, handler)
    print("ready", flush=True)
    time.sleep(60)
    os._exit(1)
    """
)


def _start_ready(cmd, ready: bool = True) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*SANDLOCK, "--", *cmd],
        env=sandlock_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    if ready:
        readable, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if readable else ""
        if line != "ready\n":
            kill_group(proc.pid)
            out, err = proc.communicate()
            pytest.fail(f"command never got ready: {line!r} {out!r} {err!r}")
    return proc


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_reach_the_command(signo):
    """SIGTERM/SIGINT/SIGHUP sent to the sandlock process alone reach the command, whose
    exit status sandlock then returns."""
    proc = _start_ready([sys.executable, "-c", SIGNAL_CHILD])
    with proc:
        try:
            os.kill(proc.pid, signo)
            out, err = proc.communicate(timeout=30)
        finally:
            kill_group(proc.pid)
    assert out == f"got {int(signo)}\n", (out, err)
    assert proc.returncode == 100 + signo, (proc.returncode, err)
    assert "Traceback" not in err


def test_default_sigterm_kills_command():
    """SIGTERM to sandlock kills a command that does not catch it: status 143."""
    proc = _start_ready(["sh", "-c", "echo ready; exec sleep 60"])
    with proc:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            kill_group(proc.pid)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err


# ------------------------------------------------------------------- descriptors

FD_CHILD = textwrap.dedent(
    """
    import os, sys
    states = []
    for fd in map(int, sys.argv[1:]):
        try:
            os.write(fd, b"written through %d\\n" % fd)
            states.append(f"{fd}:open")
        except OSError as e:
            states.append(f"{fd}:errno={e.errno}")
    print(" ".join(states))
    """
)


@pytest.mark.parametrize("keep", ["", "a", "a,b"], ids=["none", "one", "both"])
def test_keep_fds(run_sandboxed, tmp_path, keep):
    """Inherited descriptors above 2 are closed before exec unless --keep-fds lists them."""
    files = {name: open(tmp_path / name, "wb") for name in ("a", "b")}
    # free descriptor numbers well above 2 (never clobber one pytest holds)
    fds = {name: fcntl.fcntl(f.fileno(), fcntl.F_DUPFD, 40) for name, f in files.items()}
    try:
        for fd in fds.values():
            os.set_inheritable(fd, True)
        kept = [fds[n] for n in keep.split(",") if n]
        args = ["--keep-fds", ",".join(map(str, kept))] if kept else []
        res = run_sandboxed(
            args,
            [sys.executable, "-c", FD_CHILD, *map(str, fds.values())],
            pass_fds=tuple(fds.values()),
        )
    finally:
        for fd in fds.values():
            os.close(fd)
        for f in files.values():
            f.close()
    expect = " ".join(f"{fd}:open" if fd in kept else f"{fd}:errno=9" for fd in fds.values())
    assert res.stdout.strip() == expect, describe(res)
    for name, fd in fds.items():
        assert ((tmp_path / name).read_bytes() != b"") == (fd in kept)


def test_inherited_socket_closed(run_sandboxed, sinks):
    """A connected UDP socket to a denied sink, inherited from the caller, is closed
    before exec: nothing reaches the sink through it."""
    import socket

    deny = sinks.udp("127.0.0.2")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.connect((deny.host, deny.port))
        fd = s.fileno()
        os.set_inheritable(fd, True)
        res = run_sandboxed([], [sys.executable, "-c", FD_CHILD, str(fd)], pass_fds=(fd,))
    assert res.stdout.strip() == f"{fd}:errno=9", describe(res)
    assert deny.settle().count == 0


# ------------------------------------------------------------------- bad input

BAD_SPECS = [
    ("--net-allow", "sctp://127.0.0.1:1"),
    ("--net-allow", "127.0.0.1:0"),
    ("--net-allow", "127.0.0.1:"),
    ("--net-allow", "127.0.0.1:65536"),
    ("--net-allow", "127.0.0.1:http"),
    ("--net-allow", "127.0.0.1:80,*"),
    ("--net-allow", "127.0.0.0/33"),
    ("--net-allow", "::1/129"),
    ("--net-allow", "127.0.0.1/x"),
    ("--net-allow", "icmp://127.0.0.1:80"),
    ("--net-allow", "icmp://"),
    ("--net-allow", ""),
    ("--net-allow", "tcp://"),
    ("--net-allow", "udp://"),
    ("--net-deny", "*.localhost:0"),
    ("--net-deny", "127.0.0.1:0"),
    ("--net-deny", "sctp://127.0.0.1"),
    ("--net-deny", ""),
]


@pytest.mark.parametrize(("flag", "spec"), BAD_SPECS)
def test_bad_spec(run_sandboxed, tmp_path, flag, spec):
    """A bad rule: one `sandlock:` line naming the flag and quoting the spec, exit 2, and
    the command never ran."""
    marker = tmp_path / "ran"
    res = run_sandboxed([flag, spec], ["touch", str(marker)])
    line = _one_error_line(res)
    assert res.returncode == 2
    assert flag in line and f"`{spec}`" in line, line
    assert not marker.exists()


@pytest.mark.parametrize("flag", ["--net-allow", "--net-deny"])
def test_a_rule_of_two_dashes_is_a_bad_rule_on_both_paths(run_sandboxed, tmp_path, flag):
    """`--net-allow=--`: argparse alone would drop the value and the run would end in a
    traceback. Read by the fast path and by the parser (--quiet sends the line there), it
    is a bad rule like any other: one line, exit 2."""
    marker = tmp_path / "ran"
    for extra in ([], ["--quiet"]):
        res = run_sandboxed([f"{flag}=--", *extra], ["touch", str(marker)])
        line = _one_error_line(res)
        assert res.returncode == 2 and flag in line and "`--`" in line, line
    assert not marker.exists()


def test_bad_spec_among_good_ones(run_sandboxed, tmp_path):
    """One bad rule among good ones still stops everything before the command starts."""
    marker = tmp_path / "ran"
    res = run_sandboxed(
        ["--net-allow", "127.0.0.1:80", "--net-deny", "127.0.0.2", "--net-allow", "udp://:0"],
        ["touch", str(marker)],
    )
    line = _one_error_line(res)
    assert res.returncode == 2 and "`udp://:0`" in line
    assert not marker.exists()


def test_unresolvable_host(features, tmp_path):
    """A hostname that does not resolve: one line naming the flag and the spec, exit 2,
    the command never ran.  (Run in an empty network namespace: the lookup cannot leave
    the machine.)"""
    features.require("netns")
    marker = tmp_path / "ran"
    spec = "no-such-host.invalid:80"
    res = run_command(
        [*features.unshare_net, *SANDLOCK, "--net-allow", spec, "--", "touch", str(marker)],
        env=sandlock_env(),
    )
    line = _one_error_line(res)
    assert res.returncode == 2
    assert "--net-allow" in line and f"`{spec}`" in line, line
    assert not marker.exists()


@pytest.mark.parametrize("argv", [["--"], [], ["--net-allow", "127.0.0.1:80", "--"]])
def test_empty_command(argv):
    """No command: one line, exit 2."""
    res = run_command([*SANDLOCK, *argv], env=sandlock_env())
    _one_error_line(res)
    assert res.returncode == 2


def test_unknown_option():
    """An unknown option: exit 2, no traceback."""
    res = run_command([*SANDLOCK, "--no-such-option", "--", "true"], env=sandlock_env())
    assert res.returncode == 2, describe(res)
    assert res.stderr.startswith("sandlock") and "Traceback" not in res.stderr


@pytest.mark.parametrize("cmd", ["/nonexistent/command", "no-such-command-on-path-xyz"])
def test_command_not_found(run_sandboxed, cmd):
    """A command that does not exist: exit 127, one line."""
    res = run_sandboxed([], [cmd])
    _one_error_line(res)
    assert res.returncode == 127


@pytest.mark.parametrize("kind", ["no-x-bit", "directory"])
def test_command_not_executable(run_sandboxed, tmp_path, kind):
    """A command that exists but cannot be executed: exit 126, one line."""
    path = tmp_path / "cmd"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_text("#!/bin/sh\necho ran\n")
        path.chmod(0o644)
    res = run_sandboxed([], [str(path)])
    _one_error_line(res)
    assert res.returncode == 126
    assert res.stdout == ""


# ------------------------------------------------------------------- help


def test_run_help_explains_grammar():
    """`sandlock run --help` shows the rule grammar with examples."""
    res = run_command([*SANDLOCK, "--help"], env=sandlock_env())
    assert res.returncode == 0, describe(res)
    text = res.stdout
    for needle in [
        "--net-allow",
        "--net-deny",
        "--keep-fds",
        "tcp",
        "udp://",
        "icmp://",
        "*",
        "[::1]:",
        "/8",
        "example",
        "-- ",
    ]:
        assert needle in text, f"{needle!r} missing from help:\n{text}"


def test_top_level_help():
    """`sandlock --help` works and names the run subcommand."""
    res = run_command([sys.executable, "-m", "sandlock", "--help"], env=sandlock_env())
    assert res.returncode == 0, describe(res)
    assert "run" in res.stdout


def test_console_script():
    """The installed `sandlock` console script runs commands like `python -m sandlock`."""
    script = Path(sys.executable).parent / "sandlock"
    if not script.exists():
        pytest.skip(f"console script not installed at {script} (pip install -e .)")
    res = run_command([str(script), "run", "--", "sh", "-c", "exit 3"])
    assert res.returncode == 3, describe(res)


# ------------------------------------------------------------------- real clients


class _CountingServer:
    """A python http.server on a loopback address, counting GET requests."""

    def __init__(self, host: str) -> None:
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                body = b"hello from the sink\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/"
        self.spec = f"{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.1,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def http_servers():
    servers = [_CountingServer("127.0.0.1"), _CountingServer("127.0.0.2")]
    try:
        yield servers
    finally:
        for s in servers:
            s.close()


def _curl(url: str) -> list[str]:
    return [
        need_tool("curl"),
        "-q",
        "-sS",
        "--noproxy",
        "*",
        "--max-time",
        "20",
        "-o",
        "-",
        "-w",
        "\\n%{http_code}",
        url,
    ]


def test_curl_allowed(run_sandboxed, http_servers):
    """curl to an allowed local HTTP server gets its page."""
    allowed, _ = http_servers
    res = run_sandboxed(["--net-allow", allowed.spec], _curl(allowed.url))
    assert res.returncode == 0, describe(res)
    assert res.stdout == "hello from the sink\n\n200"
    assert allowed.requests == 1


@pytest.mark.parametrize("how", ["default-deny", "explicit-deny"])
def test_curl_denied(run_sandboxed, http_servers, how):
    """curl to a server the policy does not allow fails to connect (curl exit 7) and the
    server sees no request."""
    allowed, denied = http_servers
    rules = ["--net-allow", allowed.spec]
    if how == "explicit-deny":
        rules = ["--net-allow", "*", "--net-deny", "127.0.0.2"]
    res = run_sandboxed(rules, _curl(denied.url))
    assert res.returncode == 7, describe(res)
    assert denied.requests == 0 and allowed.requests == 0


PY_CLIENT = textwrap.dedent(
    """
    import json, sys, urllib.request
    out = {}
    for url in sys.argv[1:]:
        try:
            with urllib.request.urlopen(url, timeout=20) as r:
                out[url] = r.status
        except OSError as e:
            reason = getattr(e, "reason", e)
            out[url] = getattr(reason, "errno", None) or str(reason)
    print(json.dumps(out))
    """
)


def test_python_urllib_client(run_sandboxed, http_servers):
    """Python's urllib gets 200 from the allowed server and ECONNREFUSED from the other."""
    allowed, denied = http_servers
    env = sandlock_env({k: v for k, v in os.environ.items() if "proxy" not in k.lower()})
    res = run_sandboxed(
        ["--net-allow", allowed.spec],
        [sys.executable, "-c", PY_CLIENT, allowed.url, denied.url],
        env=env,
    )
    assert json.loads(res.stdout) == {allowed.url: 200, denied.url: 111}, describe(res)
    assert (allowed.requests, denied.requests) == (1, 0)


@pytest.mark.parametrize("rule", ["127.0.0.1", "localhost:80"])
def test_a_command_without_network_calls_loads_no_supervisor(rule: str) -> None:
    """The launch path stays lean: a command that makes no decision never imports trio,
    dnspython or dataclasses (each costs the start-up tens of milliseconds), even with a
    hostname rule (whose virtual files the C gate leaves alone until one is opened)."""
    argv = [sys.executable, "-X", "importtime", "-m", "sandlock", "run", "--no-dns-proxy"]
    res = run_command([*argv, "--net-allow", rule, "--", "/bin/true"], env=sandlock_env())
    assert res.returncode == 0, describe(res)
    loaded = {line.split("|")[-1].strip() for line in res.stderr.splitlines() if "|" in line}
    assert "sandlock.cli" in loaded and "sandlock.launch" in loaded, describe(res)
    assert not loaded & {"trio", "dns", "dataclasses"}, sorted(loaded & {"trio", "dns"})


def _imported(res: subprocess.CompletedProcess[str]) -> set[str]:
    """The modules a `python -X importtime` run loaded, from its stderr."""
    return {line.split("|")[-1].strip() for line in res.stderr.splitlines() if "|" in line}


@pytest.mark.parametrize(
    ("flags", "trio_expected"),
    [([], False), (["--summary"], True)],
    ids=["gate-finishes", "summary-python-finishes"],
)
def test_calls_that_need_no_waiting_here_load_no_trio(
    probe, sinks, full_listener, flags, trio_expected
) -> None:
    """Allowed and refused connects, and a blocking connect that hangs until SO_SNDTIMEO,
    are all answered without trio (~120 ms of imports): the quick ones by serve_now, the
    hanging one by the gate's thread for connects in progress. With --summary every
    outcome must be heard, so Python finishes the hanging connect itself, under trio."""
    fast, denied = sinks.tcp("127.0.0.1"), sinks.tcp("127.0.0.2")
    argv = [sys.executable, "-X", "importtime", "-m", "sandlock", "run", *flags]
    rules = ["--net-allow", fast.spec, "--net-allow", full_listener]
    script = '"$0" connect tcp "$1" "$2"; exec "$3" "$4" "$1" 3 700'
    cmd = ["sh", "-c", script, probe("netprobe"), fast.target, denied.target]
    res = run_command([*argv, *rules, "--", *cmd, probe("slowconnect"), full_listener])
    assert [(x.label, x.ok) for x in parse_probe(res.stdout)] == [
        ("0 connect", True),
        ("1 connect", False),
    ], describe(res)
    assert f"slow_errno={errno.EINPROGRESS}" in res.stdout, describe(res)
    assert res.returncode == 0, describe(res)
    assert ("trio" in _imported(res)) == trio_expected, describe(res)
    assert (fast.settle().count, denied.settle().count) == (4, 0)


def test_a_run_whose_calls_are_allowed_stays_lean(probe, sinks) -> None:
    """A command whose calls are all allowed makes its supervisor load neither trio nor
    dataclasses or the audit module: records are made only for a denial or an audit
    log."""
    sink = sinks.tcp("127.0.0.1")
    argv = [sys.executable, "-X", "importtime", "-m", "sandlock", "run"]
    cmd = [probe("netprobe"), "connect", "tcp", sink.target, sink.target]
    res = run_command([*argv, "--net-allow", sink.spec, "--", *cmd], env=sandlock_env())
    assert res.returncode == 0, describe(res)
    loaded = _imported(res)
    assert "sandlock.supervisor" in loaded, describe(res)  # a decision was made here
    unwanted = {"trio", "dataclasses", "sandlock.audit"}
    assert not loaded & unwanted, sorted(loaded & unwanted)
    assert sink.settle().count == 2
