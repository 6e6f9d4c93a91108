"""The dashboard through the test client: pages, JSON, actions, authorization, CSRF and bad input."""

from __future__ import annotations

import html
import re
import time
from typing import Any

import pytest
from flask import Flask, redirect

from flask_queue import ConfigurationError, Dashboard, JobStatus, RequestQueue, TaskQueue
from flask_queue.dashboard import _data
from flask_queue.tasks import WorkerInfo
from tests.servers._live import free_port

from .conftest import MakeSite, RedisServer, Site, csrf_token

PAGES = ("/queue/", "/queue/jobs", "/queue/api/stats", "/queue/api/jobs", "/queue/static/dashboard.js")


def stats(site: Site) -> dict[str, Any]:
    with site.client().get("/queue/api/stats") as response:
        assert response.status_code == 200
        assert response.headers["Cache-Control"] == "no-store"
        data: dict[str, Any] = response.get_json()
    return data


# -- what it shows -------------------------------------------------------------------------------------------


def test_the_overview_shows_lanes_task_queues_and_jobs(site: Site) -> None:
    site.ok.enqueue(1)
    site.ok.options(queue="mail").enqueue(2)
    site.boom.enqueue("disk full")
    site.tasks.drain()
    site.ok.enqueue(3)
    site.ok.enqueue_in(3600, 4)
    with site.client().get("/queue/") as response:
        assert response.status_code == 200
        assert response.mimetype == "text/html"
        csp = response.headers["Content-Security-Policy"]
        page = response.get_data(as_text=True)
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    for heading in ("Request lanes", "Task queues", "Workers", "Failed jobs", "Latest jobs", "Queue size"):
        assert heading in page
    assert 'id="tile-queued">1<' in page
    assert 'id="tile-scheduled">1<' in page
    assert 'id="tile-failed">1<' in page
    assert "ValueError: disk full" in page
    assert "site.ok(3)" in page
    # No inline script or style: the policy above would block them.
    assert not re.search(r"<script>|<style|style=", page)


def test_the_json_has_the_same_numbers(site: Site) -> None:
    site.ok.enqueue_many([((n,), {}) for n in range(3)])
    site.boom.enqueue("no")
    site.tasks.drain()
    site.ok.enqueue(9)
    data = stats(site)
    assert set(data) == {"time", "requests", "tasks"}
    lane = data["requests"]["default"]
    assert {"running", "waiting", "admitted", "rejected", "wait_ms", "service_ms", "limits"} <= set(lane)
    assert set(lane["wait_ms"]) == {"p50", "p95", "p99"}
    assert lane["limits"]["concurrency"] == 2
    tasks = data["tasks"]
    assert tasks["backend"].startswith("sqlite:///")
    assert tasks["queues"]["default"] == {
        "queued": 1,
        "scheduled": 0,
        "running": 0,
        "succeeded": 3,
        "failed": 1,
        "cancelled": 0,
        "expired": 0,
        "deferred": 0,
    }
    assert tasks["totals"]["succeeded"] == 3
    assert [job["call"] for job in tasks["recent"]][:2] == ["site.ok(9)", 'site.boom("no")']
    (failed,) = tasks["failed"]
    assert (failed["status"], failed["error"], failed["attempts"]) == ("failed", "ValueError: no", 1)


def test_live_workers_are_listed(site: Site) -> None:
    now = time.time()
    info = WorkerInfo("box:42:abcd", "box", 42, ["mail"], 4, 1, 17, now - 60, now, 30.0)
    site.tasks.backend().beat(info)
    (worker,) = stats(site)["tasks"]["workers"]
    assert (worker["host"], worker["pid"], worker["queues"], worker["threads"], worker["processed"]) == (
        "box",
        42,
        ["mail"],
        4,
        17,
    )
    with site.client().get("/queue/") as response:
        page = response.get_data(as_text=True)
    assert "box<small>:42</small>" in page
    assert 'id="tile-workers">1<' in page


def test_the_job_list_pages_and_filters(site: Site) -> None:
    site.ok.enqueue_many([((n,), {}) for n in range(30)])
    site.ok.options(queue="mail").enqueue("x")
    client = site.client()
    with client.get("/queue/api/jobs") as response:
        first = response.get_json()
    assert (len(first["jobs"]), first["page"], first["has_next"]) == (25, 1, True)
    with client.get("/queue/api/jobs?page=2") as response:
        second = response.get_json()
    assert (len(second["jobs"]), second["has_next"]) == (6, False)
    assert {job["id"] for job in first["jobs"]}.isdisjoint(job["id"] for job in second["jobs"])
    with client.get("/queue/api/jobs?queue=mail") as response:
        assert [job["queue"] for job in response.get_json()["jobs"]] == ["mail"]
    with client.get("/queue/api/jobs?status=failed") as response:
        assert response.get_json()["jobs"] == []
    with client.get("/queue/jobs?page=2") as response:
        assert response.status_code == 200
        page = response.get_data(as_text=True)
    assert 'rel="prev"' in page
    assert 'rel="next"' not in page
    with client.get("/queue/jobs?page=99") as response:
        assert response.status_code == 200
        assert "No job here." in response.get_data(as_text=True)


def test_the_job_page_shows_the_call_error_and_traceback(site: Site) -> None:
    job = site.boom.enqueue("bad luck")
    site.tasks.drain()
    with site.client().get(f"/queue/jobs/{job.id}") as response:
        assert response.status_code == 200
        page = response.get_data(as_text=True)
    assert "site.boom(&#34;bad luck&#34;)" in page
    assert "ValueError: bad luck" in page
    assert "Traceback (most recent call last)" in page
    with site.client().get(f"/queue/api/jobs/{job.id}") as response:
        data = response.get_json()
    assert data["call"] == 'site.boom("bad luck")'
    assert "raise ValueError(message)" in data["traceback"]


def test_an_app_without_queues_has_an_empty_dashboard() -> None:
    app = Flask(__name__)
    Dashboard(app, authorize=lambda: True)
    client = app.test_client()
    with client.get("/queue/") as response:
        assert response.status_code == 200
        assert "neither a <code>RequestQueue</code> nor a <code>TaskQueue</code>" in response.get_data(
            as_text=True
        )
    with client.get("/queue/api/stats") as response:
        assert response.get_json()["tasks"] is None
    with client.get("/queue/api/jobs") as response:
        assert response.status_code == 404


def test_the_prefix_comes_from_the_config(make_site: MakeSite) -> None:
    site = make_site(url_prefix="/ops/queues")
    with site.client().get("/ops/queues/api/stats") as response:
        assert response.status_code == 200
    with site.client().get("/queue/api/stats") as response:
        assert response.status_code == 404
    app = Flask(__name__)
    app.config["QUEUE_DASHBOARD_URL_PREFIX"] = "/admin/q"
    Dashboard(app, authorize=lambda: True)
    with app.test_client().get("/admin/q/") as response:
        assert response.status_code == 200


def test_it_is_set_up_once_with_valid_settings() -> None:
    app = Flask(__name__)
    Dashboard(app)
    with pytest.raises(RuntimeError, match="already set up"):
        Dashboard(app)
    for settings in ({"url_prefix": "queue"}, {"authorize": True}, {"refresh": 0}, {"refresh": True}):
        with pytest.raises(ConfigurationError, match="QUEUE_DASHBOARD_"):
            Dashboard(Flask(__name__), **settings)
    with pytest.raises(TypeError, match="unexpected keyword argument 'prefix'"):
        Dashboard(Flask(__name__), prefix="/q")  # type: ignore[call-arg]


def test_the_request_queue_can_leave_it_out() -> None:
    app = Flask(__name__)
    queue = RequestQueue(app, concurrency=1, max_queue_size=0)
    Dashboard(app, authorize=lambda: True)
    queue.exempt(Dashboard.blueprint)
    held = app.test_client().get("/queue/api/stats")  # not closed yet: it would hold the only slot
    try:
        with app.test_client().get("/queue/") as response:
            assert response.status_code == 200
    finally:
        held.close()


# -- authorization --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
def test_it_is_403_when_authorize_says_no(site: Site, path: str) -> None:
    site.allowed[0] = False
    with site.client().get(path) as response:
        assert response.status_code == 403
        assert "queued" not in response.get_data(as_text=True)


def test_authorize_is_asked_on_every_request(site: Site) -> None:
    client = site.client()
    for path in PAGES:
        client.get(path).close()
    assert site.asked == len(PAGES)


@pytest.mark.parametrize(
    ("debug", "remote_addr", "status"),
    [
        (False, "127.0.0.1", 403),
        (True, "10.0.0.7", 403),
        (True, "192.168.1.2", 403),
        (True, "127.0.0.1", 200),
        (True, "::1", 200),
        (True, "::ffff:127.0.0.1", 200),
    ],
)
def test_without_authorize_it_is_only_for_loopback_in_debug_mode(
    make_site: MakeSite, debug: bool, remote_addr: str, status: int
) -> None:
    site = make_site(authorize=None)
    site.app.debug = debug
    for path in PAGES:
        with site.client().get(path, environ_base={"REMOTE_ADDR": remote_addr}) as response:
            assert response.status_code == status, path


def test_a_refused_action_changes_nothing(site: Site) -> None:
    job = site.ok.enqueue(1)
    client = site.client()
    token = csrf_token(client)
    site.allowed[0] = False
    with client.post(f"/queue/jobs/{job.id}/cancel", data={"csrf_token": token}) as response:
        assert response.status_code == 403
    assert job.status is JobStatus.QUEUED


# -- actions and CSRF -----------------------------------------------------------------------------------------


def test_retry_queues_a_failed_job_again(site: Site) -> None:
    job = site.boom.enqueue("once")
    site.tasks.drain()
    assert job.status is JobStatus.FAILED
    client = site.client()
    token = csrf_token(client)
    with client.post(f"/queue/jobs/{job.id}/retry", data={"csrf_token": token}) as response:
        assert response.status_code == 303
        location = response.headers["Location"]
    assert location.endswith(f"/queue/jobs/{job.id}?done=retried")
    assert site.tasks.status(job.id) is JobStatus.QUEUED
    with client.get(location) as response:
        assert "Queued again" in response.get_data(as_text=True)


def test_cancel_a_waiting_job(site: Site) -> None:
    job = site.ok.enqueue_in(600, 1)
    client = site.client()
    token = csrf_token(client)
    with client.post(f"/queue/jobs/{job.id}/cancel", data={"csrf_token": token}) as response:
        assert response.status_code == 303
    assert job.status is JobStatus.CANCELLED


def test_an_action_that_does_not_apply_is_409(site: Site) -> None:
    job = site.ok.enqueue(1)
    site.tasks.drain()
    client = site.client()
    token = csrf_token(client)
    for action in ("retry", "cancel"):
        with client.post(f"/queue/jobs/{job.id}/{action}", data={"csrf_token": token}) as response:
            assert response.status_code == 409
            assert "Only a" in response.get_data(as_text=True)
    assert job.status is JobStatus.SUCCEEDED


@pytest.mark.parametrize(
    ("send", "headers"),
    [
        ("none", {}),
        ("wrong", {}),
        ("empty", {}),
        ("unicode", {}),
        ("right", {"Origin": "https://evil.example"}),
        ("right", {"Origin": "null"}),
        ("right", {"Referer": "http://evil.example/page"}),
    ],
)
def test_an_action_without_the_right_token_is_400_and_changes_nothing(
    site: Site, send: str, headers: dict[str, str]
) -> None:
    job = site.ok.enqueue(1)
    client = site.client()
    token = csrf_token(client)
    wrong = {
        "none": {},
        "wrong": {"csrf_token": "x" * len(token)},
        "empty": {"csrf_token": ""},
        "unicode": {"csrf_token": "é" * len(token)},
    }
    data = wrong.get(send, {"csrf_token": token})
    with client.post(f"/queue/jobs/{job.id}/cancel", data=data, headers=headers) as response:
        assert response.status_code == 400
        assert "CSRF" in response.get_data(as_text=True)
    assert job.status is JobStatus.QUEUED


def test_a_token_without_its_cookie_is_400(site: Site) -> None:
    job = site.ok.enqueue(1)
    token = csrf_token(site.client())
    with site.client().post(f"/queue/jobs/{job.id}/cancel", data={"csrf_token": token}) as response:
        assert response.status_code == 400
    assert job.status is JobStatus.QUEUED


def test_the_same_origin_may_post(site: Site) -> None:
    job = site.ok.enqueue(1)
    client = site.client()
    token = csrf_token(client)
    with client.post(
        f"/queue/jobs/{job.id}/cancel", data={"csrf_token": token}, headers={"Origin": "http://localhost"}
    ) as response:
        assert response.status_code == 303
    assert job.status is JobStatus.CANCELLED


def test_the_csrf_cookie_is_strict_and_kept(site: Site) -> None:
    client = site.client()
    with client.get("/queue/") as response:
        cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/queue" in cookie
    with client.get("/queue/") as response:
        assert "Set-Cookie" not in response.headers  # the browser's token stays the same


# -- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/queue/jobs/{}", "/queue/api/jobs/{}", "/queue/jobs/{}/retry", "/queue/jobs/{}/cancel"],
)
@pytest.mark.parametrize("job_id", ["1-deadbeef", "nope", "%3Cscript%3E"])
def test_an_unknown_job_is_404(site: Site, path: str, job_id: str) -> None:
    client = site.client()
    token = csrf_token(client)
    url = path.format(job_id)
    if url.endswith(("retry", "cancel")):
        response = client.post(url, data={"csrf_token": token})
    else:
        response = client.get(url)
    with response:
        assert response.status_code == 404
        assert response.mimetype in ("text/plain", "application/json")
        assert "<script>" not in response.get_data(as_text=True)


@pytest.mark.parametrize("page", ["x", "0", "-1", "1.5", "", " 2", "²", "9" * 12])
@pytest.mark.parametrize("path", ["/queue/jobs", "/queue/api/jobs"])
def test_a_malformed_page_number_is_400(site: Site, path: str, page: str) -> None:
    with site.client().get(path, query_string={"page": page}) as response:
        assert response.status_code == 400
        assert "page must be a whole number" in response.get_data(as_text=True)


def test_an_unknown_status_is_400(site: Site) -> None:
    with site.client().get("/queue/api/jobs?status=lost") as response:
        assert response.status_code == 400
        assert "status must be one of" in response.get_json()["error"]


def test_html_in_arguments_and_errors_is_shown_as_text(site: Site) -> None:
    markup = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    job = site.boom.enqueue(markup)
    site.ok.enqueue(markup, note=markup)
    site.tasks.drain()
    client = site.client()
    for path in ("/queue/", "/queue/jobs", f"/queue/jobs/{job.id}"):
        with client.get(path) as response:
            page = response.get_data(as_text=True)
        assert "<script>alert" not in page, path
        assert "<img src=x" not in page, path
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page, path
    # The JSON carries the text as it is: the page's script puts it in with textContent.
    with client.get("/queue/api/stats") as response:
        failed = response.get_json()["tasks"]["failed"][0]
    assert failed["error"] == f"ValueError: {markup}"


@pytest.mark.parametrize("path", ["/queue/jobs", "/queue/api/jobs"])
@pytest.mark.parametrize(
    "query", ["status=bogus", "status=QUEUED", "page=-1", "page=abc", "queue=%00", "queue=a%01b"]
)
def test_a_bad_query_string_is_400_on_the_pages_and_the_api(site: Site, path: str, query: str) -> None:
    with site.client().get(f"{path}?{query}") as response:
        assert response.status_code == 400
        assert response.mimetype == ("application/json" if "/api/" in path else "text/plain")
        assert "must be" in response.get_data(as_text=True)


@pytest.mark.parametrize("job_id", ["%00", "a%01b", "x" * 300])
@pytest.mark.parametrize("path", ["/queue/jobs/{}", "/queue/api/jobs/{}", "/queue/jobs/{}/retry"])
def test_a_malformed_job_id_is_404_on_every_backend(
    make_site: MakeSite, backend_kind: str, path: str, job_id: str
) -> None:
    site = make_site(backend=backend_kind)
    client = site.client()
    token = csrf_token(client)
    url = path.format(job_id)
    response = client.post(url, data={"csrf_token": token}) if url.endswith("retry") else client.get(url)
    with response:
        assert response.status_code == 404


def test_an_action_by_get_or_without_its_token_changes_nothing(site: Site) -> None:
    job = site.boom.enqueue("x")
    site.tasks.drain()
    client = site.client()
    with client.get(f"/queue/jobs/{job.id}/retry") as response:
        assert response.status_code == 405
    with client.post(f"/queue/jobs/{job.id}/retry") as response:
        assert response.status_code == 400
    assert job.status is JobStatus.FAILED


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"url_prefix": "queue"}, "QUEUE_DASHBOARD_URL_PREFIX must be a path such as '/queue'"),
        ({"url_prefix": ""}, "QUEUE_DASHBOARD_URL_PREFIX must be"),
        ({"url_prefix": "/q ueue"}, "QUEUE_DASHBOARD_URL_PREFIX must be"),
        ({"url_prefix": "/queue/<name>"}, "QUEUE_DASHBOARD_URL_PREFIX must be"),
        ({"url_prefix": "//evil.example"}, "QUEUE_DASHBOARD_URL_PREFIX must be"),
        ({"url_prefix": "/queue?x=1"}, "QUEUE_DASHBOARD_URL_PREFIX must be"),
        ({"url_prefix": b"/queue"}, "QUEUE_DASHBOARD_URL_PREFIX must be"),
        ({"url_prefix": None}, "QUEUE_DASHBOARD_URL_PREFIX must be"),
        ({"authorize": "admin"}, "QUEUE_DASHBOARD_AUTHORIZE must be a function of no argument"),
        ({"authorize": lambda user: True}, "it is called with no argument"),
        ({"refresh": "2"}, "QUEUE_DASHBOARD_REFRESH must be a number > 0"),
        ({"refresh": -1}, "QUEUE_DASHBOARD_REFRESH must be a number > 0"),
        ({"refresh": float("nan")}, "QUEUE_DASHBOARD_REFRESH must be a number > 0"),
        ({"refresh": float("inf")}, "QUEUE_DASHBOARD_REFRESH must be a number > 0"),
        ({"refresh": 1e12}, "QUEUE_DASHBOARD_REFRESH must be a number of seconds up to 3600"),
    ],
)
def test_a_misused_setting_raises_configuration_error(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        Dashboard(Flask(__name__), **settings)


def test_the_prefixes_a_path_may_have() -> None:
    for prefix in ("/", "/queue/", "/ops/queues", "/a-b_c.d~e"):
        app = Flask(__name__)
        Dashboard(app, url_prefix=prefix, authorize=lambda: True)
        with app.test_client().get(prefix.rstrip("/") + "/api/stats") as response:
            assert response.status_code == 200, prefix


@pytest.mark.parametrize("app", ["app", 42, object()])
def test_it_needs_a_flask_app(app: object) -> None:
    with pytest.raises(TypeError, match=r"Dashboard\(app\) and Dashboard.init_app\(app\) take a Flask app"):
        Dashboard().init_app(app)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="take a Flask app"):
        Dashboard(app)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("answer", "status"),
    [(True, 200), (1, 200), (False, 403), (0, 403), (None, 403), ("yes", 403), ("redirect", 403)],
)
def test_authorize_must_say_true_to_open_it(make_site: MakeSite, answer: object, status: int) -> None:
    def authorize() -> object:
        # A login redirect returned instead of False is truthy: it must not open the dashboard.
        return redirect("/login") if answer == "redirect" else answer

    site = make_site(authorize=authorize)
    with site.client().get("/queue/api/stats") as response:
        assert response.status_code == status


# -- what a figure means: heartbeats, statuses after an action --------------------------------------------------


def test_a_workers_figures_stand_beside_the_age_of_its_heartbeat(site: Site) -> None:
    # The worker said "2 of 2 busy" 4 s ago; its jobs have finished since, so the backend counts 0 running.
    # The page must not show "2/2 busy" as if it were now, beside "0 running".
    now = time.time()
    site.tasks.backend().beat(WorkerInfo("box:42:abcd", "box", 42, None, 2, 2, 17, now - 60, now - 4, 15.0))
    data = stats(site)
    (worker,) = data["tasks"]["workers"]
    assert data["tasks"]["totals"]["running"] == 0
    assert (worker["running"], worker["threads"]) == (2, 2)
    assert 4 <= worker["beat_age"] < 10
    with site.client().get("/queue/") as response:
        page = response.get_data(as_text=True)
    assert 'id="tile-running">0<' in page
    workers = page[page.index('id="workers"') : page.index("</table>", page.index('id="workers"'))]
    assert "as of each one&rsquo;s last heartbeat" in page
    assert re.search(r'<th scope="col" class="num">Heartbeat</th>', workers)
    row = re.search(r"<tr>\s*<th scope=\"row\".*?</tr>", workers, re.S)
    assert row, workers
    # The busy figure, then (not hidden on a phone) how old it is.
    assert re.search(
        r'<td class="num">2<small>/2</small></td>.*<td class="num beat">[4-9] s ago</td>', row[0], re.S
    )


@pytest.mark.parametrize(
    ("then", "status", "notice"),
    [
        (None, "queued", "Queued again: it runs when a worker is free."),
        ("fails", "failed", "Queued again; it has run since and failed again."),
        ("cancel", "cancelled", "Queued again; it has been cancelled since."),
    ],
)
def test_the_page_after_retry_shows_the_status_the_job_has_now(
    make_site: MakeSite, backend_kind: str, then: str | None, status: str, notice: str
) -> None:
    site = make_site(backend=backend_kind)
    job = site.fails.enqueue()
    site.tasks.drain()
    client = site.client()
    token = csrf_token(client)
    with client.post(f"/queue/jobs/{job.id}/retry", data={"csrf_token": token}) as response:
        assert response.status_code == 303
        location = response.headers["Location"]
    # Between the action and the page it leads to, a worker (or another tab) may change the job again.
    if then == "fails":
        assert site.tasks.drain() == 1
    elif then == "cancel":
        assert site.tasks.backend().cancel(job.id)
    with client.get(location) as response:
        page = response.get_data(as_text=True)
    assert re.findall(r'class="badge s-(\w+)"', page)[0] == status
    assert notice in page
    if status != "queued":
        assert "it runs when a worker is free" not in page


def test_the_page_after_cancel_shows_the_status_the_job_has_now(site: Site) -> None:
    job = site.ok.enqueue(1)
    client = site.client()
    token = csrf_token(client)
    with client.post(f"/queue/jobs/{job.id}/cancel", data={"csrf_token": token}) as response:
        location = response.headers["Location"]
    with client.get(location) as response:
        assert "Cancelled: no worker will run it." in response.get_data(as_text=True)
    assert site.tasks.backend().requeue(job.id)
    with client.get(location) as response:
        page = response.get_data(as_text=True)
    assert re.findall(r'class="badge s-(\w+)"', page)[0] == "queued"
    assert "Cancelled; it has been queued again since." in page


# -- odd and large arguments ----------------------------------------------------------------------------------

LONE_SURROGATE = "hi \ud800"  # valid JSON ("hi \\ud800"), but no UTF-8 can encode it


def test_a_lone_surrogate_in_an_argument_is_shown_escaped_on_every_backend(
    make_site: MakeSite, backend_kind: str
) -> None:
    site = make_site(backend=backend_kind)
    failed = site.fails.enqueue(LONE_SURROGATE)
    site.tasks.drain()
    waiting = site.ok.enqueue(LONE_SURROGATE, note=LONE_SURROGATE)
    client = site.client()
    pages = ["/queue/", "/queue/jobs", "/queue/jobs?status=failed", f"/queue/jobs/{failed.id}"]
    for path in [*pages, f"/queue/jobs/{waiting.id}"]:
        with client.get(path) as response:
            assert response.status_code == 200, path
            page = response.get_data(as_text=True)
        assert "(&#34;hi \\ud800&#34;" in page, path
    with client.get("/queue/api/stats") as response:
        assert response.status_code == 200
        tasks = response.get_json()["tasks"]
    assert tasks["recent"][0]["call"] == 'site.ok("hi \\ud800", note="hi \\ud800")'
    assert tasks["failed"][0]["call"] == 'site.fails("hi \\ud800")'
    for path in ("/queue/api/jobs", f"/queue/api/jobs/{waiting.id}"):
        with client.get(path) as response:
            assert response.status_code == 200, path
            assert "\\\\ud800" in response.get_data(as_text=True), path


def test_a_lone_surrogate_in_an_error_is_shown_escaped() -> None:
    # Only the memory backend can store such an error today (the others fail to encode it; see the report).
    app = Flask(__name__)
    tasks = TaskQueue(app, backend="memory://", workers=0)
    Dashboard(app, authorize=lambda: True)

    @tasks.task(name="odd.boom")
    def boom(message: str) -> None:
        raise ValueError(message)

    job = boom.enqueue(LONE_SURROGATE)
    tasks.drain()
    client = app.test_client()
    try:
        for path in ("/queue/", "/queue/jobs", f"/queue/jobs/{job.id}"):
            with client.get(path) as response:
                assert response.status_code == 200, path
                page = response.get_data(as_text=True)
            assert "ValueError: hi \\ud800" in page, path
        with client.get("/queue/api/stats") as response:
            data = response.get_json()["tasks"]
        assert data["failed"][0]["error"] == "ValueError: hi \\ud800"
    finally:
        tasks.shutdown()


def test_a_list_never_decodes_a_large_payload(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    big = "x" * 1_000_000
    large = site.ok.enqueue(big, tail="end")
    small = site.ok.enqueue(1)
    decoded: list[int] = []
    loads_call = site.tasks.serializer.loads_call

    def recording(payload: str) -> tuple[list[Any], dict[str, Any]]:
        decoded.append(len(payload))
        return loads_call(payload)

    monkeypatch.setattr(site.tasks.serializer, "loads_call", recording)
    client = site.client()
    for path in ("/queue/", "/queue/jobs", "/queue/api/jobs"):
        with client.get(path) as response:
            assert response.status_code == 200, path
    recent = stats(site)["tasks"]["recent"]
    assert decoded, "the small job's arguments are decoded"
    # Bounded by a constant, not by the payload: not even a hundredth of it.
    assert max(decoded) <= len(big) // 100
    assert max(decoded) <= _data.PREVIEW_DECODE_LIMIT
    calls = {job["id"]: job["call"] for job in recent}
    assert calls[small.id] == "site.ok(1)"
    preview = calls[large.id]
    assert len(preview) <= _data.ARGS_PREVIEW
    assert preview.startswith('site.ok("xxxx')
    assert preview.endswith(f"… ({len(large_payload(site, large.id)):,} characters)")
    # The job's own page has it all.
    with client.get(f"/queue/api/jobs/{large.id}") as response:
        assert response.get_json()["call"] == f'site.ok("{big}", tail="end")'
    with client.get(f"/queue/jobs/{large.id}") as response:
        assert f"site.ok(&#34;{big}&#34;, tail=&#34;end&#34;)" in response.get_data(as_text=True)


def large_payload(site: Site, job_id: str) -> str:
    record = site.tasks.backend().get(job_id)
    assert record is not None
    return record.payload


def test_a_list_shows_the_start_of_a_long_error(site: Site) -> None:
    job = site.boom.enqueue("e" * 10_000)
    site.tasks.drain()
    (failed,) = stats(site)["tasks"]["failed"]
    assert len(failed["error"]) < 1000
    assert len(failed["error"]) == _data.ERROR_PREVIEW
    assert failed["error"].startswith("ValueError: eee")
    assert failed["error"].endswith("…")
    with site.client().get(f"/queue/api/jobs/{job.id}") as response:
        assert response.get_json()["error"] == "ValueError: " + "e" * 10_000


# -- a task backend that does not answer -----------------------------------------------------------------------


def test_the_overview_says_the_backend_is_down_and_keeps_the_lanes(
    make_site: MakeSite, private_redis: RedisServer
) -> None:
    site = make_site(backend=private_redis.url)
    job = site.ok.enqueue(1)
    client = site.client()
    with client.get("/queue/api/stats") as response:
        assert response.get_json()["tasks"]["totals"]["queued"] == 1
    private_redis.stop()

    with client.get("/queue/api/stats") as response:
        assert response.status_code == 200
        data = response.get_json()
    assert data["requests"]["default"]["limits"]["concurrency"] == 2  # the lanes are still there
    tasks = data["tasks"]
    assert (tasks["up"], tasks["backend"]) == (False, private_redis.url)
    assert private_redis.url in tasks["error"]
    assert "totals" not in tasks  # no figure rather than zeros
    with client.get("/queue/") as response:
        assert response.status_code == 200
        page = response.get_data(as_text=True)
    assert re.search(
        r'<p id="tasks-down" class="alert" role="alert">\s*<strong>The task backend is unavailable', page
    )
    assert private_redis.url in page
    assert 'id="tile-queued">\u2013<' in page  # an en dash: no figure
    assert 'id="lanes"' in page
    for path in ("/queue/jobs", f"/queue/jobs/{job.id}", "/queue/api/jobs", f"/queue/api/jobs/{job.id}"):
        with client.get(path) as response:
            assert response.status_code == 503, path
            assert response.headers["Retry-After"] == "5"
            assert "The task backend is unavailable" in response.get_data(as_text=True), path
    token = csrf_token(client)
    with client.post(f"/queue/jobs/{job.id}/cancel", data={"csrf_token": token}) as response:
        assert response.status_code == 503


def test_the_overview_of_a_backend_that_never_answered(make_site: MakeSite) -> None:
    site = make_site(backend=f"redis://127.0.0.1:{free_port()}/0")
    with site.client().get("/queue/") as response:
        assert response.status_code == 200
        page = response.get_data(as_text=True)
    assert 'id="tasks-down" class="alert" role="alert">' in page
    assert "Unavailable: the task backend does not answer." in page
    with site.client().get("/queue/api/stats") as response:
        assert response.get_json()["tasks"]["up"] is False


def test_the_banner_is_hidden_while_the_backend_answers(site: Site) -> None:
    with site.client().get("/queue/") as response:
        page = response.get_data(as_text=True)
    assert '<p id="tasks-down" class="alert" role="alert" hidden>' in page


def test_a_misspelt_setting_is_warned_about_naming_the_real_one() -> None:
    from flask import Flask

    from flask_queue import ConfigurationWarning

    app = Flask(__name__)
    app.config["QUEUE_DASHBOARD_URL_PREFX"] = "/admin/queue"
    with pytest.warns(
        ConfigurationWarning, match="QUEUE_DASHBOARD_URL_PREFX .* did you mean QUEUE_DASHBOARD_URL_PREFIX"
    ):
        Dashboard(app)


# -- schedules --------------------------------------------------------------------------------------------------


def test_the_schedules_page_lists_runs_pauses_and_resumes(site: Site) -> None:
    site.tasks.periodic(cron="0 3 * * *", tz="Europe/Paris", name="nightly")(site.ok)
    client = site.client()
    with client.get("/queue/schedules") as response:
        page = html.unescape(response.get_data(as_text=True))
    assert response.status_code == 200
    assert "nightly" in page
    assert 'cron "0 3 * * *" Europe/Paris' in page
    assert "Run now" in page
    assert ">Pause<" in page
    token = csrf_token(client)
    with client.post("/queue/schedules/nightly/run", data={"csrf_token": token}) as response:
        assert response.status_code == 303
        location = response.headers["Location"]
    with client.get(location) as response:
        assert "nightly: a job is enqueued now." in response.get_data(as_text=True)
    assert site.tasks.backend().pending() == 1
    with client.post("/queue/schedules/nightly/pause", data={"csrf_token": token}) as response:
        assert response.status_code == 303
    assert site.tasks.schedule_states()[0]["paused"]
    with client.get("/queue/schedules") as response:
        assert ">Resume<" in response.get_data(as_text=True)
    with client.get("/queue/api/schedules") as response:
        [listed] = response.get_json()["schedules"]
    assert (listed["name"], listed["paused"], listed["last_tick"]) == ("nightly", True, None)
    with client.post("/queue/schedules/nightly/resume", data={"csrf_token": token}) as response:
        assert response.status_code == 303
    assert not site.tasks.schedule_states()[0]["paused"]


def test_schedule_actions_need_the_csrf_token_and_a_real_schedule(site: Site) -> None:
    site.tasks.periodic(every=60, name="often")(site.ok)
    client = site.client()
    with client.post("/queue/schedules/often/pause") as response:
        assert response.status_code == 400  # as for the job actions: no token, no action
    assert not site.tasks.schedule_states()[0]["paused"]
    token = csrf_token(client)
    for path in ("/queue/schedules/nope/run", "/queue/schedules/often/explode"):
        with client.post(path, data={"csrf_token": token}) as response:
            assert response.status_code == 404
    with client.get("/queue/schedules?done=run&name=%3Cscript%3E") as response:
        assert "<script>" not in response.get_data(as_text=True)  # no notice for a name the code lacks


def test_an_expired_job_shows_its_status_and_can_be_retried(site: Site) -> None:
    job = site.ok.options(expires_in=0.01, key="k").enqueue(1)
    time.sleep(0.05)
    site.tasks.drain()
    client = site.client()
    with client.get(f"/queue/jobs/{job.id}") as response:
        page = response.get_data(as_text=True)
    assert "s-expired" in page
    assert "Expired at" in page
    assert "<code>k</code>" in page
    assert ">Retry<" in page
    assert stats(site)["tasks"]["queues"]["default"]["expired"] == 1
