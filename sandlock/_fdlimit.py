"""The supervisor's own descriptor limit (no trio: the CLI's launch path imports it)."""

from __future__ import annotations

import resource

__all__ = ["raise_fd_limit"]


def raise_fd_limit() -> None:
    """Take every descriptor the hard limit allows: a daemon's clients cost a few each,
    a relayed connection (--verify-names, HTTP rules) up to six (two sockets, two pipes).
    Only in a process of sandlock's own: the command started before keeps the caller's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            pass
