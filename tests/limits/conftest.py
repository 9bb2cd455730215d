"""The upstream double, the gateway factory and a real redis-server for the limits tests."""

from tests.proxy.conftest import double, double_server, double_url, start_gateway
from tests.redis_server import redis_server

__all__ = ["double", "double_server", "double_url", "redis_server", "start_gateway"]
