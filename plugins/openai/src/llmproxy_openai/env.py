"""The environment variables the OpenAI plugin reads, in one place.

===========================================  =======================================================
Variable                                     Meaning
===========================================  =======================================================
``OPENAI_API_KEY``                           The API key.
``LLM_PROXY_OPEN_AI_DEFAULT_OPEN_API_KEY``   The seed library's name for the key; read when
                                             ``OPENAI_API_KEY`` is unset.
``OPENAI_BASE_URL``                          Another endpoint (an Azure/OpenAI-compatible gateway,
                                             or a local fake server in tests).
``OPENAI_ORG_ID``                            Organization header, when set.
``OPENAI_PROJECT_ID``                        Project header, when set.
``LLMPROXY_OPENAI_TIMEOUT``                  The read timeout: seconds the service may stay
                                             silent, between two chunks of a stream or for a whole
                                             answer when the call has no deadline (default 60).
``LLMPROXY_OPENAI_CONNECT_TIMEOUT``          Seconds to open a connection (default 10).
``LLMPROXY_OPENAI_ASYNC_HTTP``               How async calls go out: ``aiohttp`` (default: the
                                             fast path, straight on an aiohttp session, and the
                                             SDK's aiohttp client for what it cannot send) or
                                             ``httpx`` (the SDK's ``post``, its httpx client).
===========================================  =======================================================

A key or base URL given in code or in the ``[providers.openai]`` configuration table wins, and so
do its ``timeout`` and ``connect_timeout``. A call through the Proxy is also bounded as a whole by
its overall deadline (``retry.deadline``, default 300 s), which every attempt keeps to.
"""

from __future__ import annotations

from collections.abc import Mapping

from llmproxy import env as envvars

API_KEY = "OPENAI_API_KEY"
SEED_API_KEY = "LLM_PROXY_OPEN_AI_DEFAULT_OPEN_API_KEY"
BASE_URL = "OPENAI_BASE_URL"
ORG_ID = "OPENAI_ORG_ID"
PROJECT_ID = "OPENAI_PROJECT_ID"
TIMEOUT = "LLMPROXY_OPENAI_TIMEOUT"
CONNECT_TIMEOUT = "LLMPROXY_OPENAI_CONNECT_TIMEOUT"
ASYNC_HTTP = "LLMPROXY_OPENAI_ASYNC_HTTP"

KEY_VARIABLES = (API_KEY, SEED_API_KEY)


def api_key(environ: Mapping[str, str]) -> str | None:
    """Return the API key from ``OPENAI_API_KEY`` or the seed's variable, or None."""
    return environ.get(API_KEY) or environ.get(SEED_API_KEY) or None


def base_url(environ: Mapping[str, str]) -> str | None:
    """Return ``OPENAI_BASE_URL`` when set."""
    return environ.get(BASE_URL) or None


def timeout(environ: Mapping[str, str]) -> float | None:
    """Return ``LLMPROXY_OPENAI_TIMEOUT`` in seconds when set."""
    return envvars.seconds(environ, TIMEOUT)


def connect_timeout(environ: Mapping[str, str]) -> float | None:
    """Return ``LLMPROXY_OPENAI_CONNECT_TIMEOUT`` in seconds when set."""
    return envvars.seconds(environ, CONNECT_TIMEOUT)


def async_http(environ: Mapping[str, str]) -> str | None:
    """Return ``LLMPROXY_OPENAI_ASYNC_HTTP`` (``aiohttp`` or ``httpx``) when set."""
    return environ.get(ASYNC_HTTP, "").strip().lower() or None
