"""Tests of ``flask_queue.request_queue``: lanes, the middleware, the Flask extension, and real servers."""
