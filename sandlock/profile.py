"""TOML profiles: the rules of a sandbox in a file.

    # agent.toml
    net_allow = ["api.example.com:443", "udp://127.0.0.1:53"]
    net_deny = ["10.0.0.0/8"]
    unix_allow = ["/run/user/1000/ssh-agent.sock", "@my-proxy"]
    dns_allow_private = false   # true: --dns-allow-private (the rebinding guard off)
    verify_names = true         # --verify-names (experimental)
    ask = true                  # --ask: `sandlock run` prompts on the terminal (the API,
                                # the daemon and the MCP server have none: ignored there)
    http_allow = ["GET api.example.com/v1/*"]   # --http-allow (README: HTTP rules)
    http_deny = ["POST */upload"]               # --http-deny

``sandlock run --profile agent.toml`` and ``Sandbox.from_profile("agent.toml")`` read it;
``sandlock learn --profile-out FILE`` writes one.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Sequence
from typing import NamedTuple

from .errors import PolicyError

_KEYS = ("net_allow", "net_deny", "unix_allow", "http_allow", "http_deny")
_FLAGS = ("dns_allow_private", "verify_names", "ask")


class Profile(NamedTuple):
    """What a profile says."""

    net_allow: list[str]
    net_deny: list[str]
    unix_allow: list[str]
    dns_allow_private: bool
    verify_names: bool
    http_allow: list[str]
    http_deny: list[str]
    ask: bool = False


def load_profile(path: str | os.PathLike[str]) -> tuple[list[str], list[str], list[str]]:
    """The (net_allow, net_deny, unix_allow) lists of a profile (:func:`read_profile`)."""
    profile = read_profile(path)
    return profile.net_allow, profile.net_deny, profile.unix_allow


def read_profile(path: str | os.PathLike[str]) -> Profile:
    """Everything a profile says; PolicyError names what is wrong."""
    where = os.fspath(path)
    try:
        with open(where, "rb") as f:
            data = tomllib.load(f)
    except OSError as err:
        raise PolicyError(f"--profile: cannot read {where}: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise PolicyError(f"--profile: {where} is not valid TOML: {err}") from err
    unknown = sorted(set(data) - set(_KEYS) - set(_FLAGS))
    if unknown:
        raise PolicyError(
            f"--profile: {where}: unknown key `{unknown[0]}` "
            f"(expected {', '.join(_KEYS + _FLAGS)})"
        )
    lists = []
    for key in _KEYS:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise PolicyError(f"--profile: {where}: `{key}` must be a list of strings")
        lists.append(value)
    flags = []
    for key in _FLAGS:
        value = data.get(key, False)
        if not isinstance(value, bool):
            raise PolicyError(f"--profile: {where}: `{key}` must be true or false")
        flags.append(value)
    return Profile(
        lists[0], lists[1], lists[2], flags[0], flags[1], lists[3], lists[4], flags[2]
    )


def dump_profile(
    allow: Sequence[str],
    deny: Sequence[str] = (),
    comment: str = "",
    unix_allow: Sequence[str] = (),
    http_allow: Sequence[str] = (),
) -> str:
    """A profile's TOML text (strings written as JSON strings, which TOML accepts)."""
    lines = [f"# {line}" for line in comment.splitlines()]
    pairs = [("net_allow", allow), ("net_deny", deny)]
    if unix_allow:
        pairs.append(("unix_allow", unix_allow))
    if http_allow:
        pairs.append(("http_allow", http_allow))
    for key, values in pairs:
        items = "".join(f"    {json.dumps(v)},\n" for v in values)
        lines.append(f"{key} = [\n{items}]" if values else f"{key} = []")
    return "\n".join(lines) + "\n"
