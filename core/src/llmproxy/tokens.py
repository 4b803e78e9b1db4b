"""Conservative token estimates for providers without a bundled tokenizer, and input margins.

Byte-level BPE and SentencePiece-with-byte-fallback tokenizers never produce more tokens than
the text has UTF-8 bytes, so the byte count is a true upper bound: a budget reserved with it is
never overspent, and the settle step corrects it with the provider's real count. Providers with
an exact tokenizer (the OpenAI plugin bundles one) count exactly instead.

A count can still be a little low: a service wraps each message in chat-format tokens the
count does not know, or a new model's tokenizer differs by a few percent. :class:`InputMargin`
is what a provider declares its count can be short by; the Proxy reserves input as the count
plus that margin (see :meth:`InputMargin.reserve`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from attrs import frozen

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


@frozen
class InputMargin:
    """How far a provider's input count can fall short of what the service bills.

    ``per_message`` tokens for every message and every tool definition (the chat format's
    markers around each), ``overall`` tokens once per request (reply priming), ``tools`` tokens
    once when the request offers tools (the header or instructions a service wraps tool
    definitions in), and ``ratio``, the fraction of the count a tokenizer difference can add
    (0.05: 5%). A provider declares its margin with an ``input_margin(model)`` method; one that
    declares none gets :data:`DEFAULT_INPUT_MARGIN`.

    >>> InputMargin(per_message=1, overall=8, tools=16, ratio=0.05).reserve(1000, messages=2)
    1060
    """

    per_message: int = 4
    overall: int = 16
    tools: int = 32
    ratio: float = 0.05

    def __attrs_post_init__(self) -> None:
        for name in ("per_message", "overall", "tools"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"InputMargin.{name} must be a whole number >= 0, got {value!r}")
        ratio = self.ratio
        if (
            isinstance(ratio, bool)
            or not isinstance(ratio, (int, float))
            or not math.isfinite(ratio)
            or ratio < 0
        ):
            raise ValueError(f"InputMargin.ratio must be a finite number >= 0, got {ratio!r}")

    def absolute(self, messages: int, tools: int = 0) -> int:
        """The fixed part of the margin for ``messages`` messages and ``tools`` tool definitions."""
        header = self.tools if tools else 0
        return self.per_message * (messages + tools) + self.overall + header

    def reserve(self, count: int, messages: int, tools: int = 0, learned: float = 1.0) -> int:
        """The input tokens to reserve for a request the provider counted as ``count``.

        ``messages`` and ``tools`` are how many messages and tool definitions it has;
        ``learned`` the ratio of billed to counted input observed for the model (see
        :mod:`llmproxy.budget.calibration`): the count is scaled by the larger of it and
        ``1 + ratio``, rounded up, and the fixed part added.
        """
        scale = max(1.0 + self.ratio, learned)
        return math.ceil(count * scale) + self.absolute(messages, tools)


DEFAULT_INPUT_MARGIN = InputMargin()
"""The margin of a provider that declares none: 4 tokens per message and tool definition, 16
per request, 32 more when tools are offered, and 5% of the count. Chat formats add 3 to 5
tokens per message and a few to prime the reply, tool definitions come with a header, and a
count from a different tokenizer is off by a few percent; a provider that knows its service
declares a tighter margin."""
