"""A real redis-server for the Redis usage-log tests (started on loopback, stopped by pid)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from llmproxy.testing.redis_server import RedisServer, redis_server_path


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    if redis_server_path() is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message + ": the Redis tests must run in CI")
        pytest.skip(message)
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if not redis_server.running:
        redis_server.restart()
    redis_server.command("FLUSHALL")
    return redis_server.url
