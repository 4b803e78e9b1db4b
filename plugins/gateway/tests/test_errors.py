"""llmproxy's errors map onto OpenAI's HTTP error shapes."""

from __future__ import annotations

import json

import pytest

from llmproxy.errors import (
    BudgetExceeded,
    ConfigError,
    InvalidRequest,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    StoreError,
)
from llmproxy_gateway import from_exception
from llmproxy_gateway.errors import HTTPError


def budget(resets_at: float | None) -> BudgetExceeded:
    return BudgetExceeded(
        policy="p", scope="key:k", limit=10, used=10, reserved=0, requested=1, resets_at=resets_at
    )


@pytest.mark.parametrize(
    ("exc", "status", "type_", "code", "retry_after"),
    [
        (budget(1000.2), 429, "insufficient_quota", "budget_exceeded", "1"),
        (budget(5000.0), 429, "insufficient_quota", "budget_exceeded", "4000"),
        (budget(None), 429, "insufficient_quota", "budget_exceeded", None),
        (
            RateLimited(policy="rpm", scope="key:k", limit=1, window=60, retry_after=2.5),
            429,
            "requests",
            "rate_limit_exceeded",
            "3",
        ),
        (
            InvalidRequest("bad", field="model"),
            400,
            "invalid_request_error",
            "invalid_request",
            None,
        ),
        (
            ConfigError("no price", path="prices"),
            400,
            "invalid_request_error",
            "config_error",
            None,
        ),
        (
            ProviderRateLimited("slow", provider="openai", status=429, retry_after=7),
            429,
            "requests",
            "upstream_rate_limited",
            "7",
        ),
        (
            ProviderBadRequest("no", provider="openai", status=404),
            404,
            "invalid_request_error",
            "upstream_bad_request",
            None,
        ),
        (
            ProviderBadRequest("no", provider="openai"),
            400,
            "invalid_request_error",
            "upstream_bad_request",
            None,
        ),
        (
            ProviderAuthError("key", provider="openai", status=401),
            502,
            "server_error",
            "upstream_error",
            None,
        ),
        (
            ProviderUnavailable("down", provider="openai", status=503),
            502,
            "server_error",
            "upstream_error",
            None,
        ),
        (ProviderTimeout("slow", provider="openai"), 504, "server_error", "upstream_timeout", None),
        (StoreError("redis down"), 503, "server_error", "store_unavailable", None),
        (RuntimeError("bug"), 500, "server_error", "internal_error", None),
    ],
)
def test_mapping(
    exc: BaseException, status: int, type_: str, code: str, retry_after: str | None
) -> None:
    error = from_exception(exc, now=1000.0)
    assert error.status == status
    body = json.loads(error.body())["error"]
    assert (body["type"], body["code"]) == (type_, code)
    assert error.headers.get("retry-after") == retry_after
    if status == 500:
        assert "bug" not in body["message"]  # internals stay in the log


def test_an_error_quoting_a_gateway_key_masks_it() -> None:
    key = "sk-llmp-0123456789-" + "Q" * 43
    error = HTTPError(400, f"messages[0].content is not text: {key!r}")
    assert key not in error.body().decode() and key not in str(error)
    assert "messages[0].content is not text: '***'" in error.body().decode()
