"""llmproxy-usage-log: every call's tokens, cost, latency and outcome, and queries over them.

>>> from llmproxy_usage_log import open_usage_log
>>> log = open_usage_log("memory://")
>>> log.summary().calls
0
"""

from llmproxy_usage_log.base import (
    DIMENSIONS,
    Dimension,
    LimitHit,
    Point,
    Totals,
    UsageLog,
    UsageRecord,
)
from llmproxy_usage_log.memory import MemoryUsageLog
from llmproxy_usage_log.open import open_usage_log
from llmproxy_usage_log.plugin import set_usage_log, usage_log
from llmproxy_usage_log.sqlite import SQLiteUsageLog

__version__ = "0.1.0"

__all__ = [
    "DIMENSIONS",
    "Dimension",
    "LimitHit",
    "MemoryUsageLog",
    "Point",
    "SQLiteUsageLog",
    "Totals",
    "UsageLog",
    "UsageRecord",
    "__version__",
    "open_usage_log",
    "set_usage_log",
    "usage_log",
]
