"""``gunicorn -k flask_queue.gunicorn.WSGIPlusWorker``: the WSGI+ worker, under the name users type."""

from flask_queue.wsgiplus.gunicorn import WSGIPlusWorker

__all__ = ["WSGIPlusWorker"]
