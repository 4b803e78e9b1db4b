"""The fakes' embeddings: a deterministic vector per text, and the base64 transport.

``fake_vector(text, dimensions)`` is seeded by the SHA-256 of the text (so the same text
always gives the same vector, and tests can predict it) and normalised to length 1, as
OpenAI's and Gemini's vectors are.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct

#: The length of a fake vector when the request asks for none.
DEFAULT_DIMENSIONS = 16


def fake_vector(text: str, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """The fake's unit vector of ``text``: float32-exact values, seeded by its SHA-256."""
    raw: list[float] = []
    counter = 0
    while len(raw) < dimensions:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        raw.extend((b - 127.5) / 127.5 for b in digest)
        counter += 1
    raw = raw[:dimensions]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    # Round through float32, so that the base64 transport decodes to the same floats.
    return [struct.unpack("<f", struct.pack("<f", x / norm))[0] for x in raw]


def to_base64(vector: list[float]) -> str:
    """OpenAI's base64 transport: little-endian float32 bytes, base64."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


__all__ = ["DEFAULT_DIMENSIONS", "fake_vector", "to_base64"]
