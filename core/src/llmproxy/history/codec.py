"""How a store keeps a message's parts and provider state: JSON text, and binary data by hash.

A store that writes rows or hashes of strings calls :func:`encode_parts` and keeps two things:
the JSON text (a list with one object per part, in order) and the blobs it references, keyed by
the SHA-256 hex digest of their bytes, so the same image sent twice in a session is kept once.
:func:`decode_parts` rebuilds the parts exactly (every field of :class:`~llmproxy.types.Image`,
:class:`~llmproxy.types.Document` and :class:`~llmproxy.types.Audio`), asking the store for
each blob by hash. :func:`encode_state` / :func:`decode_state` do the same for
``Message.state`` (provider state: JSON values).

The JSON of the parts, one object per part (fields that are None are left out)::

    {"type": "text", "text": "..."}
    {"type": "image", "url": "https://..."} or {"type": "image", "blob": "<sha256>",
        "media_type": "image/png", "detail": "low", "width": 640, "height": 480}
    {"type": "document", "blob": "<sha256>" or "file_id": "file-...", "media_type": "...",
        "filename": "...", "pages": 3}
    {"type": "audio", "blob": "<sha256>", "format": "wav", "seconds": 1.5}

A part's data is at most :data:`llmproxy.types.MAX_PART_BYTES` (20 MiB): the part itself
refuses more when it is made, and :func:`encode_parts` checks again (bytes changed in place
after a ``bytearray`` was given) with an :class:`~llmproxy.errors.InvalidRequest` that says so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from llmproxy.errors import InvalidRequest, StoreError
from llmproxy.types import MAX_PART_BYTES, Audio, Document, Image, Part, Text

__all__ = [
    "blob_hash",
    "blob_hashes",
    "decode_parts",
    "decode_state",
    "encode_parts",
    "encode_state",
]

_SEPARATORS = (",", ":")


def blob_hash(data: bytes | bytearray | memoryview) -> str:
    """The key a blob is kept under: the SHA-256 hex digest of its bytes."""
    return hashlib.sha256(data).hexdigest()


def _blob(data: bytes | bytearray | memoryview, index: int, blobs: dict[str, bytes]) -> str:
    raw = bytes(data)
    if len(raw) > MAX_PART_BYTES:
        raise InvalidRequest(
            f"parts[{index}] is {len(raw):,} bytes, more than a stored part may carry"
            f" ({MAX_PART_BYTES:,}); upload it to the provider's file API and send"
            " Document(file_id=...)",
            field=f"parts[{index}].data",
        )
    key = blob_hash(raw)
    blobs.setdefault(key, raw)
    return key


def _drop_none(fields: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def encode_parts(parts: Sequence[Part]) -> tuple[str | None, dict[str, bytes]]:
    """Return the JSON text of ``parts`` (None when there are none) and the blobs it references.

    The blobs map each SHA-256 hex digest to its bytes; a part repeated in the message (or
    already stored in the session, which the store knows) is one blob.
    """
    if not parts:
        return None, {}
    blobs: dict[str, bytes] = {}
    out: list[dict[str, Any]] = []
    for index, part in enumerate(parts):
        if isinstance(part, Text):
            out.append({"type": "text", "text": part.text})
        elif isinstance(part, Image):
            out.append(
                _drop_none(
                    {
                        "type": "image",
                        "url": part.url,
                        "blob": None if part.data is None else _blob(part.data, index, blobs),
                        "media_type": part.media_type,
                        "detail": part.detail,
                        "width": part.width,
                        "height": part.height,
                    }
                )
            )
        elif isinstance(part, Document):
            out.append(
                _drop_none(
                    {
                        "type": "document",
                        "blob": None if part.data is None else _blob(part.data, index, blobs),
                        "file_id": part.file_id,
                        "media_type": part.media_type,
                        "filename": part.filename,
                        "pages": part.pages,
                    }
                )
            )
        elif isinstance(part, Audio):
            out.append(
                _drop_none(
                    {
                        "type": "audio",
                        "blob": _blob(part.data, index, blobs),
                        "format": part.format,
                        "seconds": part.seconds,
                    }
                )
            )
        else:
            raise InvalidRequest(
                f"parts[{index}] must be a Text, Image, Document or Audio, got"
                f" {type(part).__name__}",
                field=f"parts[{index}]",
            )
    return json.dumps(out, ensure_ascii=False, separators=_SEPARATORS), blobs


def _entries(text: str) -> list[dict[str, Any]]:
    try:
        entries = json.loads(text)
    except ValueError as exc:
        raise StoreError(f"stored parts are not JSON ({exc})") from exc
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise StoreError("stored parts are not a JSON list of objects")
    return entries


def blob_hashes(text: str | None) -> list[str]:
    """The blob hashes a parts JSON text references, in order, each once."""
    if not text:
        return []
    seen: dict[str, None] = {}
    for entry in _entries(text):
        key = entry.get("blob")
        if isinstance(key, str):
            seen[key] = None
    return list(seen)


def decode_parts(text: str | None, fetch: Callable[[str], bytes | None]) -> tuple[Part, ...]:
    """Rebuild the parts of :func:`encode_parts`'s JSON; ``fetch`` returns a blob by hash.

    Raises :class:`~llmproxy.errors.StoreError` when the JSON is not ours, or a blob is missing
    or does not match its hash.
    """
    if not text:
        return ()
    parts: list[Part] = []
    for index, entry in enumerate(_entries(text)):
        data: bytes | None = None
        key = entry.get("blob")
        if key is not None:
            found = fetch(key)
            if found is None:
                raise StoreError(
                    f"stored parts[{index}] references blob {key} that is not stored;"
                    " the session was changed outside llmproxy: delete it"
                )
            data = bytes(found)
            if blob_hash(data) != key:
                raise StoreError(
                    f"stored blob {key} of parts[{index}] does not match its hash: the store is"
                    " corrupt; delete the session"
                )
        try:
            kind = entry["type"]
            if kind == "text":
                parts.append(Text(entry["text"]))
            elif kind == "image":
                parts.append(
                    Image(
                        url=entry.get("url"),
                        data=data,
                        media_type=entry.get("media_type"),
                        detail=entry.get("detail"),
                        width=entry.get("width"),
                        height=entry.get("height"),
                    )
                )
            elif kind == "document":
                parts.append(
                    Document(
                        data=data,
                        file_id=entry.get("file_id"),
                        media_type=entry.get("media_type", "application/pdf"),
                        filename=entry.get("filename"),
                        pages=entry.get("pages"),
                    )
                )
            elif kind == "audio":
                if data is None:
                    raise KeyError("blob")
                parts.append(Audio(data, entry.get("format"), entry.get("seconds")))
            else:
                raise StoreError(f"stored parts[{index}] has an unknown type {kind!r}")
        except (KeyError, TypeError, InvalidRequest) as exc:
            raise StoreError(f"stored parts[{index}] is malformed ({exc})") from exc
    return tuple(parts)


def encode_state(state: Mapping[str, Any]) -> str | None:
    """Return ``Message.state`` as JSON text (None when empty).

    Raises :class:`~llmproxy.errors.InvalidRequest` when it holds something JSON cannot keep.
    """
    if not state:
        return None
    try:
        return json.dumps(dict(state), ensure_ascii=False, separators=_SEPARATORS)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(
            f"message state must hold only JSON values (str, int, float, bool, None, lists and"
            f" dicts with string keys) to be stored: {exc}",
            field="state",
        ) from exc


def decode_state(text: str | None) -> dict[str, Any]:
    """Rebuild ``Message.state`` from :func:`encode_state`'s JSON (an empty dict for None)."""
    if not text:
        return {}
    try:
        state = json.loads(text)
    except ValueError as exc:
        raise StoreError(f"stored message state is not JSON ({exc})") from exc
    if not isinstance(state, dict):
        raise StoreError("stored message state is not a JSON object")
    return state
