"""What survives a SIGKILL: the durability check of ``bench.tasks`` for the SQLite systems.

Two scenarios per system, each in a child process (``python -m bench._tasks_kill SCENARIO SYSTEM FOLDER N``)
that this module kills with SIGKILL at a moment it does not choose:

- ``enqueue``: the child enqueues jobs one by one and prints each index once its enqueue has returned; the
  parent kills it mid-stream, opens the same files and counts the jobs stored. Every acknowledged enqueue
  must be there.
- ``process``: the child enqueues ``N`` jobs, then runs them with its consumers; the task sleeps a little and
  prints its index when it is done. The parent kills the child mid-run, opens the files and counts the jobs
  that will still run (waiting, or taken and unfinished). ``lost`` is what is neither done nor stored: the
  jobs a consumer had taken when it died, for a system that deletes a job when it hands it out.

The result is plain data for the report. It shows what each system's settings promise, measured rather than
read: it does not measure speed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ._tasks_systems import FACTORIES, PROBE

#: Jobs acknowledged (``enqueue``) or done (``process``) before the kill.
KILL_AFTER = {"enqueue": 200, "process": 40}
#: Seconds the slow task of the ``process`` scenario sleeps: long enough that every consumer holds a job
#: when the kill comes.
TASK_SECONDS = 0.05
ROOT = Path(__file__).resolve().parent.parent


def _child(scenario: str, name: str, folder: Path, n: int, threads: int, sync: str) -> None:
    system = FACTORIES[name](sync=sync)
    system.open(folder, threads, consumers=False)
    if scenario == "enqueue":
        for i in range(n):
            system.submit(i)
            print(i, flush=True)
    else:
        system.enqueue(n)
        print("ready", flush=True)

        lock = threading.Lock()

        def slow(i: int) -> None:
            time.sleep(TASK_SECONDS)
            with lock:  # one whole line at a time: consumer threads print concurrently
                sys.stdout.write(f"{i}\n")
                sys.stdout.flush()

        PROBE.after = slow
        PROBE.expect(n)
        system.start_consumers()
    time.sleep(60.0)  # until killed; the parent's kill comes well before


def _run(scenario: str, name: str, n: int, threads: int, sync: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-tasks-kill-") as tmp:
        folder = Path(tmp)
        command = [
            sys.executable,
            "-m",
            "bench._tasks_kill",
            scenario,
            name,
            str(folder),
            str(n),
            str(threads),
            sync,
        ]
        child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        seen: list[int] = []
        try:
            for line in child.stdout:
                if line.strip().isdigit():
                    seen.append(int(line))
                if len(seen) >= KILL_AFTER[scenario]:
                    break
            if scenario == "process":
                # Consumers started together finish their jobs together: kill in the middle of the next ones.
                time.sleep(TASK_SECONDS / 2)
        finally:
            os.kill(child.pid, signal.SIGKILL)
            # What the child printed before it died was acknowledged to it.
            seen.extend(int(line) for line in child.stdout if line.strip().isdigit())
            child.wait()
        system = FACTORIES[name](sync=sync)
        system.open(folder, threads, consumers=False)
        try:
            stored = system.stored()
        finally:
            system.close()
    if scenario == "enqueue":
        acknowledged = len(seen)
        return {
            "acknowledged": acknowledged,
            "stored": stored,
            "lost": max(0, acknowledged - stored),
            "ok": stored >= acknowledged,
        }
    done = len(set(seen))
    lost = max(0, n - done - stored)
    return {"jobs": n, "done": done, "stored": stored, "lost": lost, "ok": lost == 0}


def check(names: list[str], threads: int, sync: str, n: int = 2_000) -> dict[str, dict[str, Any]]:
    """Both scenarios for each of ``names``; ``{system: {"enqueue": {...}, "process": {...}}}``."""
    return {name: {scenario: _run(scenario, name, n, threads, sync) for scenario in ("enqueue", "process")}
            for name in names}  # fmt: skip


if __name__ == "__main__":
    scenario, name, folder, n, threads, sync = sys.argv[1:7]
    _child(scenario, name, Path(folder), int(n), int(threads), sync)
