"""``python -m bench.commit_hooks [--quick]``: what the commit-hook listeners cost a commit, and a hook.

Two figures, each against its peer in the same run, on SQLite in memory (the cheapest commit there is, so
the largest ratio; ``--file`` uses a SQLite file instead):

- **A commit with no hook**: ``add()`` one row and ``commit()`` in a new Session, with the listeners of
  ``flask_queue.commit_hooks`` installed on ``Session`` and with no listener at all, on the same engine.
  Rounds alternate between the two (the listeners are added and removed between rounds), and the report
  gives the median of the per-round times and the median of the per-pair ratios. Target: <= 3 %.
- **A registered hook**: the same commit with 10 and 100 no-op hooks registered, minus the commit with
  none, divided by the number of hooks (registering it, keeping it with the transaction, running it); and
  the first hook of a transaction (which also makes the session's state and the transaction's entry) on a
  commit that runs no SQL, since a single hook's microseconds are lost in the spread of a commit that
  writes a row on a shared machine. Target: <= 5 microseconds.

Times are this process's CPU time (``time.process_time``), so that other work on the shared machine
weighs less than it would on wall-clock time; short rounds, alternated, and medians do the rest. Read the
ratio of peers measured in the same rounds, not the absolute times.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

from flask_queue.commit_hooks import sqlalchemy as hooks

from . import _machine, _report

LISTENER_TARGET = 0.03
HOOK_TARGET_US = 5.0


class _Base(DeclarativeBase):
    pass


class _Row(_Base):
    __tablename__ = "bench_rows"

    id: Mapped[int] = mapped_column(primary_key=True)
    num: Mapped[int]


@dataclass(frozen=True)
class Config:
    rounds: int = 161  # pairs of rounds (with, without listeners), alternating
    commits: int = 100  # commits per round
    hook_rounds: int = 61
    hook_counts: tuple[int, ...] = (10, 100)
    file: bool = False


QUICK = Config(rounds=11, commits=50, hook_rounds=5)


def _engine(path: Path | None) -> Engine:
    if path is None:
        engine = create_engine("sqlite://", poolclass=StaticPool)
    else:
        engine = create_engine(f"sqlite:///{path}")
    _Base.metadata.create_all(engine)
    return engine


def _listeners(on: bool) -> None:
    """Install or remove the module's listeners (what its first on_commit() installs for good)."""
    pairs: list[tuple[str, Callable[..., None]]] = [
        ("after_commit", hooks._after_commit),
        ("after_transaction_end", hooks._after_transaction_end),
    ]
    for name, listener in pairs:
        if on and not event.contains(Session, name, listener):
            event.listen(Session, name, listener)
        elif not on and event.contains(Session, name, listener):
            event.remove(Session, name, listener)
    hooks._installed = on


def _noop() -> None:
    pass


def _commit_seconds(engine: Engine, commits: int, hook_count: int) -> float:
    """Seconds per commit of one new row, in a new Session, with ``hook_count`` hooks registered."""
    on_commit = hooks.on_commit
    gc.collect()
    start = time.process_time()
    for number in range(commits):
        with Session(engine) as session:
            session.add(_Row(num=number))
            for _ in range(hook_count):
                on_commit(_noop, session=session)
            session.commit()
    return (time.process_time() - start) / commits


def _empty_commit_seconds(engine: Engine, commits: int, hook_count: int = 0) -> float:
    """Seconds per begin() and commit() of a new Session that runs no SQL: the listeners' cost laid bare."""
    on_commit = hooks.on_commit
    gc.collect()
    start = time.process_time()
    for _ in range(commits):
        with Session(engine) as session:
            session.begin()
            for _ in range(hook_count):
                on_commit(_noop, session=session)
            session.commit()
    return (time.process_time() - start) / commits


def listener_cost(engine: Engine, config: Config, log: Callable[[str], None]) -> dict[str, Any]:
    with_listeners: list[float] = []
    without: list[float] = []
    ratios: list[float] = []
    empty_added: list[float] = []
    _commit_seconds(engine, config.commits, 0)  # warm up: caches, the SQLite page cache, the allocator
    for round_ in range(config.rounds):
        # Alternate which goes first, so a machine that speeds up or slows down favours neither.
        order = (True, False) if round_ % 2 == 0 else (False, True)
        figures: dict[bool, float] = {}
        empty: dict[bool, float] = {}
        for on in order:
            _listeners(on)
            figures[on] = _commit_seconds(engine, config.commits, 0)
            empty[on] = _empty_commit_seconds(engine, config.commits * 5)
        with_listeners.append(figures[True])
        without.append(figures[False])
        ratios.append(figures[True] / figures[False])
        empty_added.append(empty[True] - empty[False])
    _listeners(True)
    log(f"listeners: {config.rounds} pairs of {config.commits} commits")
    return {
        "with_us": statistics.median(with_listeners) * 1e6,
        "without_us": statistics.median(without) * 1e6,
        "ratio_of_medians": statistics.median(with_listeners) / statistics.median(without),
        "median_pair_ratio": statistics.median(ratios),
        "pair_ratio_range": (min(ratios), max(ratios)),
        "empty_commit_added_us": statistics.median(empty_added) * 1e6,
    }


def hook_cost(engine: Engine, config: Config, log: Callable[[str], None]) -> dict[str, Any]:
    """Per hook: (commit with n hooks - the mean of the commits with none just before and after) / n.

    Also for one hook on a commit that runs no SQL, where the commit's own cost is small and steady, so
    the figure for the first hook of a transaction (its state and entry are made then) is not lost in noise.
    """
    _listeners(True)
    added: dict[int, list[float]] = {count: [] for count in config.hook_counts}
    empty_added: list[float] = []
    baseline: list[float] = []
    for _ in range(config.hook_rounds):
        for count in config.hook_counts:
            before = _commit_seconds(engine, config.commits, 0)
            with_hooks = _commit_seconds(engine, config.commits, count)
            after = _commit_seconds(engine, config.commits, 0)
            baseline += [before, after]
            added[count].append((with_hooks - (before + after) / 2) / count)
        before = _empty_commit_seconds(engine, config.commits * 5)
        with_hooks = _empty_commit_seconds(engine, config.commits * 5, hook_count=1)
        after = _empty_commit_seconds(engine, config.commits * 5)
        empty_added.append(with_hooks - (before + after) / 2)
    log(f"hooks: {config.hook_rounds} rounds of {', '.join(map(str, config.hook_counts))} hooks per commit")
    return {
        "commit_us": statistics.median(baseline) * 1e6,
        "per_hook_us": {count: statistics.median(values) * 1e6 for count, values in added.items()},
        "per_hook_range_us": {count: (min(v) * 1e6, max(v) * 1e6) for count, v in added.items()},
        "first_hook_empty_commit_us": statistics.median(empty_added) * 1e6,
        "register_us": _register_us(engine),
    }


def _register_us(engine: Engine) -> float:
    """Microseconds per on_commit() call in an open transaction (registration alone)."""
    samples = []
    for _ in range(7):
        with Session(engine) as session:
            session.begin()
            start = time.process_time()
            for _ in range(10_000):
                hooks.on_commit(_noop, session=session)
            samples.append((time.process_time() - start) / 10_000)
            session.rollback()
    return statistics.median(samples) * 1e6


def run(config: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        engine = _engine(Path(folder) / "bench.db" if config.file else None)
        try:
            results = {
                "config": asdict(config),
                "machine": _machine.describe(),
                "database": "SQLite file" if config.file else "SQLite in memory",
                "listeners": listener_cost(engine, config, log),
                "hooks": hook_cost(engine, config, log),
            }
        finally:
            engine.dispose()
    return results


def report(results: dict[str, Any]) -> str:
    listeners, per_hook = results["listeners"], results["hooks"]
    low, high = listeners["pair_ratio_range"]
    ratio = listeners["median_pair_ratio"]
    # The listeners do the same work whatever the commit writes: their cost measured where little else
    # varies, over the commit of a row, is the ratio with the noise of the shared machine taken out.
    share = 1 + listeners["empty_commit_added_us"] / listeners["without_us"]
    rows = [
        ["commit, no listeners", _report.fmt(listeners["without_us"]), "1.000", "peer"],
        [
            "commit, listeners installed, no hook",
            _report.fmt(listeners["with_us"]),
            f"{ratio:.3f} ({low:.3f}-{high:.3f})",
            f"<= {1 + LISTENER_TARGET:.2f}: {'met' if ratio <= 1 + LISTENER_TARGET else 'MISSED'}",
        ],
        [
            "  the same, from the listeners' cost on a commit that runs no SQL",
            _report.fmt(listeners["without_us"] + listeners["empty_commit_added_us"]),
            f"{share:.3f}",
            f"<= {1 + LISTENER_TARGET:.2f}: {'met' if share <= 1 + LISTENER_TARGET else 'MISSED'}",
        ],
    ]
    for count, cost in per_hook["per_hook_us"].items():
        low_us, high_us = per_hook["per_hook_range_us"][count]
        rows.append(
            [
                f"each of {count} hook(s) in a commit",
                _report.fmt(cost, 2),
                f"rounds: {low_us:.2f} to {high_us:.2f} us",
                f"<= {HOOK_TARGET_US:.0f} us: {'met' if cost <= HOOK_TARGET_US else 'MISSED'}",
            ]
        )
    first = per_hook["first_hook_empty_commit_us"]
    rows.append(
        [
            "one hook in a commit that runs no SQL",
            _report.fmt(first, 2),
            "-",
            f"<= {HOOK_TARGET_US:.0f} us: {'met' if first <= HOOK_TARGET_US else 'MISSED'}",
        ]
    )
    rows.append(["on_commit() call alone", _report.fmt(per_hook["register_us"], 2), "-", "-"])
    lines = [
        f"Commit hooks on {results['database']} (Python {results['machine']['python']},"
        f" {results['machine']['cpus']} CPUs, load at start {results['machine']['loadavg_at_start'][0]:.2f})",
        "",
        _report.table(["what", "us (CPU)", "ratio to peer (pairs' range)", "target"], rows),
        "",
        f"ratio of the medians: {listeners['ratio_of_medians']:.3f}; what the listeners add to a commit that"
        f" runs no SQL (begin, commit): {listeners['empty_commit_added_us']:.2f} us (median of the pairs);"
        f" a commit with no hook in the hook rounds: {per_hook['commit_us']:.1f} us",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.commit_hooks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--file", action="store_true", help="a SQLite file instead of SQLite in memory")
    parser.add_argument("--rounds", type=int, help=f"pairs of rounds (default {Config.rounds})")
    parser.add_argument("--commits", type=int, help=f"commits per round (default {Config.commits})")
    args = parser.parse_args(argv)
    config = replace(QUICK if args.quick else Config(), file=args.file)
    if args.rounds:
        config = replace(config, rounds=args.rounds)
    if args.commits:
        config = replace(config, commits=args.commits)
    print("== commit_hooks ==", flush=True)
    results = run(config, log=lambda line: print(line, file=sys.stderr, flush=True))
    text = report(results)
    print(text)
    _report.save("commit_hooks", results, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
