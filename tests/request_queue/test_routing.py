"""Regression tests of lane selection: automatic OPTIONS, nested blueprints, class-based views, the route cache. Each failed before its fix."""

from __future__ import annotations

from flask import Blueprint, Flask
from flask.views import MethodView

from flask_queue import RequestQueue
from tests._wsgi import Call, hold

# -- routing to lanes ---------------------------------------------------------------------------------------


def test_automatic_options_requests_do_not_wait_in_the_views_lane(app: Flask) -> None:
    queue = RequestQueue(app)
    queue.lane("reports", concurrency=1, max_queue_size=0)

    @app.get("/report")
    @queue.limit("reports")
    def report() -> str:
        return "report"

    held = hold(app, "/report")
    preflight = Call(app.wsgi_app, "/report", method="OPTIONS")
    assert preflight.code == 200
    preflight.close()
    held.close()


def test_a_nested_blueprint_can_be_marked_itself_and_under_another_name(app: Flask) -> None:
    queue = RequestQueue(app)
    queue.lane("admin", concurrency=1, max_queue_size=0)
    parent = Blueprint("parent", __name__, url_prefix="/p")
    child = Blueprint("child", __name__, url_prefix="/c")
    child.add_url_rule("/x", "x", lambda: "x")
    parent.register_blueprint(child)
    queue.limit("admin")(child)
    app.register_blueprint(parent)
    app.register_blueprint(parent, name="v2", url_prefix="/v2")
    for path in ("/p/c/x", "/v2/c/x"):
        held = hold(app, path)
        assert Call(app.wsgi_app, path).code == 503
        held.close()
    assert queue.stats(app)["lanes"]["admin"]["admitted"] == 2


def test_a_class_based_view_can_be_limited(app: Flask) -> None:
    queue = RequestQueue(app)
    queue.lane("reports", concurrency=1, max_queue_size=0)

    @queue.limit("reports")
    class Report(MethodView):
        def get(self) -> str:
            return "report"

    app.add_url_rule("/report", view_func=Report.as_view("report"))
    held = hold(app, "/report")
    assert Call(app.wsgi_app, "/report").code == 503
    held.close()


def test_the_route_cache_tells_schemes_apart(app: Flask) -> None:
    """With host matching, ``Host: api.example.com:443`` is that host for https only; a 404 routed for http
    must not be reused for https."""
    app.url_map.host_matching = True
    queue = RequestQueue(app)
    queue.lane("api", concurrency=1, max_queue_size=0)
    app.add_url_rule("/", "api", queue.limit("api")(lambda: "api"), host="api.example.com")
    headers = {"Host": "api.example.com:443"}
    http = Call(app.wsgi_app, "/", headers=headers)
    assert http.code == 404
    http.close()
    https = Call(app.wsgi_app, "/", headers=headers, base_url="https://api.example.com:443")
    assert https.code == 200
    assert queue.stats(app)["lanes"]["api"]["running"] == 1
    https.close()
