"""Runnable examples of Flask-Queue; ``make demo`` serves ``examples.demo``."""
