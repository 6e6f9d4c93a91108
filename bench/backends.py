"""Task backends: Flask-Queue's ``redis://`` and ``postgresql://`` backends against their peers, no-op jobs.

On Redis: RQ (its default ``Worker``, which forks per job, and ``SimpleWorker``), Dramatiq, Huey
(``RedisHuey``) and Celery (Redis broker; thread pool and prefork pool). On PostgreSQL: procrastinate and
Huey's ``SqlHuey``. One Redis and one PostgreSQL server for all, each system in a namespace of its own
(``bench._backends_system``). For every system, per repeat:

1. Enqueue rate: ``jobs`` enqueues, one call each (the system's usual one), from one thread of one
   process, no worker running.
2. Processing rate: with those jobs queued, the system's worker processes start, as a user starts them, at
   comparable concurrency (8 threads in one process, or 8 processes where the system runs one job per
   process: both RQ workers, Celery's prefork pool); the jobs over the time from the first job's start to
   the last one's. Every job is counted (``bench._backends_probe``): none may be lost, and the system's
   own bookkeeping must hold nothing afterwards.
3. Bulk enqueue rate, where the system has a bulk call: ``jobs`` jobs in calls of ``batch``, reported
   apart from the single enqueues (some "bulk" calls are loops; the table names each call).

Each measurement runs in a fresh process (``bench._backends_run``) that imports only the system it
measures. Within a repeat the systems of an engine run one after the other, the first rotating from one
repeat to the next. Figures are medians over the repeats; a ratio compares ours with the best peer (the
highest median), as the median of the repeats' ratios (each repeat's two figures were measured minutes
apart at most). Targets (issue 6): enqueue rate and processing rate >= the best peer, on each engine.
Run with ``python -m bench.backends`` (``--help`` lists the flags and their environment variables).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import _machine, _report
from ._backends_system import ENGINES, OURS, SYSTEMS, space_url
from ._cli import add_options, config_from

ROOT = Path(__file__).resolve().parent.parent
#: Ours over the best peer, on the enqueue and processing rates (issue 6).
MIN_RATIO = 1.0
#: The machine counts as calm below this many busy cores.
CALM_CORES = 0.5
#: The measures, with the key of their figure and whether the target applies.
MEASURES = {
    "enqueue/s": ("enqueue_rate", True),
    "processing/s": ("process_rate", True),
    "bulk enqueue/s": ("bulk_rate", False),
}


@dataclass
class BackendsConfig:
    """The knobs of the backend benchmark (each also a flag and a ``BENCH_<NAME>`` variable)."""

    jobs: int = 20_000  # jobs per measurement
    repeats: int = 3  # repeats of every measurement
    threads: int = 8  # concurrency of every system's workers (threads, or processes)
    batch: int = 1_000  # jobs per bulk enqueue call
    engines: str = "redis,postgres"  # which engines to run, comma-separated
    systems: str = ""  # only these systems, comma-separated (default: all of the engines')
    stall: float = 60.0  # seconds without any job run before the jobs left count as lost
    redis_url: str = "redis://127.0.0.1:6379"  # the server; each system uses a database among 10-14
    postgres_url: str = "postgresql://postgres@127.0.0.1:5432/test"  # where the systems' databases are made
    calm_wait: float = 10.0  # seconds to wait at most for a calm machine before each measurement ...
    spare_seconds: float = 60.0  # ... within this much extra time for the whole run


#: ``--quick``: a smoke run, about a minute.
QUICK = {"jobs": 500, "repeats": 1, "calm_wait": 0.0, "spare_seconds": 0.0}


# -- measuring -------------------------------------------------------------------------------------------------


def _measure(mode: str, name: str, config: BackendsConfig) -> dict[str, Any]:
    """One measurement in its own process; a failed one comes back as a problem with no figures."""
    settings = {
        "mode": mode,
        "system": name,
        "url": space_url(name, config.redis_url, config.postgres_url),
        "postgres_url": config.postgres_url,
        "jobs": config.jobs,
        "batch": config.batch,
        "threads": config.threads,
        "stall": config.stall,
    }
    command = [sys.executable, "-m", "bench._backends_run", json.dumps(settings)]
    with subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as child:
        try:
            stdout, stderr = child.communicate()
        except KeyboardInterrupt:
            # The child had the Ctrl-C too: let it stop its workers and drop its namespace (not subprocess.run,
            # which would kill it and leave its workers running).
            child.wait()
            raise
    lines = stdout.strip().splitlines()
    if child.returncode == 0 and lines:
        result: dict[str, Any] = json.loads(lines[-1])
        return result
    error = (stderr.strip().splitlines() or ["no output"])[-1]
    return {
        "system": name,
        "mode": mode,
        "problem": f"the measurement failed (exit {child.returncode}): {error}",
    }


def _reachable(engine: str, config: BackendsConfig) -> str | None:
    """Why an engine's server cannot be used, or ``None`` when it answers."""
    try:
        if engine == "redis":
            import redis

            client = redis.Redis.from_url(config.redis_url, socket_connect_timeout=3)
            try:
                client.ping()
            finally:
                client.close()
        else:
            import psycopg

            psycopg.connect(config.postgres_url, connect_timeout=3).close()
    except Exception as error:  # any failure to connect means: skip this engine, and say why
        return f"{engine} unreachable: {error}"
    return None


def _chosen(config: BackendsConfig) -> dict[str, list[str]]:
    engines = [engine.strip() for engine in config.engines.split(",") if engine.strip()]
    only = {name.strip() for name in config.systems.split(",") if name.strip()}
    unknown = [engine for engine in engines if engine not in ENGINES] + sorted(only - set(SYSTEMS))
    if unknown:
        raise SystemExit(
            f"unknown engine or system {unknown}; engines: {list(ENGINES)}, systems: {list(SYSTEMS)}"
        )
    return {engine: [name for name in ENGINES[engine] if not only or name in only] for engine in engines}


def _rotated(names: Sequence[str], repeat: int) -> list[str]:
    shift = repeat % len(names) if names else 0
    return [*names[shift:], *names[:shift]]


@contextlib.contextmanager
def _alone(log: Callable[[str], None]) -> Iterator[None]:
    """Hold the machine's lock of this benchmark: two runs at once would share (and flush) the namespaces."""
    with open(Path(tempfile.gettempdir()) / "flask-queue-bench-backends.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("  another bench.backends run is using the same databases: waiting for it to end ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # the lock goes with the file's closing


def run(config: BackendsConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole benchmark; returns every figure (see ``report`` for the tables)."""
    with _alone(log):
        return _run(config, log)


def _run(config: BackendsConfig, log: Callable[[str], None]) -> dict[str, Any]:
    budget = _machine.Budget(config.spare_seconds)
    machine = _machine.describe()
    chosen = _chosen(config)
    skipped = {engine: why for engine in chosen if (why := _reachable(engine, config))}
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {
        engine: {name: [] for name in names} for engine, names in chosen.items() if engine not in skipped
    }
    for why in skipped.values():
        log(f"  {why}: its systems are not measured")
    log(
        f"task backends: {config.jobs:,} no-op jobs, concurrency {config.threads}, repeats: {config.repeats};"
        f" bulk calls of {config.batch:,}"
    )
    for repeat in range(config.repeats):
        for by_name in raw.values():
            for name in _rotated(list(by_name), repeat):
                busy = _machine.wait_for_calm(CALM_CORES, config.calm_wait, budget, log)
                figures = _measure("process", name, config)
                if figures.get("bulk_call"):
                    bulk = _measure("bulk", name, config)
                    figures["bulk_rate"] = bulk.get("bulk_rate")
                    figures["bulk_others"] = bulk.get("others")
                    problems = [figures.get("problem"), bulk.get("problem")]
                    figures["problem"] = "; ".join(filter(None, problems)) or None
                figures["repeat"] = repeat
                figures["busy_before"] = busy
                by_name[name].append(figures)
                log(f"  repeat {repeat + 1}/{config.repeats} {name:<21} {_brief(figures)}")
    return {
        "config": asdict(config),
        "machine": {**machine, "ended": time.strftime("%Y-%m-%d %H:%M:%S %z")},
        "versions": _versions(config),
        "skipped": skipped,
        "raw": raw,
        "summary": summarize(raw),
    }


def _brief(figures: dict[str, Any]) -> str:
    rates = ", ".join(
        f"{label.removesuffix('/s')} {figures[key]:,.0f}/s"
        for label, (key, _) in MEASURES.items()
        if figures.get(key) is not None
    )
    text = f"{rates or 'no figures'}; others' CPU {_report.fmt(figures.get('others'), 2)}"
    if figures.get("problem"):
        text += f"; PROBLEM: {figures['problem']}"
    return text


def _versions(config: BackendsConfig) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("flask-queue", "rq", "dramatiq", "celery", "kombu", "huey", "procrastinate", "peewee",
                    "redis", "psycopg"):  # fmt: skip
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "?"
    try:
        import redis

        client = redis.Redis.from_url(config.redis_url, socket_connect_timeout=3)
        try:
            found["redis server"] = str(client.info("server")["redis_version"])
        finally:
            client.close()
    except Exception:  # a server that does not answer is already reported as skipped
        found["redis server"] = "?"
    try:
        import psycopg

        with psycopg.connect(config.postgres_url, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            found["postgresql server"] = str(row[0]) if row else "?"
    except Exception:  # as above
        found["postgresql server"] = "?"
    return found


# -- summing up ----------------------------------------------------------------------------------------------


def summarize(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Medians per system and measure, ours against the best peer, and every problem seen."""
    summary: dict[str, Any] = {"engines": {}, "problems": []}
    for engine, by_name in raw.items():
        ours = OURS[engine]
        medians: dict[str, dict[str, float | None]] = {}
        for name, runs in by_name.items():
            medians[name] = {
                label: _median([run[key] for run in runs if run.get(key) is not None])
                for label, (key, _) in MEASURES.items()
            }
            for run in runs:
                if run.get("problem"):
                    summary["problems"].append(f"{name}, repeat {run['repeat'] + 1}: {run['problem']}")
        comparisons = []
        for label, (key, targeted) in MEASURES.items():
            peers: dict[str, float] = {
                name: median
                for name, figures in medians.items()
                if name != ours and (median := figures[label]) is not None
            }
            if ours not in by_name or not peers:
                continue
            best = max(peers, key=peers.__getitem__)
            ratios = _ratios(by_name[ours], by_name[best], key)
            ratio = _median(ratios)
            comparisons.append(
                {
                    "measure": label,
                    "best_peer": best,
                    "ratio": ratio,
                    "ratios": ratios,
                    "target": MIN_RATIO if targeted else None,
                    "met": None if not targeted or ratio is None else ratio >= MIN_RATIO,
                }
            )
        summary["engines"][engine] = {"medians": medians, "comparisons": comparisons}
    return summary


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _ratios(ours: list[dict[str, Any]], theirs: list[dict[str, Any]], key: str) -> list[float]:
    """Per repeat, our figure over theirs."""
    by_repeat = {run["repeat"]: run.get(key) for run in theirs}
    return [
        run[key] / by_repeat[run["repeat"]]
        for run in ours
        if run.get(key) is not None and by_repeat.get(run["repeat"])
    ]


def _cell(runs: list[dict[str, Any]], key: str, median: float | None) -> str:
    values = [run.get(key) for run in runs]
    if median is None:
        return "-"
    return f"{median:,.0f} ({', '.join(_report.fmt(value, 0) for value in values)})"


def _jobs_cell(runs: list[dict[str, Any]]) -> str:
    ran = [run for run in runs if "ran" in run]
    if not ran:
        return "-"
    lost = sum(run["lost"] for run in ran)
    duplicates = sum(run["duplicates"] for run in ran)
    left = sum(run["left"] for run in ran)
    return f"{lost} lost, {duplicates} twice, {left} left"


_SYSTEM_HEADERS = ["system", "workers", "enqueue/s", "processing/s", "bulk enqueue/s", "bulk call",
                   "jobs (all repeats)", "workers' cores", "others' cores (max)"]  # fmt: skip


def report(results: dict[str, Any]) -> str:
    """The tables, as markdown: per engine, each system's rates, then ours against the best peer."""
    config = results["config"]
    lines = [
        f"{config['jobs']:,} no-op jobs per measurement, repeats: {config['repeats']} (medians, then each"
        f" repeat in brackets); bulk calls of {config['batch']:,} jobs; workers at concurrency"
        f" {config['threads']}. Processing: from the first job's start to the last one's, jobs already queued.",
    ]
    for engine, why in results["skipped"].items():
        lines += ["", f"{engine}: not measured ({why})"]
    for engine, figures in results["summary"]["engines"].items():
        by_name = results["raw"][engine]
        rows = []
        for name, runs in by_name.items():
            medians = figures["medians"][name]
            first: dict[str, Any] = next((run for run in runs if "concurrency" in run), {})
            rows.append(
                [
                    name,
                    first.get("concurrency", "-"),
                    _cell(runs, "enqueue_rate", medians["enqueue/s"]),
                    _cell(runs, "process_rate", medians["processing/s"]),
                    _cell(runs, "bulk_rate", medians["bulk enqueue/s"]),
                    first.get("bulk_call") or "none",
                    _jobs_cell(runs),
                    _report.fmt(_median([run["worker_cpu"] for run in runs if run.get("worker_cpu")]), 2),
                    _report.fmt(max((run["others"] for run in runs if run.get("others") is not None), default=None), 2),
                ]
            )  # fmt: skip
        lines += [
            "",
            f"### {engine}",
            "",
            _report.table(_SYSTEM_HEADERS, rows),
            "",
        ]
        rows = []
        for c in figures["comparisons"]:
            target = "-" if c["target"] is None else f">= {c['target']:g}"
            met = "-" if c["met"] is None else ("yes" if c["met"] else "NO")
            rows.append(
                [
                    f"{OURS[engine]} / {c['best_peer']}: {c['measure']}",
                    _report.fmt(c["ratio"], 2),
                    ", ".join(f"{r:.2f}" for r in c["ratios"]),
                    target,
                    met,
                ]
            )
        lines.append(_report.table(["ours / best peer", "median", "repeats", "target", "met"], rows))
    for problem in results["summary"]["problems"]:
        lines.append(f"\nPROBLEM: {problem}")
    lines.append("\n" + _report.run_line(results))
    return "\n".join(lines)


# -- command line --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.backends", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 500 jobs, once")
    add_options(parser, BackendsConfig())
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the benchmark, print its tables and keep its figures."""
    config = config_from(BackendsConfig(), _parser().parse_args(argv), QUICK)
    started = time.monotonic()
    print("== backends ==", flush=True)
    results = run(config, lambda line: print(line, flush=True))
    text = report(results)
    path = _report.save("backends", results, text)
    print(f"\n{text}\n\n(backends: {time.monotonic() - started:.0f} s; raw figures in {path})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
