"""Content parts: what they accept, what they read from bytes, how a prompt becomes parts."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmproxy import Audio, Document, Image, InvalidRequest, Message, Text
from llmproxy.call import as_messages
from llmproxy.media import image_size, pdf_pages, sniff, wav_seconds
from llmproxy.types import MAX_PART_BYTES, text_of


def png(width: int, height: int) -> bytes:
    """A real (tiny-data) PNG of the given size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\x00" * width for _ in range(min(height, 4)))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def jpeg(width: int, height: int) -> bytes:
    """A JPEG header with an APP0 segment and a baseline frame of the given size."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


def wav(seconds: float, rate: int = 8000) -> bytes:
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


PDF = (
    b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
    b"2 0 obj << /Type /Pages /Kids [3 0 R 4 0 R] /Count 2 >> endobj\n"
    b"3 0 obj << /Type /Page /Parent 2 0 R >> endobj\n"
    b"4 0 obj << /Type/Page /Parent 2 0 R >> endobj\n%%EOF\n"
)


@given(st.integers(1, 20_000), st.integers(1, 20_000))
def test_image_sizes_are_read_from_png_and_jpeg_headers(width: int, height: int) -> None:
    assert image_size(png(width, height)) == (width, height)
    assert image_size(jpeg(width, height)) == (width, height)


def test_media_types_come_from_the_bytes(tmp_path: Path) -> None:
    assert sniff(png(2, 2)) == "image/png"
    assert sniff(jpeg(2, 2)) == "image/jpeg"
    assert sniff(PDF) == "application/pdf"
    assert sniff(wav(0.5)) == "audio/wav"
    assert sniff(b"hello") is None
    misnamed = tmp_path / "photo.pdf"
    misnamed.write_bytes(png(640, 480))
    image = Image.from_path(misnamed)
    assert (image.media_type, image.width, image.height) == ("image/png", 640, 480)
    assert pdf_pages(PDF) == 2
    assert wav_seconds(wav(1.5)) == pytest.approx(1.5)


def test_parts_refuse_what_no_provider_takes() -> None:
    with pytest.raises(InvalidRequest, match="exactly one of url= or data="):
        Image()
    with pytest.raises(InvalidRequest, match="PNG, JPEG") as caught:
        Image(data=PDF)
    assert caught.value.field == "media_type"
    with pytest.raises(InvalidRequest, match="detail"):
        Image(url="https://example.test/cat.png", detail="huge")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="https://"):
        Image(url="file:///etc/passwd")
    with pytest.raises(InvalidRequest, match="not a PDF"):
        Document(data=b"plain text")
    with pytest.raises(InvalidRequest, match="audio format"):
        Audio(b"not audio at all")
    with pytest.raises(InvalidRequest, match="more than a part may carry") as caught:
        Image(data=b"\x89PNG\r\n\x1a\n" + bytes(MAX_PART_BYTES))
    assert caught.value.field == "data"
    with pytest.raises(InvalidRequest, match="cannot read"):
        Image.from_path("/nonexistent/cat.png")


def test_parts_keep_what_budgets_need() -> None:
    assert Document(data=PDF).pages == 2
    assert Document(file_id="file-123").pages is None
    audio = Audio(wav(2.0))
    assert audio.format == "wav"
    assert audio.seconds == pytest.approx(2.0)
    assert Image.from_url("https://example.test/a.png").data_url() == "https://example.test/a.png"
    assert Image.from_bytes(png(1, 1)).data_url().startswith("data:image/png;base64,")


def test_a_list_of_strings_and_parts_is_one_user_message() -> None:
    image = Image.from_bytes(png(10, 10))
    prompt: list[str | Image] = ["What is in this picture?", image]
    [message] = as_messages(prompt)
    assert message.role == "user"
    assert message.parts == (Text("What is in this picture?"), image)
    assert message.content == "What is in this picture?"
    [alone] = as_messages(image)
    assert alone.parts == (image,) and alone.content == ""
    [from_dict] = as_messages([{"role": "user", "content": ["look", image]}])
    assert from_dict.parts == (Text("look"), image)


def test_malformed_parts_are_named_by_index() -> None:
    with pytest.raises(InvalidRequest) as caught:
        as_messages(["look", 42])  # type: ignore[list-item]
    assert caught.value.field == "prompt[1]"
    with pytest.raises(InvalidRequest) as caught:
        as_messages([{"role": "user", "content": ["look", b"raw bytes"]}])
    assert caught.value.field == "prompt[0].content[1]"
    with pytest.raises(InvalidRequest) as caught:
        as_messages([{"role": "user", "content": ["ok", "bad \ud800"]}])
    assert caught.value.field == "prompt[0].content[1].text"
    with pytest.raises(InvalidRequest) as caught:
        Message("user", "x", parts=("not a part",))
    assert caught.value.field == "parts[0]"
    with pytest.raises(InvalidRequest, match="no content"):
        as_messages(["  "])


@given(st.lists(st.text(min_size=1).filter(str.strip), min_size=1, max_size=5))
def test_a_message_of_parts_keeps_their_text(texts: list[str]) -> None:
    texts = [t for t in texts if t.encode("utf-8", "surrogatepass") == t.encode("utf-8", "ignore")]
    if not texts:
        return
    message = Message.with_parts("user", texts)
    assert message.content == text_of(message.parts) == "\n\n".join(texts)
