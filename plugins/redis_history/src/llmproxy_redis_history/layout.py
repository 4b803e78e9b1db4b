"""The Redis key layout and how a record becomes a hash and back.

With prefix ``P`` (default ``llm_proxy``) and ``T`` the session's tag:

==================================  =============================================================
Key                                 What
==================================  =============================================================
``P:llm_proxy_history_key_list``    The seed's list: every message key, oldest first (``RPUSH``).
``P:msg:{T}:<id>``                  One message: a hash of strings (``HGETALL``). ``<id>`` is
                                    the record's own id (``HistoryRecord.id``) when it has one,
                                    so an append skips a message already stored; otherwise
                                    ``<exchange>.<n>``, new for every append.
``P:session:{T}:messages``          The session's message keys, oldest first.
``P:session:{T}:meta``              ``session_id``, ``created_at``, ``updated_at``, and ``v``
                                    (the session's version: every append that stores
                                    something adds one).
``P:session:{T}:blobs``             The binary data of the session's parts: a hash from the
                                    SHA-256 hex digest of the bytes to their base64 (``HSETNX``:
                                    the same image sent twice in a session is stored once). It
                                    expires with the session (TTL) and goes with it (delete).
``P:sessions``                      Sorted set: session tags scored by ``updated_at``.
``P:inv:{T}:<writer>``              Never kept: set and deleted by each delete so that other
                                    processes' caches learn (by client tracking) who deleted.
``P:feed``                          A pub/sub channel, no key: every append publishes the
                                    messages it stored there, with the session's new version,
                                    so that other processes' caches extend the session.
==================================  =============================================================

``T`` is ``s`` followed by the base64url encoding (no padding) of the session id's UTF-8 bytes:
it uses only ``A-Z a-z 0-9 - _``, so no id (with ``:``, ``{``, ``}``, spaces or any unicode)
can reach into another session's keys, and the braces make it the Redis Cluster hash tag: a
session's own keys live in one slot, so a session's writes stay one atomic transaction there.
The seed's global list and the session index are single keys in other slots.

A message hash holds ``role``, ``content``, ``session_id``, ``created_at``, ``input_tokens``,
``output_tokens`` and ``interrupted`` (``0``/``1``) always, and ``name``, ``tool_calls`` (JSON),
``tool_call_id``, ``reasoning``, ``model``, ``provider``, ``user`` and ``id`` (the record's id)
when they are not None. A message with parts (images, documents, audio) keeps its text in
``content`` as a text-only message does, and adds ``parts``: the JSON of
:func:`llmproxy.history.codec.encode_parts` (binary data referenced by hash, kept in the
session's blobs hash). A message with provider state adds ``state`` (JSON). A text-only message
without state has neither field: its hash is what it always was.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping

from llmproxy.errors import LLMProxyError, StoreError
from llmproxy.history.base import HistoryRecord
from llmproxy.history.codec import decode_parts, decode_state, encode_parts, encode_state
from llmproxy.types import Message, ToolCall

KEY_LIST = "llm_proxy_history_key_list"
"""The seed's global list of message keys, under the prefix."""


def session_tag(session_id: str) -> str:
    """Return the tag naming a session in keys: ``s`` + base64url of its UTF-8 bytes."""
    raw = session_id.encode("utf-8", "surrogatepass")
    return "s" + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def session_of_tag(tag: str) -> str:
    """Return the session id a tag encodes (the inverse of :func:`session_tag`)."""
    body = tag[1:]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("utf-8", "surrogatepass")


class Keys:
    """Builds the key names for one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.key_list = f"{prefix}:{KEY_LIST}"
        self.sessions = f"{prefix}:sessions"
        self.marks = f"{prefix}:inv:"
        self.feed = f"{prefix}:feed"

    def messages(self, tag: str) -> str:
        """The session's list of message keys."""
        return f"{self.prefix}:session:{{{tag}}}:messages"

    def meta(self, tag: str) -> str:
        """The session's hash of ids and dates."""
        return f"{self.prefix}:session:{{{tag}}}:meta"

    def blobs(self, tag: str) -> str:
        """The session's hash of part data: SHA-256 hex digest -> base64 of the bytes."""
        return f"{self.prefix}:session:{{{tag}}}:blobs"

    def message(self, tag: str, message_id: str) -> str:
        """One message's hash."""
        return f"{self.prefix}:msg:{{{tag}}}:{message_id}"

    def mark(self, tag: str, writer: str) -> str:
        """The key a writer touches to tell other caches the session changed."""
        return f"{self.marks}{{{tag}}}:{writer}"

    def parse_mark(self, key: str) -> tuple[str, str] | None:
        """Return (tag, writer) of a mark key, or None for any other key."""
        if not key.startswith(self.marks + "{"):
            return None
        tag, sep, writer = key[len(self.marks) + 1 :].partition("}:")
        return (tag, writer) if sep else None


def _tool_calls_json(message: Message) -> str:
    return json.dumps(
        [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in message.tool_calls],
        ensure_ascii=False,
        separators=(",", ":"),
    )


def to_hash(record: HistoryRecord, blobs: dict[str, str] | None = None) -> dict[str, str]:
    """Return the fields of a record's hash (None fields left out).

    The binary data of the message's parts is added to ``blobs`` (hash -> base64), which the
    caller writes to the session's blobs hash; without ``blobs``, a message with binary parts
    is refused (ValueError).
    """
    message = record.message
    fields = {
        "role": message.role,
        "content": message.content,
        "session_id": record.session_id,
        "created_at": repr(float(record.created_at)),
        "input_tokens": str(int(record.input_tokens)),
        "output_tokens": str(int(record.output_tokens)),
        "interrupted": "1" if message.interrupted else "0",
    }
    optional = {
        "name": message.name,
        "tool_call_id": message.tool_call_id,
        "reasoning": message.reasoning,
        "model": record.model,
        "provider": record.provider,
        "user": record.user,
        "id": record.id,
    }
    for key, value in optional.items():
        if value is not None:
            fields[key] = value
    if message.tool_calls:
        fields["tool_calls"] = _tool_calls_json(message)
    parts, found = encode_parts(message.parts)
    if parts is not None:
        fields["parts"] = parts
        if found:
            if blobs is None:
                raise ValueError("a message with binary parts needs somewhere to put its blobs")
            for key, data in found.items():
                blobs.setdefault(key, base64.b64encode(data).decode("ascii"))
    state = encode_state(message.state)
    if state is not None:
        fields["state"] = state
    return fields


def _blob_getter(blobs: Mapping[str, str] | None) -> Callable[[str], bytes | None]:
    def get(key: str) -> bytes | None:
        text = (blobs or {}).get(key)
        return None if text is None else base64.b64decode(text, validate=True)

    return get


def from_hash(fields: Mapping[str, str], blobs: Mapping[str, str] | None = None) -> HistoryRecord:
    """Build a record from a message hash; raise StoreError when the hash is not one of ours.

    ``blobs`` holds the session's part data (hash -> base64) the message's ``parts`` reference.
    """
    try:
        raw_calls = fields.get("tool_calls")
        calls = (
            tuple(ToolCall(c["id"], c["name"], c["arguments"]) for c in json.loads(raw_calls))
            if raw_calls
            else ()
        )
        message = Message(
            fields["role"],  # type: ignore[arg-type]  # checked by Message
            fields["content"],
            fields.get("name"),
            calls,
            fields.get("tool_call_id"),
            fields.get("reasoning"),
            fields.get("interrupted", "0") == "1",
            parts=decode_parts(fields.get("parts"), _blob_getter(blobs)),
            state=decode_state(fields.get("state")),
        )
        return HistoryRecord(
            fields["session_id"],
            message,
            fields.get("model"),
            fields.get("provider"),
            float(fields.get("created_at", "0")),
            int(fields.get("input_tokens", "0")),
            int(fields.get("output_tokens", "0")),
            fields.get("user"),
            fields.get("id"),
        )
    except (KeyError, ValueError, TypeError, LLMProxyError) as exc:
        raise StoreError(
            f"a Redis message hash is malformed ({type(exc).__name__}: {exc}); it was written"
            " by something other than llmproxy: delete the session or use another prefix"
        ) from exc


def pairs_to_dict(flat: list[str]) -> dict[str, str]:
    """Turn a flat ``HGETALL`` reply from Lua (``[k1, v1, k2, v2...]``) into a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))
