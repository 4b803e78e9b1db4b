"""The environment variables the gateway reads.

================================  ==================================================================
Variable                          Meaning
================================  ==================================================================
``LLMPROXY_ADMIN_KEY``            A key that opens the dashboard (besides keys created with
                                  ``llmproxy keys create --admin``); at least 16 characters.
``LLMPROXY_GATEWAY_KEYS_URL``     Where gateway keys are kept: ``sqlite:///relative.db`` or
                                  ``sqlite:////absolute.db`` (default: ``keys.db`` in the data dir,
                                  ``LLMPROXY_DATA_DIR``), or ``memory://``.
================================  ==================================================================

The Proxy behind the gateway is built with ``Proxy.from_env()``, so the core's variables
(``LLMPROXY_CONFIG``, ``LLMPROXY_LEDGER_URL``, ``LLMPROXY_HISTORY_URL``...) and the provider
plugins' (``OPENAI_API_KEY``...) apply; the usage log is the usage-log plugin's
(``LLMPROXY_USAGE_LOG_URL``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from llmproxy import env as core_env
from llmproxy.errors import ConfigError

ADMIN_KEY = "LLMPROXY_ADMIN_KEY"
KEYS_URL = "LLMPROXY_GATEWAY_KEYS_URL"

DEFAULT_KEYS_FILE = "keys.db"
MIN_ADMIN_KEY_LENGTH = 16


def keys_url(environ: Mapping[str, str]) -> str:
    """The key store URL: the variable, else ``keys.db`` in the data dir."""
    raw = environ.get(KEYS_URL, "").strip()
    if raw:
        return raw
    return "sqlite:///" + str(default_keys_path(environ).absolute())


def default_keys_path(environ: Mapping[str, str]) -> Path:
    """``keys.db`` in the core's data dir."""
    return core_env.data_dir(environ) / DEFAULT_KEYS_FILE


def admin_key(environ: Mapping[str, str]) -> str | None:
    """The configured admin key, or None; a short one is a ConfigError."""
    raw = environ.get(ADMIN_KEY, "").strip()
    if not raw:
        return None
    if len(raw) < MIN_ADMIN_KEY_LENGTH:
        raise ConfigError(
            f"{ADMIN_KEY} must be at least {MIN_ADMIN_KEY_LENGTH} characters long",
            path=ADMIN_KEY,
        )
    return raw
