"""The environment variables the DeepSeek plugin reads, in one place.

==============================  ===============================================================
Variable                        Meaning
==============================  ===============================================================
``DEEPSEEK_API_KEY``            The API key.
``DEEPSEEK_BASE_URL``           Another endpoint (default ``https://api.deepseek.com``; a
                                gateway, or a local fake server in tests).
``LLMPROXY_DEEPSEEK_TIMEOUT``   Seconds before one attempt times out (default 600).
==============================  ===============================================================

A key or base URL given in code or in the ``[providers.deepseek]`` configuration table wins.
"""

from __future__ import annotations

from collections.abc import Mapping

from llmproxy import env as envvars

API_KEY = "DEEPSEEK_API_KEY"
BASE_URL = "DEEPSEEK_BASE_URL"
TIMEOUT = "LLMPROXY_DEEPSEEK_TIMEOUT"

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
