"""The environment variables the Gemini plugin reads, in one place.

===============================  ==============================================================
Variable                         Meaning
===============================  ==============================================================
``GEMINI_API_KEY``               The API key (a Gemini API key from Google AI Studio).
``GOOGLE_API_KEY``               The same, under Google's other name; read when
                                 ``GEMINI_API_KEY`` is unset. (The google-genai SDK alone
                                 prefers ``GOOGLE_API_KEY`` when both are set; this plugin
                                 prefers ``GEMINI_API_KEY``.)
``GEMINI_BASE_URL``              Another endpoint (a gateway, or a local fake server in tests).
``GOOGLE_GEMINI_BASE_URL``       The SDK's own name for it; read when ``GEMINI_BASE_URL`` is
                                 unset.
``GOOGLE_GENAI_API_VERSION``     The API version in request paths (default ``v1``, the SDK's
                                 default; ``v1beta`` for preview features).
``LLMPROXY_GEMINI_TIMEOUT``      Seconds before one attempt times out (default 600).
===============================  ==============================================================

A key, base URL or ``api_version`` given in code or in the ``[providers.gemini]`` configuration
table wins. The plugin passes every one of these to the SDK explicitly, so the SDK never reads
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
