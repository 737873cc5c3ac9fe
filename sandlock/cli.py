"""The command line: ``sandlock run [rules] -- CMD [ARGS...]``.

Thin by design: arguments in, the policy built (every mistake is one line on stderr and
exit status 2, before anything starts), the command started, its exit status out.

The parser (argparse, _parser.py) is loaded only for lines _fastrun.py does not read:
that saves the common `run` lines ~8 ms each (argparse loads re, gettext, enum).
"""

from __future__ import annotations

import os
import sys

from ._fastrun import command_environ, parse_run
from .errors import LaunchError, SandlockError, UsageError

# typing costs a launch ~7 ms; the daemon client's path does without it at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from types import SimpleNamespace
    from typing import Any, NoReturn

    from .ask import Asker
    from .audit import AuditLog
    from .learn import Learner
    from .plan import NameOptions
    from .report import Observer

    # What the handlers get: the parser's namespace, or the same made by _fastrun.py.
    Args = argparse.Namespace | SimpleNamespace

EXIT_USAGE = 2
NO_CA = "--http-ca-out: there is no CA without --http-tls and an HTTP rule"


def _fail(message: str, code: int) -> NoReturn:
    print(
        f"sandlock: {message}" if not message.startswith("sandlock") else message, file=sys.stderr
    )
    raise SystemExit(code)


def _name_fields(args: Args) -> dict[str, Any]:
    """The hostname options, as plan.NameOptions takes them and its to_wire() gives them
    (the daemon's form)."""
    return {
        "virtual_hosts": args.virtual_hosts,
        "dns_proxy": args.dns_proxy,
        "dns_upstream": args.dns_upstream,
        "ttl_min": args.dns_ttl_min,
        "ttl_max": args.dns_ttl_max,
        "dns_allow_private": args.dns_allow_private,
        "verify_names": args.verify_names,
    } | _http_fields(args)


def _http_fields(args: Args) -> dict[str, Any]:
    """The HTTP rules' name options that are given (none: the wire form of before)."""
    fields = {
        "http_allow": list(getattr(args, "http_allow", ())),
        "http_deny": list(getattr(args, "http_deny", ())),
        "http_ports": list(_http_ports(getattr(args, "http_ports", ()))),
        "http_tls": bool(getattr(args, "http_tls", False)),
        "http_upstream_ca": getattr(args, "http_upstream_ca", None),
    }
    return {key: value for key, value in fields.items() if value not in ([], False, None)}


def _http_ports(specs: Sequence[str]) -> tuple[int, ...]:
    """--http-ports (PolicyError for a bad one); () for the default."""
    if not specs:
        return ()
    from .httprules import parse_ports

    return parse_ports(specs)


def _name_options(args: Args) -> NameOptions:
    from .plan import NameOptions

    return NameOptions(**_name_fields(args))


def build_parser() -> argparse.ArgumentParser:
    """The parser for every `sandlock` subcommand (loaded on demand: see _parser.py)."""
    from ._parser import build_parser

    return build_parser()


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``sandlock`` console script. Called from Python with ``argv``, it raises
    SystemExit as a parser would; as the script, a `run` leaves through _exit_now."""
    words = sys.argv[1:] if argv is None else list(argv)
    args: Args | None = parse_run(words, os.environ)  # None: not one of the common lines
    if args is None:
        try:
            args = build_parser().parse_args(words)
        except UsageError as err:  # the parser's, as "sandlock run: ..."
            _fail(str(err), EXIT_USAGE)
    if args.command is None:
        build_parser().print_help(sys.stderr)
        raise SystemExit(EXIT_USAGE)
    handlers = {
        "run": _run,
        "learn": _run,
        "serve": _serve,
        "ps": _ps,
        "policy": _policy,
        "audit": _audit,
        "mcp": _mcp,
    }
    try:
        code = handlers[args.command](args)
    except UsageError as err:  # PolicyError among them
        _fail(str(err), EXIT_USAGE)
    except LaunchError as err:
        _fail(str(err), err.exit_code)
    except SandlockError as err:
        _fail(str(err), 1)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    if argv is None and args.command in ("run", "learn"):
        _exit_now(code)
    raise SystemExit(code)


def _exit_now(code: int) -> NoReturn:
    """Exit without finalizing the interpreter, which frees every module and object one by
    one: 5-8 ms of each `run` that nobody waits for. By now all that `run` wrote is
    written or closed (audit logs, reports, the daemon's socket), bar what print() may
    have left in sys.stdout and sys.stderr."""
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:  # None when Python started with that fd closed
                stream.flush()
    except OSError:
        raise SystemExit(code) from None  # Python's own exit reports it, as it always did
    os._exit(code)


def _run(args: Args) -> int:
    cmd = list(args.argv)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UsageError("run: no command given (usage: sandlock run [RULES] -- CMD [ARGS...])")
    allow, deny, unix_allow = _rule_specs(args)
    if getattr(args, "audit", None):
        from ._cmdline import hide

        hide(args.audit)  # out of the command's sight in our /proc/PID/cmdline
    for fd in args.keep_fds:
        try:
            os.fstat(fd)
        except OSError:
            raise UsageError(f"--keep-fds: descriptor {fd} is not open") from None

    ask = args.command == "run" and getattr(args, "ask", False)
    if ask and args.daemon:
        raise UsageError(
            "run: --ask cannot be used with --daemon (the daemon supervises elsewhere and "
            "cannot prompt on this terminal); drop one of them"
        )
    if args.command == "run" and args.daemon:
        ca_out = getattr(args, "http_ca_out", None)
        if ca_out and not getattr(args, "http_tls", False):
            raise UsageError(NO_CA)
        from .client import run_via_daemon  # the daemon checks the rules: no policy here

        return run_via_daemon(
            args.daemon,
            cmd,
            allow,
            deny,
            unix_allow=unix_allow,
            keep_fds=args.keep_fds,
            audit=args.audit,
            quiet=args.quiet,
            summary=args.summary,
            names=_daemon_name_fields(args),
            ca_out=(lambda pem: _write_ca(ca_out, pem)) if ca_out else None,
        )

    learner = None
    names = None
    if args.command == "learn":
        from .learn import Learner

        learner = Learner(allow, deny, unix_allow=unix_allow)
        names = learner.http_names(_http_ports(getattr(args, "http_ports", ())))
        policy = learner.policy  # (with the relay's empty HTTP rules, if any)
    else:
        from .plan import make

        plan = make(allow, deny, _name_options(args), unix_allow=unix_allow)
        policy = plan.policy
        names = plan.start(policy)
        if getattr(args, "http_ca_out", None):
            if names is None or names.tls is None:
                raise UsageError(NO_CA)
            _write_ca(args.http_ca_out, names.tls.ca_pem)

    from .launch import original_environ
    from .session import Session

    audit: AuditLog | None = None
    asker, tty = _asker(args) if ask else (None, -1)
    session = Session(
        policy,
        names=names,
        observe=lambda: _observer(args, learner, audit),
        report_to=sys.stderr,
        asker=asker,
    )
    try:
        audit = _open_audit(args) if learner is None else None  # a bad path fails before start
        if audit is not None or getattr(args, "summary", False):
            session.observer()  # it has lines to say at exit even if nothing is decided
        # Otherwise the observer is made with the supervisor, on the command's first
        # trapped call: a command that makes none never loads either.
        session.start(
            cmd,
            env=command_environ(original_environ()),
            keep_fds=args.keep_fds,
            forward_signals=True,
        )
        if names is not None and (names.options.verify_names or names.http_ports is not None):
            from ._fdlimit import raise_fd_limit

            raise_fd_limit()  # (the relay's: the command, started, keeps the caller's limit)
        code = session.run()
    finally:
        session.close()
        if tty >= 0:
            os.close(tty)
    if learner is not None:
        _finish_learning(learner, args.profile_out)
    if asker is not None and asker.rules() and not args.quiet:
        print("sandlock: answered [a]lways for:", file=sys.stderr)
        for rule in asker.rules():
            print(f"  --net-allow {rule}", file=sys.stderr)
    return code


def _asker(args: Args) -> tuple[Asker, int]:
    """--ask: the run's answers, asked on the controlling terminal (UsageError: none)."""
    from ._tty import TtyPrompt, open_tty
    from .ask import Asker

    tty = open_tty()
    return Asker(TtyPrompt(tty, args.ask_timeout), args.ask_timeout), tty


def _write_ca(path: str, pem: bytes) -> None:
    """--http-ca-out: this run's CA certificate (public) to ``path``, before the command
    starts."""
    try:
        with open(path, "wb") as f:
            f.write(pem)
    except OSError as err:
        raise UsageError(f"--http-ca-out: cannot write {path}: {err.strerror}") from None


def _daemon_name_fields(args: Args) -> dict[str, Any]:
    """The name options for the daemon: --http-upstream-ca's file read here, as the
    caller (the daemon opens no path a client names), and sent as its text."""
    fields = _name_fields(args)
    path = fields.pop("http_upstream_ca", None)
    if path is None:
        return fields
    from ._wire import MAX_CA_TEXT

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CA_TEXT + 1)
    except OSError as err:
        raise UsageError(f"--http-upstream-ca: cannot read {path}: {err.strerror}") from None
    if len(data) > MAX_CA_TEXT:
        raise UsageError(
            f"--http-upstream-ca: {path} is longer than {MAX_CA_TEXT} bytes, the most a "
            "daemon takes (give the one CA the server needs, not a whole bundle)"
        )
    try:
        fields["http_upstream_ca_pem"] = data.decode("ascii")
    except UnicodeDecodeError:
        raise UsageError(f"--http-upstream-ca: {path} is not a PEM file (not text)") from None
    return fields


def _rule_specs(args: Args) -> tuple[list[str], list[str], list[str]]:
    """The --net-allow, --net-deny and --unix-allow specs, a --profile's first."""
    allow, deny, unix = list(args.net_allow), list(args.net_deny), list(args.unix_allow)
    if args.profile:
        from .profile import read_profile

        profile = read_profile(args.profile)
        allow, deny = profile.net_allow + allow, profile.net_deny + deny
        unix = profile.unix_allow + unix
        if profile.dns_allow_private:  # the profile's name options join the flags'
            args.dns_allow_private = True
        if profile.verify_names:
            args.verify_names = True
        if profile.ask and args.command == "run":  # (a prompt needs `run`'s terminal)
            args.ask = True
        if profile.http_allow or profile.http_deny:
            args.http_allow = profile.http_allow + list(getattr(args, "http_allow", ()))
            args.http_deny = profile.http_deny + list(getattr(args, "http_deny", ()))
    return allow, deny, unix


def _need_daemon(args: Args) -> str:
    if not args.daemon:
        raise UsageError(f"{args.command}: no daemon given (--daemon PATH or $SANDLOCK_DAEMON)")
    return str(args.daemon)


def _serve(args: Args) -> int:
    import trio

    from .daemon import serve

    trio.run(serve, args.socket)
    return 0


def _ps(args: Args) -> int:
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


def _policy(args: Args) -> int:
    from .client import set_policy

    path = _need_daemon(args)
    allow, deny, unix_allow = _rule_specs(args)  # (a --profile's HTTP lists join the flags)
    given = bool(args.http_allow or args.http_deny)  # neither: the HTTP rules stay
    set_policy(
        path,
        args.id,
        allow,
        deny,
        unix_allow,
        http_allow=list(args.http_allow) if given else None,
        http_deny=list(args.http_deny) if given else None,
    )
    print(f"sandlock: policy of {args.id} replaced", file=sys.stderr)
    return 0


def _mcp(args: Args) -> int:
    try:
        from .mcp_server import serve
    except ModuleNotFoundError as err:  # the extra's packages (mcp, anyio, pydantic)
        if err.name is None or err.name.startswith("sandlock"):
            raise
        raise UsageError(
            f"mcp: needs the mcp extra (no module {err.name}): pip install 'sandlock[mcp]'"
        ) from None
    allow, deny, unix_allow = _rule_specs(args)
    return serve(
        allow,
        deny,
        unix_allow,
        _name_options(args),
        audit=args.audit,
        timeout=args.timeout,
        max_output=args.max_output,
    )


def _finish_learning(learner: Learner, profile_out: str | None) -> None:
    print(learner.render(), file=sys.stderr)
    if profile_out:
        from .profile import dump_profile

        text = dump_profile(
            learner.rules(),
            comment="written by sandlock learn",
            unix_allow=learner.unix_rules(),
            http_allow=learner.http_rules(),
        )
        try:
            with open(profile_out, "w") as f:
                f.write(text)
        except OSError as err:
            raise LaunchError(
                f"--profile-out: cannot write {profile_out}: {err.strerror}", exit_code=1
            ) from None
        print(f"sandlock learn: wrote {profile_out}", file=sys.stderr)


def _open_audit(args: Args) -> AuditLog | None:
    if not args.audit:
        return None
    from .audit import AuditLog

    try:
        return AuditLog(args.audit)
    except OSError as err:
        raise UsageError(f"--audit: cannot open {args.audit}: {err.strerror}") from None


def _observer(args: Args, learner: Learner | None, audit: AuditLog | None) -> Observer | None:
    """The listener for this run's decisions (None when nobody wants them)."""
    from .report import DenialReport, Observer, Summary

    if learner is not None:
        return Observer("learn", also=learner, records=learner.http_record)
    report = None if args.quiet else DenialReport()
    summary = Summary() if args.summary else None
    if audit is None and report is None and summary is None:
        return None
    sandbox_id = os.urandom(4).hex()  # as the API's uuid4().hex[:8]; uuid costs ~4 ms
    return Observer(sandbox_id, audit=audit, report=report, summary=summary)


def _audit(args: Args) -> int:
    """`sandlock audit verify FILE [--head HEAD]...`: 0 intact, 1 not, 2 usage."""
    from .auditverify import verify_lines

    try:
        with open(args.file, "rb") as f:
            data = f.read()
    except OSError as err:
        raise UsageError(f"audit verify: cannot read {args.file}: {err.strerror}") from None
    verdict = verify_lines(data, args.head)
    for line in verdict.lines:
        print(line)
    print(f"{args.file}: {verdict.summary()}")
    return 0 if verdict.ok else 1
