"""The SQLite backend closes each connection it opens: when its thread ends, at close(), and never a parent's
after a fork (Python 3.13 warns of every connection left to the garbage collector)."""

from __future__ import annotations

import gc
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from flask_queue.tasks.backends.sqlite import SQLiteBackend


@pytest.mark.parametrize("round_", range(50))
def test_a_threads_connection_is_closed_when_the_thread_ends(tmp_path: Path, round_: int) -> None:
    backend = SQLiteBackend(tmp_path / "jobs.sqlite3")
    used: list[sqlite3.Connection] = []

    def use() -> None:
        backend.size()
        used.append(backend._local.conn)

    thread = threading.Thread(target=use)
    thread.start()
    thread.join()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        used[0].execute("SELECT 1")
    backend.close()


def test_close_closes_this_threads_connection_and_a_gone_backend_closes_all(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "jobs.sqlite3")
    mine = backend._local.conn
    backend.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        mine.execute("SELECT 1")
    other = SQLiteBackend(tmp_path / "jobs.sqlite3")
    conn = other._local.conn
    del other
    gc.collect()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        conn.execute("SELECT 1")


def test_a_forked_child_neither_closes_nor_uses_the_parents_connection(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "jobs.sqlite3")
    parent = backend._local.conn
    pid = os.fork()
    if pid == 0:  # the child: after_fork, then its own connection; the parent's stays open
        try:
            backend.after_fork()
            ok = backend.size() == 0 and backend._local.conn is not parent
            gc.collect()
            parent.execute("SELECT 1")  # still open (never used for the queue, only probed here)
        except BaseException:
            os._exit(1)
        os._exit(0 if ok else 2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    parent.execute("SELECT 1")
    backend.close()
