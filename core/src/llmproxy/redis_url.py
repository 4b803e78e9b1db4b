"""Where Redis is, for every Redis plugin: one resolution order, one set of option parsers.

Pure Python (no Redis client here). A plugin's URL with a host names the server itself; a bare
``redis://`` (or ``redis://?options``) means "from the environment": ``LLMPROXY_REDIS_URL``, else
the seed's ``LLM_PROXY_OPEN_AI_IOREDIS_HOST``, ``..._PORT`` and ``..._DB_INDEX``, else
``localhost:6379/0``.
Options come from the plugin's URL, then ``LLMPROXY_REDIS_URL``'s query. From
``LLMPROXY_REDIS_URL`` only connection options (``ssl_*``, ``client_name``...) go on to the Redis
client, since other plugins' options may sit in the same shared URL.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from llmproxy.env import switch
from llmproxy.errors import ConfigError

REDIS_URL = "LLMPROXY_REDIS_URL"
SEED_HOST = "LLM_PROXY_OPEN_AI_IOREDIS_HOST"
SEED_PORT = "LLM_PROXY_OPEN_AI_IOREDIS_PORT"
SEED_DB_INDEX = "LLM_PROXY_OPEN_AI_IOREDIS_DB_INDEX"
SEED_KEY_PREFIX = "LLM_PROXY_OPEN_AI_IOREDIS_KEY_PREFIX"
SCHEMES = ("redis", "rediss")
DEFAULT_URL = "redis://localhost:6379/0"

_CONNECTION_OPTIONS = frozenset({"client_name", "protocol", "health_check_interval"})


def redact(url: str) -> str:
    """Return ``url`` with its password (if any) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{parts.username or ''}:***@{host}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def split(url: str, what: str, ours: Collection[str]) -> tuple[str, dict[str, str], dict[str, str]]:
    """Split a redis URL into (base without query, the plugin's options, other query parameters)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        raise ConfigError(
            f"{what} {redact(url)!r} must start with redis:// or rediss:// (TLS)", path=what
        )
    options: dict[str, str] = {}
    rest: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        (options if key in ours else rest)[key] = value
    return urlunsplit((parts.scheme.lower(), parts.netloc, parts.path, "", "")), options, rest


def seed_url(environ: Mapping[str, str]) -> str | None:
    """The URL the seed's host, port and database index variables describe, or None."""
    host = environ.get(SEED_HOST, "").strip()
    port = environ.get(SEED_PORT, "").strip()
    db = environ.get(SEED_DB_INDEX, "").strip()
    if not (host or port or db):
        return None
    for name, value in ((SEED_PORT, port), (SEED_DB_INDEX, db)):
        if value and not value.isdigit():
            raise ConfigError(f"{name} must be a whole number, got {value!r}", path=name)
    host = host or "localhost"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return f"redis://{quote(host, safe='[]:')}:{port or 6379}/{db or 0}"


def resolve(
    url: str | None, environ: Mapping[str, str], ours: Collection[str], what: str
) -> tuple[str, dict[str, str]]:
    """Return (connection URL for the Redis client, the plugin's options); see the module."""
    base: str | None = None
    options: dict[str, str] = {}
    passthrough: dict[str, str] = {}
    if url:
        own_base, options, passthrough = split(url, what, ours)
        if urlsplit(own_base).netloc:
            base = own_base
    if base is None:
        env_url = environ.get(REDIS_URL, "").strip()
        if env_url:
            env_base, env_options, env_rest = split(env_url, REDIS_URL, ours)
            if urlsplit(env_base).netloc:
                base = env_base
            options = {**env_options, **options}
            shared = {
                k: v
                for k, v in env_rest.items()
                if k in _CONNECTION_OPTIONS or k.startswith("ssl_")
            }
            passthrough = {**shared, **passthrough}
        if base is None:
            base = seed_url(environ) or DEFAULT_URL
    return base + (f"?{urlencode(passthrough)}" if passthrough else ""), options


def seconds(options: Mapping[str, str], name: str, default: float) -> float:
    """A positive number of seconds from the options, or ``default`` when absent."""
    raw = options.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"redis option {name} must be a number > 0, got {raw!r}", path=name)
    return value


def count(options: Mapping[str, str], name: str, default: int) -> int:
    """A whole number >= 1 from the options, or ``default`` when absent."""
    raw = options.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(
            f"redis option {name} must be a whole number >= 1, got {raw!r}", path=name
        )
    return int(raw)


def flag(options: Mapping[str, str], name: str, default: bool) -> bool:
    """A true/false option (1/0, yes/no, on/off), or ``default`` when absent."""
    raw = options.get(name, "").strip().lower()
    if not raw:
        return default
    value = switch(raw)
    if value is None:
        raise ConfigError(f"redis option {name} must be true or false, got {raw!r}", path=name)
    return value
