"""Overload: what a CPU-bound endpoint delivers at 3x its capacity, with and without the request queue.

1. Capacity ``C``: a closed loop against bare gunicorn (gthread, one worker) on an endpoint that burns
   ``work_ms`` of pure-Python CPU; also its unloaded service time (one client at a time).
2. An open loop at ``factor x C`` for ``duration`` seconds against (a) bare gunicorn, (b) bare waitress, and
   (c) gunicorn with ``RequestQueueMiddleware`` around the same app, all with the same thread count.
3. Priority: an important class (``X-Priority: high``) at ``high_share x C`` plus the rest up to
   ``factor x C``, against (c) with a classifier and against bare gunicorn.

Goodput is the 2xx answered within ``good_within`` (1 s) per second of schedule, as a fraction of ``C``;
``bench._overload_figures`` computes the figures and the report.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Any

from . import _machine, _servers, loadgen
from ._overload_figures import QUEUE, one_line, report, summarize
from .apps import PRIORITY_HEADER, calibrate

__all__ = ["OverloadConfig", "report", "run"]

ServerFactory = Callable[..., AbstractContextManager[_servers.Server]]

#: A run starts once the machine uses fewer cores than this (about 0.15 is its idle background here) ...
CALM_CORES = 0.5
#: ... and is run again when other work used more than this while it sent.
DISTURBED_CORES = 0.5


@dataclass
class OverloadConfig:
    """The knobs of the overload benchmark; the defaults are the issue's numbers."""

    duration: float = 30.0  # seconds of open-loop schedule per run
    factor: float = 3.0  # offered load, in multiples of C
    work_ms: float = 10.0  # CPU cost of the endpoint
    threads: int = 16  # server threads, the same for every server
    capacity_seconds: float = 10.0  # closed-loop measurement of C
    timeout: float = 10.0  # client timeout per request
    good_within: float = 1.0  # a 2xx slower than this is not goodput
    concurrency: int = 1  # request queue: requests running at once
    max_queue_size: int = 4  # request queue: requests waiting for a slot
    queue_timeout: float = 0.5  # request queue: seconds a request may wait
    # The request queue once more with this sys.setswitchinterval in the server (0: skip that run). With
    # Python's 5 ms a CPU-bound view starves the server's accept loop of the GIL (see docs/benchmarks.md).
    switch_interval: float = 0.002
    high_share: float = 0.5  # priority run: the important class, in multiples of C
    waitress: bool = True
    priority: bool = True
    retries: int = 1  # runs again when disturbed by other work on the machine ...
    calm_wait: float = 10.0  # ... and waits at most this long for calm before each run ...
    spare_seconds: float = 60.0  # ... within this much extra time for the whole benchmark

    def queue_kwargs(self) -> dict[str, Any]:
        return {
            "queue": True,
            "concurrency": self.concurrency,
            "max_queue_size": self.max_queue_size,
            "queue_timeout": self.queue_timeout,
        }

    def queued_variants(self) -> list[tuple[str, dict[str, Any]]]:
        """The request-queue runs: as configured, and with the shorter switch interval."""
        variants = [(QUEUE, self.queue_kwargs())]
        if self.switch_interval:
            label = f"{QUEUE}, switch interval {1000 * self.switch_interval:g} ms"
            variants.append((label, {**self.queue_kwargs(), "switch_interval": self.switch_interval}))
        return variants


def measure_capacity(
    config: OverloadConfig,
    loops: int,
    budget: _machine.Budget,
    log: Callable[[str], None] = print,
    service_time: bool = True,
    seconds: float | None = None,
) -> dict[str, Any]:
    """C and (with ``service_time``) the unloaded service time, against bare gunicorn.

    C is a closed loop of ``threads`` clients, each request on a new connection as in the open loop, so C
    includes what a connection costs the server. The service time is the median latency of one client.
    """
    with _servers.gunicorn("gunicorn", "cpu_app", {"loops": loops}, threads=config.threads) as server:
        base = {"host": _servers.HOST, "port": server.port, "path": "/work", "timeout": config.timeout}
        single_spec = {**base, "mode": "closed", "concurrency": 1, "duration": 3.0, "warmup": 0.5}
        loaded_spec = {
            **base,
            "mode": "closed",
            "concurrency": config.threads,
            "duration": seconds or config.capacity_seconds,
            "warmup": 1.0,
        }
        _machine.wait_for_calm(CALM_CORES, config.calm_wait, budget, log)
        single = measured_load(single_spec, server)[0] if service_time else None
        loaded, usage = best_of(lambda: measured_load(loaded_spec, server), config, budget, log)
    return {
        "capacity": loaded["rps"],
        "service_ms": single["p50_ms"] if single else None,
        "closed_loop": loaded,
        "single_client": single,
        "usage": usage,
    }


def measure_rejection_cost(
    config: OverloadConfig, loops: int, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """The server CPU one rejected request costs: gunicorn + queue with its only slot held and no line.

    A closed loop of ``threads`` clients on ``/work`` then gets nothing but 503s, and the server's CPU
    divided by the answers is the cost of a rejection, connection handling included.
    """
    seconds = 4.0
    kwargs = {"loops": loops, "queue": True, "concurrency": 1, "max_queue_size": 0}
    with _servers.gunicorn("rejecting", "cpu_app", kwargs, threads=config.threads) as server:
        holder = threading.Thread(target=_hold, args=(server, seconds + 20.0), daemon=True)
        holder.start()
        deadline = time.monotonic() + 10.0
        while _server_stats(server)["lanes"]["default"]["running"] < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the request meant to hold the only slot was never admitted")
            time.sleep(0.05)
        spec = {
            "host": _servers.HOST,
            "port": server.port,
            "path": "/work",
            "timeout": config.timeout,
            "mode": "closed",
            "concurrency": config.threads,
            "duration": seconds,
        }
        result, usage = measured_load(spec, server)
    answered = max(1, result["completed"])
    return {
        "reject_ms": 1000.0 * usage["server"] * seconds / answered,
        "rejected": result["statuses"].get("503", 0),
        "answered": result["completed"],
        "usage": usage,
    }


def _hold(server: _servers.Server, seconds: float) -> None:
    connection = http.client.HTTPConnection(_servers.HOST, server.port, timeout=seconds + 5.0)
    try:
        connection.request("GET", f"/_bench/hold?seconds={seconds}")
        connection.getresponse().read()
    except OSError:
        pass  # the server was stopped under it: that is how this ends
    finally:
        connection.close()


def goodput_ceiling(capacity: float, served_cpu: float, reject_ms: float, factor: float) -> float:
    """The goodput (as a fraction of C) left when ``factor x C`` arrive and every extra one is rejected.

    The server has the CPU it had at capacity, ``served_cpu`` cores, for C requests a second; each of the
    ``factor x C - G`` rejected ones costs ``reject_ms``. Solving ``served_cpu = G x s + (factor x C - G) x r``
    for G, with ``s = served_cpu / C``.
    """
    r = reject_ms / 1000.0
    return (served_cpu - factor * capacity * r) / (served_cpu - capacity * r)


def measured_load(spec: dict[str, Any], server: _servers.Server) -> tuple[dict[str, Any], dict[str, float]]:
    """Run a load spec against ``server``; return its result and who used the CPU while it sent.

    ``server`` and ``generator`` are in cores (1.0 = one core busy), ``others`` is the rest of the
    machine: what the run had to share the 2 cores with.
    """
    window = float(spec["duration"]) + float(spec.get("warmup", 0.0))
    with loadgen.Generator(spec) as generator:
        watch = _machine.CpuWatch(server=server.pid, generator=generator.pid)
        # Read at the end of the schedule: a bare server goes on burning its backlog after it.
        time.sleep(window)
        usage = watch.read()
        result = generator.result()
    return result, usage


Measurement = tuple[dict[str, Any], dict[str, float]]


def best_of(
    run: Callable[[], Measurement],
    config: OverloadConfig,
    budget: _machine.Budget,
    log: Callable[[str], None],
) -> Measurement:
    """Run once, and again (up to ``config.retries`` times, budget allowing) if other work took the CPU.

    Keeps the least disturbed attempt, chosen by the other work's CPU, never by the figures themselves.
    """
    started = time.monotonic()
    attempts = [run()]
    took = time.monotonic() - started
    while attempts[-1][1]["others"] > DISTURBED_CORES and len(attempts) <= config.retries:
        if budget.left() < took:
            log(
                f"  disturbed: other work used {attempts[-1][1]['others']:.2f} cores meanwhile; no time left to retry"
            )
            break
        log(f"  disturbed: other work used {attempts[-1][1]['others']:.2f} cores meanwhile; once more")
        started = time.monotonic()
        _machine.wait_for_calm(CALM_CORES, config.calm_wait, budget, log)
        attempts.append(run())
        budget.spend(time.monotonic() - started)
    result, usage = min(attempts, key=lambda attempt: attempt[1]["others"])
    usage["attempts"] = len(attempts)
    return result, usage


def open_loop_run(
    start: ServerFactory,
    label: str,
    app_kwargs: dict[str, Any],
    classes: list[dict[str, Any]],
    config: OverloadConfig,
    capacity: float,
    budget: _machine.Budget,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """One open-loop run against a fresh server (once more if disturbed); returns its figures."""

    def attempt() -> Measurement:
        with start(label, "cpu_app", app_kwargs, threads=config.threads) as server:
            spec = {
                "mode": "open",
                "host": _servers.HOST,
                "port": server.port,
                "path": "/work",
                "timeout": config.timeout,
                "duration": config.duration,
                "classes": classes,
            }
            _machine.wait_for_calm(CALM_CORES, config.calm_wait, budget, log)
            result, usage = measured_load(spec, server)
            result["queue_stats"] = _server_stats(server) if app_kwargs.get("queue") else None
        return result, usage

    result, usage = best_of(attempt, config, budget, log)
    summary = summarize(result, config.duration, capacity, config.good_within)
    summary.update(label=label, usage=usage, queue_stats=result["queue_stats"])
    return summary


def _server_stats(server: _servers.Server) -> Any:
    with urllib.request.urlopen(server.url + "/_bench/stats", timeout=10) as response:
        return json.load(response)


def run(config: OverloadConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole overload benchmark; returns every figure (see ``report`` for the table)."""
    loops = calibrate(config.work_ms)
    log(f"calibrated: {loops} loops ~ {config.work_ms} ms of CPU")
    budget = _machine.Budget(config.spare_seconds)
    measured = measure_capacity(config, loops, budget, log)
    capacity = measured["capacity"]
    log(
        f"capacity C = {capacity:.1f} req/s (closed loop, {config.threads} clients); "
        f"unloaded service time {measured['service_ms']:.1f} ms"
    )
    offered = config.factor * capacity
    bare = {"loops": loops}
    one_class = [{"name": "all", "rate": offered}]
    targets: list[tuple[ServerFactory, str, dict[str, Any]]] = [(_servers.gunicorn, "gunicorn", bare)]
    if config.waitress:
        targets.append((_servers.waitress, "waitress", bare))
    for label, kwargs in config.queued_variants():
        targets.append((_servers.gunicorn, label, {"loops": loops, **kwargs}))
    runs = []
    for start, label, kwargs in targets:
        log(f"open loop at {offered:.0f} req/s for {config.duration:.0f} s: {label} ...")
        runs.append(open_loop_run(start, label, kwargs, one_class, config, capacity, budget, log))
        log("  " + one_line(runs[-1], "all"))
    priority_runs = []
    if config.priority:
        high = config.high_share * capacity
        classes = [
            {"name": "high", "rate": high, "headers": {PRIORITY_HEADER: "high"}},
            {"name": "low", "rate": offered - high},
        ]
        prioritized = [
            (label, {"loops": loops, **kwargs, "priority": True})
            for label, kwargs in config.queued_variants()
        ]
        for label, kwargs in [*prioritized, ("gunicorn", bare)]:
            log(f"priority run ({high:.0f} high + {offered - high:.0f} low req/s): {label} ...")
            priority_runs.append(
                open_loop_run(_servers.gunicorn, label, kwargs, classes, config, capacity, budget, log)
            )
            log("  high: " + one_line(priority_runs[-1], "high"))
    log("what a rejection costs the server, and C once more ...")
    costs = measure_rejection_cost(config, loops, log)
    served_ms = 1000.0 * measured["usage"]["server"] / capacity
    costs.update(
        served_ms=served_ms,
        ceiling=goodput_ceiling(capacity, measured["usage"]["server"], costs["reject_ms"], config.factor),
    )
    after = measure_capacity(
        config, loops, budget, log, service_time=False, seconds=config.capacity_seconds / 2
    )
    log(
        f"  a rejection costs {costs['reject_ms']:.2f} ms of server CPU, a served request {served_ms:.2f} ms: "
        f"goodput ceiling at {config.factor:g} x C ~ {costs['ceiling']:.2f} C; C after the runs "
        f"{after['capacity']:.1f} req/s"
    )
    return {
        "config": asdict(config),
        "machine": _machine.describe(),
        "loops": loops,
        **measured,
        "offered": offered,
        "runs": runs,
        "priority_runs": priority_runs,
        "costs": costs,
        "capacity_after": after["capacity"],
        "capacity_after_usage": after["usage"],
    }
