"""Secrets that never leak: a wrapper for API keys and a redactor for text that may hold one."""

from __future__ import annotations

import re
from typing import Final

# Key shapes, and any word holding a run of 4+ asterisks: the masked form a service echoes back
# ("gw-0****QRST") still shows part of the key, whatever the key's shape.
_KEY_PATTERN: Final = re.compile(
    r"\b(?:sk-[A-Za-z0-9_*-]{6,}|AIza[A-Za-z0-9_*-]{12,})|[A-Za-z0-9_-]*\*{4,}[A-Za-z0-9_-]*"
)


class Secret:
    """An API key or password whose repr and str never show the value.

    >>> Secret("sk-abc123")
    Secret('***')
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """Return the secret value, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def redact(text: str, *secrets: Secret | str | None) -> str:
    """Return ``text`` with every given secret and anything shaped like an API key masked.

    >>> redact("Incorrect API key provided: sk-abcd****wxyz", "sk-abcdefwxyz")
    'Incorrect API key provided: ***'
    >>> redact("Incorrect API key provided: gw-0****QRST.")
    'Incorrect API key provided: ***.'
    """
    for secret in secrets:
        value = secret.get() if isinstance(secret, Secret) else secret
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return _KEY_PATTERN.sub("***", text)
