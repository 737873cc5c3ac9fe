"""The `sandlock` command's parser (argparse): its options, help texts and usage errors.

Loaded only for what _fastrun.py does not read (argparse costs a start-up ~8 ms). The
handlers that act on the parsed arguments are in cli.py.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from typing import NoReturn

from .errors import UsageError
from .plan import TTL_MAX, TTL_MIN


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is a UsageError (cli.py prints it as one line, never
    a usage dump), and a value of exactly ``--`` stays a value."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, rest = super().parse_known_args(args, namespace)
        # argparse drops a single-value option's value when it is "--" (--net-allow=--)
        # and stores [] in its place, which later code would trip on: put it back.
        for action in self._actions:
            if action.nargs is not None or action.type not in (None, str):
                continue
            value = getattr(ns, action.dest, None)
            if isinstance(action, argparse._AppendAction) and isinstance(value, list):
                setattr(ns, action.dest, ["--" if v == [] else v for v in value])
            elif value == []:
                setattr(ns, action.dest, "--")
        return ns, rest


RUN_DESCRIPTION = """\
Run CMD with its network egress limited to the destinations the rules allow.
connect, sendto, sendmsg and sendmmsg of CMD, its threads and all its descendants are
checked; a refused call fails with ECONNREFUSED and nothing leaves the machine.

A rule is  [SCHEME://]TARGET[:PORTS]
  SCHEME   tcp (the default), udp or icmp
  TARGET   *  (any address), an IP (127.0.0.1, ::1), a CIDR (10.0.0.0/8, fc00::/7)
           or a hostname or *.domain (allowed: its answers, followed through DNS;
           answers in loopback or private space only where an IP rule allows
           them, unless --dns-allow-private; denied: the name never resolves).
           Write IPv6 with a port in brackets: [::1]:443
  PORTS    22,80,443 or * (all ports; also what no port means). icmp takes no port.

Each protocol is decided on its own: with no --net-allow rule for a protocol, that
protocol is denied. --net-deny is checked first and always wins. ::ffff:a.b.c.d is
a.b.c.d; 0.0.0.0 and :: count as loopback.

AF_UNIX is egress too: CMD reaches the unix sockets its own processes bind during the
run, and others (docker.sock, an ssh-agent, abstract names) only through --unix-allow;
a refused one fails with ECONNREFUSED. Netlink is not restricted.
"""

RUN_EPILOG = """\
examples:
  sandlock run --net-allow example.com:443 -- curl https://example.com/
  sandlock run --net-allow 127.0.0.1:8080 --net-allow udp://127.0.0.1:53 \\
               --net-deny 127.0.0.2 -- curl http://127.0.0.1:8080/
  sandlock run --net-allow '*:443' --net-deny 10.0.0.0/8 -- ./build.sh
  sandlock run --net-allow 'icmp://*' -- ping -c1 127.0.0.1
  sandlock run -- ./offline-step          # no rule: no network at all
  sandlock run --unix-allow "$SSH_AUTH_SOCK" -- git fetch
  sandlock run --http-allow 'GET api.example.com/v1/*' --http-tls -- ./agent

exit status: CMD's own, 128+N if signal N killed it, 2 for a bad rule or usage,
126/127 when CMD cannot be run, 125 when the daemon (--daemon) stopped answering
for SANDLOCK_DAEMON_TIMEOUT seconds (default 10) and CMD was killed.
"""


LEARN_DESCRIPTION = """\
Run CMD with all egress allowed (--net-deny rules still apply), then print on stderr
the smallest --net-allow list that covers what it did, grouped per protocol: the
hostname of a --net-allow rule where the address came from one, the IP otherwise, and
a --unix-allow line per AF_UNIX socket served outside the sandbox that it reached.
Rules given with --net-allow and --unix-allow are kept in the output.

example:
  sandlock learn --profile-out build.toml -- ./build.sh
  sandlock run --profile build.toml -- ./build.sh
"""


def _fd_list(text: str) -> list[int]:
    try:
        fds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected descriptor numbers like 3,4: `{text}`"
        ) from None
    if not fds or any(fd < 0 for fd in fds):
        raise argparse.ArgumentTypeError(f"expected descriptor numbers like 3,4: `{text}`")
    return fds


def _add_rule_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--net-allow",
        action="append",
        default=[],
        metavar="RULE",
        help="allow egress to RULE (repeatable)",
    )
    p.add_argument(
        "--net-deny",
        action="append",
        default=[],
        metavar="RULE",
        help="refuse egress to RULE even where an allow rule matches (repeatable); a "
        "hostname or '*.domain' rule means the name never resolves for CMD (NXDOMAIN), "
        "whatever allow rule names it, on every port and protocol",
    )
    p.add_argument(
        "--unix-allow",
        action="append",
        default=[],
        metavar="PATH|DIR/|@NAME",
        help="let CMD reach this AF_UNIX socket served outside the sandbox: an absolute "
        "path, every socket beneath a directory (DIR/ or an existing directory), or an "
        "abstract name (@name, @prefix*) (repeatable; sockets the sandbox binds itself need "
        "no rule; a sandlock daemon's socket is never reachable)",
    )
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="read net_allow/net_deny/unix_allow lists (added to the flags) and "
        "dns_allow_private from a TOML profile",
    )


def _add_audit_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--audit", metavar="PATH", help="append every decision to PATH as one JSON object per line"
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds: `{text}`")
    return value


def _add_name_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "hostnames",
        "How rules that name hosts stay true (see README: resolve at start, DNS-following, "
        "wildcards).",
    )
    g.add_argument(
        "--dns-proxy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve CMD's DNS lookups from a forwarder that allows the addresses it answers "
        "for their TTL, answers NXDOMAIN for names no rule covers, and takes all of CMD's "
        "port-53 traffic (default: on when a --net-allow rule names a host; needed by "
        "wildcard rules like '*.example.com:443'). --no-dns-proxy resolves hostnames "
        "once at start instead",
    )
    g.add_argument(
        "--verify-names",
        action="store_true",
        help="experimental: a TCP connection that only a hostname rule allows must name an "
        "allowed host in its first bytes (TLS SNI, or the HTTP Host header) that resolves to "
        "the address it connected to; otherwise it is reset (README: verified names)",
    )
    g.add_argument(
        "--dns-upstream",
        metavar="IP[:PORT]",
        help="where every lookup goes, the start-up resolution included "
        "(default: the first nameserver of /etc/resolv.conf)",
    )
    g.add_argument(
        "--dns-ttl-min",
        type=_seconds,
        default=TTL_MIN,
        metavar="SECONDS",
        help=f"a learned address stays allowed at least this long (default: {TTL_MIN:g})",
    )
    g.add_argument(
        "--dns-ttl-max",
        type=_seconds,
        default=TTL_MAX,
        metavar="SECONDS",
        help=f"and at most this long, whatever its TTL (default: {TTL_MAX:g})",
    )
    g.add_argument(
        "--dns-allow-private",
        action="store_true",
        help="turn the rebinding guard off: let hostname rules allow answers in loopback, "
        "private (RFC 1918), CGNAT, link-local, ULA, unspecified and multicast space (by "
        "default such an answer resolves only where an IP/CIDR rule allows it)",
    )
    g.add_argument(
        "--no-virtual-hosts",
        dest="virtual_hosts",
        action="store_false",
        help="let CMD read the real /etc/hosts (by default it sees localhost and, when "
        "hostnames are resolved at start, one line per allowed address)",
    )


def _add_command_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--keep-fds",
        type=_fd_list,
        default=[],
        metavar="N[,N...]",
        help="pass these inherited descriptors (above 2) to CMD; the rest are "
        "closed, since an inherited socket would be an unchecked channel",
    )
    p.add_argument(
        "argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]", help="the command to run"
    )


def _add_daemon_arg(
    p: argparse.ArgumentParser, help: str = "the daemon's socket (default: $SANDLOCK_DAEMON)"
) -> None:
    p.add_argument(
        "--daemon", metavar="PATH", default=os.environ.get("SANDLOCK_DAEMON"), help=help
    )


def _add_http_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "HTTP rules",
        "Per-request rules for HTTP, and HTTPS with --http-tls (README: HTTP rules). With "
        "any of them, every TCP "
        "connection to an HTTP port goes through sandlock's relay, which checks each request "
        "and forwards it only to the address and port CMD connected to.",
    )
    _add_http_rule_args(
        g,
        "allow requests like this (repeatable): METHOD or *, HOST a name, *.domain, an "
        "IP or *, PATH exact or a prefix ending in * (e.g. 'GET api.example.com/v1/*'); "
        "any --http-allow refuses every other request on the HTTP ports (403), and lets CMD "
        "reach HOST over TCP on them",
    )
    g.add_argument(
        "--http-ports",
        action="append",
        default=[],
        metavar="PORTS",
        help="the TCP ports whose connections HTTP rules interpose (comma list, repeatable; "
        "default: 80, and 443 with --http-tls)",
    )
    g.add_argument(
        "--http-tls",
        action="store_true",
        help="intercept TLS on the HTTP ports too, so that HTTP rules hold for HTTPS: an "
        "ephemeral CA made for this run (its key never leaves the supervisor's memory) is "
        "added to the CA bundles CMD opens, and the supervisor makes its own TLS connection "
        "to the server, verified against this host's trust store (README: HTTP rules)",
    )
    g.add_argument(
        "--http-upstream-ca",
        metavar="FILE",
        help="with --http-tls, also trust the CA certificates in FILE (PEM) for the servers",
    )
    g.add_argument(
        "--http-ca-out",
        metavar="FILE",
        help="with --http-tls, write this run's CA certificate (PEM, public) to FILE",
    )


def _add_http_swap_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "HTTP rules",
        "Either option replaces both of the sandbox's HTTP lists (one not given becomes "
        "empty); neither keeps them. The next request is decided by the new rules, on a "
        "connection already open too. The HTTP ports and --http-tls stay those the sandbox "
        "started with (which connections the relay interposes is decided as each is made): "
        "a sandbox started without HTTP rules cannot be given any (exit status 2).",
    )
    _add_http_rule_args(
        g,
        "allow requests like this (repeatable; as in `sandlock run`): every other "
        "request on the HTTP ports is refused (403)",
    )


def _add_http_rule_args(g: argparse._ArgumentGroup, allow_help: str) -> None:
    """--http-allow and --http-deny, as `run` and `policy` both take them."""
    for flag, help in (
        ("--http-allow", allow_help),
        ("--http-deny", "refuse requests like this (403), whatever --http-allow says (repeatable)"),
    ):
        g.add_argument(
            flag, action="append", default=[], metavar="'METHOD HOST[:PORT]/PATH'", help=help
        )


def build_parser() -> argparse.ArgumentParser:
    """The parser for every `sandlock` subcommand."""
    parser = _Parser(
        prog="sandlock",
        description="An egress firewall for one command (seccomp user notification).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run = sub.add_parser(
        "run",
        help="run a command under --net-allow / --net-deny rules",
        description=RUN_DESCRIPTION,
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_rule_args(run)
    _add_audit_arg(run)
    run.add_argument(
        "--quiet", action="store_true", help="do not report denied destinations on stderr"
    )
    run.add_argument(
        "--summary",
        action="store_true",
        help="at exit, print a table of destinations, call counts and actions",
    )
    run.add_argument(
        "--ask",
        action="store_true",
        help="ask on the terminal (/dev/tty) before refusing a call no rule allows: "
        "[o]nce, [a]lways (for the rest of the run) or [N]o; a --net-deny match is refused "
        "without asking; in DNS mode a lookup of an unlisted name asks too (not with "
        "--daemon)",
    )
    run.add_argument(
        "--ask-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="with --ask, refuse a call nobody answered for within SECONDS (default: 30)",
    )
    _add_daemon_arg(
        run,
        "let the daemon listening on PATH supervise CMD (default: $SANDLOCK_DAEMON; "
        "unset: supervise here)",
    )
    _add_name_args(run)
    _add_http_args(run)
    _add_command_args(run)

    learn = sub.add_parser(
        "learn",
        help="run a command with everything allowed and print the rules it needed",
        description=LEARN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_rule_args(learn)
    learn.add_argument(
        "--profile-out",
        metavar="FILE",
        help="also write the rules as a TOML profile (for --profile)",
    )
    learn.add_argument(
        "--http-ports",
        action="append",
        default=[],
        metavar="PORTS",
        help="also pass CMD's connections to these TCP ports through the HTTP relay and "
        "propose an --http-allow line per request seen (comma list, repeatable)",
    )
    _add_command_args(learn)
    serve = sub.add_parser(
        "serve",
        help="run one supervisor for many sandboxes (see run --daemon)",
        description="Serve sandboxes started with `sandlock run --daemon PATH` until "
        "SIGINT or SIGTERM. The socket is created 0600; a client may supervise only its "
        "own processes. If the daemon dies, its sandboxes' network calls fail (ENOSYS).",
    )
    serve.add_argument("--socket", required=True, metavar="PATH", help="where to listen")
    ps = sub.add_parser("ps", help="list the sandboxes a daemon supervises")
    _add_daemon_arg(ps)
    pol = sub.add_parser(
        "policy",
        help="replace the rules of a running sandbox",
        description="Replace the policy of sandbox ID (see `sandlock ps`) atomically; it "
        "decides from the sandbox's next call. The new --net-allow, --net-deny and "
        "--unix-allow rules replace all old ones (none given: none); the HTTP rules as "
        "below. Hostnames are resolved as the sandbox's own options say. A bad rule is one "
        "line, exit status 2, and the old rules all stay.",
    )
    _add_daemon_arg(pol)
    pol.add_argument("id", metavar="ID", help="the sandbox, as `sandlock ps` shows it")
    _add_rule_args(pol)
    _add_http_swap_args(pol)
    _add_audit(sub)
    _add_mcp(sub)
    return parser


AUDIT_DESCRIPTION = """\
Check an audit log written with `sandlock run --audit FILE`. Each run's records are
sealed in a keyed chain: a record changed, added, dropped, moved or duplicated, a run
without its open or close record, a line no supervisor wrote, all make it fail. One
line per run (ok, or the first problem and its line number), then a summary.

--head HEAD (the value `sandlock run` prints at exit) also checks that the run which
ended with it is in FILE intact: that catches a run rewritten or replaced as a whole.

exit status: 0 all intact, 1 anything wrong, 2 usage (FILE unreadable, bad HEAD).
"""


def _head(text: str) -> str:
    if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise argparse.ArgumentTypeError(f"expected the 64 hex digits of a run's head: `{text}`")
    return text.lower()


def _add_audit(sub: argparse._SubParsersAction[_Parser]) -> None:
    audit = sub.add_parser("audit", help="check an audit log (see `sandlock audit verify`)")
    verbs = audit.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser, required=True)
    verify = verbs.add_parser(
        "verify",
        help="check that no record of FILE was changed, dropped, added or moved",
        description=AUDIT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_argument("file", metavar="FILE", help="the audit log")
    verify.add_argument(
        "--head",
        type=_head,
        action="append",
        default=[],
        metavar="HEAD",
        help="a run's head as `sandlock run` printed it; FILE must hold that run intact "
        "(repeatable)",
    )


MCP_DESCRIPTION = """\
Serve the Model Context Protocol on stdin/stdout for an agent client: the tool
run_command (argv or a shell string, cwd, timeout, stdin) runs a command under these
rules and answers its exit status, stdout and stderr (bounded) and the destinations
it was refused; the resource network_policy shows the rules. Needs the mcp extra:
pip install 'sandlock[mcp]'.

example (the client starts it):
  sandlock mcp --profile agent.toml
"""

MCP_TIMEOUT = 120.0
"""Seconds a run_command call may run when it gives no timeout, and the most it may ask."""
MCP_MAX_OUTPUT = 64 * 1024
"""Bytes of each of stdout and stderr a run_command call answers at most."""


def _bytes(text: str) -> int:
    if not text.isdigit() or int(text) < 64:
        raise argparse.ArgumentTypeError(f"expected a number of bytes, at least 64: `{text}`")
    return int(text)


def _add_mcp(sub: argparse._SubParsersAction[_Parser]) -> None:
    mcp = sub.add_parser(
        "mcp",
        help="serve a run_command tool over MCP (stdio) under these rules",
        description=MCP_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_rule_args(mcp)
    _add_audit_arg(mcp)
    mcp.add_argument(
        "--timeout",
        type=_seconds,
        default=MCP_TIMEOUT,
        metavar="SECONDS",
        help="a call's timeout when it gives none, and the most it may ask for "
        f"(default: {MCP_TIMEOUT:g})",
    )
    mcp.add_argument(
        "--max-output",
        type=_bytes,
        default=MCP_MAX_OUTPUT,
        metavar="BYTES",
        help="answer at most this much of each of stdout and stderr: the head and the tail, "
        f"the cut said (default: {MCP_MAX_OUTPUT})",
    )
    _add_name_args(mcp)
