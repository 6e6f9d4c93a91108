"""``python -m bench [overhead|overload|commit_hooks|tasks|wsgiplus]``: run the benchmarks, print their tables,
keep the raw figures.

``make bench`` runs them all with the issues' numbers (about 17 minutes); ``--quick`` is a smoke run of a few
seconds per step. Every duration can be set by a flag or, for ``make bench``, by the environment variable
named in ``--help``. Raw figures go to ``bench/results/`` (not committed); ``docs/benchmarks.md`` quotes them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import fields, replace
from typing import Any

from . import _report, commit_hooks, overhead, overload, tasks, wsgiplus

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
    "wsgiplus": wsgiplus.main,
}


def _add_options(
    parser: argparse.ArgumentParser, config: Any, group_title: str, skip: Collection[str] = ()
) -> None:
    """One ``--flag`` per field of a config dataclass (but those in ``skip``), documenting its env variable."""
    group = parser.add_argument_group(group_title)
    for field in fields(config):
        if field.name in skip:
            continue
        env = f"BENCH_{field.name.upper()}"
        default = getattr(config, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(default, bool):
            group.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"(env {env}; default {default})",
            )
        else:
            group.add_argument(
                flag, type=type(default), default=None, metavar="N", help=f"(env {env}; default {default})"
            )


def _config(config: Any, args: argparse.Namespace, quick: dict[str, Any]) -> Any:
    """The config with, from weakest to strongest: its defaults, ``--quick``, the environment, the flags."""
    values: dict[str, Any] = dict(quick) if args.quick else {}
    for field in fields(config):
        default = getattr(config, field.name)
        env = os.environ.get(f"BENCH_{field.name.upper()}")
        if env is not None:
            values[field.name] = (
                env.lower() in ("1", "true", "yes") if isinstance(default, bool) else type(default)(env)
            )
        flag = getattr(args, field.name)
        if flag is not None:
            values[field.name] = flag
    return replace(config, **values)


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
    _add_options(parser, overhead.OverheadConfig(), "overhead")
    # calm_wait and spare_seconds are in both configs: each has one flag, which sets both.
    _add_options(parser, overload.OverloadConfig(), "overload", skip={"calm_wait", "spare_seconds"})
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.which in ("all", "overhead"):
        config = _config(overhead.OverheadConfig(), args, _QUICK_OVERHEAD)
        _section("overhead", overhead.run, overhead.report, config)
    if args.which in ("all", "overload"):
        config = _config(overload.OverloadConfig(), args, _QUICK_OVERLOAD)
        _section("overload", overload.run, overload.report, config)
    status = 0
    for name, module_main in _OWN_FLAGS.items():
        if args.which in ("all", name):
            # These take their settings from their own flags (python -m bench.<name> --help) and BENCH_*.
            print(f"== {name} ==", flush=True)
            status = module_main(["--quick"] if args.quick else []) or status
    print(f"done in {time.monotonic() - started:.0f} s", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
