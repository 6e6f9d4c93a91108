"""``memory://``: jobs in this process's memory, for tests, eager work and work that may be lost.

A ``MemoryBackend`` belongs to one ``TaskQueue``: two apps, or two processes, never share one. It keeps the
same contract as the durable backends (leases included), so code tested on it behaves the same on them;
what it cannot do is survive its process. Jobs still waiting when the process exits are reported by the
worker's shutdown, never dropped silently.
"""

from __future__ import annotations

import collections
import copy
import heapq
import itertools
import threading
import time
import uuid
from collections.abc import Collection, Sequence

from ..records import FINISHED, JobRecord, JobStatus, ScheduleState, WorkerInfo
from .base import LOST_ERROR, MAX_LOST, Backend, cut_payload, duplicate

__all__ = ["MemoryBackend"]


class MemoryBackend(Backend):
    shared = False

    def __init__(self, url: str = "memory://") -> None:
        super().__init__()
        self.url = url
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._jobs: dict[str, JobRecord] = {}
        self._order: dict[str, int] = {}
        self._seq = itertools.count()
        #: Per queue, a heap of (priority, order, token, id) of ready jobs; delayed jobs wait in a heap of
        #: (eta, order, token, id) until due. An entry whose token is not the job's current one is stale (the
        #: job was cancelled, purged or pushed again) and is dropped when it surfaces.
        self._queues: dict[str, list[tuple[int, int, int, str]]] = {}
        self._delayed: list[tuple[float, int, int, str]] = []
        self._token: dict[str, int] = {}
        self._running: dict[str, JobRecord] = {}
        self._interrupts = 0
        self._prefix = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        self._workers: dict[str, WorkerInfo] = {}
        #: (task, key) -> the id of the unfinished job holding the key, and of the job deferred behind it.
        self._holders: dict[tuple[str, str], str] = {}
        self._deferred: dict[tuple[str, str], str] = {}
        self._schedules: dict[str, ScheduleState] = {}

    def enqueue(self, records: Sequence[JobRecord], *, on_conflict: str = "return") -> list[str]:
        with self._lock:
            ids = self._store(records, on_conflict)
            self._ready.notify(len(records))
        return ids

    def _store(self, records: Sequence[JobRecord], on_conflict: str) -> list[str]:
        """Store ``records`` under the lock, keys as the contract says; all or none."""
        now = time.time()
        if on_conflict == "raise":
            seen: set[tuple[str, str]] = set()
            for record in records:
                if record.key is not None:
                    slot = (record.task, record.key)
                    holder = self._holder(slot, now)
                    if holder is not None:
                        raise duplicate(record, holder.id)
                    if slot in seen:
                        raise duplicate(record, "(another call of this enqueue)")
                    seen.add(slot)
        ids = []
        for new in records:
            holder = None if new.key is None else self._holder((new.task, new.key), now)
            if holder is None:
                ids.append(self._add(copy.copy(new), now).id)
            elif on_conflict == "return":
                ids.append(holder.id)
            elif holder.status is JobStatus.QUEUED:  # "replace", and it has not started
                self._replace(holder, new, now)
                ids.append(holder.id)
            else:  # "replace" while it runs: wait behind it
                deferred = self._jobs.get(self._deferred.get((new.task, new.key or ""), ""))
                if deferred is not None:
                    self._replace(deferred, new, now)
                    ids.append(deferred.id)
                else:
                    record = copy.copy(new)
                    record.status = JobStatus.DEFERRED
                    ids.append(self._add(record, now).id)
        return ids

    def _add(self, record: JobRecord, now: float) -> JobRecord:
        # Unique within this backend, which lives and dies with its process: no need for uuid4's syscall.
        record.id = f"{self._prefix}{next(self._ids):x}"
        self._jobs[record.id] = record
        self._order[record.id] = next(self._seq)
        if record.key is not None:
            slot = (record.task, record.key)
            if record.status is JobStatus.DEFERRED:
                self._deferred[slot] = record.id
                return record
            self._holders[slot] = record.id
        self._push(record, now)
        return record

    def _holder(self, slot: tuple[str, str], now: float) -> JobRecord | None:
        """The unfinished job that holds a key, after storing as expired one that expired by the clock."""
        record = self._jobs.get(self._holders.get(slot, ""))
        if record is not None and record.status is JobStatus.QUEUED and record.expired(now):
            self._expire(record, now)
            record = self._jobs.get(self._holders.get(slot, ""))
        return record

    def _replace(self, record: JobRecord, new: JobRecord, now: float) -> None:
        """``on_conflict="replace"``: a job not started takes the new call (and moves in the queues)."""
        record.queue, record.payload, record.priority = new.queue, new.payload, new.priority
        record.retries, record.timeout, record.eta, record.start_by = (
            new.retries,
            new.timeout,
            new.eta,
            new.start_by,
        )
        if record.status is JobStatus.QUEUED:
            self._push(record, now)  # the old heap entry goes stale with its token

    def _ended(self, record: JobRecord, now: float) -> None:
        """A job became final (or was deleted): free its key, queueing the job deferred behind it."""
        if record.key is None:
            return
        slot = (record.task, record.key)
        if self._holders.get(slot) == record.id:
            del self._holders[slot]
            waiting = self._jobs.get(self._deferred.pop(slot, ""))
            if waiting is not None:
                waiting.status = JobStatus.QUEUED
                self._holders[slot] = waiting.id
                self._push(waiting, now)
                self._ready.notify()
        elif self._deferred.get(slot) == record.id:
            del self._deferred[slot]

    def _expire(self, record: JobRecord, now: float) -> None:
        record.status = JobStatus.EXPIRED
        record.finished_at = now
        self._token.pop(record.id, None)
        self._ended(record, now)

    def enqueue_tick(self, schedule: str, tick: float, records: Sequence[JobRecord]) -> list[str] | None:
        with self._lock:
            state = self._schedules.setdefault(schedule, ScheduleState(schedule))
            if state.last_tick is not None and state.last_tick >= tick:
                return None
            state.last_tick = tick
            if state.paused:
                return None
            ids = self._store(records, "return")
            self._ready.notify(len(records))
        return ids

    def schedules(self) -> list[ScheduleState]:
        with self._lock:
            return [copy.copy(self._schedules[name]) for name in sorted(self._schedules)]

    def pause_schedule(self, schedule: str, paused: bool) -> None:
        with self._lock:
            self._schedules.setdefault(schedule, ScheduleState(schedule)).paused = paused

    def _push(self, record: JobRecord, now: float) -> None:
        token = next(self._seq)
        self._token[record.id] = token
        order = self._order[record.id]
        if record.eta > now:
            heapq.heappush(self._delayed, (record.eta, order, token, record.id))
        else:
            heapq.heappush(
                self._queues.setdefault(record.queue, []), (record.priority, order, token, record.id)
            )

    def dequeue(
        self, queues: Collection[str] | None, worker: str, lease: float, timeout: float
    ) -> JobRecord | None:
        deadline = time.monotonic() + timeout
        with self._lock:
            interrupts = self._interrupts
            while True:
                now = time.time()
                self._recover(now)
                next_eta = self._promote(now)
                record = self._pick(queues)
                if record is not None:
                    return self._lease(record, worker, lease, now)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._interrupts != interrupts:
                    return None
                # Wake when a delayed job falls due or a lease lapses, if no enqueue comes first.
                for when in (next_eta, *(r.lease_until for r in self._running.values())):
                    if when is not None:
                        remaining = min(remaining, max(when - now, 0.001))
                self._ready.wait(remaining)

    def dequeue_batch(
        self, queues: Collection[str] | None, worker: str, lease: float, limit: int
    ) -> list[JobRecord]:
        now = time.time()
        taken: list[JobRecord] = []
        with self._lock:
            self._recover(now)
            self._promote(now)
            while len(taken) < limit and (record := self._pick(queues)) is not None:
                taken.append(self._lease(record, worker, lease, now))
        return taken

    def _lease(self, record: JobRecord, worker: str, lease: float, now: float) -> JobRecord:
        """Hand a picked job to ``worker`` (under the lock); return a copy of its record."""
        record.status = JobStatus.RUNNING
        record.attempts += 1
        record.started_at = now
        record.lease_until = now + lease
        record.worker = worker
        self._running[record.id] = record
        return copy.copy(record)

    def finish_batch(
        self, worker: str, succeeded: Sequence[tuple[str, str | None, float | None]]
    ) -> list[JobRecord | None]:
        now = time.time()
        done: list[JobRecord | None] = []
        with self._lock:
            for job_id, result, expires_at in succeeded:
                record = self._held(job_id, worker)
                if record is None:
                    done.append(None)
                    continue
                record.status = JobStatus.SUCCEEDED
                record.result = result
                record.error = record.traceback = None
                record.finished_at = now
                record.expires_at = expires_at
                record.lease_until = None
                del self._running[job_id]
                self._ended(record, now)
                done.append(copy.copy(record))
        for record in done:
            if record is not None:
                self.finished_here(record)
        return done

    def after_fork(self) -> None:
        # memory:// belongs to its process: a forked child starts empty (it would otherwise run the parent's
        # jobs a second time) and with fresh locks (a parent thread may have held one at the fork).
        self.__init__(self.url)  # type: ignore[misc]

    def interrupt(self) -> None:
        with self._lock:
            self._interrupts += 1
            self._ready.notify_all()

    def _live(self, token: int, job_id: str) -> bool:
        return self._token.get(job_id) == token

    def _promote(self, now: float) -> float | None:
        """Move delayed jobs that are due to their queue; return the eta of the next one still delayed."""
        while self._delayed:
            eta, order, token, job_id = self._delayed[0]
            if not self._live(token, job_id):
                heapq.heappop(self._delayed)
                continue
            if eta > now:
                return eta
            heapq.heappop(self._delayed)
            record = self._jobs[job_id]
            heapq.heappush(self._queues.setdefault(record.queue, []), (record.priority, order, token, job_id))
        return None

    def _pick(self, queues: Collection[str] | None) -> JobRecord | None:
        """Pop the most urgent ready job of ``queues``: lowest priority, then oldest, across the queues."""
        best: list[tuple[int, int, int, str]] | None = None
        for name in self._queues if queues is None else queues:
            heap = self._queues.get(name)
            while heap and not self._live(heap[0][2], heap[0][3]):
                heapq.heappop(heap)
            if heap and (best is None or heap[0] < best[0]):
                best = heap
        if best is None:
            return None
        _, _, _, job_id = heapq.heappop(best)
        del self._token[job_id]
        record = self._jobs[job_id]
        now = time.time()
        if record.expired(now):  # the dequeue that meets it stores it as expired, and looks further
            self._expire(record, now)
            return self._pick(queues)
        return record

    def _recover(self, now: float) -> None:
        lapsed = [r for r in self._running.values() if r.lease_until is not None and r.lease_until < now]
        for record in lapsed:
            del self._running[record.id]
            record.lost += 1
            record.worker = None
            record.lease_until = None
            if record.lost >= MAX_LOST:
                record.status = JobStatus.FAILED
                record.error = LOST_ERROR
                record.finished_at = now
                self._ended(record, now)
            else:
                record.status = JobStatus.QUEUED
                record.eta = now
                self._push(record, now)

    def _held(self, job_id: str, worker: str) -> JobRecord | None:
        record = self._jobs.get(job_id)
        if record is None or record.status is not JobStatus.RUNNING or record.worker != worker:
            return None
        return record

    def renew(self, job_id: str, worker: str, lease: float) -> bool:
        with self._lock:
            record = self._held(job_id, worker)
            if record is None:
                return False
            record.lease_until = time.time() + lease
            return True

    def finish(
        self,
        job_id: str,
        worker: str,
        status: JobStatus,
        *,
        result: str | None = None,
        error: str | None = None,
        traceback: str | None = None,
        expires_at: float | None = None,
    ) -> JobRecord | None:
        with self._lock:
            record = self._held(job_id, worker)
            if record is None:
                return None
            record.status = status
            record.result = result
            record.error = error
            record.traceback = traceback
            record.finished_at = time.time()
            record.expires_at = expires_at
            record.lease_until = None
            del self._running[job_id]
            self._ended(record, record.finished_at)
            finished = copy.copy(record)
        self.finished_here(finished)
        return finished

    def fail_unrunnable(self, job_id: str, worker: str, error: str) -> JobRecord | None:
        return self.finish(job_id, worker, JobStatus.FAILED, error=error, traceback="")

    def retry_later(self, job_id: str, worker: str, eta: float, error: str, traceback: str) -> bool:
        with self._lock:
            record = self._held(job_id, worker)
            if record is None:
                return False
            record.status = JobStatus.QUEUED
            record.eta = eta
            record.error = error
            record.traceback = traceback
            record.worker = None
            record.lease_until = None
            del self._running[job_id]
            self._push(record, time.time())
            self._ready.notify()
            return True

    def release(self, job_id: str, worker: str) -> bool:
        with self._lock:
            record = self._held(job_id, worker)
            if record is None:
                return False
            record.status = JobStatus.QUEUED
            record.attempts -= 1
            record.worker = None
            record.lease_until = None
            del self._running[job_id]
            self._push(record, time.time())
            self._ready.notify()
            return True

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            record = self._jobs.get(job_id)
            return None if record is None else _reported(record, time.time())

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            record = self._jobs.get(job_id)
            now = time.time()
            if (
                record is None
                or record.status not in (JobStatus.QUEUED, JobStatus.DEFERRED)
                or (record.status is JobStatus.QUEUED and record.expired(now))
            ):
                return False
            record.status = JobStatus.CANCELLED
            record.finished_at = now
            self._token.pop(job_id, None)
            self._ended(record, now)
            finished = copy.copy(record)
        self.finished_here(finished)
        return True

    def requeue(self, job_id: str) -> bool:
        with self._lock:
            record = self._jobs.get(job_id)
            now = time.time()
            if record is not None and record.status is JobStatus.QUEUED and record.expired(now):
                self._expire(record, now)
            if record is None or record.effective_status(now) not in (
                JobStatus.FAILED,
                JobStatus.CANCELLED,
                JobStatus.EXPIRED,
            ):
                return False
            if record.key is not None:
                if self._holder((record.task, record.key), now) is not None:
                    return False
                self._holders[(record.task, record.key)] = record.id
            record.status = JobStatus.QUEUED
            record.attempts = 0
            record.lost = 0
            record.eta = now
            record.finished_at = None
            record.expires_at = None
            record.start_by = None
            self._push(record, record.eta)
            self._ready.notify()
            return True

    def purge(self, queue: str | None, statuses: Collection[JobStatus]) -> int:
        statuses = {JobStatus(status) for status in statuses}
        now = time.time()
        with self._lock:
            self._recover(now)  # a lapsed lease makes its job queued again, as the SQL backends see it
            doomed = [
                job_id
                for job_id, record in self._jobs.items()
                if (queue is None or record.queue == queue)
                and record.status is not JobStatus.RUNNING
                and record.effective_status(now) in statuses
            ]
            for job_id in doomed:
                self._ended(self._jobs[job_id], now)
                self._forget(job_id)
            return len(doomed)

    def size(self, queue: str | None = None) -> int:
        with self._lock:
            self._promote(time.time())
            now = time.time()
            heaps = self._queues.values() if queue is None else [self._queues.get(queue, [])]
            return sum(
                1
                for heap in heaps
                for entry in heap
                if self._live(entry[2], entry[3]) and not self._jobs[entry[3]].expired(now)
            )

    def counts(self) -> dict[str, dict[str, int]]:
        now = time.time()
        with self._lock:
            tally = collections.Counter(
                (record.queue, record.effective_status(now).value) for record in self._jobs.values()
            )
        counts: dict[str, dict[str, int]] = {}
        for (queue, status), count in tally.items():
            if queue not in counts:
                counts[queue] = dict.fromkeys(map(str, JobStatus), 0)
            counts[queue][status] = count
        return counts

    def jobs(
        self,
        *,
        status: JobStatus | None = None,
        queue: str | None = None,
        limit: int = 50,
        offset: int = 0,
        preview: int | None = None,
    ) -> list[JobRecord]:
        now = time.time()
        with self._lock:
            chosen = [
                record
                for record in self._jobs.values()
                if (status is None or record.effective_status(now) is status)
                and (queue is None or record.queue == queue)
            ]
            chosen.sort(key=lambda record: self._order[record.id], reverse=True)
            return [
                cut_payload(_reported(record, now), preview) for record in chosen[offset : offset + limit]
            ]

    def expire(self) -> int:
        now = time.time()
        with self._lock:
            doomed = [
                job_id
                for job_id, record in self._jobs.items()
                if record.status in FINISHED and record.expires_at is not None and record.expires_at <= now
            ]
            for job_id in doomed:
                self._forget(job_id)
            return len(doomed)

    def _forget(self, job_id: str) -> None:
        del self._jobs[job_id]
        del self._order[job_id]
        self._token.pop(job_id, None)

    def pending(self) -> int:
        with self._lock:
            now = time.time()
            return sum(1 for record in self._jobs.values() if record.effective_status(now) not in FINISHED)

    def beat(self, info: WorkerInfo) -> None:
        with self._lock:
            self._workers[info.name] = copy.copy(info)

    def workers(self) -> list[WorkerInfo]:
        now = time.time()
        with self._lock:
            for name, info in list(self._workers.items()):
                if info.seen_at + info.ttl < now:
                    del self._workers[name]
            return [copy.copy(self._workers[name]) for name in sorted(self._workers)]

    def forget(self, name: str) -> None:
        with self._lock:
            self._workers.pop(name, None)


def _reported(record: JobRecord, now: float) -> JobRecord:
    """A copy of ``record`` as a reader sees it: expired by the clock reads as ``EXPIRED``, as in SQL."""
    reported = copy.copy(record)
    if reported.status is JobStatus.QUEUED and reported.expired(now):
        reported.status = JobStatus.EXPIRED
    return reported
