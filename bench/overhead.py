"""Overhead: what the request queue costs a request it never delays.

1. Throughput: a Flask hello world under gunicorn (gthread, one worker, 4 threads), without and with
   ``RequestQueueMiddleware(concurrency=4)``, which never rejects there. Each round starts both servers
   afresh, warms them up, and ``wrk`` loads them in turn, alternating in short slices (the first swaps
   every round); the figure is the median over the rounds of the ratio with/without.
2. In process: a trivial WSGI app called directly vs wrapped in the middleware, the same for a Flask app,
   and a Flask app with the ``RequestQueue`` extension (one view limited to a lane, so lane routing runs)
   vs that app without it, each driven in a tight loop (call, iterate, close); the figure is the median
   of the added microseconds per request over many short back-to-back pairs.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from werkzeug.test import EnvironBuilder

from flask_queue import RequestQueue, RequestQueueMiddleware
from flask_queue._types import StartResponse, WSGIApplication, WSGIEnvironment

from . import _machine, _report, _servers, loadgen
from .apps import hello_app, trivial_wsgi

#: Targets from the issue.
MIN_THROUGHPUT_RATIO = 0.95
MAX_ADDED_MICROSECONDS = 10.0


@dataclass
class OverheadConfig:
    """The knobs of the overhead benchmark: the issue's (gunicorn, 4 threads, wrk), in more, shorter rounds."""

    # Two gunicorn processes running identical code differ by up to +-4 % in throughput (memory layout,
    # hash seed), more than the middleware costs: many short rounds, each with fresh processes, let the
    # median see through that.
    rounds: int = 10
    round_seconds: float = 3.0  # per server and round, in slices:
    slice_seconds: float = 1.0
    hello_threads: int = 4  # gunicorn gthread threads
    wrk_connections: int = 8  # wrk connections (keep-alive)
    repeats: int = 41  # in-process timing pairs per comparison
    repeat_seconds: float = 0.05  # length of one in-process timing
    calm_wait: float = 10.0  # seconds to wait at most for the machine to calm down before a round ...
    spare_seconds: float = 20.0  # ... within this much extra time for all rounds


def ensure_wrk(log: Callable[[str], None] = print) -> str | None:
    """The path of ``wrk``, installing the Debian package when it is missing and we may; ``None`` if not."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    log("wrk is missing: apt-get install -y wrk ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "install", "-y", "wrk"],
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "wrk"],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if command[1] == "install" and done.returncode == 0:
            break
    return shutil.which("wrk")


def _wrk(wrk: str, server: _servers.Server, connections: int, seconds: float) -> dict[str, Any]:
    """One wrk run: requests per second, and the responses that were not 2xx/3xx or failed."""
    # One wrk thread: a second would take the core the server needs (2 cores in all).
    command = [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", server.url + "/"]
    watch = _machine.CpuWatch(server=server.pid)
    children_before = _machine.children_cpu_seconds()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=seconds + 30)
    # wrk has exited and been waited for by now: its CPU is in what this process's children used.
    usage = watch.read(client=_machine.children_cpu_seconds() - children_before)
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed: {err or out}")
    rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if rps is None:
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    return {
        "rps": float(rps.group(1)),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(n) for n in errors.groups()) if errors else 0,
        "usage": usage,
    }


def _python_client(server: _servers.Server, connections: int, seconds: float) -> dict[str, Any]:
    """The fallback when wrk cannot be had: the closed-loop Python client, keep-alive, in its own process."""
    spec = {
        "mode": "closed",
        "host": _servers.HOST,
        "port": server.port,
        "path": "/",
        "timeout": 10.0,
        "concurrency": connections,
        "duration": seconds,
        "keep_alive": True,
    }
    result = loadgen.run(spec)
    return {
        "rps": result["rps"],
        "non_2xx": result["completed"] - result["ok"],
        "socket_errors": sum(result["errors"].values()),
        "usage": {"client": result["cpu"]},
    }


def throughput(config: OverheadConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Requests per second of the hello world without and with the middleware, alternated in one run."""
    wrk = ensure_wrk(log)
    if wrk is None:
        log("NOTE: wrk is not available; falling back to the Python closed-loop client, which saturates")
        log("      a core before gunicorn does: the ratio then measures the client as much as the server.")

    def load(server: _servers.Server, seconds: float = config.round_seconds) -> dict[str, Any]:
        if wrk:
            return _wrk(wrk, server, config.wrk_connections, seconds)
        return _python_client(server, config.wrk_connections, seconds)

    # Per round and server: the wrk runs (slices) of that round.
    rounds: list[dict[str, list[dict[str, Any]]]] = []
    budget = _machine.Budget(config.spare_seconds)
    slices = max(1, round(config.round_seconds / config.slice_seconds))
    for round_ in range(config.rounds):
        # Fresh servers every round: two processes running the same code differ by a few per cent
        # (memory layout, hash seed), and a ratio between one pair of processes would carry that bias.
        with (
            _servers.gunicorn(
                "without", "hello_app", {"mode": "plain"}, threads=config.hello_threads
            ) as plain,
            _servers.gunicorn(
                "with", "hello_app", {"mode": "middleware"}, threads=config.hello_threads
            ) as queued,
        ):
            for server in (plain, queued):  # warm-up: lazy imports, first-request setup, caches
                load(server, 1.0)
            _machine.wait_for_calm(0.5, config.calm_wait, budget, log)
            # Short slices, alternating, so both servers see the same machine: its speed wanders by tens of
            # per cent within seconds. Who goes first swaps every round.
            order = (plain, queued) if round_ % 2 == 0 else (queued, plain)
            samples: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
            for _ in range(slices):
                for server in order:
                    samples[server.label].append(load(server, config.slice_seconds))
        rounds.append(samples)
        rps = {label: statistics.mean(s["rps"] for s in runs) for label, runs in samples.items()}
        others = max(s["usage"]["others"] for runs in samples.values() for s in runs)
        log(
            f"  round {round_ + 1}: without {rps['without']:,.0f} req/s, with {rps['with']:,.0f} req/s, "
            f"ratio {rps['with'] / rps['without']:.3f}; others' CPU up to {others:.2f}"
        )
    means = [{label: statistics.mean(s["rps"] for s in runs) for label, runs in r.items()} for r in rounds]
    ratios = [m["with"] / m["without"] for m in means]
    return {
        "client": "wrk" if wrk else "python closed loop (fallback)",
        "rounds": rounds,
        "ratios": ratios,
        "ratio": statistics.median(ratios),
        "rps_without": statistics.median(m["without"] for m in means),
        "rps_with": statistics.median(m["with"] for m in means),
        "rejected_or_failed": sum(s["non_2xx"] + s["socket_errors"] for r in rounds for s in r["with"]),
    }


def _start_response(
    status: str, headers: list[tuple[str, str]], exc_info: Any = None
) -> Callable[[bytes], object]:
    return _write


def _write(data: bytes) -> None:
    pass


def _seconds_per_request(app: WSGIApplication, environ: WSGIEnvironment, count: int) -> float:
    """Drive ``app`` ``count`` times as a server would (call, iterate, close); seconds per request."""
    start_response: StartResponse = _start_response
    copy = environ.copy  # a fresh environ per request, as a server gives; the same cost in every variant
    started = time.perf_counter()
    for _ in range(count):
        body = app(copy(), start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return (time.perf_counter() - started) / count


def _compare(
    without: WSGIApplication, with_: WSGIApplication, environ: WSGIEnvironment, config: OverheadConfig
) -> dict[str, Any]:
    """Timings of two apps on the same request, in many short back-to-back pairs; the added microseconds.

    ``added_us`` is the median over the pairs of (with - without): this machine's speed wanders by tens
    of per cent within seconds, and short pairs see the same speed on both sides. ``added_min_us``
    compares the fastest timing of each, the figure least touched by noise (noise only adds time), as a
    cross-check.
    """
    for app in (without, with_):  # warm-up: Flask's first request sets things up
        _seconds_per_request(app, environ, 200)
    probe = max(_seconds_per_request(app, environ, 200) for app in (without, with_))
    count = max(100, int(config.repeat_seconds / probe))
    timings: dict[str, list[float]] = {"without": [], "with": []}
    for repeat in range(config.repeats):
        pairs = [("without", without), ("with", with_)]
        for label, app in pairs if repeat % 2 == 0 else reversed(pairs):
            timings[label].append(_seconds_per_request(app, environ, count))
    added = [w - wo for w, wo in zip(timings["with"], timings["without"], strict=True)]
    return {
        "requests_per_timing": count,
        "without_us": 1e6 * statistics.median(timings["without"]),
        "with_us": 1e6 * statistics.median(timings["with"]),
        "added_us": 1e6 * statistics.median(added),
        "added_min_us": 1e6 * (min(timings["with"]) - min(timings["without"])),
        "timings_us": {label: [1e6 * t for t in values] for label, values in timings.items()},
    }


def in_process(config: OverheadConfig) -> dict[str, Any]:
    """Added microseconds per request: the middleware on a trivial app and on Flask, and the extension.

    Each comparison calls one and the same application object with and without the request queue in
    front: two Flask app objects built alike differ by several microseconds per request on their own
    (memory layout), which would drown the figure.
    """
    environ = EnvironBuilder(path="/", base_url="http://127.0.0.1:8000").get_environ()
    flask_app = hello_app("plain").wsgi_app
    # The extension wraps app.wsgi_app in a RequestQueueMiddleware with lane routing; behind it is the
    # same Flask app as it would be without the extension.
    extension = RequestQueue.middleware(hello_app("extension"))
    return {
        "middleware": _compare(
            trivial_wsgi, RequestQueueMiddleware(trivial_wsgi, concurrency=4), environ, config
        ),
        # The middleware around Flask: what the queue's bookkeeping costs once a real app has run between
        # admission and release, without lane routing.
        "flask_middleware": _compare(
            flask_app, RequestQueueMiddleware(flask_app, concurrency=4), environ, config
        ),
        "extension": _compare(extension.app, extension, environ, config),
    }


def run(config: OverheadConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole overhead benchmark; returns every figure (see ``report`` for the table)."""
    log(
        f"throughput: hello world, gunicorn gthread 1 worker x {config.hello_threads} threads, "
        f"{config.rounds} rounds x {config.round_seconds:g} s each way ..."
    )
    measured = throughput(config, log)
    log("in process: added cost per request ...")
    return {
        "config": asdict(config),
        "machine": _machine.describe(),
        "throughput": measured,
        "in_process": in_process(config),
    }


def report(results: dict[str, Any]) -> str:
    """The overhead table and the verdict on each target, as markdown."""
    t = results["throughput"]
    ip = results["in_process"]
    config = results["config"]
    rows = [
        [
            f"throughput with / without (gunicorn, {config['hello_threads']} threads, {t['client']})",
            f"{t['rps_with']:,.0f} / {t['rps_without']:,.0f} req/s",
            f"{t['ratio']:.3f} (rounds: {', '.join(f'{r:.3f}' for r in t['ratios'])})",
            f">= {MIN_THROUGHPUT_RATIO}",
            "yes" if t["ratio"] >= MIN_THROUGHPUT_RATIO else "NO",
        ]
    ]
    for key, label in (
        ("middleware", "RequestQueueMiddleware on a trivial WSGI app"),
        ("flask_middleware", "RequestQueueMiddleware on a Flask hello world"),
        ("extension", "RequestQueue extension on Flask, lane routing on"),
    ):
        figures = ip[key]
        rows.append(
            [
                f"added per request: {label}",
                f"{figures['with_us']:.2f} vs {figures['without_us']:.2f} us",
                f"{figures['added_us']:+.2f} us (fastest: {figures['added_min_us']:+.2f})",
                f"<= {MAX_ADDED_MICROSECONDS:g} us",
                "yes" if figures["added_us"] <= MAX_ADDED_MICROSECONDS else "NO",
            ]
        )
    lines = [_report.table(["measure", "with vs without", "overhead", "target", "met"], rows)]
    if t["rejected_or_failed"]:
        lines.append(
            f"\nWARNING: {t['rejected_or_failed']} responses with the middleware were not 2xx or failed."
        )
    return "\n".join(lines)
