"""The response cache's store interface, its entry codec and its key.

A store keeps opaque bytes under a key for a number of seconds and is bounded in entries and
bytes (it evicts the oldest entries written when a new one would exceed either bound). What
it keeps is a :class:`CachedReply` encoded by :func:`encode_reply`; the key is
:func:`request_key` of everything that decides the upstream's answer, plus the isolation
scope (see :mod:`llmproxy.cache`).

A store is built from a URL by the factory a plugin registers for its scheme
(``register_caches``); the factory receives the URL and a :class:`CacheSettings`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import attrs
import cattrs
from attrs import frozen

from llmproxy.errors import StoreError
from llmproxy.history.codec import decode_parts, encode_parts
from llmproxy.types import Message, Part, Usage

DEFAULT_TTL: Final = 3600.0
"""Seconds an entry lives when a call asks for ``cache=True`` (``cache.ttl`` changes it)."""
DEFAULT_MAX_ENTRIES: Final = 10_000
"""The default bound on a memory or SQLite cache's entries (``cache.max_entries``)."""
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
"""The default bound on a memory or SQLite cache's encoded bytes, 64 MiB (``cache.max_bytes``)."""
FORMAT: Final = 1
"""The version of an entry's encoding; an entry of another version is a miss."""


@frozen
class CacheSettings:
    """What a cache factory receives besides its URL.

    ``max_entries`` and ``max_bytes`` bound the store (oldest entries are evicted first);
    ``environ`` is the mapping the Proxy reads; ``clock`` gives the time entries expire by
    (seconds, ``time.time`` by default; tests pass a clock they move).
    """

    max_entries: int = DEFAULT_MAX_ENTRIES
    max_bytes: int = DEFAULT_MAX_BYTES
    environ: Mapping[str, str] = attrs.Factory(dict)
    clock: Callable[[], float] = time.time


class ResponseCache:
    """A store of cached replies: bytes by key, each with a time to live.

    Subclasses implement :meth:`get`, :meth:`put`, :meth:`clear` and :meth:`stats`; the async
    methods run the sync ones inline unless overridden (as an I/O store does). A store never
    returns an expired entry, and keeps at most its bounds, evicting the oldest first.
    """

    def get(self, key: str) -> bytes | None:
        """The bytes kept under ``key``, or None when there are none (or they expired)."""
        raise NotImplementedError

    def put(self, key: str, value: bytes, ttl: float) -> None:
        """Keep ``value`` under ``key`` for ``ttl`` seconds (replacing what was there)."""
        raise NotImplementedError

    def clear(self) -> None:
        """Drop every entry."""
        raise NotImplementedError

    def stats(self) -> tuple[int, int]:
        """The number of entries kept and their encoded size in bytes (expired ones may count)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the store's connections; the store is not used afterwards."""

    async def aget(self, key: str) -> bytes | None:
        """Async :meth:`get` (inline unless overridden)."""
        return self.get(key)

    async def aput(self, key: str, value: bytes, ttl: float) -> None:
        """Async :meth:`put` (inline unless overridden)."""
        self.put(key, value, ttl)

    async def aclose(self) -> None:
        """Async :meth:`close` (inline unless overridden)."""
        self.close()


# -- entries -----------------------------------------------------------------------------------


@frozen
class CachedReply:
    """A whole reply as the cache keeps it: the assistant message and what the upstream said.

    ``usage`` is what the reply cost when it was made (a hit spends none of it).
    """

    message: Message
    model: str
    finish_reason: str | None = None
    id: str | None = None
    usage: Usage = attrs.Factory(Usage)


_converter = cattrs.Converter()
_PARTS_TYPE: Final = tuple[Part, ...]


def _unstructure_parts(parts: tuple[Part, ...]) -> dict[str, Any] | None:
    text, blobs = encode_parts(parts)
    if text is None:
        return None
    return {"parts": text, "blobs": {k: base64.b64encode(v).decode() for k, v in blobs.items()}}


def _structure_parts(value: dict[str, Any] | None, _type: object) -> tuple[Part, ...]:
    if not value:
        return ()
    blobs = {k: base64.b64decode(v, validate=True) for k, v in value["blobs"].items()}
    return decode_parts(value["parts"], blobs.get)


_converter.register_unstructure_hook_func(lambda t: t == _PARTS_TYPE, _unstructure_parts)
_converter.register_structure_hook_func(lambda t: t == _PARTS_TYPE, _structure_parts)


def encode_reply(reply: CachedReply) -> bytes:
    """A reply as the bytes a store keeps (JSON; message parts and their data included)."""
    data = {"format": FORMAT, "reply": _converter.unstructure(reply, CachedReply)}
    return json.dumps(data, separators=(",", ":")).encode()


def decode_reply(value: bytes) -> CachedReply | None:
    """The reply :func:`encode_reply` encoded; None for an entry this version cannot read."""
    try:
        data = json.loads(value)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return None
        reply: CachedReply = _converter.structure(data["reply"], CachedReply)
    except (ValueError, KeyError, TypeError, cattrs.BaseValidationError) as exc:
        raise StoreError(f"a response cache entry could not be read: {exc}") from None
    return reply


# -- keys --------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A JSON value standing for ``value`` (attrs classes by their fields, others by repr)."""
    if attrs.has(type(value)):
        return {"@": type(value).__name__, **_plain(_converter.unstructure(value))}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"@": "bytes", "sha256": hashlib.sha256(bytes(value)).hexdigest()}
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return {"@": "float", "v": value.hex()}  # 1 and 1.0 stay apart, -0.0 too
    return {"@": type(value).__name__, "repr": repr(value)}


def _message(message: Message) -> Any:
    fields = _converter.unstructure(message, Message)
    fields.pop("interrupted", None)
    parts = fields.pop("parts", None)
    if parts:
        fields["parts"] = parts["parts"]  # the parts' JSON names each blob by its SHA-256
    return _plain(fields)


def request_key(
    *,
    provider: str,
    model: str,
    messages: Sequence[Message],
    tools: Sequence[Any] = (),
    tool_choice: str | None = None,
    schema: Any = None,
    temperature: float | None = None,
    max_output_tokens: int | None = None,
    extra: Mapping[str, Any] | None = None,
    scope: Sequence[str | None] = (),
) -> str:
    """The cache key of a request: a SHA-256 hex digest of every field given.

    ``messages`` are taken whole (parts by the digest of their data, provider state and tool
    calls included), ``tools`` by their definitions (name, description, parameters, strictness;
    a hosted tool by its type and configuration), ``extra`` holds the other sampling
    parameters (``top_p``, ``stop``, ``seed``...). ``scope`` is who may share the entry (the
    user and the gateway key under the default ``user`` scope, nothing when shared). Two
    requests that differ in any of these never get one key.
    """
    tool_defs = []
    for tool in tools:
        if hasattr(tool, "parameters"):
            tool_defs.append(
                [
                    "function",
                    tool.name,
                    tool.description,
                    _plain(tool.parameters),
                    bool(getattr(tool, "strict", False)),
                ]
            )
        else:
            tool_defs.append(["hosted", _plain(tool)])
    body = [
        "llmproxy-cache",
        FORMAT,
        provider,
        model,
        [_message(m) for m in messages],
        tool_defs,
        tool_choice,
        _plain(schema),
        None if temperature is None else _plain(float(temperature)),
        max_output_tokens,
        _plain(dict(extra or {})),
        list(scope),
    ]
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
