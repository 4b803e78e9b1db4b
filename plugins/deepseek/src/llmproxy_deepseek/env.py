"""The environment variables the DeepSeek plugin reads, in one place.

=====================================  ========================================================
Variable                               Meaning
=====================================  ========================================================
``DEEPSEEK_API_KEY``                   The API key.
``DEEPSEEK_BASE_URL``                  Another endpoint (default ``https://api.deepseek.com``;
                                       a gateway, or a local fake server in tests).
``LLMPROXY_DEEPSEEK_TIMEOUT``          The read timeout: seconds the service may stay silent,
                                       between two chunks of a stream or for a whole answer
                                       when the call has no deadline (default 60).
``LLMPROXY_DEEPSEEK_CONNECT_TIMEOUT``  Seconds to open a connection (default 10).
=====================================  ========================================================

A key or base URL given in code or in the ``[providers.deepseek]`` configuration table wins, and
so do its ``timeout`` and ``connect_timeout``. A call through the Proxy is also bounded as a
whole by its overall deadline (``retry.deadline``, default 300 s), which every attempt keeps to.
"""

from __future__ import annotations

from collections.abc import Mapping

from llmproxy import env as envvars

API_KEY = "DEEPSEEK_API_KEY"
BASE_URL = "DEEPSEEK_BASE_URL"
TIMEOUT = "LLMPROXY_DEEPSEEK_TIMEOUT"
CONNECT_TIMEOUT = "LLMPROXY_DEEPSEEK_CONNECT_TIMEOUT"

KEY_VARIABLES = (API_KEY,)

#: DeepSeek's OpenAI-compatible endpoint.
DEFAULT_BASE_URL = "https://api.deepseek.com"


def api_key(environ: Mapping[str, str]) -> str | None:
    """Return the API key from ``DEEPSEEK_API_KEY``, or None."""
    return environ.get(API_KEY) or None


def base_url(environ: Mapping[str, str]) -> str | None:
    """Return ``DEEPSEEK_BASE_URL`` when set."""
    return environ.get(BASE_URL) or None


def timeout(environ: Mapping[str, str]) -> float | None:
    """Return ``LLMPROXY_DEEPSEEK_TIMEOUT`` in seconds when set."""
    return envvars.seconds(environ, TIMEOUT)


def connect_timeout(environ: Mapping[str, str]) -> float | None:
    """Return ``LLMPROXY_DEEPSEEK_CONNECT_TIMEOUT`` in seconds when set."""
    return envvars.seconds(environ, CONNECT_TIMEOUT)
