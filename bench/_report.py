"""Figures and tables shared by the benchmarks: percentiles, markdown tables, and the results folder."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..1) of ``values``; ``None`` when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for a table cell; a dash when there is none."""
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table, columns padded so it also reads well on a terminal."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def run_line(results: dict[str, Any]) -> str:
    """What ran where and when: the versions of the systems, the machine, the times and the load at the start."""
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    machine = results["machine"]
    load = machine.get("loadavg_at_start") or [0.0]
    return (
        f"{versions}; Python {machine['python']}, {machine['cpus']} CPUs; run {machine['time']}"
        f" to {machine.get('ended', '?')}, load average {load[0]:.2f} at the start"
    )


def save(name: str, data: dict[str, Any], text: str) -> Path:
    """Write a run's raw figures (JSON) and its printed report under ``bench/results/`` (not committed)."""
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps(data, indent=1, default=str))
    (RESULTS / f"{name}-latest.md").write_text(text + "\n")
    return path
