"""Retry decisions as plain functions; the Proxy's sync and async shells only sleep."""

from __future__ import annotations

import random

from llmproxy.config import RetryConfig
from llmproxy.errors import ProviderError

_random = random.Random()  # noqa: S311 -- jitter, not cryptography


def backoff(attempt: int, config: RetryConfig, retry_after: float | None = None) -> float:
    """Return the delay before attempt ``attempt + 1`` (``attempt`` counts from 1).

    Exponential from ``initial_backoff``, capped at ``max_backoff``, with up to ``jitter`` of it
    taken off at random so that many clients do not retry in step; a longer ``retry_after`` from
    the service wins.
    """
    base = min(config.max_backoff, config.initial_backoff * config.multiplier ** (attempt - 1))
    delay = base * (1.0 - min(config.jitter, 1.0) * _random.random())
    if retry_after is not None and retry_after > delay:
        delay = retry_after
    return delay


def next_delay(
    error: BaseException, attempt: int, elapsed: float, config: RetryConfig
) -> float | None:
    """Return how long to wait before retrying after ``error``, or None to give up.

    Gives up on errors that are not retryable, after ``max_attempts``, and when the wait would
    end past the ``deadline``.
    """
    if not isinstance(error, ProviderError) or not error.retryable:
        return None
    if attempt >= config.max_attempts:
        return None
    delay = backoff(attempt, config, error.retry_after)
    if config.deadline is not None and elapsed + delay >= config.deadline:
        return None
    return delay
