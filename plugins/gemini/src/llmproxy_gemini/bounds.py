"""Upper bounds on the input tokens Gemini bills for images, documents and audio.

From Google's pages (https://ai.google.dev/gemini-api/docs/tokens, .../docs/document-processing,
.../docs/audio and .../docs/media-resolution):

* an image with both sides at most 384 pixels is 258 tokens; a larger one is cropped and scaled
  into tiles of 768x768 pixels, 258 tokens each (:func:`image_tokens`);
* a document (PDF) page is 258 tokens (:data:`PAGE_TOKENS`);
* audio is 32 tokens per second (:data:`AUDIO_TOKENS_PER_SECOND`), at every media resolution;
* Gemini 3 models count an image or a PDF page by ``media_resolution``: up to 1120 tokens at
  ``MEDIA_RESOLUTION_HIGH``, the highest a request can set for all its media (images default to
  it; PDF pages to ``MEDIUM``, 560) (:data:`MEDIA_RESOLUTION_HIGH_TOKENS`).

A bound takes the largest of these, so it holds whichever model and setting bills the part. The
tile count is also taken by a crop unit of two thirds of the shorter side (clamped to 256..768
pixels), which never gives fewer tiles than the 768 grid for the images that matter, since
Google's pages do not spell out how the crops are placed. Video is not a part type.

Where a size is not known the bound is conservative (each an assumption, stated here):

* an image of unknown size (a URL, or bytes whose header was not read): Gemini scales images
  down to fit 3072x3072, so the most any image that size is bounded by
  (:data:`UNKNOWN_IMAGE_TOKENS`, 24 tiles);
* a document of unknown page count (a ``file_id``; a PDF whose pages hide in compressed object
  streams): one page per KiB of the bytes, at most :data:`MAX_PAGES` (Gemini's limit per
  document), and :data:`MAX_PAGES` for a ``file_id`` (give ``pages=`` to reserve less);
* audio of unknown length (not WAV): one second per 500 bytes (4 kbit/s, below any bitrate
  Gemini's audio formats are recorded at), at most :data:`MAX_AUDIO_SECONDS` (9.5 hours, Gemini's
  limit per prompt).
"""

from __future__ import annotations

import math
import re

from llmproxy.types import Audio, Document, Image, Part, Text

#: Tokens of an image with both sides at most :data:`SMALL_IMAGE_SIDE`, and of each tile.
IMAGE_TOKENS = 258
#: The largest side (pixels) of an image counted as one image of :data:`IMAGE_TOKENS`.
SMALL_IMAGE_SIDE = 384
#: The side (pixels) of the tiles a larger image is cut into.
TILE_SIDE = 768
#: Tokens of an image or a PDF page at ``MEDIA_RESOLUTION_HIGH`` on Gemini 3 models.
MEDIA_RESOLUTION_HIGH_TOKENS = 1120
#: Tokens of a PDF page (Gemini's document processing).
PAGE_TOKENS = 258
#: Tokens of a second of audio.
AUDIO_TOKENS_PER_SECOND = 32
#: The largest side Gemini scales an image down to (pixels).
MAX_IMAGE_SIDE = 3072
#: The most pages Gemini reads of one document.
MAX_PAGES = 1000
#: The longest audio one prompt may carry (seconds): 9.5 hours.
MAX_AUDIO_SECONDS = 34_200
#: Bytes per second assumed for audio of unknown length (4 kbit/s).
MIN_AUDIO_BYTES_PER_SECOND = 500
#: Bytes per page assumed for a PDF whose pages could not be counted.
MIN_PAGE_BYTES = 1024

_COUNT = re.compile(rb"/Type\s*/Pages\b[^>]*?/Count\s+(\d+)|/Count\s+(\d+)[^>]*?/Type\s*/Pages\b")


def image_tokens(width: int, height: int) -> int:
    """Google's documented count for an image: 258, or 258 per 768x768 tile.

    >>> image_tokens(384, 384), image_tokens(1000, 500)
    (258, 516)
    """
    if width <= SMALL_IMAGE_SIDE and height <= SMALL_IMAGE_SIDE:
        return IMAGE_TOKENS
    return IMAGE_TOKENS * math.ceil(width / TILE_SIDE) * math.ceil(height / TILE_SIDE)


def crop_unit_tokens(width: int, height: int) -> int:
    """Tiles by a crop unit of two thirds of the shorter side (256..768 pixels), 258 each.

    >>> crop_unit_tokens(1000, 1000)
    1032
    """
    if width <= SMALL_IMAGE_SIDE and height <= SMALL_IMAGE_SIDE:
        return IMAGE_TOKENS
    unit = min(max(math.floor(min(width, height) / 1.5), 256), TILE_SIDE)
    return IMAGE_TOKENS * math.ceil(width / unit) * math.ceil(height / unit)


#: The bound of an image whose size is not known: the most any image within 3072x3072 is
#: bounded by (a long thin one: 24 tiles).
UNKNOWN_IMAGE_TOKENS = max(
    max(crop_unit_tokens(side, MAX_IMAGE_SIDE) for side in range(1, MAX_IMAGE_SIDE + 1)),
    MEDIA_RESOLUTION_HIGH_TOKENS,
)


def image_bound(width: int | None, height: int | None) -> int:
    """An upper bound on an image's tokens (see the module's note).

    >>> image_bound(100, 100), image_bound(None, None)
    (1120, 6192)
    """
    if not width or not height or width < 0 or height < 0:
        return UNKNOWN_IMAGE_TOKENS
    return max(
        image_tokens(width, height), crop_unit_tokens(width, height), MEDIA_RESOLUTION_HIGH_TOKENS
    )


def page_bound(pages: int) -> int:
    """An upper bound on the tokens of ``pages`` PDF pages.

    >>> page_bound(2)
    2240
    """
    return max(pages, 0) * max(PAGE_TOKENS, MEDIA_RESOLUTION_HIGH_TOKENS)


def document_pages(document: Document) -> int:
    """The pages a document is bounded by: counted, declared in its page tree, or assumed.

    Page objects inside compressed object streams are not seen by the count, so a PDF that has
    object streams is also bounded by its size (one page per :data:`MIN_PAGE_BYTES`).
    """
    if document.data is None:
        return document.pages if document.pages else MAX_PAGES
    data = bytes(document.data)
    pages = document.pages or 0
    for match in _COUNT.finditer(data):
        pages = max(pages, int(match.group(1) or match.group(2)))
    if not pages or b"/ObjStm" in data:
        pages = max(pages, min(MAX_PAGES, math.ceil(len(data) / MIN_PAGE_BYTES)))
    return max(pages, 1)


def audio_bound(audio: Audio) -> int:
    """An upper bound on audio's tokens: 32 per started second.

    >>> audio_bound(Audio(data=b"ID3" + bytes(997), format="mp3", seconds=2.5))
    96
    """
    seconds = audio.seconds
    if seconds is None or seconds < 0:
        seconds = min(MAX_AUDIO_SECONDS, len(audio.data) / MIN_AUDIO_BYTES_PER_SECOND)
    return AUDIO_TOKENS_PER_SECOND * max(math.ceil(seconds), 1)


def part_bound(part: Part) -> int:
    """An upper bound on the tokens Gemini bills for one non-text part (0 for text).

    Text is counted with the message's text by the core's byte bound.
    """
    if isinstance(part, Text):
        return 0
    if isinstance(part, Image):
        return image_bound(part.width, part.height)
    if isinstance(part, Document):
        return page_bound(document_pages(part))
    if isinstance(part, Audio):
        return audio_bound(part)
    raise TypeError(f"not a content part: {type(part).__name__}")
