"""The response cache: an opt-in, exact-match cache of whole replies.

Turned on per call (``cache=True`` for the configured TTL, or ``cache=<seconds>``), with a
store chosen by URL (``LLMPROXY_CACHE_URL`` or ``cache.url``: ``memory://``,
``sqlite:///path``, ``redis://...`` with ``llmproxy-redis-history``; plugins register more
schemes with ``register_caches``). In the gateway a key's configuration turns it on for every
request made with the key, and a request may ask for it (``x-llmproxy-cache``).

The key (:func:`call_key`) is a SHA-256 of everything that decides the upstream's answer:
provider, model (or, for an alias with several deployments, the alias: any of its deployments'
reply answers it), every message sent (system prompt and history included, parts by the digest
of their data), tool definitions and ``tool_choice``, the output schema, ``temperature``,
``max_output_tokens`` and every other sampling parameter the call passes (``top_p``, ``stop``,
``seed``...); plus its isolation scope. Under the default ``cache.scope = "user"`` the scope is
the call's ``user`` and ``key`` (the gateway key), so an entry is only ever served to the same
user of the same key; ``cache.scope = "shared"`` shares entries across users and keys.

How a call meets the cache (see :func:`llmproxy.flow.call_flow`):

* It is looked up once the history is loaded and before anything is reserved. A hit reserves
  nothing, spends no budget and makes no upstream attempt: its usage is zero tokens and no
  cost, its ``CallEvent.cache_hit`` and ``ChatResponse.cache_hit`` are True, and the exchange
  is written to the session's history as a live reply would be. A streamed call is served as
  a stream: the reply's reasoning and text in pieces, then the final event, as a live stream's
  events. A cached stream closed early stores nothing (nothing was spent).
* A reply is stored after it completed: never a failed call, a stream cut short, a reply cut
  short by a budget's room, an answer that came from a fallback model, or a call whose tool
  rounds the Proxy ran (that answer depends on the tools' outputs, which are not part of the
  key) or that needed schema retry rounds. Tool calls handed back to the caller
  (``run_tools=False``, client tools) are a whole reply and are stored; the caller's next call
  carries their outputs, so it has a key of its own.
* A store that fails is logged and the call goes on uncached.

Entries expire by their TTL and a memory or SQLite store keeps at most ``cache.max_entries``
entries (default 10,000) and ``cache.max_bytes`` encoded bytes (default 64 MiB), evicting the
oldest written first.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from llmproxy.cache.base import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_TTL,
    CachedReply,
    CacheSettings,
    ResponseCache,
    decode_reply,
    encode_reply,
    request_key,
)
from llmproxy.cache.memory import MemoryCache
from llmproxy.cache.sqlite import SQLiteCache

if TYPE_CHECKING:
    from llmproxy.call import Call
    from llmproxy.types import ChatResponse, Completion

log = logging.getLogger("llmproxy")

SCOPES = ("user", "shared")
"""The values of ``cache.scope``: per user and key (the default), or shared by all."""


def call_target(call: Call) -> tuple[str, str]:
    """What a call's cached reply belongs to: its provider and model, or the alias it named.

    The deployments behind one alias (:mod:`llmproxy.routing`) serve the same model, so a reply
    any of them gave answers the alias: the router's pick does not split the cache.
    """
    alias = call.alias()
    if alias is not None:
        return ("alias", alias)
    return (call.provider_name, call.model)


def call_key(call: Call) -> str:
    """The cache key of a call's first request (its history loaded): see the module docstring."""
    scope: tuple[str | None, ...] = ()
    if call.proxy.config.cache.scope == "user":
        scope = (call.user, call.key)
    provider, model = call_target(call)
    return request_key(
        provider=provider,
        model=model,
        messages=call.messages(),
        tools=call.tools,
        tool_choice=call.tool_choice,
        schema=call.output.schema if call.output is not None else None,
        temperature=call.temperature,
        max_output_tokens=call.max_output_tokens,
        extra=call.extra,
        scope=scope,
    )


def reply_to_store(
    call: Call, completion: Completion, response: ChatResponse
) -> CachedReply | None:
    """What to keep of a call that succeeded, or None when its reply must not be cached."""
    if (
        call.rounds
        or call.schema_rounds
        or call.cache_for != call_target(call)
        or completion.message.interrupted
        or response.cut_short_by_budget
    ):
        return None
    return CachedReply(
        completion.message, response.model, completion.finish_reason, completion.id, call.spent
    )


__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_TTL",
    "SCOPES",
    "CacheSettings",
    "CachedReply",
    "MemoryCache",
    "ResponseCache",
    "SQLiteCache",
    "call_key",
    "call_target",
    "decode_reply",
    "encode_reply",
    "reply_to_store",
    "request_key",
]
