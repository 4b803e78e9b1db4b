"""What the fakes bill for image, file and audio parts (their ``usage``), deterministically.

Rule (the same in Chat Completions and Responses bodies):

* An image (``image_url`` / ``input_image``): OpenAI's tile formula with gpt-4o's numbers,
  ``85 + 170 * tiles`` (:func:`llmproxy.tokens.tile_tokens`), the size read from a ``data:``
  URL's bytes; ``detail: "low"``: 85; a size the fake cannot read (an ``https:`` URL):
  ``85 + 8 * 170 = 1445``, the formula's largest.
* A file (``file`` / ``input_file``): 1 token per 4 bytes of its decoded ``file_data``
  (rounded up); a ``file_id``: 1000.
* Audio (``input_audio``): 10 tokens per second of a WAV recording (rounded up); other
  formats 1 token per 100 bytes (rounded up).
* Text parts count as text (the fakes' word rule); anything else counts 0.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from typing import Any

from llmproxy import media
from llmproxy.tokens import MAX_TILES, tile_tokens

__all__ = ["IMAGE_BASE", "IMAGE_TILE", "media_tokens"]

IMAGE_BASE = 85
IMAGE_TILE = 170
FILE_ID_TOKENS = 1000
AUDIO_PER_SECOND = 10


def _decode(data: object) -> bytes:
    """The bytes of base64 text or of a ``data:...;base64,`` URL (empty when it is neither)."""
    if not isinstance(data, str):
        return b""
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        return base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return b""


def _image(url: object, detail: object) -> int:
    if detail == "low":
        return IMAGE_BASE
    size = media.image_size(_decode(url)[:65536]) if isinstance(url, str) else None
    if size is None or size[0] <= 0 or size[1] <= 0:
        return IMAGE_BASE + MAX_TILES * IMAGE_TILE
    return tile_tokens(size[0], size[1], IMAGE_BASE, IMAGE_TILE, "high")


def _file(file: Mapping[str, Any]) -> int:
    if file.get("file_id"):
        return FILE_ID_TOKENS
    return math.ceil(len(_decode(file.get("file_data"))) / 4)


def _audio(audio: object) -> int:
    if not isinstance(audio, Mapping):
        return 0
    data = _decode(audio.get("data"))
    seconds = media.wav_seconds(data) if audio.get("format") == "wav" else None
    if seconds is not None:
        return math.ceil(seconds * AUDIO_PER_SECOND)
    return math.ceil(len(data) / 100)


def media_tokens(part: object) -> int:
    """What the fakes bill for one content part that is not text (see the module's rule)."""
    if not isinstance(part, Mapping):
        return 0
    kind = part.get("type")
    if kind == "image_url":
        image = part.get("image_url")
        if isinstance(image, Mapping):
            return _image(image.get("url"), image.get("detail"))
        return 0
    if kind == "input_image":
        return _image(part.get("image_url"), part.get("detail"))
    if kind == "file":
        file = part.get("file")
        return _file(file) if isinstance(file, Mapping) else 0
    if kind == "input_file":
        return _file(part)
    if kind == "input_audio":
        return _audio(part.get("input_audio"))
    return 0


def content_media_tokens(content: object) -> int:
    """The media tokens of a message's ``content`` (0 for a string)."""
    if not isinstance(content, list):
        return 0
    return sum(media_tokens(p) for p in content)
