"""Loads of the WSGI+ benchmark that wrk and ``bench.loadgen`` do not make, plus wrk's latency figures.

``python -m bench._wsgiplus_load burst PORT PATH COUNT TIMEOUT`` opens ``COUNT`` connections at once, sends
one request on each, and prints as JSON how many were answered 2xx, the errors, and the latencies; the
benchmark measures the server's memory while they are all in flight.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import subprocess
import sys
import time
from typing import Any

from ._http import Connection, request_bytes

HOST = "127.0.0.1"

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def wrk(wrk_path: str, url: str, connections: int, seconds: float, timeout: float = 30.0) -> dict[str, Any]:
    """One wrk run (one thread, keep-alive): requests in all and per second, latency percentiles, failures."""
    command = [
        wrk_path,
        "-t1",
        f"-c{connections}",
        f"-d{seconds:g}s",
        f"--timeout={timeout:g}s",
        "--latency",
        url,
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + timeout + 30, check=False
    )
    out = done.stdout
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr or out}")
    rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    percentiles = {
        f"p{match.group(1)}_ms": float(match.group(2)) * _UNITS[match.group(3)]
        for match in re.finditer(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.MULTILINE)
    }
    requests = re.search(r"(\d+) requests in", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(rps.group(1)),
        "requests": int(requests.group(1)) if requests else 0,
        **percentiles,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(n) for n in errors.groups()) if errors else 0,
    }


async def burst(port: int, path: str, count: int, timeout: float) -> dict[str, Any]:
    """``count`` requests at once, one connection each; how they fared."""
    request = request_bytes(HOST, port, path, {}, keep_alive=False)
    loop = asyncio.get_running_loop()
    started = loop.time()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    statuses: dict[str, int] = {}

    async def one() -> None:
        connection: Connection | None = None
        try:
            connection = await asyncio.wait_for(Connection.open(HOST, port), timeout)
            status, _ = await asyncio.wait_for(connection.send(request), timeout)
        except (OSError, asyncio.TimeoutError, ValueError) as error:
            kind = type(error).__name__
            errors[kind] = errors.get(kind, 0) + 1
            return
        finally:
            if connection is not None:
                connection.close()
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        latencies.append(loop.time() - started)

    await asyncio.gather(*(one() for _ in range(count)))
    latencies.sort()
    return {
        "ok": sum(n for status, n in statuses.items() if status.startswith("2")),
        "statuses": statuses,
        "errors": errors,
        "first_s": latencies[0] if latencies else None,
        "last_s": latencies[-1] if latencies else None,
    }


def start_burst(port: int, path: str, count: int, timeout: float) -> subprocess.Popen[str]:
    """Start a burst in a process of its own; ``finish_burst`` reads its result."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench._wsgiplus_load", "burst", str(port), path, str(count), str(timeout)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish_burst(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise RuntimeError(f"burst still running after {timeout:.0f} s") from None
    if process.returncode != 0:
        raise RuntimeError(f"burst failed:\n{err[-3000:]}")
    result: dict[str, Any] = json.loads(out)
    return result


def main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if len(sys.argv) != 6 or sys.argv[1] != "burst":
        sys.exit("usage: python -m bench._wsgiplus_load burst PORT PATH COUNT TIMEOUT")
    started = time.monotonic()
    result = asyncio.run(burst(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])))
    result["wall_s"] = time.monotonic() - started
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
