"""The upstream double and a real redis-server for the shared verdict cache tests."""

from tests.proxy.conftest import double, double_server, double_url
from tests.redis_server import redis_server

__all__ = ["double", "double_server", "double_url", "redis_server"]
