"""WSGI+: a view that waits on a slow upstream, served by the WSGIPlusWorker and by its peers, in one run.

``python -m bench.wsgiplus [--quick]``. Every server is gunicorn with one worker, serving the same Flask app
(``bench._wsgiplus_apps``) that calls a real loopback upstream (``bench._wsgiplus_upstream``, an asyncio
server in a process of its own, answering after a delay):

- ``wsgiplus-4``: ``WSGIPlusWorker``, 4 threads; the view awaits the upstream through ``@suspendable`` +
  ``run_async`` with a keep-alive client on plain asyncio streams, the async counterpart of the blocking
  servers' ``http.client``, on the default event loop (``WSGI_PLUS_EVENT_LOOP=auto``: uvloop's, which the
  dev install has). Section 1 also runs ``wsgiplus-4-asyncio``, the same on asyncio's own loop, and
  ``wsgiplus-4-aiohttp``, the same with aiohttp;
- ``gthread-4``, ``gthread-256``: gthread with 4 and 256 threads, a blocking ``http.client`` call;
- ``gevent``: the gevent worker, the same blocking code (gevent patches the socket module).

1. **Waiting view**: upstream 200 ms, 200 concurrent keep-alive clients (wrk, closed loop): throughput and
   p99 of each server. Targets: wsgiplus >= 20 x gthread-4, >= 0.9 x gevent, p99 <= 1.5 x 200 ms.
2. **No-wait view**: a view that returns at once, wsgiplus-4 against gthread-4 (8 wrk connections),
   alternating in short rounds; the median ratio. Target >= 0.95.
3. **1,000 parked requests**: 1,000 requests in flight at once on an upstream that waits seconds; the
   worker's peak RSS, wsgiplus-4 against gthread with 1,000 threads. Target <= 0.8 x.
4. **Brownout**: an open loop (new connection per request, 10 % of it to ``/health``, which does not touch
   the upstream) while the upstream goes 100 ms -> 5 s -> 100 ms; ``/health`` p99 in the slow phase.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flask_queue import wsgiplus

from . import _machine, _report, _servers, loadgen
from ._cli import add_options, config_from
from ._wsgiplus_load import finish_burst, start_burst, wrk
from .overhead import ensure_wrk

__all__ = ["WSGIPlusConfig", "main", "report", "run"]

WORKER = "flask_queue.gunicorn.WSGIPlusWorker"
CALM_CORES = 0.6

#: Targets from the issue.
MIN_VS_GTHREAD4 = 20.0
MIN_VS_GEVENT = 0.9
MAX_P99_FACTOR = 1.5
MIN_NOWAIT_RATIO = 0.95
MAX_RSS_RATIO = 0.8


@dataclass
class WSGIPlusConfig:
    """The knobs of the WSGI+ benchmark; the defaults are the issue's numbers."""

    upstream_ms: int = 200  # 1. the upstream's delay
    connections: int = 200  # 1. concurrent clients (wrk connections)
    duration: float = 10.0  # 1. seconds of load per server, after ...
    warmup: float = 2.0  # ... this much unmeasured load (as many connections) ...
    drain_wait: float = 30.0  # ... then up to this long for the server to work off what it left queued
    threads: int = 4  # threads of wsgiplus and of the small gthread
    big_threads: int = 256  # threads of the big gthread
    nowait_rounds: int = 8  # 2. rounds, each with fresh servers loaded in turn ...
    nowait_seconds: float = 3.0  # 2. ... for this many one-second slices each
    nowait_connections: int = 8  # 2. wrk connections
    parked: int = 1000  # 3. requests in flight at once
    parked_upstream_ms: int = 5000  # 3. the upstream's delay meanwhile
    brownout_rate: float = 200.0  # 4. requests per second offered, 10 % of them /health
    brownout_normal_ms: int = 100  # 4. the upstream's delay before and after ...
    brownout_slow_ms: int = 5000  # 4. ... the slow phase
    brownout_phase: float = 6.0  # 4. seconds before and after the slow phase
    brownout_slow: float = 10.0  # 4. seconds of slow phase
    brownout_timeout: float = 20.0  # 4. client timeout
    only: str = "waiting,nowait,parked,brownout"  # the measurements to run (comma-separated)
    calm_wait: float = 10.0  # seconds to wait at most for the machine to calm down before a run ...
    spare_seconds: float = 60.0  # ... within this much extra time for the whole benchmark


QUICK = {
    "duration": 3.0,
    "warmup": 1.0,
    "drain_wait": 10.0,
    "nowait_rounds": 2,
    "nowait_seconds": 1.0,
    "parked": 300,
    "parked_upstream_ms": 3000,
    "brownout_rate": 100.0,
    "brownout_phase": 2.0,
    "brownout_slow": 4.0,
    "brownout_timeout": 8.0,
    "calm_wait": 2.0,
    "spare_seconds": 10.0,
}

#: label -> (worker class, threads setting name or fixed, client of the app)
SERVERS = ("wsgiplus-4", "gthread-4", "gthread-256", "gevent")
#: Section 1 also runs the WSGI+ view with aiohttp, the async client an application would likely use.
WAITING_SERVERS = (
    "wsgiplus-4",
    "wsgiplus-4-asyncio",
    "wsgiplus-4-aiohttp",
    "gthread-4",
    "gthread-256",
    "gevent",
)


# -- processes -----------------------------------------------------------------------------------------------


@contextmanager
def upstream(delay_ms: int) -> Iterator[int]:
    """The slow upstream on a free loopback port, in a process of its own; yields the port."""
    port = _servers.free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench._wsgiplus_upstream", str(port), str(delay_ms)],
        cwd=_servers.ROOT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                set_delay(port, delay_ms)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the upstream did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def set_delay(port: int, delay_ms: int) -> None:
    """Change how long the upstream waits before answering (requests arriving from now on)."""
    connection = http.client.HTTPConnection(_servers.HOST, port, timeout=5)
    try:
        connection.request("GET", f"/control?delay_ms={delay_ms}")
        connection.getresponse().read()
    finally:
        connection.close()


def _worker_args(label: str, config: WSGIPlusConfig) -> tuple[str, int, str, list[str]]:
    """(worker class, threads, client, more gunicorn arguments) of a server label such as ``gthread-256`` or
    ``wsgiplus-4-aiohttp`` (``wsgiplus-4-asyncio``: the streams client on asyncio's loop)."""
    kind, _, rest = label.partition("-")
    threads, _, client = rest.partition("-")
    if kind == "wsgiplus":
        if client == "asyncio":
            return WORKER, int(threads), "streams", ["--env", f"{wsgiplus.EVENT_LOOP_ENV}=asyncio"]
        return WORKER, int(threads), client or "streams", []
    if kind == "gthread":
        return "gthread", int(threads), "blocking", []
    if kind == "gevent":
        return "gevent", 1, "blocking", []
    raise ValueError(f"unknown server {label!r}")


@contextmanager
def server(label: str, upstream_port: int, config: WSGIPlusConfig) -> Iterator[_servers.Server]:
    """gunicorn, one worker, of the kind the label names, serving the benchmark app."""
    worker_class, threads, client, more = _worker_args(label, config)
    port = _servers.free_port()
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{_servers.HOST}:{port}",
        "--workers",
        "1",
        "--worker-class",
        worker_class,
        "--threads",
        str(threads),
        # Room for every request of the 1,000-parked run, and kept-alive connections besides.
        "--worker-connections",
        "4000",
        "--backlog",
        "4096",
        "--graceful-timeout",
        "1",
        "--timeout",
        "120",
        "--log-level",
        "warning",
        "--chdir",
        str(_servers.ROOT),
    ]
    if _servers.gunicorn_has_no_control_socket():
        command.append("--no-control-socket")
    command += more
    command.append(f"bench._wsgiplus_apps:create(upstream={upstream_port}, client={client!r})")
    with _servers._process(label, command, port) as running:
        yield running


def worker_pid(master: int) -> int | None:
    """The pid of the (single) worker process of a gunicorn master."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields_ = text[text.rindex(")") + 2 :].split()
        if int(fields_[1]) == master:
            return int(stat.parent.name)
    return None


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


# -- the four measurements ---------------------------------------------------------------------------------


def waiting_view(
    config: WSGIPlusConfig,
    upstream_port: int,
    wrk_path: str,
    budget: _machine.Budget,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """1. 200 concurrent clients on the view that waits ``upstream_ms`` on the upstream."""
    set_delay(upstream_port, config.upstream_ms)
    results: dict[str, Any] = {}
    for label in WAITING_SERVERS:
        with server(label, upstream_port, config) as running:
            url = running.url + "/wait"
            # As many connections as the run, so that it starts on a warm server (the app's pools of upstream
            # connections full); then wait until the server has worked off what the warm-up left queued
            # (gthread-4 takes seconds), so that the run measures the server, not the warm-up's backlog.
            wrk(wrk_path, url, config.connections, config.warmup)
            if not _idle(running.url, config.drain_wait):
                log(
                    f"  {label}: still working off the warm-up after {config.drain_wait:g} s; measuring anyway"
                )
            _machine.wait_for_calm(CALM_CORES, config.calm_wait, budget, log)
            watch = _machine.CpuWatch(server=running.pid)
            figures = wrk(wrk_path, url, config.connections, config.duration)
            figures["usage"] = watch.read()
            figures["cpu_ms_per_request"] = (
                1000 * figures["usage"]["server"] / figures["rps"] if figures["rps"] else None
            )
        results[label] = figures
        log(
            f"  {label:12} {figures['rps']:8,.0f} req/s  p99 {figures.get('p99_ms', 0):8,.0f} ms  "
            f"server CPU {figures['usage']['server']:.2f} cores, others {figures['usage']['others']:.2f}"
        )
    return results


def _idle(base_url: str, within: float, fast: float = 0.1) -> bool:
    """Wait (up to ``within`` seconds) until the server answers ``/health`` within ``fast`` seconds: nothing
    is queued ahead of a new request. Whether it did.
    """
    host, _, port = base_url.removeprefix("http://").partition(":")
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection(
            host, int(port), timeout=max(0.1, deadline - time.monotonic())
        )
        started = time.monotonic()
        try:
            connection.request("GET", "/health")
            connection.getresponse().read()
            if time.monotonic() - started <= fast:
                return True
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.2)
    return False


def nowait_view(
    config: WSGIPlusConfig,
    upstream_port: int,
    wrk_path: str,
    budget: _machine.Budget,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """2. The view that does not wait: wsgiplus-4 against gthread-4, alternating, median ratio."""
    ratios: list[float] = []
    rps: dict[str, list[float]] = {"wsgiplus-4": [], "gthread-4": []}
    for round_ in range(config.nowait_rounds):
        with (
            server("wsgiplus-4", upstream_port, config) as plus,
            server("gthread-4", upstream_port, config) as plain,
        ):
            for running in (plus, plain):
                wrk(wrk_path, running.url + "/nowait", config.nowait_connections, 1.0)
            _machine.wait_for_calm(CALM_CORES, config.calm_wait, budget, log)
            # One-second slices, alternating, so both see the same machine; who goes first swaps every round.
            order = (plus, plain) if round_ % 2 == 0 else (plain, plus)
            slices: dict[str, list[float]] = {plus.label: [], plain.label: []}
            for _ in range(max(1, round(config.nowait_seconds))):
                for running in order:
                    figures = wrk(wrk_path, running.url + "/nowait", config.nowait_connections, 1.0)
                    slices[running.label].append(figures["rps"])
            measured = {label: statistics.mean(values) for label, values in slices.items()}
        for label, value in measured.items():
            rps[label].append(value)
        ratios.append(measured["wsgiplus-4"] / measured["gthread-4"])
        log(
            f"  round {round_ + 1}: wsgiplus-4 {measured['wsgiplus-4']:,.0f} req/s, "
            f"gthread-4 {measured['gthread-4']:,.0f} req/s, ratio {ratios[-1]:.3f}"
        )
    return {
        "ratios": ratios,
        "ratio": statistics.median(ratios),
        "rps": {label: statistics.median(values) for label, values in rps.items()},
    }


def parked_memory(
    config: WSGIPlusConfig, upstream_port: int, budget: _machine.Budget, log: Callable[[str], None]
) -> dict[str, Any]:
    """3. ``parked`` requests in flight at once: the worker's peak RSS, wsgiplus-4 against gthread-N."""
    big = f"gthread-{config.parked}"
    results: dict[str, Any] = {}
    for label in ("wsgiplus-4", big):
        set_delay(upstream_port, config.upstream_ms)
        with server(label, upstream_port, config) as running:
            pid = worker_pid(running.pid)
            assert pid is not None, "gunicorn's worker process was not found"
            # Warm-up: a few of each request, so that imports and first-request set-up are in the baseline.
            finish_burst(start_burst(running.port, "/wait", 20, 30), 60)
            _machine.wait_for_calm(CALM_CORES, config.calm_wait, budget, log)
            before = rss_mb(pid)
            set_delay(upstream_port, config.parked_upstream_ms)
            timeout = config.parked_upstream_ms / 1000 + 30
            process = start_burst(running.port, "/wait", config.parked, timeout)
            peak = before or 0.0
            while process.poll() is None:
                now = rss_mb(pid)
                if now is not None:
                    peak = max(peak, now)
                time.sleep(0.05)
            burst = finish_burst(process, timeout + 10)
            set_delay(upstream_port, config.upstream_ms)
        results[label] = {"rss_before_mb": before, "rss_peak_mb": peak, **burst}
        log(
            f"  {label:13} RSS {before or 0:6.1f} MB idle, {peak:6.1f} MB with {config.parked} in flight; "
            f"{burst['ok']} answered 2xx, last after {burst['last_s'] or 0:.1f} s"
        )
    results["ratio"] = results["wsgiplus-4"]["rss_peak_mb"] / results[big]["rss_peak_mb"]
    results["big"] = big
    return results


def brownout(
    config: WSGIPlusConfig, upstream_port: int, budget: _machine.Budget, log: Callable[[str], None]
) -> dict[str, Any]:
    """4. Open loop, 10 % /health, while the upstream goes slow and back; /health p99 in the slow phase."""
    normal, slow = config.brownout_phase, config.brownout_slow
    duration = 2 * normal + slow
    results: dict[str, Any] = {}
    for label in SERVERS:
        set_delay(upstream_port, config.brownout_normal_ms)
        with server(label, upstream_port, config) as running:
            _machine.wait_for_calm(CALM_CORES, config.calm_wait, budget, log)
            spec = {
                "mode": "open",
                "host": _servers.HOST,
                "port": running.port,
                "path": "/wait",
                "timeout": config.brownout_timeout,
                "duration": duration,
                "classes": [
                    {"name": "wait", "rate": 0.9 * config.brownout_rate, "path": "/wait"},
                    {"name": "health", "rate": 0.1 * config.brownout_rate, "path": "/health"},
                ],
            }
            started = time.monotonic()
            with loadgen.Generator(spec) as generator:
                time.sleep(max(0.0, started + normal - time.monotonic()))
                set_delay(upstream_port, config.brownout_slow_ms)
                time.sleep(max(0.0, started + normal + slow - time.monotonic()))
                set_delay(upstream_port, config.brownout_normal_ms)
                result = generator.result()
        results[label] = _brownout_figures(result, normal, slow, config.brownout_timeout)
        figures = results[label]
        log(
            f"  {label:12} /health p99 in the slow phase {_fmt_ms(figures['health_p99_slow_ms'])}; "
            f"/wait ok in the slow phase {figures['wait_ok_slow']:.0%}"
        )
    return results


def _brownout_figures(result: dict[str, Any], normal: float, slow: float, timeout: float) -> dict[str, Any]:
    """Per class: latency p99 of the requests scheduled in the slow phase (a failure counts as endless)."""
    health = result["classes"].index("health")
    # The first second of the phase is skipped: the delay switch and the generator's start are not in step.
    window = (normal + 1.0, normal + slow)
    figures: dict[str, Any] = {"send_rate": result["send_rate"]}
    for index, name in enumerate(result["classes"]):
        latencies = [
            (r[loadgen.LATENCY] if 200 <= r[loadgen.STATUS] < 300 else float("inf"))
            for r in result["records"]
            if r and r[loadgen.CLASS] == index and window[0] <= r[loadgen.OFFSET] < window[1]
        ]
        ok = sum(1 for latency in latencies if latency != float("inf"))
        p99 = _report.percentile(latencies, 0.99)
        figures[f"{name}_p99_slow_ms"] = None if p99 is None or p99 == float("inf") else 1000 * p99
        figures[f"{name}_ok_slow"] = ok / len(latencies) if latencies else 0.0
        figures[f"{name}_count_slow"] = len(latencies)
    figures["health_index"] = health
    figures["timeout_s"] = timeout
    return figures


def _fmt_ms(value: float | None) -> str:
    return "failed (over 1 % unanswered)" if value is None else f"{value:,.0f} ms"


# -- the whole run ---------------------------------------------------------------------------------------------


def run(config: WSGIPlusConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the four measurements; return their figures."""
    wrk_path = ensure_wrk(log)
    if wrk_path is None:
        raise RuntimeError("this benchmark needs wrk (apt-get install wrk)")
    budget = _machine.Budget(config.spare_seconds)
    # The servers inherit this environment: the default loop they run on is the one it gives here.
    default_loop = "asyncio" if wsgiplus.event_loop_factory() is asyncio.new_event_loop else "uvloop"
    results: dict[str, Any] = {
        "machine": _machine.describe(),
        "config": asdict(config),
        "event_loop": default_loop,
    }
    only = {name.strip() for name in config.only.split(",")}
    with upstream(config.upstream_ms) as port:
        if "waiting" in only:
            log(f"1. view waiting {config.upstream_ms} ms on the upstream, {config.connections} clients")
            results["waiting"] = waiting_view(config, port, wrk_path, budget, log)
        if "nowait" in only:
            log("2. view that does not wait")
            results["nowait"] = nowait_view(config, port, wrk_path, budget, log)
        if "parked" in only:
            log(f"3. {config.parked} parked requests")
            results["parked"] = parked_memory(config, port, budget, log)
        if "brownout" in only:
            log(
                f"4. brownout: upstream {config.brownout_normal_ms} ms -> {config.brownout_slow_ms} ms -> "
                f"{config.brownout_normal_ms} ms, {config.brownout_rate:g} req/s, 10 % /health"
            )
            results["brownout"] = brownout(config, port, budget, log)
    return results


def report(results: dict[str, Any]) -> str:
    """The figures as markdown tables, with each ratio against its target (sections that ran only)."""
    config = results["config"]
    lines: list[str] = []
    targets: list[list[str]] = []

    def target(name: str, value: float, text: str, goal: str, met: bool) -> None:
        targets.append([name, text.format(value), goal, "met" if met else "NOT met"])

    if "waiting" in results:
        waiting = results["waiting"]
        lines += [
            f"### 1. A view waiting {config['upstream_ms']} ms on an upstream, {config['connections']} "
            f"clients (wrk, {config['duration']:g} s)",
            "",
            _report.table(
                ["server", "req/s", "p50 ms", "p99 ms", "server CPU (cores)", "CPU ms/request", "errors"],
                [
                    [
                        label,
                        _report.fmt(f["rps"], 0),
                        _report.fmt(f.get("p50_ms"), 0),
                        _report.fmt(f.get("p99_ms"), 0),
                        _report.fmt(f["usage"]["server"], 2),
                        _report.fmt(f["cpu_ms_per_request"], 2),
                        str(f["non_2xx"] + f["socket_errors"]),
                    ]
                    for label, f in waiting.items()
                ],
            ),
            "",
        ]
        plus = waiting["wsgiplus-4"]["rps"]
        small = waiting["gthread-4"]["rps"]
        vs_small = plus / small if small else float("inf")
        vs_gevent = plus / waiting["gevent"]["rps"]
        p99 = waiting["wsgiplus-4"].get("p99_ms", float("inf")) / config["upstream_ms"]
        default_loop = "asyncio's" if wsgiplus.event_loop_factory() is asyncio.new_event_loop else "uvloop's"
        lines += [
            f"wsgiplus-4 and wsgiplus-4-aiohttp ran on the default event loop, here {default_loop}.",
            "",
        ]
        if "wsgiplus-4-asyncio" in waiting:
            on_asyncio = waiting["wsgiplus-4-asyncio"]
            lines += [
                f"On asyncio's own loop (wsgiplus-4-asyncio): {on_asyncio['rps'] / waiting['gevent']['rps']:.2f} x"
                f" gevent's throughput, p99 {on_asyncio.get('p99_ms', float('inf')) / config['upstream_ms']:.2f}"
                " x the upstream latency.",
                "",
            ]
        target(
            "wsgiplus-4 / gthread-4 throughput",
            vs_small,
            "{:.1f} x",
            f">= {MIN_VS_GTHREAD4:g} x",
            vs_small >= MIN_VS_GTHREAD4,
        )
        target(
            "wsgiplus-4 / gevent throughput",
            vs_gevent,
            "{:.2f} x",
            f">= {MIN_VS_GEVENT:g} x",
            vs_gevent >= MIN_VS_GEVENT,
        )
        target(
            "wsgiplus-4 p99 / upstream latency",
            p99,
            "{:.2f} x",
            f"<= {MAX_P99_FACTOR:g} x",
            p99 <= MAX_P99_FACTOR,
        )
    if "nowait" in results:
        nowait = results["nowait"]
        target(
            "no-wait view, wsgiplus-4 / gthread-4",
            nowait["ratio"],
            "{:.3f} x",
            f">= {MIN_NOWAIT_RATIO:g} x",
            nowait["ratio"] >= MIN_NOWAIT_RATIO,
        )
    if "parked" in results:
        parked = results["parked"]
        target(
            f"RSS with {config['parked']} parked, wsgiplus-4 / {parked['big']}",
            parked["ratio"],
            "{:.2f} x",
            f"<= {MAX_RSS_RATIO:g} x",
            parked["ratio"] <= MAX_RSS_RATIO,
        )
    if targets:
        lines += [_report.table(["figure", "measured", "target", ""], targets), ""]
    if "nowait" in results:
        nowait = results["nowait"]
        lines += [
            f"No-wait view: median of {len(nowait['ratios'])} rounds; wsgiplus-4 "
            f"{nowait['rps']['wsgiplus-4']:,.0f} req/s, gthread-4 {nowait['rps']['gthread-4']:,.0f} req/s; "
            "ratios " + ", ".join(f"{r:.3f}" for r in nowait["ratios"]),
            "",
        ]
    if "parked" in results:
        parked = results["parked"]
        lines += [
            f"### 3. {config['parked']} requests in flight at once (upstream {config['parked_upstream_ms']} ms)",
            "",
            _report.table(
                ["server", "RSS idle MB", "RSS peak MB", "answered 2xx", "last answer s"],
                [
                    [
                        label,
                        _report.fmt(parked[label]["rss_before_mb"]),
                        _report.fmt(parked[label]["rss_peak_mb"]),
                        str(parked[label]["ok"]),
                        _report.fmt(parked[label]["last_s"]),
                    ]
                    for label in ("wsgiplus-4", parked["big"])
                ],
            ),
            "",
        ]
    if "brownout" in results:
        lines += [
            f"### 4. Brownout: upstream {config['brownout_normal_ms']} ms -> {config['brownout_slow_ms']} ms "
            f"for {config['brownout_slow']:g} s -> back; {config['brownout_rate']:g} req/s open loop, "
            "10 % /health",
            "",
            _report.table(
                ["server", "/health p99, slow phase", "/health answered", "/wait answered (slow phase)"],
                [
                    [
                        label,
                        _fmt_ms(f["health_p99_slow_ms"]),
                        f"{f['health_ok_slow']:.0%}",
                        f"{f['wait_ok_slow']:.0%}",
                    ]
                    for label, f in results["brownout"].items()
                ],
            ),
        ]
    return "\n".join(lines).rstrip()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.wsgiplus [--quick] [--FIELD N ...]``: run, print the report, keep the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.wsgiplus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: a few seconds per step")
    add_options(parser, WSGIPlusConfig())
    args = parser.parse_args(argv)
    config = configure(args)
    started = time.monotonic()
    print("== wsgiplus ==", flush=True)
    results = run(config)
    text = report(results)
    path = _report.save("wsgiplus", results, text)
    print(f"\n{text}\n\n(wsgiplus: {time.monotonic() - started:.0f} s; raw figures in {path})", flush=True)
    return 0


def configure(args: argparse.Namespace) -> WSGIPlusConfig:
    """The config with, from weakest to strongest: defaults, ``--quick``, ``BENCH_*`` variables, flags."""
    return config_from(WSGIPlusConfig(), args, QUICK)


if __name__ == "__main__":
    sys.exit(main())
