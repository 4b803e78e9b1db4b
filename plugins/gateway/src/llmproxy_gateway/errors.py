"""llmproxy's errors as OpenAI's HTTP errors: status, ``{"error": {...}}`` body, Retry-After.

=================================  ======  ============================  =========================
error                              status  ``type``                      ``code``
=================================  ======  ============================  =========================
no key, wrong or revoked key       401     ``invalid_request_error``     ``invalid_api_key``
not an admin (dashboard)           403     ``invalid_request_error``     ``forbidden``
a model outside the key's          403     ``invalid_request_error``     ``model_not_allowed``
allow-list
bad body, ``InvalidRequest``,      400     ``invalid_request_error``     ``invalid_request`` /
``ConfigError``                                                          ``config_error``
``BudgetExceeded``                 429     ``insufficient_quota``        ``budget_exceeded``
``RateLimited``                    429     ``requests``                  ``rate_limit_exceeded``
``ProviderRateLimited``            429     ``requests``                  ``upstream_rate_limited``
``ProviderBadRequest``             the upstream's 4xx (else 400)         ``upstream_bad_request``
``ProviderTimeout``                504     ``server_error``              ``upstream_timeout``
other ``ProviderError``            502     ``server_error``              ``upstream_error``
``SchemaError`` (answer off the    502     ``server_error``              ``schema_mismatch``
``response_format`` schema)
``StoreError``                     503     ``server_error``              ``store_unavailable``
anything else                      500     ``server_error``              ``internal_error``
=================================  ======  ============================  =========================

Retry-After (whole seconds, rounded up) is sent with every 429 whose wait is known: a budget's
``resets_at`` (none for an all-time budget), a rate limit's or the upstream's ``retry_after``.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from llmproxy.errors import (
    BudgetExceeded,
    ConfigError,
    InvalidRequest,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    RateLimited,
    SchemaError,
    StoreError,
)
from llmproxy.secret import scrub


class HTTPError(Exception):
    """An error answer: status, OpenAI error fields and extra headers.

    The message is scrubbed of the process's secrets (:func:`llmproxy.secret.scrub`): an error
    quoting the request's body never sends a key back.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        message = scrub(message)
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> bytes:
        """The JSON body, in OpenAI's error shape."""
        return json.dumps(self.payload()).encode()

    def payload(self) -> dict[str, Any]:
        """The ``{"error": {...}}`` dict."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def _retry_after(seconds: float | None) -> dict[str, str]:
    if seconds is None or seconds < 0 or not math.isfinite(seconds):
        return {}
    return {
        "retry-after": str(max(1, math.ceil(seconds))),
        "retry-after-ms": str(int(seconds * 1000)),
    }


def unauthorized(message: str | None = None) -> HTTPError:
    """The 401 for a missing, wrong or revoked key."""
    return HTTPError(
        401,
        message or "Incorrect API key provided. Create one with: llmproxy keys create --user NAME",
        code="invalid_api_key",
    )


def bad_request(message: str, param: str | None = None) -> HTTPError:
    """A 400 for a body that is not a valid chat completion request."""
    return HTTPError(400, message, param=param, code="invalid_request")


def from_exception(exc: BaseException, *, now: float | None = None) -> HTTPError:
    """Map an exception raised by a Proxy call to the HTTP error the caller gets."""
    if isinstance(exc, HTTPError):
        return exc
    if isinstance(exc, BudgetExceeded):
        wait = None if exc.resets_at is None else exc.resets_at - (now or time.time())
        return HTTPError(
            429,
            str(exc),
            type="insufficient_quota",
            code="budget_exceeded",
            headers=_retry_after(wait),
        )
    if isinstance(exc, RateLimited):
        return HTTPError(
            429,
            str(exc),
            type="requests",
            code="rate_limit_exceeded",
            headers=_retry_after(exc.retry_after),
        )
    if isinstance(exc, InvalidRequest):
        return HTTPError(400, str(exc), param=exc.field, code="invalid_request")
    if isinstance(exc, ConfigError):
        return HTTPError(400, str(exc), param=exc.path, code="config_error")
    if isinstance(exc, ProviderRateLimited):
        return HTTPError(
            429,
            str(exc),
            type="requests",
            code="upstream_rate_limited",
            headers=_retry_after(exc.retry_after),
        )
    if isinstance(exc, ProviderBadRequest):
        status = exc.status if exc.status is not None and 400 <= exc.status < 500 else 400
        return HTTPError(status, str(exc), code="upstream_bad_request")
    if isinstance(exc, ProviderTimeout):
        return HTTPError(504, str(exc), type="server_error", code="upstream_timeout")
    if isinstance(exc, ProviderError):
        return HTTPError(502, str(exc), type="server_error", code="upstream_error")
    if isinstance(exc, SchemaError):
        # The upstream answered, but not in the shape the client asked for: a bad gateway
        # answer, not the client's fault; the message says what did not fit.
        return HTTPError(502, str(exc), type="server_error", code="schema_mismatch")
    if isinstance(exc, StoreError):
        return HTTPError(503, str(exc), type="server_error", code="store_unavailable")
    return HTTPError(
        500,
        "The gateway failed while handling the request; see its log.",
        type="server_error",
        code="internal_error",
    )
