"""The figures of the overload benchmark: what one open-loop run measured, and the report of them all.

Goodput is the 2xx answered within ``good_within`` (1 s) per second of schedule, as a fraction of ``C``;
latencies count from each request's scheduled send time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from . import _report
from .apps import PRIORITY_HEADER
from .loadgen import CLASS, ERROR, LAG, LATENCY, STATUS

#: The label of the request-queue runs (variants append to it).
QUEUE = "gunicorn + queue"


def summarize(result: dict[str, Any], duration: float, capacity: float, good_within: float) -> dict[str, Any]:
    """Per-class and overall figures of one open-loop run."""
    records = result["records"]
    summary: dict[str, Any] = {
        "sent": len(records),
        "send_rate": result["send_rate"],
        "lag_p99_ms": _ms(_report.percentile([r[LAG] for r in records], 0.99)),
        "lag_max_ms": _ms(max((r[LAG] for r in records), default=None)),
        "classes": {},
    }
    names = result["classes"]
    groups = [("all", records)]
    if len(names) > 1:
        groups += [(name, [r for r in records if r[CLASS] == i]) for i, name in enumerate(names)]
    for name, rows in groups:
        ok = [r[LATENCY] for r in rows if 200 <= r[STATUS] < 300]
        good = sum(1 for latency in ok if latency <= good_within)
        errors: dict[str, int] = {}
        for r in rows:
            if r[ERROR] and r[ERROR] != "timeout":
                errors[r[ERROR]] = errors.get(r[ERROR], 0) + 1
        summary["classes"][name] = {
            "sent": len(rows),
            "ok": len(ok),
            "good": good,
            "goodput": good / duration,
            "goodput_of_c": good / duration / capacity,
            "success": good / len(rows) if rows else 0.0,
            "p50_ms": _ms(_report.percentile(ok, 0.50)),
            "p99_ms": _ms(_report.percentile(ok, 0.99)),
            "rejected": sum(1 for r in rows if r[STATUS] == 503),
            # The middleware answers a rejection in microseconds once it sees the request: what a 503 takes
            # is the time the request spent in the server before the middleware saw it.
            "rejected_p50_ms": _ms(_report.percentile([r[LATENCY] for r in rows if r[STATUS] == 503], 0.50)),
            "other_status": sum(
                1 for r in rows if r[STATUS] and not 200 <= r[STATUS] < 300 and r[STATUS] != 503
            ),
            "timeouts": sum(1 for r in rows if r[ERROR] == "timeout"),
            "errors": errors,
        }
    return summary


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def one_line(run: dict[str, Any], cls: str) -> str:
    """A run's main figures for one class, for the progress log."""
    figures = run["classes"][cls]
    usage = run["usage"]
    return (
        f"goodput {figures['goodput']:.1f}/s ({figures['goodput_of_c']:.2f} C), "
        f"p99 {_report.fmt(figures['p99_ms'], 0)} ms, 503s {figures['rejected']}, "
        f"timeouts {figures['timeouts']}, errors {sum(figures['errors'].values())}; "
        f"CPU: server {usage['server']:.2f}, others {usage['others']:.2f}"
    )


def _rows(runs: list[dict[str, Any]], cls: str) -> Iterator[list[str]]:
    for r in runs:
        f = r["classes"][cls]
        yield [
            r["label"] if cls == "all" else f"{r['label']}, {cls}",
            f"{f['sent']}",
            _report.fmt(r["send_rate"] if cls == "all" else None),
            _report.fmt(f["goodput"]),
            _report.fmt(f["goodput_of_c"], 2),
            f"{100 * f['success']:.1f} %",
            _report.fmt(f["p50_ms"], 0),
            _report.fmt(f["p99_ms"], 0),
            f"{f['rejected']}",
            _report.fmt(f["rejected_p50_ms"], 0),
            f"{f['timeouts']}",
            f"{sum(f['errors'].values()) + f['other_status']}",
            _report.fmt(r["usage"]["server"], 2),
            _report.fmt(r["usage"]["others"], 2),
        ]


_HEADERS = [
    "server",
    "sent",
    "sent/s",
    "goodput/s",
    "x C",
    "ok <= 1 s",
    "p50 ms",
    "p99 ms",
    "503",
    "503 p50 ms",
    "timeouts",
    "errors",
    "server CPU",
    "others' CPU",
]


def _verdicts(results: dict[str, Any]) -> list[list[str]]:
    """One row per target of the issue, one column per request-queue run: the figure and whether it holds."""
    bound = results["service_ms"] + 1000 * results["config"]["queue_timeout"]

    def cells(
        runs: list[dict[str, Any]], cls: str, figure: Callable[[dict[str, Any]], tuple[str, bool]]
    ) -> list[str]:
        verdicts = [figure(r["classes"][cls]) for r in runs if r["label"].startswith(QUEUE)]
        return [f"{text} ({'met' if ok else 'MISSED'})" for text, ok in verdicts]

    rows = [
        [
            "goodput >= 0.9 x C",
            *cells(
                results["runs"], "all", lambda f: (f"{f['goodput_of_c']:.2f} x C", f["goodput_of_c"] >= 0.9)
            ),
        ],
        [
            "p99 of admitted <= service + queue timeout",
            *cells(
                results["runs"],
                "all",
                lambda f: (
                    f"{_report.fmt(f['p99_ms'], 0)} ms vs {bound:.0f} ms",
                    (f["p99_ms"] or 0.0) <= bound,
                ),
            ),
        ],
    ]
    if results["priority_runs"]:
        rows.append(
            [
                "important class succeeds >= 99 %",
                *cells(
                    results["priority_runs"],
                    "high",
                    lambda f: (f"{100 * f['success']:.1f} %", f["success"] >= 0.99),
                ),
            ]
        )
    return rows


def report(results: dict[str, Any]) -> str:
    """The overload tables and the verdict on each target, as markdown."""
    config = results["config"]
    capacity = results["capacity"]
    service = results["service_ms"]
    lines = [
        f"C = {capacity:.1f} req/s; unloaded service time {service:.1f} ms; "
        f"offered {results['offered']:.0f} req/s ({config['factor']:g} x C) for {config['duration']:g} s; "
        f"{config['threads']} threads per server; queue: concurrency={config['concurrency']}, "
        f"max_queue_size={config['max_queue_size']}, queue_timeout={config['queue_timeout']:g} s",
        "",
        _report.table(_HEADERS, list(_rows(results["runs"], "all"))),
    ]
    every_run = results["runs"] + results["priority_runs"]
    lag = max(r["lag_max_ms"] or 0.0 for r in every_run)
    lag99 = max(r["lag_p99_ms"] or 0.0 for r in every_run)
    cpu = max(r["usage"]["generator"] for r in every_run)
    costs = results["costs"]
    lines += [
        "",
        f"load generator: send lag p99 <= {lag99:.1f} ms (worst {lag:.1f} ms), at most {cpu:.2f} of a core; "
        f"C measured again after the runs: {results['capacity_after']:.1f} req/s "
        f"({results['capacity_after'] / capacity:.2f} x the first)",
        f"server CPU per request: served {costs['served_ms']:.2f} ms, rejected {costs['reject_ms']:.2f} ms, "
        f"which caps goodput at {config['factor']:g} x C at about {costs['ceiling']:.2f} x C",
    ]
    if results["priority_runs"]:
        lines += [
            "",
            f"priority: high class {config['high_share']:g} x C with {PRIORITY_HEADER}: high, the rest low",
            "",
            _report.table(
                ["server, class", *_HEADERS[1:]],
                [row for cls in ("high", "low") for row in _rows(results["priority_runs"], cls)],
            ),
        ]
    queued = [r for r in results["runs"] if r["label"].startswith(QUEUE)]
    lines += ["", _report.table(["target", *(r["label"] for r in queued)], _verdicts(results))]
    return "\n".join(lines)
