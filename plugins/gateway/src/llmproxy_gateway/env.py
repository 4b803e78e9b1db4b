"""The environment variables the gateway reads.

=================================  =================================================================
Variable                           Meaning
=================================  =================================================================
``LLMPROXY_ADMIN_KEY``             A key that opens the dashboard (besides keys created with
                                   ``llmproxy keys create --admin``); at least 16 characters.
``LLMPROXY_GATEWAY_KEYS_URL``      Where gateway keys are kept: ``sqlite:///relative.db`` or
                                   ``sqlite:////absolute.db`` (default: ``keys.db`` in the data dir,
                                   ``LLMPROXY_DATA_DIR``), or ``memory://``.
``LLMPROXY_GATEWAY_WORKERS``       Worker processes of ``llmproxy serve`` (default 1; ``--workers``
                                   wins). More than one needs the ledger, history, usage log and key
                                   store in files or Redis, not ``memory://``.
``LLMPROXY_GATEWAY_MAX_BODY``      The largest request body accepted, in bytes (default 33554432, 32
                                   MiB: one content part of the largest size, 20 MiB as 26.7 MiB of
                                   base64, and 5 MiB besides); a larger one is answered 413 before
                                   it is read.
``LLMPROXY_GATEWAY_METRICS_PORT``  A second port (on ``--host``) that serves ``GET /metrics`` and
                                   nothing else, for a Prometheus scraper; ``0`` picks a free one
                                   (announced at start). Unset: only the gateway's own port serves
                                   ``/metrics``, always behind the admin key. ``llmproxy serve
                                   --metrics-port`` wins.
``LLMPROXY_GATEWAY_METRICS_AUTH``  ``admin`` (default): ``/metrics`` on that port needs the admin
                                   key too, as ``Authorization: Bearer <key>``; ``none``: it is
                                   served without one (allowed only with a separate metrics port:
                                   keep that port to the scraper's network). ``llmproxy serve
                                   --metrics-auth`` wins.
=================================  =================================================================

Limits that keep one client from holding up the others (each a whole number >= 1, seconds may
have a fraction; raise any of them for a trusted, heavy client):

============================================  ======================================================
Variable                                      Meaning
============================================  ======================================================
``LLMPROXY_GATEWAY_HEADER_TIMEOUT``           Seconds a connection has to send a request's whole
                                              head (request line and headers), counted from the
                                              connection's opening or its next request's first
                                              byte (default 10). Late: 408 and closed (closed
                                              silently when nothing was sent).
``LLMPROXY_GATEWAY_BODY_TIMEOUT``             Seconds a request's whole body may take once its
                                              head arrived (default 60). Late: 408 and closed.
``LLMPROXY_GATEWAY_KEEPALIVE_TIMEOUT``        Seconds an idle keep-alive connection is kept
                                              between requests (default 5; uvicorn's
                                              ``timeout_keep_alive``).
``LLMPROXY_GATEWAY_MAX_HEADER_BYTES``         The largest request head, in bytes (default 65536);
                                              larger: 431 and closed.
``LLMPROXY_GATEWAY_MAX_CONNECTIONS``          Open connections per worker process (default 1000);
                                              each one beyond is answered 503 and closed. The
                                              worker raises its open-file limit to fit, when the
                                              system allows.
``LLMPROXY_GATEWAY_MAX_CLIENT_CONNECTIONS``   Open connections per client address per worker
                                              (default 100); each one beyond is answered 429 and
                                              closed. Behind a reverse proxy every client has the
                                              proxy's address: raise it to the proxy's pool size.
``LLMPROXY_GATEWAY_MAX_MESSAGES``             Messages in one request (default 10000); more: 400.
``LLMPROXY_GATEWAY_MAX_JSON_ITEMS``           Array elements and object members in one request
                                              body, all levels counted (default 100000); more:
                                              413, refused by a scan of the bytes before the JSON
                                              is parsed, so parsing one body takes at most a few
                                              tens of milliseconds of the worker's event loop.
``LLMPROXY_GATEWAY_MAX_JSON_DEPTH``           Nesting depth of the JSON values passed upstream
                                              (``response_format``, ``logit_bias``, tool-call
                                              arguments...; default 64); deeper: 400.
``LLMPROXY_GATEWAY_LOGIN_ATTEMPTS``           Failed dashboard logins (form or ``Authorization``
                                              header) one client address may make per window
                                              (default 5); then 429 with Retry-After until the
                                              oldest failure leaves the window. Counted in the key
                                              store's file, so shared by every worker.
``LLMPROXY_GATEWAY_LOGIN_WINDOW``             That window, in seconds (default 60).
============================================  ======================================================

The gateway's own settings are these variables, and ``llmproxy serve``'s flags where it has
one (``--workers``, ``--metrics-port``, ``--metrics-auth``), which win over them. They are not
read from the TOML file (``LLMPROXY_CONFIG``) on purpose: that file is the Proxy's
configuration, which every Proxy of the process reads and checks key by key (a table it does
not know is a ConfigError), library users' Proxies with no gateway included; the variables keep
the gateway's settings to the ``llmproxy serve`` process and its workers.

The Proxy behind the gateway is built with ``Proxy.from_env()``, so the core's variables
(``LLMPROXY_CONFIG``, ``LLMPROXY_LEDGER_URL``, ``LLMPROXY_HISTORY_URL``...) and the provider
plugins' (``OPENAI_API_KEY``...) apply; the usage log is the usage-log plugin's
(``LLMPROXY_USAGE_LOG_URL``). One default differs: ``LLMPROXY_LEDGER_LEASE`` is ``on`` unless
set, so each worker admits most calls from budget leases instead of making two SQLite
transactions per call (see ``llmproxy.budget.lease``; ``off`` restores the per-call ledger).
"""

from __future__ import annotations

import math
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
HEADER_TIMEOUT = "LLMPROXY_GATEWAY_HEADER_TIMEOUT"
BODY_TIMEOUT = "LLMPROXY_GATEWAY_BODY_TIMEOUT"
KEEPALIVE_TIMEOUT = "LLMPROXY_GATEWAY_KEEPALIVE_TIMEOUT"
MAX_HEADER_BYTES = "LLMPROXY_GATEWAY_MAX_HEADER_BYTES"
MAX_CONNECTIONS = "LLMPROXY_GATEWAY_MAX_CONNECTIONS"
MAX_CLIENT_CONNECTIONS = "LLMPROXY_GATEWAY_MAX_CLIENT_CONNECTIONS"
MAX_MESSAGES = "LLMPROXY_GATEWAY_MAX_MESSAGES"
MAX_JSON_ITEMS = "LLMPROXY_GATEWAY_MAX_JSON_ITEMS"
MAX_JSON_DEPTH = "LLMPROXY_GATEWAY_MAX_JSON_DEPTH"
LOGIN_ATTEMPTS = "LLMPROXY_GATEWAY_LOGIN_ATTEMPTS"
LOGIN_WINDOW = "LLMPROXY_GATEWAY_LOGIN_WINDOW"
METRICS_PORT = "LLMPROXY_GATEWAY_METRICS_PORT"
METRICS_AUTH = "LLMPROXY_GATEWAY_METRICS_AUTH"

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


def _positive_seconds(raw: str, source: str) -> float:
    """``raw`` as a finite number of seconds > 0, or a ConfigError naming ``source``."""
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{source} must be a number of seconds > 0, got {raw!r}", path=source)
    return value


def seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    """The variable ``name`` as seconds > 0 (``default`` when unset); else a ConfigError."""
    raw = environ.get(name, "").strip()
    return default if not raw else _positive_seconds(raw, name)


def count(environ: Mapping[str, str], name: str, default: int) -> int:
    """The variable ``name`` as a whole number >= 1 (``default`` when unset); else a ConfigError."""
    raw = environ.get(name, "").strip()
    return default if not raw else _at_least_one(raw, name, "a whole number")


DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 60.0
DEFAULT_KEEPALIVE_TIMEOUT = 5.0
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_MAX_CLIENT_CONNECTIONS = 100
DEFAULT_MAX_MESSAGES = 10_000
DEFAULT_MAX_JSON_ITEMS = 100_000
DEFAULT_MAX_JSON_DEPTH = 64
DEFAULT_LOGIN_ATTEMPTS = 5
DEFAULT_LOGIN_WINDOW = 60.0


def login_throttle(environ: Mapping[str, str]) -> tuple[int, float]:
    """``(attempts, window seconds)`` of the dashboard's login throttle; bad: ConfigError."""
    return (
        count(environ, LOGIN_ATTEMPTS, DEFAULT_LOGIN_ATTEMPTS),
        seconds(environ, LOGIN_WINDOW, DEFAULT_LOGIN_WINDOW),
    )


def metrics_port(environ: Mapping[str, str], given: int | None = None) -> int | None:
    """The separate metrics port (0: a free one), or None; not a port number is a ConfigError.

    ``given`` (``llmproxy serve --metrics-port``) wins, else ``LLMPROXY_GATEWAY_METRICS_PORT``.
    """
    if given is not None:
        source, raw = "--metrics-port", str(given)
    else:
        source, raw = METRICS_PORT, environ.get(METRICS_PORT, "").strip()
    if not raw:
        return None
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(
            f"{source} must be a port number from 0 to 65535 (0: a free one), got {raw!r}",
            path=source,
        )
    return port


def metrics_open(
    environ: Mapping[str, str], given: str | None = None, port: int | None = None
) -> bool:
    """Whether the separate metrics port serves ``/metrics`` without the admin key.

    ``given`` (``llmproxy serve --metrics-auth``) wins, else ``LLMPROXY_GATEWAY_METRICS_AUTH``:
    ``admin`` (default) or ``none``. ``none`` with no separate port (``port``, from
    ``--metrics-port``, else ``LLMPROXY_GATEWAY_METRICS_PORT``) is a ConfigError: the gateway's
    own port always asks.
    """
    if given is not None:
        source, raw = "--metrics-auth", given.strip().lower()
    else:
        source, raw = METRICS_AUTH, environ.get(METRICS_AUTH, "").strip().lower()
    raw = raw or "admin"
    if raw not in ("admin", "none"):
        raise ConfigError(f"{source} must be admin or none, got {raw!r}", path=source)
    if raw == "none" and port is None and metrics_port(environ) is None:
        raise ConfigError(
            f"{source} none needs {METRICS_PORT} (or --metrics-port): /metrics on the"
            " gateway's own port always needs the admin key",
            path=source,
        )
    return raw == "none"


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
