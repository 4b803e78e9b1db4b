"""What a file is, from its bytes: media type, image size, PDF pages, audio length.

Content parts (:mod:`llmproxy.types`) need these facts twice: to tell the provider what it is
sent (a media type taken from the content, not trusted from a file name) and to bound its
input tokens before the call (an image's size, a document's pages, a recording's seconds).
Everything here reads headers only and never decodes a whole file.
"""

from __future__ import annotations

import re
import struct

IMAGE_TYPES = frozenset(("image/png", "image/jpeg", "image/gif", "image/webp"))
"""Image media types every provider here takes."""

AUDIO_FORMATS = frozenset(("wav", "mp3", "flac", "ogg", "aac", "m4a", "webm"))
"""Audio formats an ``Audio`` part may name (OpenAI takes wav and mp3; Gemini all of them)."""

_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"%PDF-", 0, "application/pdf"),
    (b"ID3", 0, "audio/mpeg"),
    (b"fLaC", 0, "audio/flac"),
    (b"OggS", 0, "audio/ogg"),
)

_AUDIO_TYPE = {
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/flac": "flac",
    "audio/ogg": "ogg",
    "audio/aac": "aac",
    "audio/mp4": "m4a",
    "audio/webm": "webm",
}


def sniff(data: bytes) -> str | None:
    """The media type ``data`` starts like, or None when it is none this module knows.

    >>> sniff(b"%PDF-1.7 ...")
    'application/pdf'
    """
    for signature, offset, media_type in _SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "audio/wav"
    if len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0:
        return "audio/mpeg"  # an MPEG audio frame without an ID3 tag
    return None


def audio_format(media_type: str) -> str | None:
    """The short audio format name (``wav``, ``mp3``...) of an audio media type."""
    return _AUDIO_TYPE.get(media_type)


def image_size(data: bytes) -> tuple[int, int] | None:
    """An image's (width, height) from its header (PNG, JPEG, GIF, WebP), or None."""
    kind = sniff(data)
    if kind == "image/png" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if kind == "image/gif" and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return int(width), int(height)
    if kind == "image/webp":
        return _webp_size(data)
    if kind == "image/jpeg":
        return _jpeg_size(data)
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return width, height
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return int(width) & 0x3FFF, int(height) & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


_JPEG_FRAMES = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE))


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    index = 2
    end = len(data)
    for _ in range(10_000):  # bounded: a marker walk, never the whole image's data
        if index + 4 > end or data[index] != 0xFF:
            return None
        marker = data[index + 1]
        if marker == 0xFF:
            index += 1
            continue
        length = int.from_bytes(data[index + 2 : index + 4], "big")
        if marker in _JPEG_FRAMES and index + 9 <= end:
            height = int.from_bytes(data[index + 5 : index + 7], "big")
            width = int.from_bytes(data[index + 7 : index + 9], "big")
            return width, height
        index += 2 + length
    return None


_PAGE = re.compile(rb"/Type\s*/Page(?![s\w])")


def pdf_pages(data: bytes) -> int | None:
    """How many pages a PDF has, counted from its page objects (None when it is no PDF).

    Compressed object streams can hide page objects; the count is then too low, so callers
    that need a bound must not trust a small count alone (see ``Document.page_bound``).
    """
    if not data.startswith(b"%PDF-"):
        return None
    return len(_PAGE.findall(data))


def wav_seconds(data: bytes) -> float | None:
    """A WAV recording's length in seconds from its header, or None."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    index = 12
    rate = channels = bits = None
    for _ in range(1000):
        if index + 8 > len(data):
            return None
        chunk, size = data[index : index + 4], int.from_bytes(data[index + 4 : index + 8], "little")
        if chunk == b"fmt " and index + 24 <= len(data):
            channels = int.from_bytes(data[index + 10 : index + 12], "little")
            rate = int.from_bytes(data[index + 12 : index + 16], "little")
            bits = int.from_bytes(data[index + 22 : index + 24], "little")
        elif chunk == b"data":
            if not rate or not channels or not bits:
                return None
            return size / (rate * channels * bits / 8)
        index += 8 + size + (size & 1)
    return None


__all__ = [
    "AUDIO_FORMATS",
    "IMAGE_TYPES",
    "audio_format",
    "image_size",
    "pdf_pages",
    "sniff",
    "wav_seconds",
]
