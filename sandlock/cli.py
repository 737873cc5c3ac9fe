"""The command line: ``sandlock run [rules] -- CMD [ARGS...]``.

Thin by design: arguments in, the policy built (every mistake is one line on stderr and
exit status 2, before anything starts), the command started, its exit status out.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence

from .errors import LaunchError, PolicyError, SandlockError

# typing costs a launch ~7 ms; the daemon client's path does without it at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

    from .audit import AuditLog
    from .learn import Learner
    from .names import NameOptions
    from .report import Observer

EXIT_USAGE = 2

RUN_DESCRIPTION = """\
Run CMD with its network egress limited to the destinations the rules allow.
connect, sendto, sendmsg and sendmmsg of CMD, its threads and all its descendants are
checked; a refused call fails with ECONNREFUSED and nothing leaves the machine.

A rule is  [SCHEME://]TARGET[:PORTS]
  SCHEME   tcp (the default), udp or icmp
  TARGET   *  (any address), an IP (127.0.0.1, ::1), a CIDR (10.0.0.0/8, fc00::/7)
           or a hostname (resolved once at start to all its A and AAAA addresses;
           --net-allow only). Write IPv6 with a port in brackets: [::1]:443
  PORTS    22,80,443 or * (all ports; also what no port means). icmp takes no port.

Each protocol is decided on its own: with no --net-allow rule for a protocol, that
protocol is denied. --net-deny is checked first and always wins. ::ffff:a.b.c.d is
a.b.c.d; 0.0.0.0 and :: count as loopback. AF_UNIX and netlink are not egress.
"""

RUN_EPILOG = """\
examples:
  sandlock run --net-allow example.com:443 -- curl https://example.com/
  sandlock run --net-allow 127.0.0.1:8080 --net-allow udp://127.0.0.1:53 \\
               --net-deny 127.0.0.2 -- curl http://127.0.0.1:8080/
  sandlock run --net-allow '*:443' --net-deny 10.0.0.0/8 -- ./build.sh
  sandlock run --net-allow 'icmp://*' -- ping -c1 127.0.0.1
  sandlock run -- ./offline-step          # no rule: no network at all

exit status: CMD's own, 128+N if signal N killed it, 2 for a bad rule or usage,
126/127 when CMD cannot be run.
"""


LEARN_DESCRIPTION = """\
Run CMD with all egress allowed (--net-deny rules still apply), then print on stderr
the smallest --net-allow list that covers what it did, grouped per protocol: the
hostname of a --net-allow rule where the address came from one, the IP otherwise.
Rules given with --net-allow are kept in the output.

example:
  sandlock learn --profile-out build.toml -- ./build.sh
  sandlock run --profile build.toml -- ./build.sh
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line, never a usage dump."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{self.prog}: {message} (see '{self.prog} --help')", EXIT_USAGE)


def _fail(message: str, code: int) -> NoReturn:
    print(
        f"sandlock: {message}" if not message.startswith("sandlock") else message, file=sys.stderr
    )
    raise SystemExit(code)


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
        help="refuse egress to RULE even where an allow rule matches "
        "(repeatable; IPs and CIDRs only)",
    )
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="read net_allow/net_deny lists from a TOML profile (added to the flags)",
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
        "--dns-upstream",
        metavar="IP[:PORT]",
        help="where every lookup goes, the start-up resolution included "
        "(default: the first nameserver of /etc/resolv.conf)",
    )
    g.add_argument(
        "--dns-ttl-min",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="a learned address stays allowed at least this long (default: 30)",
    )
    g.add_argument(
        "--dns-ttl-max",
        type=_seconds,
        default=3600.0,
        metavar="SECONDS",
        help="and at most this long, whatever its TTL (default: 3600)",
    )
    g.add_argument(
        "--no-virtual-hosts",
        dest="virtual_hosts",
        action="store_false",
        help="let CMD read the real /etc/hosts (by default it sees localhost and, when "
        "hostnames are resolved at start, one line per allowed address)",
    )


def _name_options(args: argparse.Namespace) -> NameOptions:
    from .names import NameOptions

    return NameOptions(
        virtual_hosts=args.virtual_hosts,
        dns_proxy=args.dns_proxy,
        dns_upstream=args.dns_upstream,
        ttl_min=args.dns_ttl_min,
        ttl_max=args.dns_ttl_max,
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
    run.add_argument(
        "--audit", metavar="PATH", help="append every decision to PATH as one JSON object per line"
    )
    run.add_argument(
        "--quiet", action="store_true", help="do not report denied destinations on stderr"
    )
    run.add_argument(
        "--summary",
        action="store_true",
        help="at exit, print a table of destinations, call counts and actions",
    )
    run.add_argument(
        "--daemon",
        metavar="PATH",
        default=os.environ.get("SANDLOCK_DAEMON"),
        help="let the daemon listening on PATH supervise CMD (default: $SANDLOCK_DAEMON; "
        "unset: supervise here)",
    )
    _add_name_args(run)
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
    ps.add_argument(
        "--daemon",
        metavar="PATH",
        default=os.environ.get("SANDLOCK_DAEMON"),
        help="the daemon's socket (default: $SANDLOCK_DAEMON)",
    )
    pol = sub.add_parser(
        "policy",
        help="replace the rules of a running sandbox",
        description="Replace the policy of sandbox ID (see `sandlock ps`) atomically; it "
        "decides from the sandbox's next call. The new rules replace all old ones.",
    )
    pol.add_argument(
        "--daemon",
        metavar="PATH",
        default=os.environ.get("SANDLOCK_DAEMON"),
        help="the daemon's socket (default: $SANDLOCK_DAEMON)",
    )
    pol.add_argument("id", metavar="ID", help="the sandbox, as `sandlock ps` shows it")
    _add_rule_args(pol)
    return parser


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``sandlock`` console script."""
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help(sys.stderr)
        raise SystemExit(EXIT_USAGE)
    handlers = {"run": _run, "learn": _run, "serve": _serve, "ps": _ps, "policy": _policy}
    try:
        code = handlers[args.command](args)
    except PolicyError as err:
        _fail(str(err), EXIT_USAGE)
    except LaunchError as err:
        _fail(str(err), err.exit_code)
    except SandlockError as err:
        _fail(str(err), 1)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    raise SystemExit(code)


def _run(args: argparse.Namespace) -> int:
    cmd = list(args.argv)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise LaunchError(
            "run: no command given (usage: sandlock run [RULES] -- CMD [ARGS...])",
            exit_code=EXIT_USAGE,
        )
    allow, deny = _rule_specs(args)
    for fd in args.keep_fds:
        try:
            os.fstat(fd)
        except OSError:
            raise LaunchError(
                f"--keep-fds: descriptor {fd} is not open", exit_code=EXIT_USAGE
            ) from None

    if args.command == "run" and args.daemon:
        from .client import run_via_daemon  # the daemon checks the rules: no policy here

        return run_via_daemon(
            args.daemon,
            cmd,
            allow,
            deny,
            keep_fds=args.keep_fds,
            audit=args.audit,
            quiet=args.quiet,
            summary=args.summary,
            names={  # names.NameOptions.to_wire(), without loading names.py here
                "virtual_hosts": args.virtual_hosts,
                "dns_proxy": args.dns_proxy,
                "dns_upstream": args.dns_upstream,
                "ttl_min": args.dns_ttl_min,
                "ttl_max": args.dns_ttl_max,
            },
        )

    learner = None
    names = None
    if args.command == "learn":
        from .learn import Learner

        learner = Learner(allow, deny)
        policy = learner.policy
    else:
        from .names import Plan

        plan = Plan(allow, deny, _name_options(args))
        policy = plan.policy
        names = plan.start(policy)

    from ._signals import FORWARDED_SIGNALS, open_signalfd
    from .launch import original_environ, start, wait_child

    observer = None
    child = None
    audit = None
    try:
        audit = _open_audit(args) if learner is None else None  # a bad path fails before start
        signal_fd = open_signalfd()
        child = start(
            cmd,
            env=original_environ(),
            keep_fds=args.keep_fds,
            unblock_signals=FORWARDED_SIGNALS,
            trap_open=names is not None and names.trap_open,
        )
        # The supervisor (and trio) start only when the command first makes a trapped
        # call: until then the notification simply waits in the kernel.
        status = wait_child(child, signal_fd, until_notified=True)
        if status is None:
            import trio

            from .runner import supervise
            from .supervisor import Supervisor

            observer = _observer(args, learner, audit)
            assert child.gate is not None
            remember = observer is None or not observer.hears_every_call
            sup = Supervisor(child.gate, policy, observer, remember=remember)
            if names is not None:
                sup.use_names(names, observer.dns if observer is not None else None)
            status = trio.run(lambda: supervise(child, sup, signal_fd=signal_fd))
        code = status
    finally:
        if child is not None:
            child.close()
        if names is not None:
            names.close()
        _finish_observer(observer, audit)
        if observer is None and getattr(args, "summary", False):
            print("sandlock: no network calls were decided", file=sys.stderr)
    if learner is not None:
        _finish_learning(learner, args.profile_out)
    return code


def _rule_specs(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The --net-allow and --net-deny specs, a --profile's first."""
    allow, deny = list(args.net_allow), list(args.net_deny)
    if args.profile:
        from .profile import load_profile

        more_allow, more_deny = load_profile(args.profile)
        allow, deny = more_allow + allow, more_deny + deny
    return allow, deny


def _need_daemon(args: argparse.Namespace) -> str:
    if not args.daemon:
        raise LaunchError(
            f"{args.command}: no daemon given (--daemon PATH or $SANDLOCK_DAEMON)",
            exit_code=EXIT_USAGE,
        )
    return str(args.daemon)


def _serve(args: argparse.Namespace) -> int:
    import trio

    from .daemon import serve

    trio.run(serve, args.socket)
    return 0


def _ps(args: argparse.Namespace) -> int:
    from .client import ps

    rows = [("ID", "PID", "RULES", "ALLOWED", "DENIED", "COMMAND")]
    for box in ps(_need_daemon(args)):
        rows.append(
            (
                box["id"],
                str(box["pid"]),
                str(box["rules"]),
                str(box["allowed"]),
                str(box["denied"]),
                " ".join(box["cmd"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    return 0


def _policy(args: argparse.Namespace) -> int:
    from .client import set_policy

    path = _need_daemon(args)
    set_policy(path, args.id, *_rule_specs(args))
    print(f"sandlock: policy of {args.id} replaced", file=sys.stderr)
    return 0


def _finish_learning(learner: Learner, profile_out: str | None) -> None:
    print(learner.render(), file=sys.stderr)
    if profile_out:
        from .profile import dump_profile

        text = dump_profile(learner.rules(), comment="written by sandlock learn")
        try:
            with open(profile_out, "w") as f:
                f.write(text)
        except OSError as err:
            raise LaunchError(
                f"--profile-out: cannot write {profile_out}: {err.strerror}", exit_code=1
            ) from None
        print(f"sandlock learn: wrote {profile_out}", file=sys.stderr)


def _open_audit(args: argparse.Namespace) -> AuditLog | None:
    if not args.audit:
        return None
    from .audit import AuditLog

    try:
        return AuditLog(args.audit)
    except OSError as err:
        raise LaunchError(
            f"--audit: cannot open {args.audit}: {err.strerror}", exit_code=EXIT_USAGE
        ) from None


def _observer(
    args: argparse.Namespace, learner: Learner | None, audit: AuditLog | None
) -> Observer | None:
    """The listener for this run's decisions (None when nobody wants them)."""
    from .report import DenialReport, Observer, Summary

    if learner is not None:
        return Observer("learn", also=learner)
    report = None if args.quiet else DenialReport()
    summary = Summary() if args.summary else None
    if audit is None and report is None and summary is None:
        return None
    import uuid

    return Observer(uuid.uuid4().hex[:8], audit=audit, report=report, summary=summary)


def _finish_observer(observer: Observer | None, audit: AuditLog | None) -> None:
    if audit is not None:
        audit.close()
    if observer is None:
        return
    if observer.report is not None:
        observer.report.close()
    if observer.summary is not None:
        print(observer.summary.render(), file=sys.stderr)
