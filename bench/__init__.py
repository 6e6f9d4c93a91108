"""Benchmarks of Flask-Queue against its peers, run in one process tree on one machine: ``python -m bench``.

- ``bench.overhead``: what the request queue costs a request it never delays (throughput and microseconds).
- ``bench.overload``: goodput and latency at 3x an endpoint's capacity, with and without the request queue.

Helpers: ``apps`` (the served applications), ``loadgen`` and ``_http`` (the load generators), ``_servers``
(gunicorn and waitress in their own processes), ``_machine`` (CPU use and calm), ``_report`` (tables).
Results are described in ``docs/benchmarks.md``.
"""
