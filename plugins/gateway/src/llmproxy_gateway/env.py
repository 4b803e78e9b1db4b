"""The environment variables the gateway reads.

================================  ==================================================================
Variable                          Meaning
================================  ==================================================================
``LLMPROXY_ADMIN_KEY``            A key that opens the dashboard (besides keys created with
                                  ``llmproxy keys create --admin``); at least 16 characters.
``LLMPROXY_GATEWAY_KEYS_URL``     Where gateway keys are kept: ``sqlite:///relative.db`` or
                                  ``sqlite:////absolute.db`` (default: ``keys.db`` in the data dir,
                                  ``LLMPROXY_DATA_DIR``), or ``memory://``.
``LLMPROXY_GATEWAY_WORKERS``      Worker processes of ``llmproxy serve`` (default 1; ``--workers``
                                  wins). More than one needs the ledger, history, usage log and key
                                  store in files or Redis, not ``memory://``.
``LLMPROXY_GATEWAY_MAX_BODY``     The largest request body accepted, in bytes (default 33554432,
                                  32 MiB); a larger one is answered 413 before it is read.
================================  ==================================================================

The Proxy behind the gateway is built with ``Proxy.from_env()``, so the core's variables
(``LLMPROXY_CONFIG``, ``LLMPROXY_LEDGER_URL``, ``LLMPROXY_HISTORY_URL``...) and the provider
plugins' (``OPENAI_API_KEY``...) apply; the usage log is the usage-log plugin's
(``LLMPROXY_USAGE_LOG_URL``). One default differs: ``LLMPROXY_LEDGER_LEASE`` is ``on`` unless
set, so each worker admits most calls from budget leases instead of making two SQLite
transactions per call (see ``llmproxy.budget.lease``; ``off`` restores the per-call ledger).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from llmproxy import env as core_env
from llmproxy.errors import ConfigError
from llmproxy.secret import register
from llmproxy.urls import scheme_of

ADMIN_KEY = "LLMPROXY_ADMIN_KEY"
KEYS_URL = "LLMPROXY_GATEWAY_KEYS_URL"
WORKERS = "LLMPROXY_GATEWAY_WORKERS"
MAX_BODY = "LLMPROXY_GATEWAY_MAX_BODY"

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
    """The configured admin key, or None; a short one is a ConfigError.

    The key is registered as a secret (:func:`llmproxy.secret.register`): it is masked in
    everything llmproxy stores, sends upstream or logs.
    """
    raw = environ.get(ADMIN_KEY, "").strip()
    if not raw:
        return None
    if len(raw) < MIN_ADMIN_KEY_LENGTH:
        raise ConfigError(
            f"{ADMIN_KEY} must be at least {MIN_ADMIN_KEY_LENGTH} characters long",
            path=ADMIN_KEY,
        )
    register(raw)
    return raw


DEFAULT_MAX_BODY = 32 * 1024 * 1024


def _at_least_one(raw: str, source: str, what: str) -> int:
    """``raw`` as a whole number >= 1, or a ConfigError naming ``source``."""
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{source} must be {what} >= 1, got {raw!r}", path=source)
    return value


def max_body(environ: Mapping[str, str]) -> int:
    """The largest request body accepted, in bytes; not a whole number >= 1 is a ConfigError."""
    raw = environ.get(MAX_BODY, "").strip()
    if not raw:
        return DEFAULT_MAX_BODY
    return _at_least_one(raw, MAX_BODY, "a whole number of bytes")


def workers(environ: Mapping[str, str], given: int | None = None) -> int:
    """How many worker processes ``llmproxy serve`` runs; below 1 is a ConfigError.

    ``given`` (``--workers``) wins, else ``LLMPROXY_GATEWAY_WORKERS``, else 1.
    """
    if given is not None:
        source, raw = "--workers", str(given)
    else:
        source, raw = WORKERS, environ.get(WORKERS, "").strip()
    if not raw:
        return 1
    return _at_least_one(raw, source, "a whole number")


def check_shared_stores(environ: Mapping[str, str]) -> None:
    """Raise ConfigError when a store several worker processes must share is ``memory://``.

    Each worker has its own memory: budgets would be enforced per worker (overspending them),
    and keys, history, the usage log and dashboard logins would differ from one request to the
    next.
    """
    from llmproxy.config import load_config
    from llmproxy_usage_log import env as log_env

    config = load_config(environ=environ)
    stores = {
        "the ledger (LLMPROXY_LEDGER_URL)": config.ledger_url,
        "the history (LLMPROXY_HISTORY_URL)": config.history_url,
        # Turned off, the dashboard reads a log each worker keeps in memory.
        f"the usage log ({log_env.USAGE_LOG_URL})": log_env.log_url(environ) or "memory://",
        f"the key store ({KEYS_URL})": keys_url(environ),
    }
    shared_nowhere = [
        name for name, url in stores.items() if url and scheme_of(url, what=name) == "memory"
    ]
    if shared_nowhere:
        raise ConfigError(
            "several workers cannot share "
            + ", ".join(shared_nowhere)
            + " in memory: use SQLite files (the default) or Redis, or run one worker",
            path=WORKERS,
        )


def proxy_environ(environ: Mapping[str, str]) -> Mapping[str, str]:
    """The environment the gateway's Proxy is built from.

    That is ``environ`` with budget leasing on unless ``LLMPROXY_LEDGER_LEASE`` says otherwise.
    """
    if environ.get(core_env.LEDGER_LEASE, "").strip():
        return environ
    return {**environ, core_env.LEDGER_LEASE: "on"}
