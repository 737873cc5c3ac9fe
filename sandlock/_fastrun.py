"""The common `sandlock run` command lines, read without argparse.

argparse costs a start-up ~8 ms (it loads re, gettext and enum): a good part of what a
command run through the daemon costs. So these forms are read here instead:

    sandlock run [--daemon PATH] [--net-allow RULE]... [--net-deny RULE]...
                 [--unix-allow RULE]... -- CMD [ARGS...]

each option also as ``--option=VALUE``. The result is the namespace the parser makes of
the same arguments (tests/test_fastrun.py holds the two to that), so everything after
parsing is shared. Anything else (another option, ``-h``, an abbreviation, a value that
could be read as an option, no ``--``) gets None, and the parser reads it, with its own
help texts and error messages.
"""

from __future__ import annotations

from types import SimpleNamespace

from .plan import TTL_MAX, TTL_MIN

# typing costs a launch ~7 ms; the daemon client's path does without it at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


# Read by sandlock, never passed on to the command (which must not learn where the
# daemon listens, nor run its own sandlock under ours by accident, nor see which of
# _gatemode.py's modes answers it).
CONTROL_VARIABLES = ("SANDLOCK_DAEMON", "SANDLOCK_DAEMON_TIMEOUT", "SANDLOCK_GATE")


def command_environ(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without sandlock's control variables: what a command is started with."""
    return {k: v for k, v in env.items() if k not in CONTROL_VARIABLES}


def parse_run(argv: Sequence[str], environ: Mapping[str, str]) -> SimpleNamespace | None:
    """``build_parser().parse_args(argv)`` for the common `run` lines; None for the rest."""
    if not argv or argv[0] != "run":
        return None
    daemon = environ.get(CONTROL_VARIABLES[0])  # the parser's default for --daemon
    rules: dict[str, list[str]] = {"--net-allow": [], "--net-deny": [], "--unix-allow": []}
    i = 1
    while i < len(argv) and argv[i] != "--":
        option, eq, value = argv[i].partition("=")
        if not eq:
            # argparse refuses a missing value and reads one that starts with "-" its own
            # way (an option, a negative number): let it.
            if i + 1 == len(argv) or argv[i + 1].startswith("-"):
                return None
            i += 1
            value = argv[i]
        if option == "--daemon":
            daemon = value
        elif option in rules:
            rules[option].append(value)
        else:
            return None
        i += 1
    if i == len(argv):
        return None  # no "--": the parser finds where the command starts
    return SimpleNamespace(
        command="run",
        net_allow=rules["--net-allow"],
        net_deny=rules["--net-deny"],
        unix_allow=rules["--unix-allow"],
        profile=None,
        audit=None,
        quiet=False,
        summary=False,
        ask=False,
        ask_timeout=30.0,
        daemon=daemon,
        dns_proxy=None,
        dns_upstream=None,
        dns_ttl_min=TTL_MIN,
        dns_ttl_max=TTL_MAX,
        virtual_hosts=True,
        dns_allow_private=False,
        verify_names=False,
        http_allow=[],
        http_deny=[],
        http_ports=[],
        http_tls=False,
        http_upstream_ca=None,
        http_ca_out=None,
        keep_fds=[],
        argv=list(argv[i:]),  # with its "--", as argparse's REMAINDER keeps it
    )
