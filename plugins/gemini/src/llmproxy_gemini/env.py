"""The environment variables the Gemini plugin reads, in one place.

======================================  ============================================================
Variable                                Meaning
======================================  ============================================================
``GEMINI_API_KEY``                      The API key (a Gemini API key from Google AI Studio).
``GOOGLE_API_KEY``                      The same, under Google's other name; read when
                                        ``GEMINI_API_KEY`` is unset. (The google-genai SDK alone
                                        prefers ``GOOGLE_API_KEY`` when both are set; this plugin
                                        prefers ``GEMINI_API_KEY``.)
``GEMINI_BASE_URL``                     Another endpoint (a gateway, or a local fake server in
                                        tests).
``GOOGLE_GEMINI_BASE_URL``              The SDK's own name for it; read when ``GEMINI_BASE_URL`` is
                                        unset.
``GOOGLE_GENAI_API_VERSION``            The API version in request paths (default ``v1``, the SDK's
                                        default; ``v1beta`` for preview features).
``LLMPROXY_GEMINI_TIMEOUT``             The read timeout: seconds the service may stay silent,
                                        between two chunks of a stream or for a whole answer when
                                        the call has no deadline (default 60).
``LLMPROXY_GEMINI_CONNECT_TIMEOUT``     Seconds to open a connection (default 10).
======================================  ============================================================

A key, base URL or ``api_version`` given in code or in the ``[providers.gemini]`` configuration
table wins, and so do its ``timeout`` and ``connect_timeout``. A call through the Proxy is also
bounded as a whole by its overall deadline (``retry.deadline``, default 300 s), which every
attempt keeps to. The plugin passes every one of these to the SDK explicitly, so the SDK never reads
the process environment behind the Proxy's back.
"""

from __future__ import annotations

from collections.abc import Mapping

from llmproxy import env as envvars

API_KEY = "GEMINI_API_KEY"
GOOGLE_API_KEY = "GOOGLE_API_KEY"
BASE_URL = "GEMINI_BASE_URL"
SDK_BASE_URL = "GOOGLE_GEMINI_BASE_URL"
API_VERSION = "GOOGLE_GENAI_API_VERSION"
TIMEOUT = "LLMPROXY_GEMINI_TIMEOUT"
CONNECT_TIMEOUT = "LLMPROXY_GEMINI_CONNECT_TIMEOUT"

KEY_VARIABLES = (API_KEY, GOOGLE_API_KEY)

#: The Gemini API's endpoint and the SDK's default API version.
DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/"
DEFAULT_API_VERSION = "v1"


def api_key(environ: Mapping[str, str]) -> str | None:
    """Return the API key from ``GEMINI_API_KEY``, else ``GOOGLE_API_KEY``, or None."""
    return environ.get(API_KEY) or environ.get(GOOGLE_API_KEY) or None


def base_url(environ: Mapping[str, str]) -> str | None:
    """Return ``GEMINI_BASE_URL`` (else ``GOOGLE_GEMINI_BASE_URL``) when set."""
    return environ.get(BASE_URL) or environ.get(SDK_BASE_URL) or None


def api_version(environ: Mapping[str, str]) -> str | None:
    """Return ``GOOGLE_GENAI_API_VERSION`` when set (``beta`` means ``v1beta``, as in the SDK)."""
    raw = environ.get(API_VERSION)
    if not raw:
        return None
    return "v1beta" if raw == "beta" else raw


def timeout(environ: Mapping[str, str]) -> float | None:
    """Return ``LLMPROXY_GEMINI_TIMEOUT`` in seconds when set."""
    return envvars.seconds(environ, TIMEOUT)


def connect_timeout(environ: Mapping[str, str]) -> float | None:
    """Return ``LLMPROXY_GEMINI_CONNECT_TIMEOUT`` in seconds when set."""
    return envvars.seconds(environ, CONNECT_TIMEOUT)
