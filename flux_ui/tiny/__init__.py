"""Tiny random-weight models of the real architectures, for --tiny and the tests; only app.py and the
tests import this package."""
