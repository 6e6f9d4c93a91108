"""Task queue: Flask-Queue's ``TaskQueue`` against its peers, no-op jobs, everything in this one process.

1. ``memory://`` against Flask-Executor (a thread pool, the same number of threads): the enqueue rate
   (enqueue calls per second, with the workers running) and the end-to-end rate (from the first enqueue
   until every job has run); target >= 1.0 x Flask-Executor on both.
2. ``sqlite://`` (a file in a temporary folder) against Huey's ``SqliteHuey`` (its consumer, thread
   workers, in this process) and persist-queue's ``SQLiteAckQueue`` (N threads doing get/ack), every one in
   WAL mode with ``synchronous=NORMAL``: the enqueue rate with no consumer running, the ``enqueue_many``
   rate (peers without a bulk call loop over single enqueues, and the table says so), the processing rate
   (jobs already stored, consumers started, until all have run) and the end-to-end rate with the consumers
   running meanwhile; target >= 1.5 x Huey on the first three.
3. Latency from enqueue to the task's start with idle workers, p50 and p99, one job at a time, a few
   milliseconds apart; target p50 <= 5 ms for ``memory://`` and ``sqlite://``.
4. Once per run, what survives a SIGKILL for the SQLite systems (``bench._tasks_kill``): a child process is
   killed while it enqueues, then another while it processes, and the files are counted afterwards.

Each measurement is repeated; within a repeat the systems run one after the other (A, B, C), the first
rotating from one repeat to the next, each in a fresh folder with fresh threads. Figures are medians over
the repeats; a ratio is the median of the repeats' ratios (each repeat compares systems measured seconds
apart). Run with ``python -m bench.tasks`` (``--help`` lists the flags and their environment variables).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from . import _machine, _report, _tasks_kill
from ._cli import add_options, config_from
from ._tasks_systems import FACTORIES, PROBE, System

#: Targets from the issue.
MIN_MEMORY_RATIO = 1.0
MIN_SQLITE_RATIO = 1.5
MAX_P50_MS = 5.0
#: The machine counts as calm below this many busy cores (ours and everyone else's).
CALM_CORES = 0.5
#: Jobs run before a timed run with consumers, so that threads, connections and code paths are warm.
WARM_JOBS = 50

MEMORY = ("flask-queue memory", "flask-executor")
SQLITE = ("flask-queue sqlite", "huey", "persist-queue")
LATENCY = ("flask-queue memory", "flask-executor", "flask-queue sqlite", "huey", "persist-queue")


@dataclass
class TasksConfig:
    """The knobs of the task-queue benchmark (each also a flag and a ``BENCH_<NAME>`` variable)."""

    jobs: int = 20_000  # jobs per throughput measurement
    task_threads: int = 4  # worker / consumer / pool threads of every system
    task_repeats: int = 3  # repeats of every measurement
    memory_pairs: int = 3  # memory:// vs Flask-Executor pairs per repeat (the cheapest, noisiest figure)
    batch: int = 1_000  # jobs per enqueue_many call
    latency_samples: int = 500  # per system, spread over the repeats
    latency_spacing: float = 0.004  # mean seconds between two latency samples (jittered +-50 %)
    peer_sync: str = "normal"  # PRAGMA synchronous of the SQLite peers: normal (as ours), off, or default
    huey_poll: float = 0.01  # seconds between an idle Huey worker's polls (Huey's default: 0.1 to 10)
    sqlite_e2e: bool = True  # also measure SQLite end to end (consumers running while enqueueing)
    kill_check: bool = True  # SIGKILL a child process enqueueing / processing: what survives (once)
    calm_wait: float = 10.0  # seconds to wait at most for a calm machine before each repeat ...
    spare_seconds: float = 30.0  # ... within this much extra time for all repeats


#: ``--quick``: a smoke run of a few seconds.
QUICK = {
    "jobs": 2_000,
    "task_repeats": 2,
    "memory_pairs": 1,
    "latency_samples": 100,
    "latency_spacing": 0.002,
    "calm_wait": 0.0,
    "spare_seconds": 0.0,
}


# -- measuring -------------------------------------------------------------------------------------------------


class _Timed:
    """Wall time, this process's CPU and the rest of the machine's CPU over a measurement."""

    def __enter__(self) -> _Timed:
        self._watch = _machine.CpuWatch()
        self._cpu = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        usage = self._watch.read(bench=time.process_time() - self._cpu)
        self.cpu = usage["bench"]
        self.others = usage["others"]


def _open(name: str, config: TasksConfig, folder: Path, consumers: bool) -> System:
    system = FACTORIES[name](sync=config.peer_sync, huey_poll=config.huey_poll)
    system.open(folder, config.task_threads, consumers)
    return system


def _warm(system: System) -> None:
    PROBE.expect(WARM_JOBS)
    system.enqueue(WARM_JOBS)
    PROBE.wait()


def end_to_end(name: str, config: TasksConfig) -> dict[str, Any]:
    """Consumers running: enqueue ``jobs`` one by one, then wait until all have run."""
    n = config.jobs
    with tempfile.TemporaryDirectory(prefix="bench-tasks-") as folder:
        system = _open(name, config, Path(folder), consumers=True)
        try:
            _warm(system)
            PROBE.expect(n)
            with _Timed() as timed:
                started = time.perf_counter()
                system.enqueue(n)
                enqueued = time.perf_counter()
                PROBE.wait()
                done = time.perf_counter()
        finally:
            system.close()
    return {
        "enqueue_rate": n / (enqueued - started),
        "e2e_rate": n / (done - started),
        "seconds": done - started,
        "cpu": timed.cpu,
        "others": timed.others,
    }


def enqueue_alone(name: str, config: TasksConfig) -> dict[str, Any]:
    """No consumer running: enqueue ``jobs`` one by one."""
    n = config.jobs
    with tempfile.TemporaryDirectory(prefix="bench-tasks-") as folder:
        system = _open(name, config, Path(folder), consumers=False)
        try:
            with _Timed() as timed:
                started = time.perf_counter()
                system.enqueue(n)
                took = time.perf_counter() - started
            system.discard()
        finally:
            system.close()
    return {"enqueue_rate": n / took, "seconds": took, "cpu": timed.cpu, "others": timed.others}


def many_then_process(name: str, config: TasksConfig) -> dict[str, Any]:
    """No consumer running: ``enqueue_many`` ``jobs`` in batches; then start the consumers and time how long
    they take to run them all. The stored state is checked afterwards (every job done)."""
    n = config.jobs
    with tempfile.TemporaryDirectory(prefix="bench-tasks-") as folder:
        system = _open(name, config, Path(folder), consumers=False)
        try:
            with _Timed() as timed_many:
                started = time.perf_counter()
                system.enqueue_many(n, config.batch)
                many = time.perf_counter() - started
            PROBE.expect(n)
            with _Timed() as timed_run:
                started = time.perf_counter()
                system.start_consumers()
                PROBE.wait()
                processed = time.perf_counter() - started
            system.stop_consumers()
            problem = system.check(n)
            settings = system.settings()
        finally:
            system.close()
    return {
        "many_rate": n / many,
        "many_seconds": many,
        "many_cpu": timed_many.cpu,
        "many_others": timed_many.others,
        "process_rate": n / processed,
        "process_seconds": processed,
        "cpu": timed_run.cpu,
        "others": max(timed_many.others, timed_run.others),
        "problem": problem,
        "settings": settings,
    }


def latency(name: str, config: TasksConfig, *, samples: int) -> dict[str, Any]:
    """Idle consumers: enqueue one job, wait for it to start, pause a few ms; ``samples`` times."""
    rng = random.Random(samples)
    seconds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-tasks-") as folder:
        system = _open(name, config, Path(folder), consumers=True)
        try:
            _warm(system)
            time.sleep(0.05)
            with _Timed() as timed:
                for i in range(samples):
                    PROBE.expect(1)
                    started = time.perf_counter()
                    system.submit(i)
                    PROBE.wait(30.0)
                    seconds.append(PROBE.started - started)
                    time.sleep(config.latency_spacing * rng.uniform(0.5, 1.5))
        finally:
            system.close()
    return {"ms": [s * 1000.0 for s in seconds], "cpu": timed.cpu, "others": timed.others}


def _rotated(names: Sequence[str], repeat: int) -> list[str]:
    shift = repeat % len(names)
    return [*names[shift:], *names[:shift]]


def run(config: TasksConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole benchmark; returns every figure (see ``report`` for the tables)."""
    budget = _machine.Budget(config.spare_seconds)
    machine = _machine.describe()  # at the start: its load average is the one the run began with
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {
        "memory_e2e": {name: [] for name in MEMORY},
        "memory_alone": {"flask-queue memory": []},
        "sqlite_enqueue": {name: [] for name in SQLITE},
        "sqlite_many_process": {name: [] for name in SQLITE},
        "sqlite_e2e": {name: [] for name in SQLITE},
        "latency": {name: [] for name in LATENCY},
    }
    per_repeat = max(1, round(config.latency_samples / config.task_repeats))
    log(
        f"task queue: {config.jobs:,} no-op jobs, {config.task_threads} threads, {config.task_repeats} repeats;"
        f" jobs in {tempfile.gettempdir()} ({_filesystem(Path(tempfile.gettempdir()))})"
    )
    for repeat in range(config.task_repeats):
        busy = _machine.wait_for_calm(CALM_CORES, config.calm_wait, budget, log)
        log(f"  repeat {repeat + 1}/{config.task_repeats} (machine busy: {busy:.2f} cores)")
        # (part, system, pair within the repeat, measurement); a pair is what a ratio compares.
        steps: list[tuple[str, str, int, Callable[[str, TasksConfig], dict[str, Any]]]] = []
        for pair in range(config.memory_pairs):
            for name in _rotated(MEMORY, repeat * config.memory_pairs + pair):
                steps.append(("memory_e2e", name, pair, end_to_end))
        steps.append(("memory_alone", "flask-queue memory", 0, enqueue_alone))
        for name in _rotated(SQLITE, repeat):
            steps.append(("sqlite_enqueue", name, 0, enqueue_alone))
        for name in _rotated(SQLITE, repeat):
            steps.append(("sqlite_many_process", name, 0, many_then_process))
        if config.sqlite_e2e:
            for name in _rotated(SQLITE, repeat):
                steps.append(("sqlite_e2e", name, 0, end_to_end))
        for name in _rotated(LATENCY, repeat):
            steps.append(("latency", name, 0, partial(latency, samples=per_repeat)))
        for part, name, pair, measure in steps:
            figures = measure(name, config)
            figures["repeat"] = repeat
            figures["pair"] = pair
            raw[part][name].append(figures)
            log(f"    {part:<20} {name:<20} {_brief(figures)}")
    durability = {}
    if config.kill_check:
        log("  SIGKILL check: a child process enqueueing, then one processing, killed mid-way ...")
        durability = _tasks_kill.check(list(SQLITE), config.task_threads, config.peer_sync)
        for name, scenarios in durability.items():
            log(f"    {name:<20} {_kill_text(scenarios)}")
    return {
        "config": asdict(config),
        "machine": {
            **machine,
            "ended": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "job_folder": tempfile.gettempdir(),
            "job_filesystem": _filesystem(Path(tempfile.gettempdir())),
        },
        "versions": _versions(),
        "raw": raw,
        "durability": durability,
        "summary": summarize(raw, config),
    }


def _kill_text(scenarios: dict[str, Any]) -> str:
    e, p = scenarios["enqueue"], scenarios["process"]
    return (
        f"enqueueing: {e['acknowledged']} acknowledged, {e['stored']} stored;"
        f" processing: {p['done']} done, {p['stored']} still to run, {p['lost']} lost"
    )


def _brief(figures: dict[str, Any]) -> str:
    if "ms" in figures:
        ms = figures["ms"]
        text = f"p50 {_report.percentile(ms, 0.5):.2f} ms, p99 {_report.percentile(ms, 0.99):.2f} ms"
    else:
        text = ", ".join(
            f"{key.removesuffix('_rate')} {value:,.0f}/s"
            for key, value in figures.items()
            if key.endswith("_rate")
        )
    text += f" (others' CPU {figures['others']:.2f})"
    if figures.get("problem"):
        text += f" PROBLEM: {figures['problem']}"
    return text


def _filesystem(path: Path) -> str:
    """The type of the filesystem ``path`` is on (from ``/proc/mounts``): tmpfs would make "on disk" moot."""
    best, kind = "", "?"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    resolved = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if (
            len(parts) >= 3
            and (resolved == parts[1] or resolved.startswith(parts[1].rstrip("/") + "/"))
            and len(parts[1]) >= len(best)
        ):
            best, kind = parts[1], parts[2]
    return kind


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("flask-queue", "flask", "flask-executor", "huey", "persist-queue"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "?"
    import sqlite3

    found["sqlite"] = sqlite3.sqlite_version
    return found


# -- summing up ----------------------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _rates(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [run[key] for run in runs]


def _ratios(ours: list[dict[str, Any]], theirs: list[dict[str, Any]], key: str) -> list[float]:
    """Per repeat (and pair), our rate over theirs, both measured one right after the other."""
    by_pair = {(run["repeat"], run["pair"]): run[key] for run in theirs}
    return [
        run[key] / by_pair[run["repeat"], run["pair"]]
        for run in ours
        if (run["repeat"], run["pair"]) in by_pair
    ]


def summarize(raw: dict[str, Any], config: TasksConfig) -> dict[str, Any]:
    """Medians per system and metric, ratios against the peers, latency percentiles, and the targets."""
    rates: dict[str, dict[str, dict[str, Any]]] = {}

    def add(part: str, name: str, key: str, label: str) -> None:
        runs = raw[part][name]
        values = _rates(runs, key)
        rates.setdefault(label, {})[name] = {
            "median": _median(values),
            "values": values,
            "others_max": max((run["others"] for run in runs), default=None),
        }

    for name in MEMORY:
        add("memory_e2e", name, "enqueue_rate", "memory: enqueue/s (workers running)")
        add("memory_e2e", name, "e2e_rate", "memory: end to end/s")
    add("memory_alone", "flask-queue memory", "enqueue_rate", "memory: enqueue/s (no workers)")
    for name in SQLITE:
        add("sqlite_enqueue", name, "enqueue_rate", "sqlite: enqueue/s")
        add("sqlite_many_process", name, "many_rate", "sqlite: enqueue_many/s")
        add("sqlite_many_process", name, "process_rate", "sqlite: processing/s")
        if config.sqlite_e2e:
            add("sqlite_e2e", name, "e2e_rate", "sqlite: end to end/s")
            add("sqlite_e2e", name, "enqueue_rate", "sqlite: enqueue/s (consumers running)")

    comparisons = []

    def compare(part: str, key: str, label: str, ours: str, peer: str, target: float | None) -> None:
        ratios = _ratios(raw[part][ours], raw[part][peer], key)
        median = _median(ratios)
        comparisons.append(
            {
                "measure": label,
                "ours": ours,
                "peer": peer,
                "ratio": median,
                "ratios": ratios,
                "target": target,
                "met": None if target is None or median is None else median >= target,
            }
        )

    fq_mem, fq_sql = "flask-queue memory", "flask-queue sqlite"
    compare("memory_e2e", "enqueue_rate", "enqueue rate", fq_mem, "flask-executor", MIN_MEMORY_RATIO)
    compare("memory_e2e", "e2e_rate", "end-to-end rate", fq_mem, "flask-executor", MIN_MEMORY_RATIO)
    for peer, target in (("huey", MIN_SQLITE_RATIO), ("persist-queue", None)):
        compare("sqlite_enqueue", "enqueue_rate", "enqueue rate", fq_sql, peer, target)
        compare("sqlite_many_process", "many_rate", "enqueue_many rate", fq_sql, peer, target)
        compare("sqlite_many_process", "process_rate", "processing rate", fq_sql, peer, target)
        if config.sqlite_e2e:
            compare("sqlite_e2e", "e2e_rate", "end-to-end rate", fq_sql, peer, None)

    latencies = {}
    for name, runs in raw["latency"].items():
        pooled = [ms for run in runs for ms in run["ms"]]
        latencies[name] = {
            "samples": len(pooled),
            "p50": _report.percentile(pooled, 0.5),
            "p90": _report.percentile(pooled, 0.9),
            "p99": _report.percentile(pooled, 0.99),
            "max": max(pooled, default=None),
            "p50_per_repeat": [_report.percentile(run["ms"], 0.5) for run in runs],
            "others_max": max((run["others"] for run in runs), default=None),
            "target_p50": MAX_P50_MS if name.startswith("flask-queue") else None,
        }
    problems = [
        f"{name}, repeat {run['repeat'] + 1}: {run['problem']}"
        for name, runs in raw["sqlite_many_process"].items()
        for run in runs
        if run.get("problem")
    ]
    settings = {name: runs[-1]["settings"] for name, runs in raw["sqlite_many_process"].items() if runs}
    return {
        "rates": rates,
        "comparisons": comparisons,
        "latency": latencies,
        "problems": problems,
        "settings": settings,
    }


def report(results: dict[str, Any]) -> str:
    """The tables, as markdown: rates per system, ratios against the targets, latency, SQLite settings."""
    s = results["summary"]
    config = results["config"]
    lines = [
        f"{config['jobs']:,} no-op jobs per measurement, {config['task_threads']} threads per system,"
        f" {config['task_repeats']} repeats (medians; per repeat in brackets); enqueue_many in calls of"
        f" {config['batch']:,}; SQLite files in {results['machine']['job_folder']}"
        f" ({results['machine']['job_filesystem']}); peers' synchronous: {config['peer_sync']}",
        "",
    ]
    systems = [*MEMORY, *SQLITE]
    rows = []
    for label, by_system in s["rates"].items():
        for name in systems:
            if name not in by_system:
                continue
            figures = by_system[name]
            rows.append(
                [
                    label,
                    name,
                    _report.fmt(figures["median"], 0),
                    ", ".join(f"{v:,.0f}" for v in figures["values"]),
                    _report.fmt(figures["others_max"], 2),
                ]
            )
    lines.append(_report.table(["measure", "system", "median", "repeats", "others' CPU (max)"], rows))
    lines.append("")
    rows = []
    for c in s["comparisons"]:
        target = "-" if c["target"] is None else f">= {c['target']:g}"
        met = "-" if c["met"] is None else ("yes" if c["met"] else "NO")
        rows.append(
            [
                f"{c['ours']} / {c['peer']}: {c['measure']}",
                _report.fmt(c["ratio"], 2),
                ", ".join(f"{r:.2f}" for r in c["ratios"]),
                target,
                met,
            ]
        )
    lines.append(_report.table(["ratio", "median", "repeats", "target", "met"], rows))
    lines.append("")
    rows = []
    for name, figures in s["latency"].items():
        target = figures["target_p50"]
        met = (
            "-"
            if target is None
            else ("yes" if figures["p50"] is not None and figures["p50"] <= target else "NO")
        )
        rows.append(
            [
                name,
                str(figures["samples"]),
                _report.fmt(figures["p50"], 2),
                _report.fmt(figures["p90"], 2),
                _report.fmt(figures["p99"], 2),
                _report.fmt(figures["max"], 2),
                ", ".join(_report.fmt(v, 2) for v in figures["p50_per_repeat"]),
                "-" if target is None else f"<= {target:g}",
                met,
            ]
        )
    lines.append(
        _report.table(
            ["latency enqueue -> start", "samples", "p50 ms", "p90 ms", "p99 ms", "max ms", "p50 per repeat",
             "p50 target", "met"],
            rows,
        )
    )  # fmt: skip
    lines.append("")
    durability = results.get("durability") or {}
    rows = [
        [
            name,
            str(settings.get("journal_mode", "-")),
            str(settings.get("synchronous", "-")),
            str(settings.get("delivery", "-")),
            "yes" if FACTORIES[name]().bulk else "no: loops over single enqueues",
            _kill_text(durability[name]) if name in durability else "-",
        ]
        for name, settings in s["settings"].items()
    ]
    lines.append(
        _report.table(
            ["SQLite system", "journal", "synchronous", "delivery", "bulk enqueue", "SIGKILL of the process"],
            rows,
        )
    )
    for problem in s["problems"]:
        lines.append(f"\nPROBLEM: {problem}")
    lines.append("\n" + _report.run_line(results))
    return "\n".join(lines)


# -- command line --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.tasks", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: a few seconds")
    add_options(parser, TasksConfig())
    return parser


def config_from_args(args: argparse.Namespace) -> TasksConfig:
    """The config of the command line (see ``bench._cli.config_from``), its ``peer_sync`` checked."""
    config = config_from(TasksConfig(), args, QUICK)
    if config.peer_sync not in ("normal", "off", "default", "full"):
        raise SystemExit(f"--peer-sync must be normal, off, full or default, not {config.peer_sync!r}")
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the benchmark, print its tables and keep its figures."""
    config = config_from_args(_parser().parse_args(argv))
    started = time.monotonic()
    print("== tasks ==", flush=True)
    results = run(config, lambda line: print(line, flush=True))
    text = report(results)
    path = _report.save("tasks", results, text)
    print(f"\n{text}\n\n(tasks: {time.monotonic() - started:.0f} s; raw figures in {path})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
