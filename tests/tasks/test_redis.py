"""What is particular to ``redis://``: the URL, an unreachable server, waits that block in Redis, a restart.

The contract itself is checked by ``test_backend_contract.py`` (and the ``TaskQueue`` suites) on Redis too.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import pytest
import redis
from flask import Flask

from flask_queue import BackendError, ConfigurationError, JobStatus, TaskQueue
from flask_queue.tasks.backends import backend_from_url
from flask_queue.tasks.backends.redis import LAYOUT, RedisBackend
from flask_queue.tasks.backends.redis._scripts import CHUNK
from tests._services import REDIS_URL, redis_namespace, require_redis
from tests.servers._live import free_port
from tests.tasks._records import record

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0


@pytest.fixture
def url() -> Iterator[str]:
    """A Redis URL with a prefix of its own on the test server; its keys are deleted afterwards."""
    url, drop = redis_namespace()
    yield url
    drop()


@pytest.fixture
def open_backend() -> Iterator[Callable[[str], RedisBackend]]:
    """Opens backends that are closed after the test."""
    opened: list[RedisBackend] = []

    def open_(url: str) -> RedisBackend:
        backend = RedisBackend(url)
        opened.append(backend)
        return backend

    yield open_
    for backend in opened:
        backend.close()


def _closed_port() -> int:
    """A loopback port nothing listens on (free a moment ago)."""
    return free_port()


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def _blocked(client_name: str) -> bool:
    """Whether the connection named ``client_name`` waits in a blocking command on the test server."""
    admin = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return any(
            client.get("name") == client_name and client.get("cmd") == "blpop"
            for client in admin.client_list()
        )
    finally:
        admin.close()


# -- the URL ----------------------------------------------------------------------------------------------


def test_the_url_chooses_the_redis_backend_and_hides_its_password() -> None:
    backend = backend_from_url("redis://app:s3cret@127.0.0.1:6379/2?prefix=shop&socket_timeout=3")
    try:
        assert isinstance(backend, RedisBackend)
        assert backend.url == "redis://app:***@127.0.0.1:6379/2?prefix=shop&socket_timeout=3"
        assert backend.prefix == "shop"
    finally:
        backend.close()
    tls = backend_from_url("rediss://127.0.0.1:6380")
    try:
        assert isinstance(tls, RedisBackend)
        assert tls.prefix == "flask_queue"
    finally:
        tls.close()


def test_an_empty_prefix_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"prefix is empty"):
        RedisBackend("redis://127.0.0.1:6379/0?prefix=")


def test_a_misspelt_url_option_or_database_is_refused_at_set_up() -> None:
    """A misspelt option failed only at the first enqueue, with redis-py's raw TypeError; a database that is
    not a number quietly meant database 0."""
    with pytest.raises(ConfigurationError, match=r"TASK_QUEUE_BACKEND=.*unexpected keyword argument 'prefx'"):
        RedisBackend("redis://127.0.0.1:6379/0?prefx=app")
    with pytest.raises(ConfigurationError, match=r"the database must be a number .* not 'abc'"):
        RedisBackend("redis://127.0.0.1:6379/abc")


def test_every_key_starts_with_the_prefix_in_the_database_named(
    open_backend: Callable[[str], RedisBackend],
) -> None:
    require_redis()
    prefix = f"fq-test-{uuid.uuid4().hex[:12]}"
    db3 = urlunsplit(urlsplit(REDIS_URL)._replace(path="/3", query=""))
    admin = redis.Redis.from_url(db3, decode_responses=True)
    try:
        backend = open_backend(f"{db3}?prefix={prefix}")
        [job_id] = backend.enqueue([record()])
        leased = backend.dequeue(None, "w1", 30.0, 0.0)
        assert leased is not None
        backend.finish(job_id, "w1", JobStatus.SUCCEEDED, result="1", expires_at=time.time() + 60)
        names = {key.removeprefix(f"{prefix}:") for key in admin.scan_iter(match=f"{prefix}:*")}
        assert names == {
            f"job:{job_id}",
            "jobs",
            "queues",
            "wake:default",
            "wakeall",
            "succeeded:default",
            "expires",
            "layout",
        }
        assert admin.hget(f"{prefix}:job:{job_id}", "status") == "succeeded"
        # Nothing of ours went to the database the URL did not name.
        with redis.Redis.from_url(REDIS_URL) as default_db:  # closed here, not by a later test's gc.collect()
            assert not list(default_db.scan_iter(match=f"{prefix}:*"))
    finally:
        keys = list(admin.scan_iter(match=f"{prefix}:*"))
        if keys:
            admin.delete(*keys)
        admin.close()


def test_keys_of_another_key_layout_are_refused(
    url: str, open_backend: Callable[[str], RedisBackend]
) -> None:
    prefix = parse_qs(urlsplit(url).query)["prefix"][0]
    admin = redis.Redis.from_url(REDIS_URL)
    try:
        admin.set(f"{prefix}:layout", LAYOUT + 1)
    finally:
        admin.close()
    backend = open_backend(url)
    with pytest.raises(BackendError, match=rf"key layout {LAYOUT + 1}.*another prefix"):
        backend.size()


# -- an unreachable server ------------------------------------------------------------------------------


def test_enqueue_to_an_unreachable_redis_raises_backend_error_naming_it_without_its_password() -> None:
    port = _closed_port()
    app = Flask(__name__)
    tasks = TaskQueue(app, backend=f"redis://app:s3cret@127.0.0.1:{port}/0?prefix=x", workers=0)

    @tasks.task
    def add(x: int, y: int) -> int:
        return x + y

    started = time.monotonic()
    with app.app_context(), pytest.raises(BackendError) as raised:
        add.enqueue(1, 2)
    assert time.monotonic() - started < 5.0
    message = str(raised.value)
    assert f"redis://app:***@127.0.0.1:{port}/0?prefix=x" in message
    assert "s3cret" not in message
    assert "unreachable" in message
    tasks.backend(app).close()


def test_a_password_given_as_a_parameter_is_hidden_too(open_backend: Callable[[str], RedisBackend]) -> None:
    # redis-py takes the password in the query too; nothing listens on this port.
    port = _closed_port()
    backend = open_backend(f"redis://127.0.0.1:{port}/0?password=hunter%202&prefix=p")
    assert backend.url == f"redis://127.0.0.1:{port}/0?password=***&prefix=p"
    with pytest.raises(BackendError) as raised:
        backend.size()
    assert "hunter" not in str(raised.value)
    # A message that quotes it, as written or decoded, is scrubbed too.
    quoted = str(backend._error(redis.ResponseError("WRONGPASS hunter 2 / hunter%202")))
    assert quoted.endswith("WRONGPASS *** / ***")


def test_every_call_on_an_unreachable_redis_raises_backend_error_promptly(
    open_backend: Callable[[str], RedisBackend],
) -> None:
    backend = open_backend(f"redis://:pw@127.0.0.1:{_closed_port()}/0")
    calls: list[Callable[[], object]] = [
        lambda: backend.dequeue(None, "w1", 30.0, 5.0),
        lambda: backend.dequeue_batch({"default"}, "w1", 30.0, 4),
        lambda: backend.get("00000000000001-00000001"),
        backend.counts,
        backend.size,
        backend.jobs,
        backend.expire,
        backend.workers,
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(BackendError, match=r"redis://:\*\*\*@127\.0\.0\.1"):
            call()
        assert time.monotonic() - started < 5.0
    backend.interrupt()  # a stopping worker's call: never raises


# -- blocking waits -------------------------------------------------------------------------------------


def test_a_dequeue_blocked_in_redis_is_woken_by_an_enqueue_through_another_connection(
    url: str, open_backend: Callable[[str], RedisBackend]
) -> None:
    name = f"fq-waiter-{uuid.uuid4().hex[:8]}"
    waiter = open_backend(f"{url}&client_name={name}")
    producer = open_backend(url)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(waiter.dequeue, None, "w1", 30.0, WAIT)
        _wait_until(lambda: _blocked(name), "the dequeue blocks in BLPOP")
        started = time.monotonic()
        [job_id] = producer.enqueue([record()])
        leased = waiting.result(WAIT)
    assert leased is not None
    assert leased.id == job_id
    # Woken by the enqueue, not by a poll or the end of a wait slice.
    assert time.monotonic() - started < 2.0


def test_a_dequeue_blocked_in_redis_is_woken_by_an_enqueue_from_another_process(
    url: str, open_backend: Callable[[str], RedisBackend]
) -> None:
    name = f"fq-waiter-{uuid.uuid4().hex[:8]}"
    waiter = open_backend(f"{url}&client_name={name}")
    producer = (
        "import sys, time\n"
        "from flask_queue.tasks.backends.redis import LAYOUT, RedisBackend\n"
        "from flask_queue.tasks.backends.redis._scripts import CHUNK\n"
        "from flask_queue.tasks import JobRecord\n"
        "backend = RedisBackend(sys.argv[1])\n"
        "now = time.time()\n"
        "job = JobRecord(id='', task='t', queue='mail', payload='{}', eta=now, enqueued_at=now)\n"
        "print(backend.enqueue([job])[0])\n"
        "backend.close()\n"
    )
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(waiter.dequeue, {"mail"}, "w1", 30.0, WAIT)
        _wait_until(lambda: _blocked(name), "the dequeue blocks in BLPOP")
        done = subprocess.run(
            [sys.executable, "-c", producer, url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=True,
        )
        leased = waiting.result(WAIT)
    assert leased is not None
    assert leased.id == done.stdout.strip()


def test_interrupt_wakes_a_dequeue_blocked_in_redis(
    url: str, open_backend: Callable[[str], RedisBackend]
) -> None:
    name = f"fq-waiter-{uuid.uuid4().hex[:8]}"
    waiter = open_backend(f"{url}&client_name={name}")
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(waiter.dequeue, None, "w1", 30.0, WAIT)
        _wait_until(lambda: _blocked(name), "the dequeue blocks in BLPOP")
        started = time.monotonic()
        waiter.interrupt()
        assert waiting.result(WAIT) is None
    assert time.monotonic() - started < 2.0


def test_a_blocked_dequeue_wakes_when_a_delayed_job_falls_due(
    url: str, open_backend: Callable[[str], RedisBackend]
) -> None:
    backend = open_backend(url)
    [job_id] = backend.enqueue([record(eta=time.time() + 0.3)])
    leased = backend.dequeue(None, "w1", 30.0, WAIT)
    assert leased is not None
    assert leased.id == job_id
    assert time.time() >= leased.eta


def test_listing_purging_and_expiring_go_past_one_chunk(
    url: str, open_backend: Callable[[str], RedisBackend]
) -> None:
    backend = open_backend(url)
    size = CHUNK * 2 + 10
    mail = backend.enqueue([record(queue="mail") for _ in range(size)])
    backend.enqueue([record(queue="other") for _ in range(5)])
    assert [r.id for r in backend.jobs(queue="mail", limit=3, offset=size - 3)] == mail[2::-1]
    leased: list[str] = []
    while batch := backend.dequeue_batch({"mail"}, "w1", 30.0, 500):
        leased += [r.id for r in batch]
    assert leased == mail
    backend.finish_batch("w1", [(job_id, None, time.time() - 1) for job_id in leased])
    assert backend.counts()["mail"]["succeeded"] == size
    assert backend.expire() == size
    assert "mail" not in backend.counts()
    assert backend.purge(None, {JobStatus.QUEUED}) == 5
    assert backend.jobs() == []


def test_listing_by_queue_or_status_finds_jobs_numbered_in_the_same_microsecond(
    url: str, open_backend: Callable[[str], RedisBackend]
) -> None:
    # Two producers number their jobs by their own clocks, a batch taking one microsecond per job, so batches
    # enqueued at the same time by two processes share sequence numbers. The same here, made certain: both
    # backends number from one instant (a minute ahead, so that neither one's clock has passed it).
    first, second = open_backend(url), open_backend(url)
    first._last_seq = second._last_seq = time.time_ns() // 1000 + 60_000_000
    pairs = CHUNK // 2 + 10
    ids = first.enqueue([record() for _ in range(pairs)])
    ids += second.enqueue([record() for _ in range(pairs)])
    # One newer job above them, so that a chunk of the scan ends between the two jobs of one number.
    ids += first.enqueue([record()])
    assert len(set(ids)) == len(ids)
    for status in (None, JobStatus.QUEUED):
        listed = [r.id for r in first.jobs(status=status, queue="default", limit=len(ids) + 10)]
        assert sorted(listed) == sorted(ids)
        assert len(listed) == len(ids)


def test_pages_of_finished_jobs_numbered_in_the_same_microsecond_show_each_job_once(
    url: str, open_backend: Callable[[str], RedisBackend]
) -> None:
    # As above: two producers whose jobs share sequence numbers, here in two queues, all failed.
    first, second = open_backend(url), open_backend(url)
    first._last_seq = second._last_seq = time.time_ns() // 1000 + 60_000_000
    ids = first.enqueue([record(queue="a") for _ in range(300)])
    ids += second.enqueue([record(queue="b") for _ in range(300)])
    for queue in ("a", "b"):
        while batch := first.dequeue_batch({queue}, "w1", 30.0, 100):
            for leased in batch:
                first.finish(leased.id, "w1", JobStatus.FAILED, error="E", traceback="")
    listed: list[str] = []
    while page := first.jobs(status=JobStatus.FAILED, limit=7, offset=len(listed)):
        listed += [r.id for r in page]
    assert len(listed) == len(ids)
    assert set(listed) == set(ids)


# -- keys, expiry and schedules ------------------------------------------------------------------------


def _prefix(url: str) -> str:
    return parse_qs(urlsplit(url).query)["prefix"][0]


def test_a_namespace_written_before_keys_and_start_by_still_reads(
    url: str, open_backend: Callable[[str], RedisBackend]
) -> None:
    """Jobs stored by an earlier version have neither field in their hashes: they read as ``None``, and run."""
    prefix = _prefix(url)
    admin = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        now = time.time()
        old = f"{time.time_ns() // 1000 - 10:014x}-0000abcd"
        admin.set(f"{prefix}:layout", LAYOUT)
        admin.hset(
            f"{prefix}:job:{old}",
            mapping={"task": "tests.noop", "queue": "default", "payload": "{}", "priority": 0,
                     "status": "queued", "retries": 0, "eta": now, "enqueued_at": now},
        )  # fmt: skip
        admin.zadd(f"{prefix}:jobs", {old: int(old[:14], 16)})
        admin.zadd(f"{prefix}:ready:default", {old: 0})
        admin.sadd(f"{prefix}:queues", "default")
    finally:
        admin.close()
    backend = open_backend(url)
    stored = backend.get(old)
    assert stored is not None
    assert (stored.key, stored.start_by, stored.status) == (None, None, JobStatus.QUEUED)
    assert [r.id for r in backend.jobs()] == [old]
    assert [r.id for r in backend.jobs(status=JobStatus.QUEUED)] == [old]
    assert backend.counts()["default"]["queued"] == 1
    keyed = backend.enqueue([record(key="k")])  # a new job beside the old ones
    leased = backend.dequeue(None, "w1", 30.0, 0.0)
    assert leased is not None
    assert (leased.id, leased.key, leased.start_by) == (old, None, None)
    done = backend.finish(old, "w1", JobStatus.SUCCEEDED)
    assert done is not None
    assert done.key is None
    assert backend.enqueue([record(key="k")]) == keyed


def test_replace_moves_a_waiting_job_to_its_new_queue_and_time(
    url: str, open_backend: Callable[[str], RedisBackend]
) -> None:
    backend = open_backend(url)
    [job_id] = backend.enqueue([record(key="k", queue="a", eta=time.time() + 3600)])
    assert backend.enqueue([record(key="k", queue="b")], on_conflict="replace") == [job_id]
    assert backend.size("a") == 0
    assert "a" not in backend.counts()  # no job left there
    assert backend.size("b") == 1
    assert backend.dequeue({"a"}, "w1", 30.0, 0.0) is None
    leased = backend.dequeue({"b"}, "w1", 30.0, 0.0)
    assert leased is not None
    assert (leased.id, leased.queue) == (job_id, "b")


def test_a_deferred_job_in_a_queue_of_its_own_is_counted_and_queued_there(
    url: str, open_backend: Callable[[str], RedisBackend]
) -> None:
    backend = open_backend(url)
    [first] = backend.enqueue([record(key="k")])
    assert backend.dequeue(None, "w1", 30.0, 0.0) is not None
    [deferred] = backend.enqueue([record(key="k", queue="later")], on_conflict="replace")
    assert backend.counts()["later"]["deferred"] == 1
    assert [r.id for r in backend.jobs(status=JobStatus.DEFERRED)] == [deferred]
    assert backend.finish(first, "w1", JobStatus.SUCCEEDED) is not None
    assert backend.counts()["later"]["queued"] == 1
    leased = backend.dequeue({"later"}, "w1", 30.0, 0.0)
    assert leased is not None
    assert leased.id == deferred


def test_a_key_whose_holder_ended_without_freeing_it_is_free(
    url: str, open_backend: Callable[[str], RedisBackend]
) -> None:
    """A process of an earlier version finishes a keyed job without freeing its key: the next enqueue of the
    key does not take the finished job for its holder."""
    backend = open_backend(url)
    [first] = backend.enqueue([record(key="k")])
    admin = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        admin.hset(f"{_prefix(url)}:job:{first}", "status", "succeeded")
        admin.zrem(f"{_prefix(url)}:ready:default", first)
    finally:
        admin.close()
    [second] = backend.enqueue([record(key="k")], on_conflict="raise")
    assert second != first
    assert backend.enqueue([record(key="k")]) == [second]


def test_no_expired_job_is_handed_out_when_more_than_a_chunk_expire_at_once(
    url: str, open_backend: Callable[[str], RedisBackend]
) -> None:
    """A dequeue stores CHUNK expired jobs per queue; past that, it looks at each job it takes."""
    backend = open_backend(url)
    late = backend.enqueue([record(start_by=time.time() + 0.1) for _ in range(CHUNK + 10)])
    [fresh] = backend.enqueue([record(priority=1)])  # behind every late one
    time.sleep(0.2)
    # Before any dequeue stored them: reported expired all the same.
    assert backend.size() == 1
    assert backend.counts()["default"]["expired"] == len(late)
    assert backend.counts()["default"]["queued"] == 1
    assert len(backend.jobs(status=JobStatus.EXPIRED, limit=len(late) + 10)) == len(late)
    assert backend.jobs(status=JobStatus.QUEUED) == [backend.get(fresh)]
    assert [r.id for r in backend.dequeue_batch(None, "w1", 30.0, 5)] == [fresh]
    assert backend.counts()["default"]["expired"] == len(late)
    # Stored so, every one: those past the first CHUNK too, met by the dequeue as it took them off the queue.
    admin = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        pipe = admin.pipeline()
        for job_id in late:
            pipe.hget(f"{_prefix(url)}:job:{job_id}", "status")
        assert set(pipe.execute()) == {"expired"}
    finally:
        admin.close()
    assert backend.purge(None, {JobStatus.EXPIRED}) == len(late)
    assert backend.jobs() == [backend.get(fresh)]


def test_a_released_first_attempt_may_expire_again(
    url: str, open_backend: Callable[[str], RedisBackend]
) -> None:
    """A job given back at shutdown has not started as far as its ``start_by`` goes."""
    backend = open_backend(url)
    [job_id] = backend.enqueue([record(start_by=time.time() + 0.2)])
    assert backend.dequeue(None, "w1", 30.0, 0.0) is not None
    assert backend.release(job_id, "w1")
    time.sleep(0.3)
    assert backend.dequeue(None, "w1", 30.0, 0.0) is None
    stored = backend.get(job_id)
    assert stored is not None
    assert stored.status is JobStatus.EXPIRED
    assert stored.finished_at is not None


def test_a_schedule_is_one_hash_field_whatever_its_ticks(
    url: str, open_backend: Callable[[str], RedisBackend]
) -> None:
    backend = open_backend(url)
    for tick in range(50):
        assert backend.enqueue_tick("every-minute", 60.0 * tick, []) == []
    backend.pause_schedule("every-minute", True)
    assert backend.enqueue_tick("every-minute", 60.0 * 50, [record()]) is None
    admin = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        assert admin.hgetall(f"{_prefix(url)}:schedules") == {"every-minute": "1:3000.0"}
    finally:
        admin.close()
    assert backend.pending() == 0


# -- processes ------------------------------------------------------------------------------------------


def test_a_forked_child_talks_to_redis_on_connections_of_its_own(
    url: str, open_backend: Callable[[str], RedisBackend]
) -> None:
    backend = open_backend(url)
    [parent_job] = backend.enqueue([record()])  # the parent's thread now holds a connection
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            backend.after_fork()
            [child_job] = backend.enqueue([record(queue="child")])
            code = 0 if backend.get(parent_job) is not None and backend.get(child_job) is not None else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's connection was not disturbed by the child's.
    assert backend.size("child") == 1
    assert backend.get(parent_job) is not None


def _enqueue_one_key(url: str, on_conflict: str, start: object, out: object) -> None:
    """A process of the race below: 100 enqueues of one key, as soon as the other process is ready too."""
    backend = RedisBackend(url)
    try:
        backend.size()  # connected, and the key layout checked
        start.wait()  # type: ignore[attr-defined]
        ids = {backend.enqueue([record(key="race")], on_conflict=on_conflict)[0] for _ in range(100)}
        out.put(sorted(ids))  # type: ignore[attr-defined]
    finally:
        backend.close()


def test_two_processes_racing_one_key_leave_one_job(
    url: str, open_backend: Callable[[str], RedisBackend]
) -> None:
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(2), context.Queue()
    procs = [
        context.Process(target=_enqueue_one_key, args=(url, on_conflict, start, out))
        for on_conflict in ("return", "replace")
    ]
    for proc in procs:
        proc.start()
    try:
        ids = [out.get(timeout=WAIT) for _ in procs]
    finally:
        for proc in procs:
            proc.join(WAIT)
    assert [proc.exitcode for proc in procs] == [0, 0]
    assert len({job_id for found in ids for job_id in found}) == 1
    backend = open_backend(url)
    assert backend.pending() == 1
    assert [r.id for r in backend.jobs()] == ids[0]


def test_threads_that_end_leave_no_connection_behind(
    url: str, open_backend: Callable[[str], RedisBackend]
) -> None:
    name = f"fq-threads-{uuid.uuid4().hex[:8]}"
    backend = open_backend(f"{url}&client_name={name}")

    def connections() -> int:
        admin = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            return sum(1 for client in admin.client_list() if client.get("name") == name)
        finally:
            admin.close()

    for _ in range(20):  # a server that starts a thread per request
        thread = threading.Thread(target=backend.size)
        thread.start()
        thread.join()
    gc.collect()
    _wait_until(lambda: connections() == 0, "the ended threads' connections are closed")
    backend.size()
    assert connections() == 1
    backend.close()
    _wait_until(lambda: connections() == 0, "close() closes the connections")


# -- a restart of Redis ---------------------------------------------------------------------------------


class PrivateRedis:
    """A ``redis-server`` of this test only, on a free loopback port, with its files in one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.folder / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + WAIT
        while True:
            try:
                client.ping()  # answers LOADING (an error) until the AOF is read back
                break
            except redis.RedisError:
                assert self.proc.poll() is None, (self.folder / "redis.log").read_text()
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
        client.close()

    def crash(self) -> None:
        """SIGKILL: no shutdown, no last write; only what the AOF holds survives."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(WAIT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not on PATH")
        pytest.skip("redis-server is not on PATH")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def test_every_acknowledged_job_survives_a_redis_crash_and_the_backend_reconnects(
    private_redis: PrivateRedis, open_backend: Callable[[str], RedisBackend]
) -> None:
    backend = open_backend(f"{private_redis.url}?prefix=restart")
    one_by_one = [backend.enqueue([record(priority=n % 3)])[0] for n in range(30)]
    at_once = backend.enqueue([record(queue="bulk") for _ in range(100)])
    later = backend.enqueue([record(eta=time.time() + 3600)])[0]
    running = backend.dequeue({"default"}, "w1", 300.0, 0.0)
    assert running is not None
    done = backend.dequeue({"default"}, "w1", 300.0, 0.0)
    assert done is not None
    assert backend.finish(done.id, "w1", JobStatus.SUCCEEDED, result='"ok"') is not None

    private_redis.crash()
    started = time.monotonic()
    with pytest.raises(BackendError, match="unreachable"):
        backend.size()
    assert time.monotonic() - started < 5.0
    private_redis.start()

    # The same backend object, on the restarted server: every acknowledged job, in the state it was in.
    none = dict.fromkeys(map(str, JobStatus), 0)
    assert backend.counts() == {
        "default": {**none, "queued": 28, "scheduled": 1, "running": 1, "succeeded": 1},
        "bulk": {**none, "queued": 100},
    }
    for job_id in [*one_by_one, *at_once, later]:
        assert backend.get(job_id) is not None
    stored = backend.get(running.id)
    assert stored is not None
    assert (stored.status, stored.worker) == (JobStatus.RUNNING, "w1")
    finished = backend.get(done.id)
    assert finished is not None
    assert (finished.status, finished.result) == (JobStatus.SUCCEEDED, '"ok"')
    # And it works on: the rest of the jobs run, each once.
    assert backend.finish(running.id, "w1", JobStatus.SUCCEEDED) is not None
    taken: list[str] = []
    while batch := backend.dequeue_batch(None, "w2", 30.0, 16):
        taken += [r.id for r in batch]
        assert all(r is not None for r in backend.finish_batch("w2", [(r.id, None, None) for r in batch]))
    assert sorted(taken) == sorted(set(one_by_one) - {running.id, done.id} | set(at_once))
    assert backend.size() == 0


def test_a_full_redis_refuses_changes_whole_and_can_still_be_emptied(
    private_redis: PrivateRedis, open_backend: Callable[[str], RedisBackend]
) -> None:
    backend = open_backend(f"{private_redis.url}?prefix=full")
    waiting = backend.enqueue([record() for _ in range(3)])
    running = backend.dequeue(None, "w1", 300.0, 0.0)
    assert running is not None
    admin = redis.Redis(port=private_redis.port)
    try:
        admin.config_set("maxmemory-policy", "noeviction")
        # Full by a margin: 100 KB of filler, then a limit 50 KB below what Redis uses. (A limit met exactly
        # leaves Redis under it again as soon as it shrinks a client's buffers, which it does on its own clock.)
        for filled in range(100):
            admin.set(f"filler:{filled}", "x" * 1000)
        admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) - 50_000)
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            admin.set("one-more", "x")
        with pytest.raises(BackendError, match="Redis is full"):
            backend.enqueue([record()])
        with pytest.raises(BackendError, match="Redis is full"):
            backend.dequeue(None, "w1", 300.0, 0.0)
        with pytest.raises(BackendError, match="Redis is full"):
            backend.finish(running.id, "w1", JobStatus.SUCCEEDED)
        # Nothing was half done: the jobs are where they were, and reading works.
        assert backend.counts()["default"] == {
            **dict.fromkeys(map(str, JobStatus), 0),
            "queued": 2,
            "running": 1,
        }
        assert [r.id for r in backend.jobs(status=JobStatus.QUEUED)] == waiting[:0:-1]
        # Deleting works, so that a full Redis can be emptied.
        assert backend.purge(None, {JobStatus.QUEUED}) == 2
        admin.config_set("maxmemory", 0)
        assert backend.finish(running.id, "w1", JobStatus.SUCCEEDED) is not None
        backend.enqueue([record()])
        assert backend.size() == 1
    finally:
        admin.close()


def test_close_leaves_a_command_in_flight_its_reply_and_refuses_later_calls(
    private_redis: PrivateRedis, open_backend: Callable[[str], RedisBackend]
) -> None:
    # A worker that stop() gave up on keeps running its job and records it later, maybe while the backend
    # closes: the connection it is reading must not be torn down under it (redis-py's are not thread-safe).
    name = f"fq-inflight-{uuid.uuid4().hex[:8]}"
    backend = open_backend(f"{private_redis.url}?prefix=inflight&client_name={name}")
    backend.enqueue(
        [record()]
    )  # the key layout is checked and the script loaded: the next enqueue is one command
    admin = redis.Redis(port=private_redis.port, decode_responses=True)
    outcome: list[object] = []

    def enqueue() -> None:
        try:
            outcome.append(backend.enqueue([record()]))
        except Exception as exc:
            outcome.append(exc)

    def held() -> bool:
        return any(c.get("name") == name and "b" in c["flags"] for c in admin.client_list())

    thread = threading.Thread(target=enqueue)
    try:
        admin.execute_command("CLIENT", "PAUSE", int(WAIT * 1000), "WRITE")  # the enqueue waits in Redis
        thread.start()
        _wait_until(held, "the enqueue is sent and held by Redis")
        backend.close()
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        thread.join(WAIT)
    try:
        [ids] = outcome
        assert isinstance(ids, list), ids
        assert len(ids) == 1
        assert admin.hget(f"inflight:job:{ids[0]}", "status") == "queued"
        _wait_until(
            lambda: not any(c.get("name") == name for c in admin.client_list()), "no connection is left"
        )
    finally:
        admin.close()
    with pytest.raises(BackendError, match="closed"):
        backend.size()
