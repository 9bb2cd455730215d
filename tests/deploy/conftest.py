"""The upstream double for the deploy tests (the guard double is started per test)."""

from tests.proxy.conftest import double, double_server, double_url

__all__ = ["double", "double_server", "double_url"]
