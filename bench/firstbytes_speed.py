"""How long firstbytes.read takes on the first records --verify-names sees (pure; no I/O).

    .venv/bin/python bench/firstbytes_speed.py [--repeat 7] [--reference] [--cold] [--profile]

Inputs (tests/firstsamples.py): the ClientHello of Python's ssl (OpenSSL, SNI
example.com, no ALPN); curl's (7.88.1 with OpenSSL 3.0, ``curl https://example.com/``,
taken once through ``--unix-socket``: ALPN h2/http1.1, padding, 517 bytes); a 35-byte
and a 316-byte HTTP/1.1 request head. Each row: microseconds per call, the median of
``--repeat`` timeit repeats of about 0.2 s each (the first call, with its imports, made
before timing). ``--cold``: instead, single calls timed after the caches were filled with
other things (see cold_us), median of 20 x ``--repeat`` of them. ``--reference`` times
the pre-2026-12-05 reader kept in tests/_firstbytes_ref.py too, three times alternating
with the current one, so that both see the same machine load. ``--profile`` prints a
cProfile of each input instead.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandlock import firstbytes
from tests.firstsamples import CURL_HELLO, HTTP_LONG, HTTP_SHORT, ssl_hello


def inputs() -> dict[str, bytes]:
    return {
        "tls: Python ssl": ssl_hello("example.com"),
        "tls: curl": CURL_HELLO,
        "http: short head": HTTP_SHORT,
        "http: long head": HTTP_LONG,
    }


def warm_us(fn: Callable[[bytes], object], data: bytes, repeat: int) -> list[float]:
    """Per-call times of ``repeat`` timeit loops (each of >= 0.2 s): caches warm."""
    timer = timeit.Timer(lambda: fn(data))
    number, _ = timer.autorange()
    return [t / number * 1e6 for t in timer.repeat(repeat, number)]


_SRC, _DST = bytes(8 << 20), bytearray(8 << 20)
_JUNK = {f"k{i}": [i, str(i), {"x": i}] for i in range(2000)}


def cold_us(fn: Callable[[bytes], object], data: bytes, repeat: int) -> list[float]:
    """Times of single calls, each after 8 MiB copied and 2000 dicts through json: a
    rough stand-in for the supervisor, where a read comes between syscalls and trio's
    scheduling and finds the caches holding other things. 20 calls per repeat."""
    times = []
    for _ in range(20 * repeat):
        _DST[:] = _SRC
        json.loads(json.dumps(_JUNK))
        start = time.perf_counter_ns()
        fn(data)
        times.append((time.perf_counter_ns() - start) / 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--reference", action="store_true")
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    readers: dict[str, Callable[[bytes], object]] = {"current": firstbytes.read}
    if args.reference:
        from tests import _firstbytes_ref

        readers = {"reference": _firstbytes_ref.read, **readers}
    measure = cold_us if args.cold else warm_us
    for label, data in inputs().items():
        verdicts = {name: fn(data) for name, fn in readers.items()}  # (imports done here)
        if args.profile:
            print(f"== {label} ({len(data)} B): {verdicts['current']}")
            prof = cProfile.Profile()
            prof.runcall(lambda d=data: [firstbytes.read(d) for _ in range(20000)])
            pstats.Stats(prof).sort_stats("tottime").print_stats(12)
            continue
        times: dict[str, list[float]] = {}
        for _ in range(3 if args.reference else 1):  # (alternating: the same load for both)
            for name, fn in readers.items():
                times.setdefault(name, []).extend(measure(fn, data, args.repeat))
        cells = ", ".join(f"{name} {statistics.median(t):6.2f} us" for name, t in times.items())
        print(f"{label:18} {len(data):4} B  {cells}  -> {verdicts['current']}")


if __name__ == "__main__":
    main()
