"""Pytest fixtures for tests that need a real Redis: import them into a ``conftest.py``.

``redis_server`` starts one ``redis-server`` on loopback for the session (stopped by its pid);
``redis_url`` restarts it if a test stopped it and empties it before each test. Without the
``redis-server`` binary the tests are skipped, except under CI (``CI`` set), where they fail:
the Redis tests must run there.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmproxy_testing.env import in_ci
from llmproxy_testing.redis_server import RedisServer, redis_server_path


def need_redis_server() -> None:
    """Skip the test (fail it under CI) when ``redis-server`` is not installed."""
    if redis_server_path() is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if in_ci():
            pytest.fail(message + ": the Redis tests must run in CI")
        pytest.skip(message)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server on a free loopback port for the whole session."""
    need_redis_server()
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL, running and emptied (FLUSHALL) for this test."""
    if not redis_server.running:  # a test stopped it: bring it back
        redis_server.restart()
    redis_server.command("FLUSHALL")
    return redis_server.url
