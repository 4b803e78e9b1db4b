"""The entry point llmproxy loads: records every call's observer event in the usage log.

The log is opened on the first event from ``LLMPROXY_USAGE_LOG_URL`` in ``os.environ`` (the
default is ``usage.db`` in the data dir); turned off (``off``...), nothing is opened, written or
logged, and events are dropped. :func:`llmproxy_usage_log.set_usage_log` replaces it (a gateway
built with its own environment does). Recording only queues the event: a call never waits for
the log, and a failing log never fails a call.
"""

from __future__ import annotations

import os
import threading
import time

import llmproxy
from llmproxy.secret import logger as secret_logger
from llmproxy.types import CallEvent
from llmproxy_usage_log.base import UsageLog

log = secret_logger("llmproxy.usage_log")

_lock = threading.Lock()
_log: UsageLog | None = None
_configured = False
_failed_at = 0.0
_RETRY_OPEN_AFTER = 60.0


def usage_log() -> UsageLog | None:
    """The process's usage log (opened on first use from ``os.environ``), or None when off."""
    if _configured:
        return _log
    with _lock:
        return _open_locked()


def _open_locked() -> UsageLog | None:
    global _log, _configured, _failed_at
    if _configured:
        return _log
    if _failed_at and time.monotonic() - _failed_at < _RETRY_OPEN_AFTER:
        return None
    from llmproxy_usage_log.env import log_url
    from llmproxy_usage_log.open import open_usage_log

    url = log_url(os.environ)
    if url is None:  # turned off: off means off, silently
        _log, _configured = None, True
        return None
    try:
        _log = open_usage_log(url, os.environ)
    except Exception:
        _failed_at = time.monotonic()
        log.exception("could not open the usage log; calls go unlogged for a minute")
        return None
    _configured = True
    return _log


def set_usage_log(new: UsageLog | None) -> UsageLog | None:
    """Make ``new`` the process's usage log (None turns logging off); return the old one.

    The old log is not closed: the caller owns it.
    """
    global _log, _configured
    with _lock:
        old, _log, _configured = _log, new, True
        return old


def _record(event: CallEvent) -> None:
    target = _log if _configured else usage_log()
    if target is not None:
        target.record(event)


@llmproxy.hookimpl
def on_response(event: CallEvent) -> None:
    """Record a finished (or interrupted) call."""
    _record(event)


@llmproxy.hookimpl
def on_error(event: CallEvent) -> None:
    """Record a failed call (limit refusals included)."""
    _record(event)
