"""The environment variables the Anthropic plugin reads, in one place.

======================================  ============================================================
Variable                                Meaning
======================================  ============================================================
``ANTHROPIC_API_KEY``                   The API key (``sk-ant-...``).
``ANTHROPIC_BASE_URL``                  Another endpoint (a gateway, or a local fake server in
                                        tests).
``LLMPROXY_ANTHROPIC_TIMEOUT``          The read timeout in seconds (default 60).
======================================  ============================================================

A key or base URL given in code or in the ``[providers.anthropic]`` configuration table wins,
and so does its ``timeout``. The table's options can be set by the core's
``LLMPROXY_PROVIDERS__NAME__KEY`` variables too: ``LLMPROXY_PROVIDERS__ANTHROPIC__PROMPT_CACHE``,
``LLMPROXY_PROVIDERS__ANTHROPIC__AUTO_CACHE`` and ``LLMPROXY_PROVIDERS__ANTHROPIC__COUNT_TOKENS``
take ``true``/``false`` (or ``on``/``off``, ``1``/``0``, ``yes``/``no``). The plugin passes
each setting to the SDK explicitly, so the SDK never reads the process environment behind the
Proxy's back: the SDK's own ``ANTHROPIC_AUTH_TOKEN`` and ``ANTHROPIC_CUSTOM_HEADERS`` are not
used (give headers as the provider's ``default_headers``).
"""

from __future__ import annotations

from collections.abc import Mapping

from llmproxy import env as envvars

API_KEY = "ANTHROPIC_API_KEY"
BASE_URL = "ANTHROPIC_BASE_URL"
TIMEOUT = "LLMPROXY_ANTHROPIC_TIMEOUT"

KEY_VARIABLES = (API_KEY,)

#: The Anthropic API's endpoint.
DEFAULT_BASE_URL = "https://api.anthropic.com"


def api_key(environ: Mapping[str, str]) -> str | None:
    """Return ``ANTHROPIC_API_KEY`` when set."""
    return environ.get(API_KEY) or None


def base_url(environ: Mapping[str, str]) -> str | None:
    """Return ``ANTHROPIC_BASE_URL`` when set."""
    return environ.get(BASE_URL) or None


def timeout(environ: Mapping[str, str]) -> float | None:
    """Return ``LLMPROXY_ANTHROPIC_TIMEOUT`` in seconds when set."""
    return envvars.seconds(environ, TIMEOUT)
