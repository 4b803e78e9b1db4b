"""llmproxy-redis-budget: budgets and rate limits shared through Redis, one round trip a call.

>>> from llmproxy_redis_budget import RedisLedger
>>> ledger = RedisLedger("redis://localhost:6379/0?prefix=app&fail=open")  # doctest: +SKIP

Or, with the plugin installed: ``LLMPROXY_LEDGER_URL=redis://localhost:6379/0``.
"""

from llmproxy_redis_budget.breaker import CircuitBreaker
from llmproxy_redis_budget.env import LedgerSettings, settings_from_url
from llmproxy_redis_budget.ledger import RedisLedger

__version__ = "0.1.0"

__all__ = ["CircuitBreaker", "LedgerSettings", "RedisLedger", "__version__", "settings_from_url"]
