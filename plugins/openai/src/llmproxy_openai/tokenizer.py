"""Exact, offline token counts for OpenAI models.

The tokenizer tables ship inside the ``bpe-openai`` wheel, so nothing is downloaded at run time
(tiktoken would fetch its files on first use). Models with an unknown tokenizer fall back to the
core's byte-count upper bound. Chat formatting adds a few tokens per message, counted as OpenAI
documents it.

Content parts are counted by what OpenAI publishes ("Images and vision: calculating costs",
platform.openai.com/docs/guides/images-vision): an image by its model family's formula
(:data:`TILE_MODELS`, :data:`PATCH_MODELS`; see :func:`image_tokens`), the worst case of the
family when its size is unknown and of every family for a model not listed; a PDF per page, its
text and an image of the page ("File inputs": OpenAI extracts both), at most 100 pages; audio
per second (:data:`llmproxy.tokens.AUDIO_TOKENS_PER_SECOND`).
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final

from llmproxy.tokens import (
    IMAGE_UNKNOWN_TOKENS,
    MAX_PATCHES,
    MAX_TILES,
    InputMargin,
    audio_upper_bound,
    document_upper_bound,
    messages_upper_bound,
    patch_tokens,
    text_upper_bound,
    tile_tokens,
)
from llmproxy.types import Audio, Document, Image, Message, Part, Text
from llmproxy_openai.models import encoding_name

_encodings: dict[str, Any] = {}
_lock = threading.Lock()

PER_MESSAGE = 3
PER_NAME = 1
REPLY_PRIMING = 3

EXACT_MARGIN: Final = InputMargin(per_message=1, overall=4, tools=24, ratio=0.02)
"""What OpenAI can bill beyond an exact count (a model whose tokenizer is known).

One token per message and tool definition: older chat formats used 4 tokens per message where
the count adds 3. Four per request: the reply priming has varied between models. 24 when tools
are offered: OpenAI renders function definitions in a namespace of its own (about 15 tokens of
header and footer around them), which the count of their JSON does not see; the JSON itself
counts more tokens than the rendering. 2% of the count: a model mapped to the wrong tokenizer
(a new family whose name matches an old prefix) counts within a few percent of the right one."""

BOUND_MARGIN: Final = InputMargin(per_message=1, overall=4, tools=24, ratio=0.0)
"""What an OpenAI-compatible service can bill beyond the byte bound (a model whose tokenizer
is unknown). The bound already counts every UTF-8 byte as a token, which no byte-level
tokenizer exceeds, and 4 tokens per message plus 3 per request; chat templates of
OpenAI-compatible servers add up to 5 per message (Llama 3's header and end markers) and a few
per request (a begin-of-text token, the reply's header), and tool definitions come with a
header."""


def _encoding(name: str) -> Any:
    enc = _encodings.get(name)
    if enc is None:
        with _lock:
            enc = _encodings.get(name)
            if enc is None:
                import bpe_openai  # type: ignore[import-untyped]

                enc = _encodings[name] = bpe_openai.get_encoding(name)
    return enc


PIECE = 40_000
"""Characters counted per tokenizer call. ``bpe-openai`` refuses a text of 1,000,000 characters
or one of more than 200,000 tokens, and a character is at most 4 tokens (one per UTF-8 byte),
so a longer text is counted in pieces of this size."""


def _count(encoding: Any, text: str) -> int:
    """The tokens of ``text`` as plain text, in pieces when it is long.

    ``<|endoftext|>`` and the other special tokens' names are text here, as OpenAI counts what
    users send.
    """
    if len(text) <= PIECE:
        return len(encoding.encode_ordinary(text))
    total = start = 0
    while start < len(text):
        end = start + PIECE
        if end < len(text):
            # Cut before a space, where a word and its leading space begin a token anyway; in
            # a run of spaces or without one, a cut may split a token in two: one token over.
            cut = text.rfind(" ", start + PIECE // 2, end)
            if cut > start:
                end = cut
        total += len(encoding.encode_ordinary(text[start:end]))
        start = end
    return total


CACHE_MIN_CHARS: Final = 4
"""Texts at least this long have their counts remembered. Even a short text costs the
tokenizer 3-7 us (its fixed cost per call dominates below a few hundred characters), against
under 1 us for a remembered count; a session of 1,000 short messages counted afresh on every
turn cost about 4.5 ms a call (issue 21's profile). Shorter texts ("hi", "ok") are left out:
one entry each would hardly be used."""

CACHE_MAX_CHARS = 8_000_000
"""The most characters of text whose counts are remembered at once, per process (8-32 MiB)."""

CACHE_MAX_TEXTS = 65_536
"""The most texts whose counts are remembered at once, per process: with
:data:`CACHE_MAX_CHARS`, this bounds the cache to about 10 MiB of entries besides the texts
(enough for 65 live sessions of 1,000 messages each)."""


class _Counts:
    """Token counts of recent long texts, least recently used dropped first.

    A chat sends its whole conversation with every turn, so without this each turn would count
    the earlier messages again: about 20 us per 1,000 characters, on the caller's thread (the
    gateway's event loop). A remembered count costs a dict lookup: the text's hash and, when it
    is found, one comparison of the two texts. Keys are the texts themselves, so a count is
    never another text's; the texts kept are bounded by :data:`CACHE_MAX_CHARS` in all and
    :data:`CACHE_MAX_TEXTS` in number.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: OrderedDict[tuple[str, str], int] = OrderedDict()
        self.chars = 0

    def count(self, name: str, text: str) -> int:
        """The tokens of ``text`` in encoding ``name``, remembered when the text is long."""
        if len(text) < CACHE_MIN_CHARS:
            return _count(_encoding(name), text)
        key = (name, text)
        with self._lock:
            found = self._counts.get(key)
            if found is not None:
                self._counts.move_to_end(key)
                return found
        counted = _count(_encoding(name), text)
        if len(text) > CACHE_MAX_CHARS:
            return counted
        with self._lock:
            if key not in self._counts:
                self._counts[key] = counted
                self.chars += len(text)
                while self.chars > CACHE_MAX_CHARS or len(self._counts) > CACHE_MAX_TEXTS:
                    (_name, dropped), _ = self._counts.popitem(last=False)
                    self.chars -= len(dropped)
        return counted

    def total(self, name: str, texts: Sequence[str]) -> int:
        """The tokens of all ``texts`` in encoding ``name``: :meth:`count` summed.

        Remembered counts are looked up under one hold of the lock for the whole list (a long
        session's turn finds nearly all of them); the others are counted as :meth:`count` does.
        """
        result = 0
        missing: list[str] = []
        with self._lock:
            counts = self._counts
            get, move = counts.get, counts.move_to_end
            for text in texts:
                if len(text) >= CACHE_MIN_CHARS:
                    key = (name, text)
                    found = get(key)
                    if found is not None:
                        move(key)
                        result += found
                        continue
                missing.append(text)
        for text in missing:
            result += self.count(name, text)
        return result

    def __len__(self) -> int:
        return len(self._counts)

    def clear(self) -> None:
        """Forget every count."""
        with self._lock:
            self._counts.clear()
            self.chars = 0

    def after_fork(self) -> None:
        """Give a forked child a lock of its own (another thread may have held the parent's)."""
        self._lock = threading.Lock()


counts: Final = _Counts()
"""The process's remembered counts (see :class:`_Counts`)."""

os.register_at_fork(after_in_child=counts.after_fork)


def count_text(text: str, model: str) -> int:
    """Count the tokens of ``text`` for ``model``."""
    name = encoding_name(model)
    if name is None:
        return text_upper_bound(text)
    if not text:
        return 0
    return counts.count(name, text)


def input_margin(model: str) -> InputMargin:
    """The input margin for ``model``: :data:`EXACT_MARGIN` or :data:`BOUND_MARGIN`."""
    return BOUND_MARGIN if encoding_name(model) is None else EXACT_MARGIN


#: Tile models: (base, per 512-px tile), as OpenAI publishes them. A model matches a family
#: when its name is the family's or starts with it and a dash (``gpt-4o-2024-08-06``); the
#: longest family wins.
TILE_MODELS: Final[dict[str, tuple[int, int]]] = {
    "gpt-5": (70, 140),
    "gpt-5-chat-latest": (70, 140),
    "gpt-4o": (85, 170),
    "gpt-4.1": (85, 170),
    "gpt-4.5": (85, 170),
    "gpt-4o-mini": (2833, 5667),
    "o1": (75, 150),
    "o1-pro": (75, 150),
    "o3": (75, 150),
    "computer-use-preview": (65, 129),
}
#: Patch models: the multiplier of their 32-px patches.
PATCH_MODELS: Final[dict[str, float]] = {
    "gpt-5-mini": 1.62,
    "gpt-5-nano": 2.46,
    "gpt-4.1-mini": 1.62,
    "gpt-4.1-nano": 2.46,
    "o4-mini": 1.72,
}
_FAMILIES: Final = sorted((*TILE_MODELS, *PATCH_MODELS), key=len, reverse=True)
#: Pages OpenAI takes from the files of one request.
MAX_PAGES: Final = 100
#: Tokens around each part of a message with parts (its type marker).
PER_PART: Final = 1


def image_family(model: str) -> str | None:
    """The published family ``model`` belongs to (see :data:`TILE_MODELS`), or None.

    >>> image_family("gpt-4o-mini-2024-07-18"), image_family("gpt-5.4-mini")
    ('gpt-4o-mini', None)
    """
    name = model.rsplit("/", 1)[-1]
    for family in _FAMILIES:
        if name == family or name.startswith(family + "-"):
            return family
    return None


def image_worst(model: str) -> int:
    """The most an image of any size costs on ``model`` (every family's worst when unlisted)."""
    family = image_family(model)
    if family in TILE_MODELS:
        base, per_tile = TILE_MODELS[family]
        return base + MAX_TILES * per_tile
    if family in PATCH_MODELS:
        return math.ceil(MAX_PATCHES * PATCH_MODELS[family])
    return IMAGE_UNKNOWN_TOKENS


def image_tokens(
    model: str, width: int | None, height: int | None, detail: str | None = None
) -> int:
    """What OpenAI bills for an image on ``model``, or a bound when that is not known.

    Tile families: :func:`~llmproxy.tokens.tile_tokens` with the family's numbers (``low``
    detail: the base); patch families: :func:`~llmproxy.tokens.patch_tokens` with its
    multiplier. Unknown size: the family's worst (:func:`image_worst`; ``low`` on a tile
    family: its base). A model in no published family: the largest of every family's count.

    >>> image_tokens("gpt-4o", 1024, 1024, "high"), image_tokens("gpt-4.1-mini", 1024, 1024)
    (765, 1659)
    """
    family = image_family(model)
    if width is None or height is None or width <= 0 or height <= 0:
        if family in TILE_MODELS and detail == "low":
            return TILE_MODELS[family][0]
        return IMAGE_UNKNOWN_TOKENS if family is None else image_worst(family)
    if family is None:
        return max(image_tokens(f, width, height) for f in _FAMILIES)
    if family in PATCH_MODELS:
        return patch_tokens(width, height, PATCH_MODELS[family])
    base, per_tile = TILE_MODELS[family]
    return tile_tokens(width, height, base, per_tile, detail)


def part_tokens(part: Part, model: str) -> int:
    """An upper bound on what OpenAI bills for a non-text part on ``model``."""
    if isinstance(part, Image):
        return image_tokens(model, part.width, part.height, part.detail)
    if isinstance(part, Document):
        return document_upper_bound(part, image_worst(model), MAX_PAGES)
    if isinstance(part, Audio):
        return audio_upper_bound(part)
    raise TypeError(f"not a non-text part: {type(part).__name__}")


def count_messages(messages: Sequence[Message], model: str) -> int:
    """Count the input tokens of a chat request made of ``messages``.

    A message with parts counts each text part and :data:`PER_PART` for each part, and an
    upper bound for each image, document and audio part (:func:`part_tokens`).
    """
    name = encoding_name(model)
    if name is None:
        return messages_upper_bound(messages)
    count = counts.count
    total = REPLY_PRIMING
    plain: list[str] = []  # contents counted together (one lock for the lot)
    for m in messages:
        total += PER_MESSAGE
        if m.parts:
            for part in m.parts:
                total += PER_PART
                if isinstance(part, Text):
                    total += count(name, part.text) if part.text else 0
                else:
                    total += part_tokens(part, model)
        elif m.content:
            plain.append(m.content)
        if m.name:
            total += PER_NAME + count(name, m.name)
        for call in m.tool_calls:
            total += PER_MESSAGE + count(name, call.name) + count(name, call.arguments)
    return total + counts.total(name, plain)
