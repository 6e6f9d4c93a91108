"""``RequestQueue``, the Flask extension: config keys, lanes per endpoint, blueprints, exempt views.

A slot is held by calling the WSGI app and not closing its response yet, which is exactly what a server does
while it sends a response: nothing here depends on timing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Blueprint, Flask, jsonify, request

from flask_queue import ConfigurationWarning, RequestQueue, signals
from flask_queue._types import WSGIEnvironment
from tests._wsgi import Call, hold

# -- RequestQueue (Flask extension) --------------------------------------------------------------------


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def test_the_extension_wraps_the_app_and_reports_stats(app: Flask) -> None:
    queue = RequestQueue(app, concurrency=2)

    @app.get("/")
    def index() -> str:
        return "ok"

    with app.test_client() as client, client.get("/") as response:
        assert response.status_code == 200
    with app.app_context():
        assert queue.stats()["lanes"]["default"]["admitted"] == 1
    assert queue.stats(app)["lanes"]["default"]["running"] == 0


def test_init_app_twice_raises(app: Flask) -> None:
    RequestQueue(app)
    with pytest.raises(RuntimeError, match="already has a RequestQueue"):
        RequestQueue(app)


def test_stats_without_init_app_names_the_fix(app: Flask) -> None:
    queue = RequestQueue()
    with pytest.raises(RuntimeError, match="init_app"):
        queue.stats(app)


def test_config_keys_override_the_constructor(app: Flask) -> None:
    app.config.update(
        REQUEST_QUEUE_CONCURRENCY=7,
        REQUEST_QUEUE_MAX_QUEUE_SIZE=3,
        REQUEST_QUEUE_QUEUE_TIMEOUT=1.5,
        REQUEST_QUEUE_MAX_AGE=20.0,
        REQUEST_QUEUE_STATUS=429,
    )
    queue = RequestQueue(app, concurrency=2, max_queue_size=9)
    assert queue.stats(app)["lanes"]["default"]["limits"] == {
        "concurrency": 7,
        "max_queue_size": 3,
        "queue_timeout": 1.5,
        "max_age": 20.0,
    }
    assert queue.middleware(app).status == 429


def test_defaults_are_written_to_the_config(app: Flask) -> None:
    RequestQueue(app, concurrency=3)
    assert app.config["REQUEST_QUEUE_CONCURRENCY"] == 3
    assert app.config["REQUEST_QUEUE_MAX_QUEUE_SIZE"] == 10
    assert app.config["REQUEST_QUEUE_STATUS"] == 503


def test_an_invalid_config_value_raises_naming_the_setting(app: Flask) -> None:
    app.config["REQUEST_QUEUE_CONCURRENCY"] = 0
    with pytest.raises(ValueError, match=r"concurrency.*REQUEST_QUEUE_"):
        RequestQueue(app)


def test_invalid_constructor_arguments_raise_before_any_app(app: Flask) -> None:
    with pytest.raises(ValueError, match="queue_timeout"):
        RequestQueue(queue_timeout=-1)
    with pytest.raises(ValueError, match="status"):
        RequestQueue(status=302)


def test_lane_validation(app: Flask) -> None:
    queue = RequestQueue(app)
    with pytest.raises(ValueError, match="concurrency"):
        queue.lane("bad", concurrency=0)
    with pytest.raises(ValueError, match="default lane"):
        queue.lane("default", concurrency=1)
    queue.lane("reports", concurrency=1)
    with pytest.raises(ValueError, match="already defined"):
        queue.lane("reports", concurrency=2)


def test_limit_on_an_unknown_lane_raises_at_decoration(app: Flask) -> None:
    queue = RequestQueue(app)
    queue.lane("reports", concurrency=1)
    with pytest.raises(ValueError, match=r"unknown lane 'reprots'.*queue.lane\('reprots'"):
        queue.limit("reprots")


def test_a_lane_inherits_unset_limits_from_the_apps_defaults(app: Flask) -> None:
    app.config["REQUEST_QUEUE_QUEUE_TIMEOUT"] = 2.0
    queue = RequestQueue(max_queue_size=4)
    queue.lane("reports", concurrency=1)
    queue.init_app(app)
    assert queue.stats(app)["lanes"]["reports"]["limits"] == {
        "concurrency": 1,
        "max_queue_size": 4,
        "queue_timeout": 2.0,
        "max_age": None,
    }


def test_a_lane_defined_after_init_app_applies_to_the_app(app: Flask) -> None:
    queue = RequestQueue(app)
    queue.lane("late", concurrency=1, max_age=None)
    assert "late" in queue.stats(app)["lanes"]


def test_limit_routes_a_view_through_its_lane_in_either_decorator_order(
    app: Flask,
) -> None:
    queue = RequestQueue(app, concurrency=1, max_queue_size=0)
    queue.lane("reports", concurrency=1, max_queue_size=0)

    @app.get("/report")
    @queue.limit("reports")
    def report() -> str:
        return "report"

    @queue.limit("reports")
    @app.get("/export")
    def export() -> str:
        return "export"

    @app.get("/")
    def index() -> str:
        return "index"

    held = hold(app, "/report")
    assert Call(app.wsgi_app, "/export").code == 503  # same lane, busy
    index_call = hold(app, "/")  # default lane is free
    lanes = queue.stats(app)["lanes"]
    assert (lanes["reports"]["admitted"], lanes["reports"]["rejected"]["full"]) == (
        1,
        1,
    )
    assert lanes["default"]["admitted"] == 1
    held.close()
    index_call.close()


def test_blueprint_views_can_be_limited(app: Flask) -> None:
    queue = RequestQueue(app)
    queue.lane("api", concurrency=1, max_queue_size=0)
    bp = Blueprint("api", __name__, url_prefix="/api")

    @bp.get("/items/<int:item>")
    @queue.limit("api")
    def item(item: int) -> str:
        return str(item)

    app.register_blueprint(bp)
    held = hold(app, "/api/items/1")
    assert Call(app.wsgi_app, "/api/items/2").code == 503
    held.close()


def test_endpoints_and_blueprints_can_be_limited_or_exempted_without_decorating_views(app: Flask) -> None:
    app.static_folder = str(Path(__file__).parent)  # serve this folder as Flask's own static files
    queue = RequestQueue(app, concurrency=1, max_queue_size=0)
    queue.lane("api", concurrency=1, max_queue_size=0)
    api = Blueprint("api", __name__, url_prefix="/api")
    admin = Blueprint("admin", __name__, url_prefix="/admin")
    api.register_blueprint(admin)

    @api.get("/items")
    def items() -> str:
        return "items"

    @admin.get("/users")
    def users() -> str:
        return "users"

    @api.get("/ping")
    @queue.exempt
    def ping() -> str:
        return "pong"

    @app.get("/")
    def index() -> str:
        return "index"

    assert queue.limit("api")(api) is api
    assert queue.exempt("static") == "static"
    app.register_blueprint(api)

    held_default, held_api = hold(app, "/"), hold(app, "/api/items")
    assert Call(app.wsgi_app, "/api/admin/users").code == 503  # nested blueprint: the api lane, busy
    for path in ("/static/conftest.py", "/api/ping"):  # exempt by endpoint name, and the view's own mark
        call = hold(app, path)
        call.close()
    lanes = queue.stats(app)["lanes"]
    assert (lanes["default"]["admitted"], lanes["api"]["admitted"]) == (1, 1)
    held_default.close()
    held_api.close()


def test_a_mark_made_after_requests_were_served_takes_effect(app: Flask) -> None:
    queue = RequestQueue(app, concurrency=1, max_queue_size=0)
    app.add_url_rule("/", "index", lambda: "index")
    app.add_url_rule("/other", "other", lambda: "other")
    queue.exempt("other")  # routing is on; "/" is now cached as the default lane
    hold(app, "/").close()
    held = hold(app, "/")
    queue.exempt("index")
    hold(app, "/").close()  # exempt now, although the lane is full
    held.close()


def test_marking_something_that_is_not_a_view_raises(app: Flask) -> None:
    queue = RequestQueue(app)
    with pytest.raises(TypeError, match="view function, an endpoint name or a Blueprint"):
        queue.exempt(42)


def test_exempt_views_pass_while_the_lane_is_full_and_are_not_counted(
    app: Flask,
) -> None:
    queue = RequestQueue(app, concurrency=1, max_queue_size=0)

    @app.get("/")
    def index() -> str:
        return "index"

    @app.get("/health")
    @queue.exempt
    def health() -> str:
        return "ok"

    held = hold(app, "/")
    assert Call(app.wsgi_app, "/").code == 503
    health_call = hold(app, "/health")
    health_call.close()
    assert queue.stats(app)["lanes"]["default"]["admitted"] == 1
    held.close()


def test_unrouted_requests_go_through_the_default_lane(app: Flask) -> None:
    queue = RequestQueue(app, concurrency=1, max_queue_size=0)

    @app.post("/only-post")
    @queue.exempt
    def only_post() -> str:
        return "posted"

    not_found = Call(app.wsgi_app, "/nope")
    assert not_found.code == 404
    assert Call(app.wsgi_app, "/only-post").code == 503  # 405 would be answered, but the lane is busy
    not_found.close()
    method_not_allowed = Call(app.wsgi_app, "/only-post")
    assert method_not_allowed.code == 405
    method_not_allowed.close()
    assert queue.stats(app)["lanes"]["default"]["admitted"] == 2


def test_the_reject_response_hook_runs_in_a_request_context(app: Flask) -> None:
    queue = RequestQueue(app, concurrency=1, max_queue_size=0)

    @app.get("/")
    def index() -> str:
        return "index"

    @queue.reject_response
    def busy(reason: str, retry_after: int) -> Any:
        return jsonify(path=request.path, reason=reason), 503

    held = hold(app, "/")
    rejected = Call(app.wsgi_app, "/?x=1")
    assert rejected.code == 503
    assert rejected.json() == {"path": "/", "reason": "full"}
    assert int(rejected.headers["Retry-After"]) >= 1
    held.close()


def test_classify_set_after_init_app_applies(app: Flask) -> None:
    queue = RequestQueue(app, concurrency=1, max_queue_size=1, queue_timeout=30.0)
    calls: list[str] = []

    @queue.classify
    def classify(environ: WSGIEnvironment) -> int:
        calls.append(environ["PATH_INFO"])
        return 0

    @app.get("/")
    def index() -> str:
        return "index"

    hold(app, "/").close()
    assert calls == ["/"]


def test_signals_are_sent_with_the_app_as_sender(app: Flask) -> None:
    queue = RequestQueue(app, concurrency=1, max_queue_size=0)

    @app.get("/")
    def index() -> str:
        return "index"

    reasons: list[str] = []
    with signals.request_rejected.connected_to(
        lambda sender, reason, **extra: reasons.append(reason), sender=app
    ):
        held = hold(app, "/")
        Call(app.wsgi_app, "/")
        held.close()
    assert reasons == ["full"]
    assert queue.stats(app)["lanes"]["default"]["rejected"]["full"] == 1


def test_one_extension_serves_several_apps_with_separate_queues() -> None:
    queue = RequestQueue(concurrency=1, max_queue_size=0)
    queue.lane("reports", concurrency=1)
    apps = [Flask("one"), Flask("two")]
    for each in apps:
        queue.init_app(each)
        each.add_url_rule("/", "index", lambda: "index")
    held = hold(apps[0], "/")
    second = hold(apps[1], "/")  # the other app's default lane is its own
    assert Call(apps[0].wsgi_app, "/").code == 503
    held.close()
    second.close()
    assert [queue.stats(each)["lanes"]["default"]["admitted"] for each in apps] == [
        1,
        1,
    ]


def test_the_test_client_releases_slots_for_responses_it_drops(app: Flask) -> None:
    RequestQueue(app, concurrency=1, max_queue_size=0)

    @app.get("/")
    def index() -> str:
        return "index"

    client = app.test_client()
    for _ in range(5):
        assert client.get("/").status_code == 200


# -- the app's own tests, and monitoring threads ----------------------------------------------------------


def test_the_flask_test_client_gives_each_slot_back_when_its_request_returns(app: Flask) -> None:
    """A server closes each response once it is sent; Flask's test client leaves that to the test, so the
    slots stayed taken and the fifth request of a lane of 4 waited, then was rejected."""
    queue = RequestQueue(app, concurrency=4, max_queue_size=0, queue_timeout=0.5)

    @app.get("/")
    def index() -> str:
        return "hello"

    client = app.test_client()
    responses = [client.get("/") for _ in range(6)]  # kept, as a test that asserts on each one later does
    assert [response.status_code for response in responses] == [200] * 6
    assert [response.data for response in responses] == [b"hello"] * 6
    assert queue.stats(app)["lanes"]["default"]["running"] == 0


def test_a_test_of_a_stream_can_keep_its_slot_with_buffered_false(app: Flask) -> None:
    queue = RequestQueue(app, concurrency=1, max_queue_size=0)

    @app.get("/stream")
    def stream() -> Any:
        return app.response_class(iter([b"a", b"b"]))

    response = app.test_client().get("/stream", buffered=False)
    assert queue.stats(app)["lanes"]["default"]["running"] == 1
    assert response.data == b"ab"
    response.close()
    assert queue.stats(app)["lanes"]["default"]["running"] == 0


def test_an_apps_own_test_client_class_is_kept(app: Flask) -> None:
    from flask.testing import FlaskClient

    class Mine(FlaskClient):
        pass

    app.test_client_class = Mine
    RequestQueue(app)
    assert type(app.test_client()) is Mine


def test_stats_work_from_a_plain_thread_when_the_queue_has_one_app(app: Flask) -> None:
    queue = RequestQueue(app, concurrency=3)
    seen: list[Any] = []
    thread = threading.Thread(target=lambda: seen.append(queue.stats()))
    thread.start()
    thread.join()
    assert seen[0]["lanes"]["default"]["limits"]["concurrency"] == 3


def test_stats_outside_an_app_context_with_several_apps_names_the_fix() -> None:
    queue = RequestQueue()
    with pytest.raises(RuntimeError, match=r"set up on no app yet"):
        queue.stats()
    first, second = Flask("first"), Flask("second")  # kept: the queue holds its apps weakly
    queue.init_app(first)
    queue.init_app(second)
    with pytest.raises(RuntimeError, match=r"call queue\.stats\(app\).*several apps"):
        queue.stats()
    with pytest.raises(RuntimeError, match=r"middleware\(app\)"):
        RequestQueue.middleware()


def test_a_misspelt_setting_is_warned_about_naming_the_real_one(app: Flask) -> None:
    app.config["REQUEST_QUEUE_CONCURENCY"] = 1
    with pytest.warns(
        ConfigurationWarning,
        match="REQUEST_QUEUE_CONCURENCY is not a Flask-Queue setting, so it is ignored: did you mean REQUEST_QUEUE_CONCURRENCY",
    ):
        queue = RequestQueue(app)
    assert queue.stats(app)["lanes"]["default"]["limits"]["concurrency"] == 4


def test_a_setting_changed_after_init_app_is_warned_about_once_at_the_first_request(app: Flask) -> None:
    queue = RequestQueue(app, concurrency=2)
    app.config["REQUEST_QUEUE_CONCURRENCY"] = 8

    @app.get("/")
    def index() -> str:
        return "ok"

    client = app.test_client()
    with pytest.warns(
        ConfigurationWarning,
        match=r"REQUEST_QUEUE_CONCURRENCY was changed after RequestQueue.init_app read it \(2 -> 8\)",
    ):
        assert client.get("/").status_code == 200
    assert client.get("/").status_code == 200  # no second warning: filterwarnings=error would raise it
    assert queue.stats(app)["lanes"]["default"]["limits"]["concurrency"] == 2


def test_wrong_objects_where_an_app_or_a_lane_is_expected_raise_type_error_naming_the_fix(app: Flask) -> None:
    with pytest.raises(
        TypeError,
        match=r"RequestQueue\(app\) and RequestQueue.init_app\(app\) take a Flask app, not method .*RequestQueueMiddleware\(app\)",
    ):
        RequestQueue(app.wsgi_app)  # type: ignore[arg-type]
    queue = RequestQueue(app)
    with pytest.raises(TypeError, match=r'queue.limit takes the name of a lane: @queue.limit\("reports"\)'):

        @queue.limit  # type: ignore[arg-type]  # the lane forgotten
        def view() -> str:
            return "x"
