"""Fixtures of the end-to-end observability tests (the moderated gateway and its doubles)."""

from tests.observability.wiring_gateway import guard_server, start, upstream

__all__ = ["guard_server", "start", "upstream"]
