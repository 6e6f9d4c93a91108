"""``python -m bench [overhead|overload|commit_hooks|tasks|backends|crash|dashboard|wsgiplus|scheduling]``:
run the benchmarks, print their tables, keep the raw figures.

``make bench`` runs them all with the issues' numbers (about 23 minutes, and about an hour more for
``backends``, whose slowest peers take minutes per 20,000 jobs); ``--quick`` is a smoke run of a few
seconds per step. Every duration can be set by a flag or, for ``make bench``, by the environment variable
named in ``--help``. Raw figures go to ``bench/results/`` (not committed); ``docs/benchmarks.md`` quotes them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import (
    _report,
    backends,
    commit_hooks,
    crash,
    dashboard,
    overhead,
    overload,
    scheduling,
    tasks,
    wsgiplus,
)
from ._cli import add_options, config_from

# Settings of a smoke run: each step lasts a few seconds, nothing is repeated.
_QUICK_OVERHEAD = {
    "rounds": 2,
    "round_seconds": 1.0,
    "repeats": 3,
    "repeat_seconds": 0.05,
    "spare_seconds": 0.0,
}
_QUICK_OVERLOAD = {
    "duration": 3.0,
    "capacity_seconds": 2.0,
    "timeout": 3.0,
    "retries": 0,
    "spare_seconds": 0.0,
}


#: Benchmarks run through their own ``main``, each with its own flags.
_OWN_FLAGS: dict[str, Callable[[list[str]], int]] = {
    "commit_hooks": commit_hooks.main,
    "tasks": tasks.main,
    "backends": backends.main,
    "crash": crash.main,
    "dashboard": dashboard.main,
    "wsgiplus": wsgiplus.main,
    "scheduling": scheduling.main,
}


def _section(
    name: str, run: Callable[[Any], dict[str, Any]], report: Callable[[dict[str, Any]], str], config: Any
) -> None:
    """Run one benchmark, print its report, and keep its figures."""
    started = time.monotonic()
    print(f"== {name} ==", flush=True)
    results = run(config)
    text = report(results)
    path = _report.save(name, results, text)
    print(f"\n{text}\n\n({name}: {time.monotonic() - started:.0f} s; raw figures in {path})\n", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the chosen benchmarks; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "which", nargs="?", choices=["all", "overhead", "overload", *_OWN_FLAGS], default="all"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: a few seconds per step")
    add_options(parser, overhead.OverheadConfig(), "overhead")
    # calm_wait and spare_seconds are in both configs: each has one flag, which sets both.
    add_options(parser, overload.OverloadConfig(), "overload", skip={"calm_wait", "spare_seconds"})
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.which in ("all", "overhead"):
        _section(
            "overhead",
            overhead.run,
            overhead.report,
            config_from(overhead.OverheadConfig(), args, _QUICK_OVERHEAD),
        )
    if args.which in ("all", "overload"):
        _section(
            "overload",
            overload.run,
            overload.report,
            config_from(overload.OverloadConfig(), args, _QUICK_OVERLOAD),
        )
    status = 0
    for name, module_main in _OWN_FLAGS.items():
        if args.which in ("all", name):
            # These take their settings from their own flags (python -m bench.<name> --help) and BENCH_*,
            # and print their own headings.
            status = module_main(["--quick"] if args.quick else []) or status
    print(f"done in {time.monotonic() - started:.0f} s", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
