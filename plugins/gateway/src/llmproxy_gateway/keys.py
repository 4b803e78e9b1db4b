"""Gateway keys: who a caller is, which budgets its calls count against, whether it is an admin.

A key looks like ``sk-llmp-<id>-<secret>``. Only the id (10 hex digits, shown by ``llmproxy keys
list`` and on the dashboard) is stored as is; the secret is stored as ``sha256(salt + secret)``
with a random per-key salt and compared in constant time. The full key is printed once, when it
is created.

Budgets are specs ``KIND:AMOUNT[/WINDOW]``:

- ``tokens:100000/month``: input plus output tokens (``LLMBudget``),
- ``usd:5/day``: spend in USD from the price table (``CostBudget``),
- ``requests:60/minute``: a rate limit (``RequestsPerMinute``; rolling windows only).

Windows: ``total`` (the default), ``day`` and ``month`` (calendar, UTC), ``minute``, ``hour`` or a
rolling ``30s``, ``15m``, ``6h``, ``7d``.

A key may be restricted to some models (``llmproxy keys create --models "openai/*,fast"``): each
entry is a model name, an alias or a pattern with ``*`` (any characters). No list means any
model. See :meth:`KeyRecord.may_use` for what a request's model is matched by.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import attrs
from attrs import frozen

from llmproxy.budget.policy import BudgetPolicy, CostBudget, LLMBudget, RequestsPerMinute
from llmproxy.errors import ConfigError, StoreError
from llmproxy.secret import register_pattern
from llmproxy.urls import scheme_of, sqlite_path
from llmproxy_gateway import env

PREFIX: Final = "sk-llmp-"
KEY_SHAPE: Final = r"[0-9a-f]{10}-[A-Za-z0-9_-]{16,}"
"""What follows :data:`PREFIX` in every gateway key; registered with
:func:`llmproxy.secret.register_pattern`, so any gateway key (whoever's, seen by this process or
not) is masked in everything llmproxy stores, sends upstream or logs."""
register_pattern(PREFIX, KEY_SHAPE)
MAX_BUDGETS_PER_KEY: Final = 4
MAX_MODELS_PER_KEY: Final = 64
_MODEL_PATTERN = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9._:@/*+-]{0,199}$")
_ID = re.compile(r"^[0-9a-f]{10}$")
_SPEC = re.compile(r"^(tokens|usd|requests):([0-9][0-9_]*(?:\.[0-9]+)?)(?:/([a-z0-9.]+))?$")
_ROLLING = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([smhd])$")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_NAMED_WINDOWS: Final = {"minute": 60.0, "hour": 3600.0}


def _window(text: str, spec: str) -> str | float:
    if text in ("total", "day", "month"):
        return text
    if text in _NAMED_WINDOWS:
        return _NAMED_WINDOWS[text]
    match = _ROLLING.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(
            f"budget {spec!r}: window {text!r} must be total, day, month, minute, hour or a"
            " number with s, m, h or d (30s, 15m, 6h, 7d)",
            path="budget",
        )
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_budget(spec: str) -> BudgetPolicy:
    """Turn a budget spec into a policy scoped to the caller's key.

    >>> parse_budget("tokens:100000/month").name
    'key-tokens-100000-month'
    >>> parse_budget("requests:60/minute").name
    'key-requests-60-60s'
    """
    text = spec.strip().lower()
    match = _SPEC.match(text)
    if match is None:
        raise ConfigError(
            f"budget {spec!r} must be KIND:AMOUNT[/WINDOW] with KIND tokens, usd or requests"
            " (tokens:100000/month, usd:5/day, requests:60/minute)",
            path="budget",
        )
    kind, amount_text, window_text = match.groups()
    amount = float(amount_text.replace("_", ""))
    window = _window(window_text or ("minute" if kind == "requests" else "total"), spec)
    window_name = window if isinstance(window, str) else f"{window:g}s"
    if kind == "usd":
        return CostBudget(
            max_usd=amount, scope="key", window=window, name=f"key-usd-{amount:g}-{window_name}"
        )
    if not amount.is_integer():
        raise ConfigError(f"budget {spec!r}: {kind} must be a whole number", path="budget")
    if kind == "tokens":
        return LLMBudget(
            max_tokens=int(amount),
            scope="key",
            window=window,
            name=f"key-tokens-{int(amount)}-{window_name}",
        )
    if isinstance(window, str):
        raise ConfigError(
            f"budget {spec!r}: a requests limit needs a rolling window (minute, hour, 30s...)",
            path="budget",
        )
    return RequestsPerMinute(
        limit=int(amount),
        scope="key",
        window=window,
        name=f"key-requests-{int(amount)}-{window_name}",
    )


def parse_models(specs: str | Sequence[str]) -> tuple[str, ...]:
    """The model allow-list of ``--models`` text (comma-separated) or a list of entries.

    Entries are model names (``openai/gpt-4o-mini``), aliases (``fast``) or patterns where
    ``*`` matches any characters (``openai/*``); duplicates are dropped, the order is kept.

    >>> parse_models("openai/*, fast,openai/*")
    ('openai/*', 'fast')
    """
    parts = specs.split(",") if isinstance(specs, str) else list(specs)
    out: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise ConfigError(f"a model entry must be a string, got {part!r}", path="models")
        entry = part.strip()
        if not entry:
            raise ConfigError(
                f"models {specs!r} has an empty entry: give names or patterns separated by"
                " commas (openai/*,fast)",
                path="models",
            )
        if not _MODEL_PATTERN.match(entry):
            raise ConfigError(
                f"model entry {entry!r} must be a model name, an alias or a pattern with *"
                " (letters, digits and . _ : @ / + - *, at most 200 characters)",
                path="models",
            )
        if entry not in out:
            out.append(entry)
    if len(out) > MAX_MODELS_PER_KEY:
        raise ConfigError(
            f"a key takes at most {MAX_MODELS_PER_KEY} model entries, got {len(out)}",
            path="models",
        )
    return tuple(out)


def parse_cache(spec: bool | float | str) -> bool | float:
    """A key's response cache setting: False (off), True (the configured TTL) or a TTL.

    Words: ``on``/``true``/``yes`` and ``off``/``false``/``no``; a number is a time to live
    in seconds above 0.

    >>> parse_cache("on"), parse_cache("600"), parse_cache("off")
    (True, 600.0, False)
    """
    if isinstance(spec, bool):
        return spec
    if isinstance(spec, str):
        word = spec.strip().lower()
        if word in ("on", "true", "yes"):
            return True
        if word in ("off", "false", "no", ""):
            return False
    try:
        seconds = float(spec)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(
            f"--cache takes on, off or a time to live in seconds above 0 (600), got {spec!r}",
            path="cache",
        )
    return seconds


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def _session_digest(token: str) -> str:
    return hashlib.sha256(b"dashboard-session:" + token.encode()).hexdigest()


@frozen
class KeyRecord:
    """One gateway key as stored: never the secret, only its salted hash.

    ``budgets`` are the specs given at creation; ``policies`` the budget policies built from
    them (scoped to this key). ``models`` is the key's model allow-list (empty: any model; see
    :meth:`may_use`). ``revoked_at`` is set once the key is revoked. ``cache`` turns the
    response cache on for every request made with the key: True (the configured TTL) or a TTL
    in seconds (see :func:`parse_cache`).
    """

    id: str
    user: str
    budgets: tuple[str, ...] = ()
    admin: bool = False
    name: str | None = None
    created_at: float = 0.0
    revoked_at: float | None = None
    salt: str = attrs.field(default="", repr=False)
    digest: str = attrs.field(default="", repr=False)
    policies: tuple[BudgetPolicy, ...] = attrs.field(default=(), repr=False, eq=False)
    models: tuple[str, ...] = ()
    cache: bool | float = False

    def may_use(self, *names: str) -> bool:
        """Whether any of ``names`` matches the key's allow-list (always, without a list).

        The gateway passes the names a request's model goes by: the name as sent, an alias's
        target, and the ``provider/model`` a bare name resolves to; so ``openai/*`` lets a key
        use the alias ``fast`` of ``openai/gpt-4o-mini`` and the bare ``gpt-4o-mini``, while an
        allow-list of ``fast`` alone does not open ``openai/gpt-4o-mini`` by its own name.
        """
        if not self.models:
            return True
        return any(fnmatch.fnmatchcase(n, p) for n in names for p in self.models)

    @property
    def active(self) -> bool:
        """Whether the key still opens the gateway."""
        return self.revoked_at is None

    def to_json(self) -> dict[str, Any]:
        """The public fields, for the dashboard and ``keys list``."""
        return {
            "id": self.id,
            "user": self.user,
            "budgets": list(self.budgets),
            "models": list(self.models),
            "admin": self.admin,
            "name": self.name,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "cache": self.cache,
        }


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS gateway_keys (
    id TEXT PRIMARY KEY,
    salt TEXT NOT NULL,
    digest TEXT NOT NULL,
    "user" TEXT NOT NULL,
    budgets TEXT NOT NULL,
    admin INTEGER NOT NULL,
    name TEXT,
    created_at REAL NOT NULL,
    revoked_at REAL,
    models TEXT,
    cache REAL
);
CREATE TABLE IF NOT EXISTS dashboard_sessions (
    digest TEXT PRIMARY KEY,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dashboard_login_attempts (
    address TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dashboard_login_attempts_by_address
    ON dashboard_login_attempts (address, at);
"""
_SELECT: Final = (
    'SELECT id, "user", budgets, admin, name, created_at, revoked_at, salt, digest, models,'
    " cache FROM gateway_keys"
)


def _record(row: Sequence[Any]) -> KeyRecord:
    budgets = tuple(json.loads(row[2]))
    return KeyRecord(
        row[0],
        row[1],
        budgets,
        bool(row[3]),
        row[4],
        float(row[5]),
        row[6],
        row[7],
        row[8],
        tuple(parse_budget(b) for b in budgets),
        tuple(json.loads(row[9])) if row[9] else (),
        False if row[10] is None else (float(row[10]) or True),
    )


class KeyStore:
    """Gateway keys in SQLite (``sqlite:///path``) or in memory (``memory://``).

    Verifying a key reads an in-memory copy of the table, refreshed when another process
    changed the file (SQLite's ``data_version``), so ``llmproxy keys revoke`` takes effect on
    a running gateway at its next request.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        try:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                ":memory:" if self.path is None else self.path,
                timeout=5.0,
                isolation_level=None,
                check_same_thread=False,
            )
            if self.path is not None:
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)
            columns = {r[1] for r in self._conn.execute("PRAGMA table_info(gateway_keys)")}
            if "models" not in columns:  # a store made before keys had model allow-lists
                self._conn.execute("ALTER TABLE gateway_keys ADD COLUMN models TEXT")
            if "cache" not in columns:  # ... or a cache setting
                self._conn.execute("ALTER TABLE gateway_keys ADD COLUMN cache REAL")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"gateway key store {self.path}: {exc}") from exc
        self._version = -1
        self._by_id: dict[str, KeyRecord] = {}
        self._refresh()

    @classmethod
    def from_url(cls, url: str, environ: Mapping[str, str]) -> KeyStore:
        """Open the store a ``sqlite:///...`` or ``memory://`` URL names."""
        return cls(cls.location(url, environ))

    @staticmethod
    def location(url: str, environ: Mapping[str, str]) -> Path | None:
        """The file a key store URL names (None for ``memory://``); a ConfigError if it names none.

        Opens nothing: ``llmproxy serve`` checks the URL with it before starting its workers.
        """
        scheme = scheme_of(url, what="gateway keys")
        if scheme == "memory":
            return None
        if scheme == "sqlite":
            return sqlite_path(url, env.default_keys_path(environ))
        raise ConfigError(
            f"gateway keys URL scheme '{scheme}://' is not supported; use sqlite:///path or"
            " memory://",
            path=env.KEYS_URL,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KeyStore:
        """Open the store ``LLMPROXY_GATEWAY_KEYS_URL`` names (default: ``keys.db``)."""
        environ = os.environ if environ is None else environ
        return cls.from_url(env.keys_url(environ), environ)

    @contextmanager
    def _sql(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the store's lock; an SQLite error becomes a StoreError."""
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(f"gateway key store {self.path}: {exc}") from exc

    # -- reading ------------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Reload the table when another connection changed it; the caller may hold no lock."""
        with self._sql() as conn:
            (version,) = conn.execute("PRAGMA data_version").fetchone()
            if version == self._version:
                return
            rows = conn.execute(_SELECT).fetchall()
            self._by_id = {row[0]: _record(row) for row in rows}
            self._version = version

    def get(self, key_id: str) -> KeyRecord | None:
        """The key with this id (revoked or not), or None."""
        self._refresh()
        return self._by_id.get(key_id)

    def all(self) -> list[KeyRecord]:
        """Every key, oldest first."""
        self._refresh()
        return sorted(self._by_id.values(), key=lambda k: (k.created_at, k.id))

    def verify(self, presented: str) -> KeyRecord | None:
        """Return the active key ``presented`` (the full ``sk-llmp-...`` text) is, else None."""
        if not presented.startswith(PREFIX):
            return None
        key_id, sep, secret = presented[len(PREFIX) :].partition("-")
        if not sep or not secret:
            return None
        self._refresh()
        record = self._by_id.get(key_id)
        if record is None:
            return None
        if not hmac.compare_digest(_digest(record.salt, secret), record.digest):
            return None
        return record if record.active else None

    def label(self, key_id: str) -> str:
        """A key's label in metrics: its name, else its id (never any part of the secret)."""
        record = self._by_id.get(key_id)
        return record.name if record is not None and record.name else key_id

    def policies_for(self, key_id: str | None) -> tuple[BudgetPolicy, ...]:
        """The budget policies of a key (from the in-memory copy; empty for unknown keys)."""
        if key_id is None:
            return ()
        record = self._by_id.get(key_id)
        return record.policies if record is not None else ()

    # -- writing ------------------------------------------------------------------------------

    def create(
        self,
        user: str,
        *,
        budgets: Sequence[str] = (),
        admin: bool = False,
        name: str | None = None,
        models: str | Sequence[str] = (),
        cache: bool | float | str = False,
    ) -> tuple[KeyRecord, str]:
        """Create a key; return its record and the full key text (shown once, never stored).

        ``models`` restricts the key to some models (:func:`parse_models`; empty: any model);
        ``cache`` turns the response cache on for the key's requests (:func:`parse_cache`).
        """
        if not isinstance(user, str) or not user.strip():
            raise ConfigError("a key needs a user (--user NAME)", path="user")
        specs = tuple(b.strip().lower() for b in budgets)
        if len(specs) > MAX_BUDGETS_PER_KEY:
            raise ConfigError(
                f"a key takes at most {MAX_BUDGETS_PER_KEY} budgets, got {len(specs)}",
                path="budget",
            )
        policies = tuple(parse_budget(s) for s in specs)
        allowed = parse_models(models) if models else ()
        cached = parse_cache(cache)
        names = [p.name for p in policies]
        if len(set(names)) != len(names):
            raise ConfigError(f"budgets repeat: {', '.join(specs)}", path="budget")
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_hex(16)
        with self._sql() as conn:
            for _ in range(10):
                key_id = secrets.token_hex(5)
                if key_id not in self._by_id:
                    break
            record = KeyRecord(
                key_id,
                user.strip(),
                specs,
                admin,
                name,
                time.time(),
                None,
                salt,
                _digest(salt, secret),
                policies,
                allowed,
                cached,
            )
            conn.execute(
                'INSERT INTO gateway_keys (id, salt, digest, "user", budgets, admin, name,'
                " created_at, revoked_at, models, cache)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                (
                    key_id,
                    salt,
                    record.digest,
                    record.user,
                    json.dumps(list(specs)),
                    int(admin),
                    name,
                    record.created_at,
                    json.dumps(list(allowed)) if allowed else None,
                    None if cached is False else (0.0 if cached is True else cached),
                ),
            )
            self._by_id[key_id] = record
        return record, f"{PREFIX}{key_id}-{secret}"

    def revoke(self, key_id: str) -> KeyRecord:
        """Revoke a key by id (idempotent); raise ConfigError for an unknown id."""
        if not _ID.match(key_id):
            raise ConfigError(f"{key_id!r} is not a key id (10 hex digits)", path="id")
        self._refresh()
        with self._sql() as conn:
            record = self._by_id.get(key_id)
            if record is None:
                raise ConfigError(f"no key with id {key_id!r}", path="id")
            if record.revoked_at is not None:
                return record
            now = time.time()
            conn.execute("UPDATE gateway_keys SET revoked_at = ? WHERE id = ?", (now, key_id))
            record = attrs.evolve(record, revoked_at=now)
            self._by_id[key_id] = record
            return record

    # -- dashboard login sessions ---------------------------------------------------------------

    def start_session(self, seconds: float) -> str:
        """Open a dashboard login session for ``seconds``; return its token (stored hashed).

        Sessions live in the store's file, so every worker process of a gateway (and a
        restarted gateway) knows them. Expired ones are deleted here.
        """
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self._sql() as conn:
            conn.execute("DELETE FROM dashboard_sessions WHERE expires < ?", (now,))
            conn.execute(
                "INSERT INTO dashboard_sessions (digest, expires) VALUES (?, ?)",
                (_session_digest(token), now + seconds),
            )
        return token

    def session_active(self, token: str) -> bool:
        """Whether ``token`` names a dashboard session that has not expired or ended."""
        with self._sql() as conn:
            row = conn.execute(
                "SELECT expires FROM dashboard_sessions WHERE digest = ?",
                (_session_digest(token),),
            ).fetchone()
        return row is not None and float(row[0]) >= time.time()

    def end_session(self, token: str) -> None:
        """End a dashboard session (logging out); unknown tokens are ignored."""
        with self._sql() as conn:
            conn.execute(
                "DELETE FROM dashboard_sessions WHERE digest = ?", (_session_digest(token),)
            )

    # -- dashboard login throttling -----------------------------------------------------------

    def login_attempt(self, address: str, *, attempts: int, window: float, now: float) -> float:
        """Count a dashboard login attempt from ``address``; 0.0, or the seconds to wait first.

        At most ``attempts`` attempts per address are counted in any ``window`` seconds; one
        more is refused (not counted) with the seconds until the oldest counted one leaves the
        window. The check and the count are one transaction on the store's file, so every
        worker of a gateway shares the count, and concurrent guesses cannot slip past it. A
        successful login forgets the address's attempts (:meth:`login_succeeded`).
        """
        with self._sql() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM dashboard_login_attempts WHERE at <= ?", (now - window,))
                times = [
                    float(t)
                    for (t,) in conn.execute(
                        "SELECT at FROM dashboard_login_attempts WHERE address = ? ORDER BY at",
                        (address,),
                    )
                ]
                if len(times) >= attempts:
                    wait = times[len(times) - attempts] + window - now
                    conn.execute("COMMIT")
                    return max(wait, 0.001)
                conn.execute(
                    "INSERT INTO dashboard_login_attempts (address, at) VALUES (?, ?)",
                    (address, now),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return 0.0

    def login_succeeded(self, address: str) -> None:
        """Forget the counted login attempts of ``address`` (it logged in)."""
        with self._sql() as conn:
            conn.execute("DELETE FROM dashboard_login_attempts WHERE address = ?", (address,))

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._conn.close()


def admin_matches(presented: str, admin_key: str | None) -> bool:
    """Whether ``presented`` is the configured admin key (constant-time)."""
    if admin_key is None:
        return False
    a = hashlib.sha256(presented.encode()).digest()
    b = hashlib.sha256(admin_key.encode()).digest()
    return hmac.compare_digest(a, b)
