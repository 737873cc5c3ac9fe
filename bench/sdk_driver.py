"""Drive a ``Sandbox`` SDK from a venv's own python: the peer's, or ours for in-process rows.

Run by bench/run.py as ``VENV_PYTHON bench/sdk_driver.py MODE JSON``; whichever
``sandlock`` that interpreter imports is the one measured (the peer lives only in
bench/.peer-venv; the product never imports it). Standard library only, besides the SDK.

Modes (JSON is one object):
  run      {"kwargs": {...}, "argv": [...]}: ``Sandbox(**kwargs).run(argv)``; the command's
           captured stdout/stderr are copied to ours and its exit status is ours.
  inproc   {"kwargs": {...}, "argv": [...], "count": N, "run_kwargs": {...}}: import the
           SDK, run argv once to warm up (``.run(argv, **run_kwargs)``), then time N more
           runs; prints a JSON list of seconds per run.
  native   {"argv": [...], "count": N, "capture": bool}: the same loop with
           subprocess.run (capture_output=capture) and no sandbox.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any


def _sandbox_runner(
    kwargs: dict[str, Any], run_kwargs: dict[str, Any]
) -> Callable[[Sequence[str]], Any]:
    from sandlock import Sandbox  # type: ignore[attr-defined,unused-ignore]

    def run(argv: Sequence[str]) -> Any:
        return Sandbox(**kwargs).run(list(argv), **run_kwargs)

    return run


def _exit_code(result: Any) -> int:
    code = getattr(result, "exit_code", result)
    return int(code) if code is not None else 1


def _check(result: Any) -> None:
    code = _exit_code(result)
    if code != 0:
        err = getattr(result, "stderr", b"") or b""
        reason = getattr(result, "error", None) or err.decode(errors="replace").strip()
        raise SystemExit(f"sdk_driver: sandboxed command exited {code}: {reason}")


def _timed(run: Callable[[Sequence[str]], Any], argv: Sequence[str], count: int) -> list[float]:
    _check(run(argv))
    times: list[float] = []
    for _ in range(count):
        t0 = time.perf_counter()
        result = run(argv)
        times.append(time.perf_counter() - t0)
        _check(result)
    return times


def _native_runner(capture: bool) -> Callable[[Sequence[str]], int]:
    import subprocess  # only here: the peer's process is what row 9 measures, keep it bare

    def run(argv: Sequence[str]) -> int:
        return subprocess.run(list(argv), check=False, capture_output=capture).returncode

    return run


def main(mode: str, spec: dict[str, Any]) -> int:
    argv: list[str] = spec["argv"]
    if mode == "native":
        run_native = _native_runner(bool(spec.get("capture")))
        print(json.dumps(_timed(run_native, argv, int(spec["count"]))))
        return 0
    try:
        run = _sandbox_runner(spec.get("kwargs", {}), spec.get("run_kwargs", {}))
    except ImportError as err:
        print(f"sdk_driver: no Sandbox API: {err}", file=sys.stderr)
        return 3
    if mode == "inproc":
        print(json.dumps(_timed(run, argv, int(spec["count"]))))
        return 0
    result = run(argv)
    if mode == "run":
        sys.stdout.buffer.write(getattr(result, "stdout", b"") or b"")
        sys.stderr.buffer.write(getattr(result, "stderr", b"") or b"")
        if getattr(result, "error", None):
            print(f"sdk_driver: {result.error}", file=sys.stderr)
    return _exit_code(result)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], json.loads(sys.argv[2])))
