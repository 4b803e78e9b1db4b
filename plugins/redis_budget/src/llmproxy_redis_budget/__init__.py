"""llmproxy-redis-budget: budgets and rate limits shared through Redis, one round trip a call.

>>> from llmproxy_redis_budget import RedisLedger
>>> ledger = RedisLedger("redis://localhost:6379/0?prefix=app&fail=open")  # doctest: +SKIP

Or, with the plugin installed: ``LLMPROXY_LEDGER_URL=redis://localhost:6379/0``. The classes
load on first use, so discovering the plugin does not import redis-py.
"""

from typing import TYPE_CHECKING

from llmproxy.lazy import lazy_exports

if TYPE_CHECKING:
    from llmproxy_redis_budget.breaker import CircuitBreaker
    from llmproxy_redis_budget.env import LedgerSettings, settings_from_url
    from llmproxy_redis_budget.ledger import RedisLedger

__version__ = "0.1.0"

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "CircuitBreaker": "llmproxy_redis_budget.breaker",
        "LedgerSettings": "llmproxy_redis_budget.env",
        "RedisLedger": "llmproxy_redis_budget.ledger",
        "settings_from_url": "llmproxy_redis_budget.env",
    },
)

__all__ = ["CircuitBreaker", "LedgerSettings", "RedisLedger", "__version__", "settings_from_url"]
