"""A real redis-server for the Redis usage-log tests (started on loopback, stopped by pid)."""

from __future__ import annotations

from llmproxy_testing.redis_fixtures import redis_server, redis_url
