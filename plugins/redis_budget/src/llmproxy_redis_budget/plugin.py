"""The entry point llmproxy loads: registers the ``redis`` and ``rediss`` ledger schemes."""

from __future__ import annotations

from collections.abc import Mapping

import llmproxy
from llmproxy.budget.base import Ledger
from llmproxy.registry import RegisterLedger


def redis_ledger(url: str, environ: Mapping[str, str]) -> Ledger:
    """Build a :class:`~llmproxy_redis_budget.RedisLedger` for ``LLMPROXY_LEDGER_URL=redis://...``."""
    from llmproxy_redis_budget.ledger import RedisLedger

    return RedisLedger(url, environ=environ)


@llmproxy.hookimpl
def register_ledgers(register: RegisterLedger) -> None:
    """Register ``redis://`` and ``rediss://`` (TLS) ledgers."""
    register("redis", redis_ledger)
    register("rediss", redis_ledger)
