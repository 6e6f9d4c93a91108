"""How busy the machine is: CPU used by a server's processes, by the whole machine, and waiting for calm.

The benchmark machine is shared (2 cores, other work running). A run is only worth reading when the server
got the CPU it asked for, so each run records its server's CPU use and the CPU everything else used
meanwhile, and a run starts only once the machine has been calm for a moment (or a bounded wait is over).
Linux only: the figures come from ``/proc``.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK")


def session_cpu_seconds(session: int) -> float:
    """CPU time (user + system) used so far by the live processes of a session (a server's master and workers)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # the process ended meanwhile
        # The fields after the command name, which may itself hold spaces and parentheses.
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[3]) == session:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / _TICKS


def children_cpu_seconds() -> float:
    """CPU time used so far by this process's children that have ended and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """CPU time (user + system, all cores) the whole machine has used since boot."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait is work.
    return (sum(fields) - fields[3] - fields[4]) / _TICKS


def busy_cores(seconds: float) -> float:
    """How many cores' worth of CPU the machine used over the next ``seconds``."""
    before = machine_busy_seconds()
    time.sleep(seconds)
    return (machine_busy_seconds() - before) / seconds


class Budget:
    """Seconds a benchmark may spend on waiting for calm and on re-running disturbed runs, all told.

    It keeps ``make bench`` within its time however busy the machine is: once spent, runs go ahead as
    they are, and their figures say how disturbed they were.
    """

    def __init__(self, seconds: float) -> None:
        self._left = seconds

    def left(self) -> float:
        return max(0.0, self._left)

    def spend(self, seconds: float) -> None:
        self._left -= seconds


def wait_for_calm(
    threshold: float, max_wait: float, budget: Budget, log: Callable[[str], None] = print
) -> float:
    """Wait until the machine uses fewer than ``threshold`` cores over one second; return the last reading.

    Waits at most ``max_wait`` seconds, and no longer than the budget has left. Other work on the machine
    is not ours to stop: waiting for a lull is the fairest thing a run can do about it.
    """
    started = time.monotonic()
    deadline = started + min(max_wait, budget.left())
    busy = busy_cores(1.0)
    if busy >= threshold and time.monotonic() < deadline:
        log(
            f"  machine busy ({busy:.2f} cores in use), waiting up to {deadline - time.monotonic():.0f} s for calm ..."
        )
        while busy >= threshold and time.monotonic() < deadline:
            busy = busy_cores(1.0)
    budget.spend(time.monotonic() - started)
    return busy


class CpuWatch:
    """Who used the CPU from now until ``read()``: each named session, and the rest of the machine.

    Figures are in cores (1.0 = one core busy all the time); ``others`` is everything outside the named
    sessions, which is what a run had to share the machine with.
    """

    def __init__(self, **sessions: int) -> None:
        self._sessions = sessions
        self._started = time.monotonic()
        self._before = {name: session_cpu_seconds(pid) for name, pid in sessions.items()}
        self._machine_before = machine_busy_seconds()

    def read(self, **spent: float) -> dict[str, float]:
        """Cores used per session since the watch started; ``spent`` adds CPU seconds measured otherwise."""
        wall = time.monotonic() - self._started
        usage = {
            name: (session_cpu_seconds(pid) - self._before[name]) / wall
            for name, pid in self._sessions.items()
        }
        usage.update((name, seconds / wall) for name, seconds in spent.items())
        machine = (machine_busy_seconds() - self._machine_before) / wall
        usage["others"] = max(0.0, machine - sum(usage.values()))
        return usage


def describe() -> dict[str, Any]:
    """What the figures were measured on, and how busy the machine was when the run started."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
