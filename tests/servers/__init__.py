"""Tests of the request queue under real servers (gunicorn, waitress) running in subprocesses."""
