"""``LLMMessageHandlerImpl``: the seed library's Redis message handler, backed by the store.

Like the seed's, ``LLMMessageHandlerImpl()`` with no arguments reads the Redis settings from the
environment (``LLMPROXY_REDIS_URL``, else ``LLM_PROXY_OPEN_AI_IOREDIS_HOST``/``_PORT``/
``_DB_INDEX``/``_KEY_PREFIX``) and ``push_message(message)`` stores one message where the seed's
read-back example (``LRANGE {prefix}:llm_proxy_history_key_list 0 -1``, ``HGETALL`` each key)
finds it. It also answers :meth:`get_messages`, so ``OpenAIService(config,
message_handler=LLMMessageHandlerImpl())`` sends a session's history as context.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from llmproxy.errors import InvalidRequest
from llmproxy.history.base import HistoryRecord
from llmproxy.history.handler import LLMMessageHandler
from llmproxy.types import Message
from llmproxy_redis_history.store import RedisHistoryStore

DEFAULT_SESSION = "default"


class LLMMessageHandlerImpl(LLMMessageHandler):
    """Store and read messages in Redis (the seed's default handler).

    ``store`` is a :class:`RedisHistoryStore` to use; without one, a store is built from ``url``
    (None: the environment, like the seed) with ``options`` (``prefix=``, ``ttl=``...).
    """

    def __init__(
        self,
        store: RedisHistoryStore | None = None,
        *,
        url: str | None = None,
        environ: Mapping[str, str] | None = None,
        **options: Any,
    ) -> None:
        self.store = (
            store if store is not None else RedisHistoryStore(url, environ=environ, **options)
        )

    @staticmethod
    def _record(message: Any, session_id: str | None, **fields: Any) -> HistoryRecord:
        if isinstance(message, HistoryRecord):
            return message
        if isinstance(message, Message):
            return HistoryRecord(
                session_id or DEFAULT_SESSION,
                message,
                created_at=fields.pop("created_at", None) or time.time(),
                **fields,
            )
        if isinstance(message, Mapping):
            data = dict(message)
            try:
                msg = Message(data.pop("role"), data.pop("content", ""))
            except KeyError:
                raise InvalidRequest(
                    "a message mapping needs at least 'role' and 'content'", field="message"
                ) from None
            sid = session_id or data.pop("session_id", None) or DEFAULT_SESSION
            keep = {"model", "provider", "created_at", "input_tokens", "output_tokens", "user"}
            extra = {k: v for k, v in data.items() if k in keep}
            return LLMMessageHandlerImpl._record(msg, sid, **{**extra, **fields})
        raise InvalidRequest(
            "push_message takes a HistoryRecord, a Message or a mapping with role and content,"
            f" not {type(message).__name__}",
            field="message",
        )

    def push_message(
        self,
        message: HistoryRecord | Message | Mapping[str, Any],
        *,
        session_id: str | None = None,
        **fields: Any,
    ) -> None:
        """Store one message in Redis.

        ``message`` is a :class:`HistoryRecord`, or a :class:`Message` (or a mapping with
        ``role`` and ``content``) kept in ``session_id`` (default ``"default"``); ``fields``
        fill the record's ``model``, ``provider``, ``created_at``, token counts and ``user``.
        """
        self.store.append([self._record(message, session_id, **fields)])

    def push_messages(self, messages: Sequence[HistoryRecord]) -> None:
        """Store one exchange atomically (one MULTI/EXEC round trip on a single Redis)."""
        self.store.append([self._record(m, None) for m in messages])

    async def apush_messages(self, messages: Sequence[HistoryRecord]) -> None:
        """Async :meth:`push_messages`."""
        await self.store.aappend([self._record(m, None) for m in messages])

    def get_messages(self, session_id: str, limit: int | None = None) -> list[HistoryRecord]:
        """Return the last ``limit`` messages of a session, oldest first."""
        return self.store.load(session_id, limit)

    async def apush_message(
        self,
        message: HistoryRecord | Message | Mapping[str, Any],
        *,
        session_id: str | None = None,
        **fields: Any,
    ) -> None:
        """Async :meth:`push_message`."""
        await self.store.aappend([self._record(message, session_id, **fields)])

    async def aget_messages(self, session_id: str, limit: int | None = None) -> list[HistoryRecord]:
        """Async :meth:`get_messages`."""
        return await self.store.aload(session_id, limit)

    def close(self) -> None:
        """Close the store's connections."""
        self.store.close()
