"""Store URLs: ``memory://`` and ``sqlite:///path`` (plugins add schemes such as ``redis://``)."""

from __future__ import annotations

from pathlib import Path

from llmproxy.errors import ConfigError


def scheme_of(url: str, *, what: str) -> str:
    """Return the scheme of a store URL, or raise a ConfigError showing the expected form."""
    scheme, sep, _ = url.partition("://")
    if not sep or not scheme:
        raise ConfigError(
            f"{what} URL {url!r} has no scheme: use memory://, sqlite:///path/to/file.db"
            " (or a scheme a plugin registers, such as redis://host:6379/0)",
            path=what,
        )
    return scheme.lower()


def sqlite_path(url: str, default: Path) -> Path:
    """Return the file a ``sqlite:`` URL names, SQLAlchemy style.

    ``sqlite:///rel/file.db`` is relative to the working directory, ``sqlite:////abs/file.db``
    absolute, and ``sqlite://`` alone means ``default``.
    """
    rest = url.split("://", 1)[1]
    if not rest:
        return default
    if not rest.startswith("/"):
        raise ConfigError(
            f"sqlite URL {url!r} must be sqlite:///relative/file.db or sqlite:////absolute/file.db",
            path="url",
        )
    return Path(rest[1:]).expanduser()
