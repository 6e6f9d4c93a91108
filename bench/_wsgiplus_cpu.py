"""CPU time per request of gunicorn's worker process, for servers of the WSGI+ benchmark loaded in turn.

``python -m bench._wsgiplus_cpu [--path /wait] [--connections 200] [--seconds 4] [--rounds 3] SERVER ...``
with servers named as in ``bench.wsgiplus`` (``wsgiplus-4``, ``gevent``, ``gthread-256``, ...). All of them
run at once; each round loads each in turn with wrk and reads the worker's user and system CPU time from
``/proc`` before and after. On a shared machine throughput moves with the neighbours' load, CPU per
request much less: this is the figure to compare changes to the worker with. Prints, per server, the
median over the rounds of CPU microseconds per request (and the system part), requests per second, p99,
and the worker's voluntary context switches per request (thread hand-overs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from . import wsgiplus
from ._wsgiplus_load import wrk
from .overhead import ensure_wrk

_TICKS = os.sysconf("SC_CLK_TCK")


def worker_usage(pid: int) -> tuple[float, float, int]:
    """(user + system seconds, system seconds, voluntary context switches) of a process, all its threads."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    user, system = int(fields[11]) / _TICKS, int(fields[12]) / _TICKS
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                switches += int(line.split()[1])
    return user + system, system, switches


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench._wsgiplus_cpu", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "servers", nargs="+", help="servers as named by bench.wsgiplus, e.g. wsgiplus-4 gevent"
    )
    parser.add_argument("--path", default="/wait", help="/wait (200 ms upstream) or /nowait")
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=4.0, help="of load per server and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    wrk_path = ensure_wrk()
    if wrk_path is None:
        raise SystemExit("this measurement needs wrk (apt-get install wrk)")
    config = wsgiplus.WSGIPlusConfig()
    rows: dict[str, list[tuple[float, float, float, float, float]]] = {label: [] for label in args.servers}
    with wsgiplus.upstream(config.upstream_ms) as port, ExitStack() as stack:
        running = {label: stack.enter_context(wsgiplus.server(label, port, config)) for label in args.servers}
        workers = {label: wsgiplus.worker_pid(server.pid) for label, server in running.items()}
        for server in running.values():  # warm-up: imports, connections to the upstream
            wrk(wrk_path, server.url + args.path, args.connections, 2.0)
        for round_ in range(args.rounds):
            for label, server in running.items():
                pid = workers[label]
                assert pid is not None, f"the worker process of {label} was not found"
                cpu, system, switches = worker_usage(pid)
                figures = wrk(wrk_path, server.url + args.path, args.connections, args.seconds)
                cpu_after, system_after, switches_after = worker_usage(pid)
                requests = figures["requests"]
                row = (
                    1e6 * (cpu_after - cpu) / requests,
                    1e6 * (system_after - system) / requests,
                    figures["rps"],
                    figures.get("p99_ms", float("nan")),
                    (switches_after - switches) / requests,
                )
                rows[label].append(row)
                print(
                    f"round {round_ + 1} {label:20} {row[0]:6.0f} us/request (system {row[1]:4.0f})"
                    f" {row[2]:7.0f} req/s  p99 {row[3]:6.0f} ms  {row[4]:5.1f} switches/request",
                    flush=True,
                )
    print(
        f"\nmedians of {args.rounds} rounds, {args.path}, {args.connections} connections, load {os.getloadavg()}"
    )
    for label, values in rows.items():
        cpu, system, rps, p99, switches = (statistics.median(column) for column in zip(*values, strict=True))
        print(
            f"{label:20} {cpu:6.0f} us/request (system {system:4.0f}) {rps:7.0f} req/s  p99 {p99:6.0f} ms"
            f"  {switches:5.1f} switches/request"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
