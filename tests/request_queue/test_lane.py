"""The lane: admission, the prioritised waiting line, eviction, timeouts and release, without a server."""

from __future__ import annotations

import threading

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from flask_queue import ConfigurationError
from flask_queue.request_queue.lane import ADMITTED, DONE, REJECTED, WAITING, Lane, Ticket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_lane(**limits: object) -> Lane:
    settings_: dict[str, object] = {
        "concurrency": 1,
        "max_queue_size": 2,
        "queue_timeout": 5.0,
    }
    settings_.update(limits)
    return Lane("test", **settings_)  # type: ignore[arg-type]


def wait_in_thread(lane: Lane, priority: int = 0) -> tuple[threading.Thread, list[Ticket]]:
    """A request that arrives and waits in ``lane`` on a thread of its own; returns once it is in line."""
    outcome: list[Ticket] = []
    queued = threading.Event()

    def request() -> None:
        ticket = lane.arrive(priority)
        queued.set()
        lane.wait(ticket)
        outcome.append(ticket)

    thread = threading.Thread(target=request)
    thread.start()
    assert queued.wait(5)
    return thread, outcome


# -- settings -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("concurrency", 0),
        ("concurrency", -1),
        ("concurrency", 1.5),
        ("concurrency", True),
        ("concurrency", "4"),
        ("max_queue_size", -1),
        ("max_queue_size", 2.0),
        ("queue_timeout", 0),
        ("queue_timeout", -1.0),
        ("queue_timeout", float("nan")),
        ("queue_timeout", float("inf")),
        ("max_age", 0),
        ("max_age", -5),
    ],
)
def test_invalid_settings_raise_value_error_naming_the_setting(setting: str, value: object) -> None:
    with pytest.raises(ValueError, match=setting) as caught:
        make_lane(**{setting: value})
    assert isinstance(caught.value, ConfigurationError)


def test_a_queue_of_size_zero_is_valid_and_rejects_when_busy() -> None:
    lane = make_lane(max_queue_size=0)
    assert lane.arrive().state == ADMITTED
    rejected = lane.arrive()
    assert (rejected.state, rejected.reason) == (REJECTED, "full")


# -- admission and the line ------------------------------------------------------------------------------


def test_requests_are_admitted_up_to_concurrency_then_wait_then_are_rejected_full() -> None:
    lane = make_lane(concurrency=2, max_queue_size=1)
    tickets = [lane.arrive() for _ in range(4)]
    assert [t.state for t in tickets] == [ADMITTED, ADMITTED, WAITING, REJECTED]
    assert tickets[3].reason == "full"
    assert (lane.running, lane.waiting) == (2, 1)


def test_a_release_hands_the_slot_to_the_first_waiter_of_the_most_important_class() -> None:
    lane = make_lane(max_queue_size=5)
    running = lane.arrive()
    low_a, high_a, low_b, high_b = (lane.arrive(p) for p in (1, 0, 1, 0))
    order = []
    current = running
    for _ in range(4):
        granted = lane.release(current)
        assert granted is not None
        order.append(granted)
        current = granted
    assert order == [high_a, high_b, low_a, low_b]


def test_negative_classes_are_more_important_than_zero() -> None:
    lane = make_lane()
    running = lane.arrive()
    normal, urgent = lane.arrive(0), lane.arrive(-1)
    assert lane.release(running) is urgent
    assert normal.state == WAITING


def test_a_full_line_sheds_the_newest_of_the_least_important_class_for_a_more_important_request() -> None:
    lane = make_lane(max_queue_size=3)
    lane.arrive()
    old_low, mid, new_low = lane.arrive(2), lane.arrive(1), lane.arrive(2)
    important = lane.arrive(0)
    assert important.state == WAITING
    assert (new_low.state, new_low.reason) == (REJECTED, "shed")
    assert old_low.state == WAITING
    assert mid.state == WAITING
    assert lane.waiting == 3
    assert lane.stats()["rejected"]["shed"] == 1


@pytest.mark.parametrize("priority", [1, 2])
def test_a_full_line_rejects_a_request_no_more_important_than_every_waiter(
    priority: int,
) -> None:
    lane = make_lane(max_queue_size=2)
    lane.arrive()
    waiters = [lane.arrive(1), lane.arrive(1)]
    newcomer = lane.arrive(priority)
    assert (newcomer.state, newcomer.reason) == (REJECTED, "full")
    assert all(t.state == WAITING for t in waiters)


def test_a_shed_waiter_is_woken() -> None:
    lane = make_lane(max_queue_size=1, queue_timeout=60.0)
    lane.arrive()
    thread, outcome = wait_in_thread(lane, priority=5)
    lane.arrive(0)
    thread.join(5)
    assert not thread.is_alive()
    assert outcome[0].reason == "shed"


# -- release --------------------------------------------------------------------------------------------


def test_release_is_once_only() -> None:
    lane = make_lane(concurrency=1, max_queue_size=1)
    first = lane.arrive()
    second = lane.arrive()
    assert lane.release(first) is second
    assert lane.release(first) is None
    assert (lane.running, second.state) == (1, ADMITTED)
    assert lane.release(second) is None
    assert lane.release(second) is None
    assert lane.running == 0


def test_releasing_a_rejected_or_waiting_ticket_does_nothing() -> None:
    lane = make_lane(concurrency=1, max_queue_size=1)
    lane.arrive()
    waiting = lane.arrive()
    rejected = lane.arrive()
    assert lane.release(rejected) is None
    assert lane.release(waiting) is None
    assert (lane.running, lane.waiting, waiting.state) == (1, 1, WAITING)


def test_abandon_takes_a_waiter_out_of_line_but_not_an_admitted_one() -> None:
    lane = make_lane()
    running = lane.arrive()
    waiting = lane.arrive()
    assert lane.abandon(waiting, "timeout")
    assert (waiting.state, waiting.reason, lane.waiting) == (REJECTED, "timeout", 0)
    assert not lane.abandon(running, "timeout")
    assert running.state == ADMITTED


def test_withdraw_turns_an_admitted_request_into_a_rejection_and_hands_the_slot_on() -> None:
    lane = make_lane()
    holder = lane.arrive()
    gone = lane.arrive()
    nxt = lane.arrive()
    lane.release(holder)
    assert gone.state == ADMITTED
    assert lane.withdraw(gone, "disconnected")
    assert (gone.state, gone.reason) == (REJECTED, "disconnected")
    assert nxt.state == ADMITTED
    stats = lane.stats()
    assert (stats["admitted"], stats["rejected"]["disconnected"], stats["running"]) == (
        2,
        1,
        1,
    )
    assert not lane.withdraw(gone, "disconnected")
    assert lane.release(gone) is None


# -- time: queue timeout and max age ---------------------------------------------------------------------


def test_a_request_older_than_max_age_is_rejected_without_running_even_with_a_free_slot() -> None:
    lane = make_lane(max_age=10.0)
    ticket = lane.arrive(upstream=12.0)
    assert (ticket.state, ticket.reason) == (REJECTED, "too_old")
    assert lane.running == 0


def test_a_free_slot_admits_a_request_whose_queue_timeout_was_spent_upstream() -> None:
    lane = make_lane(queue_timeout=1.0)
    assert lane.arrive(upstream=3.0).state == ADMITTED


def test_a_request_that_would_wait_with_its_timeout_spent_upstream_is_rejected_at_once() -> None:
    lane = make_lane(queue_timeout=1.0)
    lane.arrive()
    ticket = lane.arrive(upstream=1.5)
    assert (ticket.state, ticket.reason) == (REJECTED, "timeout")
    assert lane.waiting == 0


def test_a_waiter_that_is_never_given_a_slot_times_out() -> None:
    lane = make_lane(queue_timeout=0.05)
    lane.arrive()
    ticket = lane.acquire()
    assert (ticket.state, ticket.reason) == (REJECTED, "timeout")
    assert lane.waiting == 0


def test_upstream_time_counts_against_the_queue_timeout() -> None:
    clock = FakeClock()
    lane = Lane("t", concurrency=1, max_queue_size=1, queue_timeout=5.0, clock=clock)
    lane.arrive()
    ticket = lane.arrive(upstream=4.0)
    assert ticket.state == WAITING
    clock.now += 1.5  # 5.5 s since the request started upstream
    lane.wait(ticket)  # returns at once: the deadline is past
    assert (ticket.state, ticket.reason) == (REJECTED, "timeout")


def test_a_waiter_reaching_max_age_before_its_queue_timeout_is_too_old() -> None:
    lane = make_lane(queue_timeout=60.0, max_age=0.05)
    lane.arrive()
    ticket = lane.acquire()
    assert (ticket.state, ticket.reason) == (REJECTED, "too_old")


def test_a_blocked_request_is_admitted_when_a_slot_frees() -> None:
    lane = make_lane(queue_timeout=60.0)
    holder = lane.arrive()
    thread, result = wait_in_thread(lane)
    lane.release(holder)
    thread.join(5)
    assert result[0].state == ADMITTED


def test_a_grant_racing_the_timeout_admits_the_request_and_keeps_the_count_right() -> None:
    """The slot is handed over between the waiter's timeout and its abandon: the waiter takes the slot."""
    clock = FakeClock()
    lane = Lane("t", concurrency=1, max_queue_size=1, queue_timeout=1.0, clock=clock)
    holder = lane.arrive()
    ticket = lane.arrive()
    lane.release(holder)  # granted (and its wake-up released) before the waiter looks
    clock.now += 10.0  # ...and the waiter's deadline is long past
    lane.wait(ticket)
    assert ticket.state == ADMITTED
    assert lane.running == 1


# -- figures --------------------------------------------------------------------------------------------


def test_retry_after_estimates_the_drain_time_of_the_line_in_whole_seconds() -> None:
    clock = FakeClock()
    lane = Lane("t", concurrency=2, max_queue_size=10, queue_timeout=60.0, clock=clock)
    assert lane.retry_after() == 1  # no service time known yet: at least a second
    first = lane.arrive()
    clock.now += 2.0
    lane.release(first)  # one request took 2 s
    lane.arrive()
    lane.arrive()
    for _ in range(3):
        lane.arrive()
    # (3 waiting + 1) * 2 s / 2 slots = 4 s
    assert lane.retry_after() == 4
    assert isinstance(lane.retry_after(), int)


def test_stats_report_counts_and_percentiles() -> None:
    clock = FakeClock()
    lane = Lane("t", concurrency=1, max_queue_size=1, queue_timeout=60.0, clock=clock)
    first = lane.arrive()
    second = lane.arrive()
    lane.arrive()  # rejected: full
    clock.now += 0.5
    lane.release(first)  # second waited 0.5 s, first served in 0.5 s
    clock.now += 0.25
    lane.release(second)
    stats = lane.stats()
    assert stats["running"] == 0
    assert stats["waiting"] == 0
    assert stats["admitted"] == 2
    assert stats["rejected"] == {
        "full": 1,
        "timeout": 0,
        "too_old": 0,
        "shed": 0,
        "disconnected": 0,
    }
    assert stats["wait_ms"] == {"p50": 0.0, "p95": 500.0, "p99": 500.0}
    assert stats["service_ms"] == {"p50": 250.0, "p95": 500.0, "p99": 500.0}
    assert stats["upstream_ms"] == {"p50": None, "p95": None, "p99": None}
    assert stats["limits"] == {
        "concurrency": 1,
        "max_queue_size": 1,
        "queue_timeout": 60.0,
        "max_age": None,
    }


def test_percentile_window_keeps_only_recent_samples() -> None:
    clock = FakeClock()
    lane = Lane("t", concurrency=1, max_queue_size=0, queue_timeout=1.0, clock=clock)
    for duration in [10.0] * 3000 + [0.001] * 2048:
        ticket = lane.arrive()
        clock.now += duration
        lane.release(ticket)
    assert lane.stats()["service_ms"]["p99"] == pytest.approx(1.0)


# -- threads --------------------------------------------------------------------------------------------


def test_many_threads_never_exceed_concurrency_and_each_request_ends_once() -> None:
    lane = make_lane(concurrency=3, max_queue_size=4, queue_timeout=30.0)
    guard = threading.Lock()
    inside = 0
    peak = 0
    outcomes: list[str] = []

    def request(priority: int) -> None:
        nonlocal inside, peak
        ticket = lane.acquire(priority)
        if ticket.state == ADMITTED:
            with guard:
                inside += 1
                peak = max(peak, inside)
            with guard:
                inside -= 1
            lane.release(ticket)
            outcome = "served"
        else:
            assert ticket.reason is not None
            outcome = ticket.reason
        with guard:
            outcomes.append(outcome)

    threads = [threading.Thread(target=request, args=(i % 3,)) for i in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(outcomes) == 200
    assert peak <= 3
    stats = lane.stats()
    assert stats["running"] == 0
    assert stats["waiting"] == 0
    assert stats["admitted"] == outcomes.count("served")
    assert stats["admitted"] + sum(stats["rejected"].values()) == 200


# -- the invariants, as a state machine ------------------------------------------------------------------


class LaneMachine(RuleBasedStateMachine):
    """Drive a lane with arrivals, completions and timeouts in any order; check it against a model."""

    tickets_bundle = Bundle("tickets")

    def __init__(self) -> None:
        super().__init__()
        self.model_waiting: list[Ticket] = []
        self.arrivals = 0
        self.fates: dict[int, int] = {}  # ticket seq -> times it reached a final admission/rejection
        self.tickets: list[Ticket] = []

    @initialize(concurrency=st.integers(1, 3), max_queue_size=st.integers(0, 4))
    def configure(self, concurrency: int, max_queue_size: int) -> None:
        self.lane = Lane(
            "m",
            concurrency=concurrency,
            max_queue_size=max_queue_size,
            queue_timeout=1.0,
        )

    @rule(target=tickets_bundle, priority=st.integers(-1, 2))
    def arrive(self, priority: int) -> Ticket:
        lane = self.lane
        full = lane.waiting >= lane.max_queue_size
        busy = lane.running >= lane.concurrency
        victim = max(self.model_waiting, key=lambda t: (t.priority, t.seq), default=None)
        ticket = lane.arrive(priority)
        self.arrivals += 1
        self.tickets.append(ticket)
        if not busy:
            assert ticket.state == ADMITTED
        elif not full:
            assert ticket.state == WAITING
            self.model_waiting.append(ticket)
        elif victim is not None and victim.priority > priority:
            assert ticket.state == WAITING
            assert (victim.state, victim.reason) == (REJECTED, "shed")
            self.model_waiting.remove(victim)
            self.model_waiting.append(ticket)
        else:
            assert (ticket.state, ticket.reason) == (REJECTED, "full")
        return ticket

    @rule(ticket=consumes(tickets_bundle))
    def finish_or_time_out(self, ticket: Ticket) -> None:
        """An admitted request finishes; a waiting one times out; a rejected one is gone already."""
        lane = self.lane
        if ticket.state == ADMITTED:
            expected = min(self.model_waiting, key=lambda t: (t.priority, t.seq), default=None)
            granted = lane.release(ticket)
            assert granted is expected, "the slot goes to the first waiter of the most important class"
            if expected is not None:
                self.model_waiting.remove(expected)
                assert expected.state == ADMITTED
            assert ticket.state == DONE
            assert lane.release(ticket) is None  # a second release is a no-op
        elif ticket.state == WAITING:
            assert lane.abandon(ticket, "timeout")
            self.model_waiting.remove(ticket)
            assert (ticket.state, ticket.reason) == (REJECTED, "timeout")
        else:
            assert ticket.state == REJECTED

    @rule(ticket=consumes(tickets_bundle))
    def client_leaves(self, ticket: Ticket) -> None:
        """An admitted request's client turns out to be gone: it is withdrawn and the slot handed on."""
        lane = self.lane
        if ticket.state != ADMITTED:
            return
        expected = min(self.model_waiting, key=lambda t: (t.priority, t.seq), default=None)
        assert lane.withdraw(ticket, "disconnected")
        assert (ticket.state, ticket.reason) == (REJECTED, "disconnected")
        if expected is not None:
            self.model_waiting.remove(expected)
            assert expected.state == ADMITTED

    @invariant()
    def limits_hold(self) -> None:
        lane = self.lane
        assert 0 <= lane.running <= lane.concurrency
        assert 0 <= lane.waiting <= lane.max_queue_size
        assert lane.waiting == len(self.model_waiting)
        if lane.waiting:
            assert lane.running == lane.concurrency, "no slot is idle while someone waits"

    @invariant()
    def every_request_is_accounted_for_once(self) -> None:
        stats = self.lane.stats()
        assert stats["admitted"] + sum(stats["rejected"].values()) + stats["waiting"] == self.arrivals
        assert sum(t.state == WAITING for t in self.tickets) == stats["waiting"]
        assert sum(t.state == ADMITTED for t in self.tickets) == stats["running"]


LaneMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
test_lane_state_machine = LaneMachine.TestCase


def test_wait_percentiles_count_only_time_in_line_and_upstream_time_is_reported_apart() -> None:
    clock = FakeClock()
    lane = Lane("t", concurrency=1, max_queue_size=1, queue_timeout=60.0, clock=clock)
    first = lane.arrive(upstream=2.0)  # admitted at once after 2 s upstream
    second = lane.arrive(upstream=3.0)  # waits in line
    clock.now += 0.5
    lane.release(first)
    assert second.state == ADMITTED
    stats = lane.stats()
    assert stats["wait_ms"] == {"p50": 0.0, "p95": 500.0, "p99": 500.0}
    assert stats["upstream_ms"] == {"p50": 2000.0, "p95": 3000.0, "p99": 3000.0}
