"""Conservative token estimates for providers without a bundled tokenizer, and input margins.

Byte-level BPE and SentencePiece-with-byte-fallback tokenizers never produce more tokens than
the text has UTF-8 bytes, so the byte count is a true upper bound: a budget reserved with it is
never overspent, and the settle step corrects it with the provider's real count. Providers with
an exact tokenizer (the OpenAI plugin bundles one) count exactly instead.

A count can still be a little low: a service wraps each message in chat-format tokens the
count does not know, or a new model's tokenizer differs by a few percent. :class:`InputMargin`
is what a provider declares its count can be short by; the Proxy reserves input as the count
plus that margin (see :meth:`InputMargin.reserve`).

Content parts (images, documents, audio) have no text to count: :func:`part_upper_bound`
bounds each from what providers publish (see the constants below), and
:func:`messages_upper_bound` adds it. The formulas (:func:`tile_tokens`,
:func:`patch_tokens`) are OpenAI's, which providers reuse with their own numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from attrs import frozen

from llmproxy.types import Audio, Document, Image, Message, Part, Text

#: Tokens a chat format adds around each message (role markers), and once to prime the reply.
PER_MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3


def text_upper_bound(text: str) -> int:
    """Return an upper bound on the tokens of ``text``: its UTF-8 byte count."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


# -- content parts ---------------------------------------------------------------------------
# OpenAI, "Images and vision: calculating costs" (platform.openai.com/docs/guides/images-vision):
# tile models scale an image to fit 2048x2048, then its short side to 768, and bill a base plus a
# number per 512-px tile (detail "low": the base alone); patch models bill 32-px patches (at most
# 1536, the image scaled down to fit) times a per-model multiplier.

#: The largest base and per-tile numbers OpenAI publishes (gpt-4o-mini: 2833 and 5667).
TILE_BASE_MAX = 2833
TILE_TOKENS_MAX = 5667
#: The most 512-px tiles the tile formula makes (an image scaled to 768 x 2048: 2 x 4).
MAX_TILES = 8
#: The most 32-px patches the patch formula bills, and the largest multiplier (gpt-4.1-nano,
#: gpt-5-nano: 2.46).
MAX_PATCHES = 1536
PATCH_MULTIPLIER_MAX = 2.46
#: An image of unknown size: the most any published formula bills for one image (gpt-4o-mini
#: at high detail, 8 tiles: 2833 + 8 x 5667). Patch models bill at most 1536 x 2.46 = 3779,
#: Gemini 258 per 768-px tile, Anthropic about (width x height) / 750 for at most 1.15 MP.
IMAGE_UNKNOWN_TOKENS = TILE_BASE_MAX + MAX_TILES * TILE_TOKENS_MAX
#: A document page: its text (a dense page holds about 6,000 characters, some 1,500 tokens of
#: English; 4,000 leaves room for scripts of a token per character) plus an image of the page
#: (OpenAI and Gemini send both), bounded as an image of unknown size.
PAGE_TEXT_TOKENS = 4000
#: A document of unknown length: at most one page per this many bytes of PDF (a page object
#: with its content stream takes more), and never more pages than a provider takes (Gemini:
#: 1,000; OpenAI and Anthropic: 100).
PDF_BYTES_PER_PAGE = 512
MAX_PAGES = 1000
#: Audio: Gemini bills 32 tokens per second, OpenAI's audio models about 10.
AUDIO_TOKENS_PER_SECOND = 32
#: Audio of unknown length: at most one second per this many bytes (4 kbit/s, below the lowest
#: speech bit rates of MP3, AAC and Opus).
AUDIO_BYTES_PER_SECOND = 500

_EPSILON = 1e-9


def _ceil(value: float) -> int:
    """``ceil`` that forgives the last bits of float error (1024.0000000001 tiles is 1024)."""
    return math.ceil(value - _EPSILON)


def tile_tokens(
    width: int, height: int, base: int, per_tile: int, detail: str | None = "high"
) -> int:
    """OpenAI's tile formula: ``base + per_tile * tiles`` (detail ``low``: ``base``).

    The image is scaled to fit 2048 x 2048, then its short side to 768 (up or down: reading
    the guide both ways, the larger count), then to fit 2048 x 2048 again; ``tiles`` is the
    512-px squares covering it. ``auto`` (or None) counts as ``high``: the service may choose it.

    >>> tile_tokens(1024, 1024, 85, 170)
    765
    >>> tile_tokens(2048, 4096, 85, 170)
    1105
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"an image's size must be positive, got {width} x {height}")
    if detail == "low":
        return base
    w, h = float(width), float(height)
    for step in ("fit", "short", "fit"):
        scale = 768 / min(w, h) if step == "short" else min(1.0, 2048 / max(w, h))
        w, h = w * scale, h * scale
    tiles = max(1, _ceil(w / 512)) * max(1, _ceil(h / 512))
    return base + per_tile * tiles


def patch_tokens(width: int, height: int, multiplier: float) -> int:
    """OpenAI's patch formula: 32-px patches (scaled down to at most 1536) times ``multiplier``.

    >>> patch_tokens(1024, 1024, 1.0)
    1024
    >>> patch_tokens(1800, 2400, 1.0)
    1452
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"an image's size must be positive, got {width} x {height}")
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches > MAX_PATCHES:
        r = math.sqrt(32 * 32 * MAX_PATCHES / (width * height))
        fw, fh = width * r / 32, height * r / 32
        r *= min(math.floor(fw) / fw, math.floor(fh) / fh)
        w, h = int(width * r), int(height * r)
        if w > 0 and h > 0:
            patches = min(patches, math.ceil(w / 32) * math.ceil(h / 32))
        patches = min(patches, MAX_PATCHES)
    return _ceil(patches * multiplier)


def image_upper_bound(image: Image) -> int:
    """An upper bound on the input tokens of ``image`` for any model (see the constants).

    Of known size: the larger of the tile formula with the largest published numbers and the
    patch formula with the largest multiplier; of unknown size: :data:`IMAGE_UNKNOWN_TOKENS`.
    ``detail`` is ignored: not every model honours ``low``.
    """
    if image.width is None or image.height is None or image.width <= 0 or image.height <= 0:
        return IMAGE_UNKNOWN_TOKENS
    return max(
        tile_tokens(image.width, image.height, TILE_BASE_MAX, TILE_TOKENS_MAX),
        patch_tokens(image.width, image.height, PATCH_MULTIPLIER_MAX),
    )


def document_pages(document: Document, max_pages: int = MAX_PAGES) -> int:
    """The pages to count for ``document``: its own count, else a bound from its bytes.

    A file id (bytes unknown) counts ``max_pages``; so does a count above it.
    """
    if document.pages is not None and document.pages > 0:
        return min(document.pages, max_pages)
    if document.data is None:
        return max_pages
    return min(max(1, math.ceil(len(document.data) / PDF_BYTES_PER_PAGE)), max_pages)


def document_upper_bound(
    document: Document, page_image: int = IMAGE_UNKNOWN_TOKENS, max_pages: int = MAX_PAGES
) -> int:
    """An upper bound on ``document``'s tokens: per page, its text and an image of it."""
    return document_pages(document, max_pages) * (PAGE_TEXT_TOKENS + page_image)


def audio_upper_bound(audio: Audio, per_second: int = AUDIO_TOKENS_PER_SECOND) -> int:
    """An upper bound on ``audio``'s tokens: ``per_second`` for each second (begun).

    Unknown length: a second per :data:`AUDIO_BYTES_PER_SECOND` bytes.
    """
    seconds = audio.seconds
    if seconds is None or seconds < 0:
        seconds = len(audio.data) / AUDIO_BYTES_PER_SECOND
    return max(1, math.ceil(seconds)) * per_second


def part_upper_bound(part: Part) -> int:
    """An upper bound on the tokens of one non-text part (a Text part: its bytes)."""
    if isinstance(part, Image):
        return image_upper_bound(part)
    if isinstance(part, Document):
        return document_upper_bound(part)
    if isinstance(part, Audio):
        return audio_upper_bound(part)
    if isinstance(part, Text):
        return text_upper_bound(part.text)
    raise TypeError(f"not a content part: {type(part).__name__}")


def messages_upper_bound(messages: Sequence[Message]) -> int:
    """Return an upper bound on the input tokens of a chat request made of ``messages``.

    Text counts its UTF-8 bytes; images, documents and audio :func:`part_upper_bound` each,
    plus :data:`PER_MESSAGE_OVERHEAD` for each part (the markers around it).
    """
    total = REPLY_PRIMING
    for m in messages:
        total += PER_MESSAGE_OVERHEAD + text_upper_bound(m.content)
        for part in m.parts:
            if not isinstance(part, Text):
                total += PER_MESSAGE_OVERHEAD + part_upper_bound(part)
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
