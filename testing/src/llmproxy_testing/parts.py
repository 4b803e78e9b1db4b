"""Valid media bytes and content parts for tests: tiny PNG, JPEG, WAV and PDF files.

Parts validate their bytes (an image must be PNG, JPEG, GIF or WebP, a document a PDF), so
random bytes make no part; these builders and the hypothesis strategy :data:`PARTS` do.
"""

from __future__ import annotations

import struct
import zlib

from hypothesis import strategies as st

from llmproxy.types import Audio, Document, Image, Part, Text

__all__ = ["PARTS", "PDF", "STATES", "jpeg", "pdf", "png", "wav"]


def png(width: int, height: int, salt: bytes = b"") -> bytes:
    """A real PNG of the given size (tiny data); ``salt`` goes in a text chunk to vary bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\x00" * min(width, 16) for _ in range(min(height, 4)))
    extra = chunk(b"tEXt", b"salt\x00" + salt) if salt else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + extra
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def jpeg(width: int, height: int, salt: bytes = b"") -> bytes:
    """A JPEG header with an APP0 segment and a baseline frame of the given size."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    comment = b"\xff\xfe" + struct.pack(">H", 2 + len(salt)) + salt if salt else b""
    return b"\xff\xd8" + app0 + comment + sof + b"\xff\xd9"


def wav(seconds: float, rate: int = 8000) -> bytes:
    """A mono 16-bit PCM WAV of silence lasting ``seconds``."""
    frames = int(seconds * rate)
    data = b"\x00\x00" * frames
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(data))
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )


def pdf(pages: int = 2, salt: bytes = b"") -> bytes:
    """A minimal PDF with ``pages`` pages (``salt`` in a comment to vary the bytes)."""
    kids = " ".join(f"{3 + i} 0 R" for i in range(pages))
    objects = [
        b"1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n",
        f"2 0 obj << /Type /Pages /Kids [{kids}] /Count {pages} >> endobj\n".encode(),
        *(f"{3 + i} 0 obj << /Type /Page /Parent 2 0 R >> endobj\n".encode() for i in range(pages)),
    ]
    return (
        b"%PDF-1.4\n"
        + (b"%" + salt.hex().encode() + b"\n" if salt else b"")
        + b"".join(objects)
        + b"%%EOF\n"
    )


PDF = pdf(2)
"""A two-page PDF."""

_SIZES = st.integers(min_value=1, max_value=4096)
_SALT = st.binary(max_size=8)
_DETAIL = st.sampled_from([None, "auto", "low", "high"])
_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
"""Text without NUL, which some databases cannot store."""

_IMAGES = st.one_of(
    st.builds(
        lambda w, h, salt, detail: Image(data=png(w, h, salt), detail=detail),
        _SIZES,
        _SIZES,
        _SALT,
        _DETAIL,
    ),
    st.builds(
        lambda w, h, salt, detail: Image(data=jpeg(w, h, salt), detail=detail),
        _SIZES,
        _SIZES,
        _SALT,
        _DETAIL,
    ),
    st.builds(
        lambda path, detail: Image(url=f"https://example.com/{path}.png", detail=detail),
        st.text(alphabet="abcdefghij0123456789", min_size=1, max_size=12),
        _DETAIL,
    ),
)
_DOCUMENTS = st.one_of(
    st.builds(
        lambda pages, salt, name: Document(data=pdf(pages, salt), filename=name),
        st.integers(min_value=1, max_value=5),
        _SALT,
        st.none() | _TEXT,
    ),
    st.builds(
        lambda file_id, name: Document(file_id=f"file-{file_id}", filename=name),
        st.text(alphabet="abcdef0123456789", min_size=1, max_size=12),
        st.none() | _TEXT,
    ),
)
_AUDIO = st.one_of(
    st.builds(lambda frames: Audio(wav(frames / 8000)), st.integers(min_value=1, max_value=800)),
    st.builds(
        lambda raw, seconds: Audio(b"ID3" + raw, "mp3", seconds),
        st.binary(min_size=1, max_size=32),
        st.none() | st.floats(min_value=0.0, max_value=3600.0, allow_nan=False),
    ),
)

PARTS: st.SearchStrategy[tuple[Part, ...]] = st.lists(
    st.one_of(st.builds(Text, _TEXT), _IMAGES, _DOCUMENTS, _AUDIO), min_size=1, max_size=5
).map(tuple)
"""Non-empty tuples of valid parts of every kind (images by bytes and URL, documents by bytes
and file id, WAV and MP3 audio), with every optional field drawn."""

_JSON_LEAF = st.none() | st.booleans() | st.integers() | _TEXT
_JSON = st.recursive(
    _JSON_LEAF | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)
STATES: st.SearchStrategy[dict[str, object]] = st.dictionaries(
    st.sampled_from(["gemini", "anthropic", "deepseek", "openai"]), _JSON, max_size=3
)
"""Provider state as ``Message.state`` holds it: JSON values keyed by provider name."""
