"""Retry decisions: backoff growth, jitter bounds, retry-after, attempts and deadline."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from llmproxy.config import RetryConfig
from llmproxy.errors import ProviderBadRequest, ProviderRateLimited, ProviderUnavailable
from llmproxy.retry import backoff, next_delay


def test_backoff_grows_and_is_capped_without_jitter() -> None:
    config = RetryConfig(initial_backoff=0.5, multiplier=2, max_backoff=3, jitter=0)
    assert [backoff(n, config) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


@given(attempt=st.integers(1, 20), jitter=st.floats(0, 1))
def test_jitter_stays_within_bounds(attempt: int, jitter: float) -> None:
    config = RetryConfig(initial_backoff=0.5, max_backoff=8, jitter=jitter)
    base = min(8, 0.5 * 2 ** (attempt - 1))
    delay = backoff(attempt, config)
    assert base * (1 - jitter) - 1e-9 <= delay <= base + 1e-9


def test_retry_after_wins_when_longer() -> None:
    config = RetryConfig(initial_backoff=0.1, jitter=0)
    assert backoff(1, config, retry_after=2.5) == 2.5
    assert backoff(1, config, retry_after=0.01) == 0.1


def test_next_delay_decisions() -> None:
    config = RetryConfig(max_attempts=3, initial_backoff=0.1, jitter=0, deadline=10)
    limited = ProviderRateLimited("slow down", provider="p", status=429, retry_after=1.0)
    assert next_delay(limited, 1, 0.0, config) == 1.0
    assert next_delay(limited, 3, 0.0, config) is None  # attempts used up
    assert next_delay(limited, 1, 9.5, config) is None  # would end past the deadline
    assert next_delay(ProviderUnavailable("x", provider="p", status=500), 1, 0, config) == 0.1
    assert next_delay(ProviderBadRequest("x", provider="p", status=400), 1, 0, config) is None
    assert next_delay(ValueError("not ours"), 1, 0, config) is None
