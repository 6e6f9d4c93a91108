"""The ticks of a schedule (``flask_queue.tasks.schedule``) and the checks of ``@tasks.periodic``: no backend."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from flask import Flask

from flask_queue import TaskQueue
from flask_queue.tasks.schedule import MAX_CATCH_UP, Schedule

PARIS = ZoneInfo("Europe/Paris")


@pytest.fixture
def tasks() -> TaskQueue:
    app = Flask(__name__)
    app.config["TESTING"] = True
    return TaskQueue(app)


def schedule(tasks: TaskQueue, **options: Any) -> Schedule:
    options.setdefault("name", "s")

    def job() -> None: ...

    tasks.periodic(**options)(job)
    return tasks.schedules[options["name"]]


def at(*fields: int, tz: dt.tzinfo = PARIS, fold: int = 0) -> float:
    return dt.datetime(*fields, tzinfo=tz, fold=fold).timestamp()  # type: ignore[arg-type, misc]


def local(when: float) -> str:
    return dt.datetime.fromtimestamp(when, PARIS).isoformat()


# -- every= ----------------------------------------------------------------------------------------------------


def test_every_ticks_on_multiples_of_the_interval_since_the_epoch(tasks: TaskQueue) -> None:
    s = schedule(tasks, every=30)
    assert s.next_after(1000.0) == 1020.0
    assert s.next_after(1020.0) == 1050.0  # strictly after
    assert s.latest(1049.9) == 1020.0
    assert s.latest(1050.0) == 1050.0


def test_a_schedule_never_ticked_starts_after_it_was_first_kept(tasks: TaskQueue) -> None:
    s = schedule(tasks, every=10)
    assert s.due(None, now=1005.0, started=1001.0) == []
    assert s.due(None, now=1010.5, started=1001.0) == [1010.0]


def test_catch_up_latest_makes_one_job_of_the_missed_ticks(tasks: TaskQueue) -> None:
    s = schedule(tasks, every=10)
    assert s.due(1000.0, now=1055.0, started=1050.0) == [1050.0]


def test_catch_up_all_makes_one_job_per_missed_tick(tasks: TaskQueue) -> None:
    s = schedule(tasks, every=10, catch_up="all")
    assert s.due(1000.0, now=1055.0, started=1050.0) == [1010.0, 1020.0, 1030.0, 1040.0, 1050.0]
    many = s.due(0.0, now=10.0 * (MAX_CATCH_UP + 500), started=0.0)
    assert len(many) == MAX_CATCH_UP
    assert many[-1] == 10.0 * (MAX_CATCH_UP + 500)  # the latest ones


def test_catch_up_none_skips_the_ticks_missed_before_this_process_kept_them(tasks: TaskQueue) -> None:
    s = schedule(tasks, every=10, catch_up="none")
    assert s.due(1000.0, now=1055.0, started=1052.0) == []
    assert s.due(1000.0, now=1061.0, started=1052.0) == [1060.0]


def test_max_lateness_skips_a_tick_found_too_late(tasks: TaskQueue) -> None:
    s = schedule(tasks, every=60, max_lateness=5)
    assert s.due(1020.0, now=1084.0, started=0.0) == [1080.0]
    assert s.due(1020.0, now=1086.0, started=0.0) == []


def test_a_tick_already_had_is_not_due_again(tasks: TaskQueue) -> None:
    s = schedule(tasks, every=10)
    assert s.due(1050.0, now=1059.0, started=0.0) == []


# -- cron ------------------------------------------------------------------------------------------------------


def test_cron_ticks_in_its_time_zone(tasks: TaskQueue) -> None:
    s = schedule(tasks, cron="0 9 * * 1-5", tz="Europe/Paris")  # weekdays at 09:00 in Paris
    friday = at(2026, 12, 4, 10, 0)
    assert local(s.next_after(friday)) == "2026-12-07T09:00:00+01:00"  # Monday
    assert local(s.latest(friday) or 0) == "2026-12-04T09:00:00+01:00"
    assert s.latest(at(2026, 12, 4, 9, 0)) == at(2026, 12, 4, 9, 0)  # a tick is its own latest


def test_a_time_the_clock_skips_runs_once_after_the_gap(tasks: TaskQueue) -> None:
    """29 March 2026: Paris goes from 02:00 to 03:00. A 02:30 line runs at 03:00 that day, once."""
    s = schedule(tasks, cron="30 2 * * *", tz="Europe/Paris")
    ticks = [s.next_after(at(2026, 3, 28, 12, 0))]
    ticks.append(s.next_after(ticks[-1]))
    assert [local(tick) for tick in ticks] == ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]


def test_a_time_the_clock_goes_back_over_runs_once(tasks: TaskQueue) -> None:
    """25 October 2026: Paris goes from 03:00 back to 02:00. A daily 02:30 line runs once that night."""
    s = schedule(tasks, cron="30 2 * * *", tz="Europe/Paris")
    first = s.next_after(at(2026, 10, 24, 12, 0))
    second = s.next_after(first)
    assert local(first) == "2026-10-25T02:30:00+02:00"
    assert local(second) == "2026-10-26T02:30:00+01:00"
    assert second - first == 25 * 3600


def test_an_hourly_line_has_every_real_hour_across_both_transitions(tasks: TaskQueue) -> None:
    s = schedule(tasks, cron="0 * * * *", tz="Europe/Paris")
    for start, hours in ((at(2026, 3, 29, 0, 30), 5), (at(2026, 10, 25, 0, 30), 5)):
        ticks = [s.next_after(start)]
        for _ in range(hours - 1):
            ticks.append(s.next_after(ticks[-1]))
        assert all(later - earlier == 3600 for earlier, later in itertools.pairwise(ticks))


def test_catch_up_all_walks_back_over_cron_ticks(tasks: TaskQueue) -> None:
    s = schedule(tasks, cron="*/15 * * * *", catch_up="all")
    last = at(2026, 1, 1, 10, 0, tz=dt.timezone.utc)
    due = s.due(last, now=at(2026, 1, 1, 11, 1, tz=dt.timezone.utc), started=0.0)
    assert [dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%H:%M") for t in due] == [
        "10:15",
        "10:30",
        "10:45",
        "11:00",
    ]


def test_the_tick_reaches_the_task_as_an_aware_datetime_in_the_zone(tasks: TaskQueue) -> None:
    seen: list[dt.datetime] = []

    @tasks.periodic(cron="0 3 * * *", tz="Europe/Paris")
    def nightly(tick: dt.datetime) -> None:
        seen.append(tick)

    s = tasks.schedules[nightly.name]
    tick = at(2026, 7, 1, 3, 0)
    nightly.run((), s.kwargs(tick))
    assert seen == [dt.datetime(2026, 7, 1, 3, 0, tzinfo=PARIS)]
    assert seen[0].tzinfo == PARIS


# -- bad input -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "61 * * * *"}, "cron must be a valid cron line"),
        ({"cron": "* * *"}, "cron must be a cron line of five fields"),
        ({"cron": "*/5 * * * * *"}, "five fields"),
        ({"cron": 5}, "five fields"),
        ({"cron": "0 0 31 2 *"}, "valid cron line"),
        ({"cron": "* * * * *", "every": 60}, "not both"),
        ({}, "give cron= or every="),
        ({"every": 0}, "every must be a number > 0"),
        ({"every": -5}, "every must be a number > 0"),
        ({"every": True}, "every must be a number > 0"),
        ({"every": 60, "tz": "Mars/Olympus"}, "tz must be an IANA time zone name"),
        ({"every": 60, "tz": ""}, "tz must be an IANA time zone name"),
        ({"every": 60, "catch_up": "some"}, "catch_up must be one of latest, all, none"),
        ({"every": 60, "max_lateness": 0}, "max_lateness must be a number > 0"),
        ({"every": 60, "overlap": "no"}, "overlap must be True or False"),
    ],
)
def test_bad_options_raise_value_error_naming_them(
    tasks: TaskQueue, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        schedule(tasks, **options)


def test_a_function_that_needs_arguments_is_refused_at_decoration(tasks: TaskQueue) -> None:
    with pytest.raises(TypeError, match="needs the argument 'user_id'"):

        @tasks.periodic(every=60)
        def per_user(user_id: int, tick: dt.datetime) -> None: ...


def test_arguments_with_defaults_and_no_tick_are_fine(tasks: TaskQueue) -> None:
    @tasks.periodic(every=60, name="defaults")
    def with_defaults(limit: int = 10) -> None: ...

    assert not tasks.schedules["defaults"].takes_tick
    assert tasks.schedules["defaults"].kwargs(60.0) == {}


def test_periodic_over_an_existing_task_keeps_it(tasks: TaskQueue) -> None:
    @tasks.periodic(every=60)
    @tasks.task(name="reports.daily", retries=2)
    def daily() -> None: ...

    assert daily.name == "reports.daily"
    assert daily.retries == 2
    assert tasks.schedules["reports.daily"].task is daily


def test_two_schedules_of_one_task_need_names(tasks: TaskQueue) -> None:
    @tasks.task
    def refresh() -> None: ...

    tasks.periodic(every=60)(refresh)
    with pytest.raises(ValueError, match="two schedules are named"):
        tasks.periodic(every=3600)(refresh)
    tasks.periodic(every=3600, name="refresh-hourly")(refresh)
    assert set(tasks.schedules) == {refresh.name, "refresh-hourly"}


def test_task_under_periodic_is_the_wrong_order_and_says_so(tasks: TaskQueue) -> None:
    with pytest.raises(TypeError, match="is a task already"):

        @tasks.task
        @tasks.periodic(every=60)
        def wrong_order() -> None: ...


def test_a_task_of_another_queue_is_refused(tasks: TaskQueue) -> None:
    other = TaskQueue()

    @other.task
    def elsewhere() -> None: ...

    with pytest.raises(ValueError, match="another TaskQueue"):
        tasks.periodic(every=60)(elsewhere)


def test_every_ticks_are_bit_identical_however_they_are_reached(tasks: TaskQueue) -> None:
    """k * 0.3 by multiplication and by walking back from a later tick differ in the last bit: each tick is
    computed one way only, or the backend's compare-and-set would see two ticks where there is one."""
    s = schedule(tasks, every=0.3, catch_up="all")
    now = 1796686541.45
    walked = s.due(now - 30, now, started=0.0)
    for tick in walked:
        assert s.latest(tick) == tick
        assert s.next_after(s.latest(tick - 0.1) or 0.0) == tick
    assert len(set(walked)) == len(walked) == 100
