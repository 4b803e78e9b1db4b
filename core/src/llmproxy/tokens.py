"""Conservative token estimates for providers without a bundled tokenizer.

Byte-level BPE and SentencePiece-with-byte-fallback tokenizers never produce more tokens than
the text has UTF-8 bytes, so the byte count is a true upper bound: a budget reserved with it is
never overspent, and the settle step corrects it with the provider's real count. Providers with
an exact tokenizer (the OpenAI plugin bundles one) count exactly instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmproxy.types import Message

#: Tokens a chat format adds around each message (role markers), and once to prime the reply.
PER_MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3


def text_upper_bound(text: str) -> int:
    """Return an upper bound on the tokens of ``text``: its UTF-8 byte count."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def messages_upper_bound(messages: Sequence[Message]) -> int:
    """Return an upper bound on the input tokens of a chat request made of ``messages``."""
    total = REPLY_PRIMING
    for m in messages:
        total += PER_MESSAGE_OVERHEAD + text_upper_bound(m.content)
        if m.name:
            total += text_upper_bound(m.name) + 1
        for call in m.tool_calls:
            total += (
                PER_MESSAGE_OVERHEAD
                + text_upper_bound(call.name)
                + text_upper_bound(call.arguments)
            )
    return total
