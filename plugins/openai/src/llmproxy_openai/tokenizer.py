"""Exact, offline token counts for OpenAI models.

The tokenizer tables ship inside the ``bpe-openai`` wheel, so nothing is downloaded at run time
(tiktoken would fetch its files on first use). Models with an unknown tokenizer fall back to the
core's byte-count upper bound. Chat formatting adds a few tokens per message, counted as OpenAI
documents it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from llmproxy.tokens import messages_upper_bound, text_upper_bound
from llmproxy.types import Message
from llmproxy_openai.models import encoding_name

_encodings: dict[str, Any] = {}
_lock = threading.Lock()

PER_MESSAGE = 3
PER_NAME = 1
REPLY_PRIMING = 3


def _encoding(name: str) -> Any:
    enc = _encodings.get(name)
    if enc is None:
        with _lock:
            enc = _encodings.get(name)
            if enc is None:
                import bpe_openai  # type: ignore[import-untyped]

                enc = _encodings[name] = bpe_openai.get_encoding(name)
    return enc


def count_text(text: str, model: str) -> int:
    """Count the tokens of ``text`` for ``model``."""
    name = encoding_name(model)
    if name is None:
        return text_upper_bound(text)
    if not text:
        return 0
    return len(_encoding(name).encode(text))


def count_messages(messages: Sequence[Message], model: str) -> int:
    """Count the input tokens of a chat request made of ``messages``."""
    name = encoding_name(model)
    if name is None:
        return messages_upper_bound(messages)
    encode = _encoding(name).encode
    total = REPLY_PRIMING
    for m in messages:
        total += PER_MESSAGE
        if m.content:
            total += len(encode(m.content))
        if m.name:
            total += PER_NAME + len(encode(m.name))
        for call in m.tool_calls:
            total += PER_MESSAGE + len(encode(call.name)) + len(encode(call.arguments))
    return total
