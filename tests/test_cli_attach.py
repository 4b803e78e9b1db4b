"""``llmproxy chat -a``: files and image URLs attached to the prompt."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from llmproxy.cli import attachment, chat_prompt
from llmproxy.errors import InvalidRequest
from llmproxy.types import MAX_PART_BYTES, Audio, Document, Image
from llmproxy_testing.fake_openai import FakeOpenAI
from tests.conftest import chat_requests
from tests.test_cli import run

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154"
    "789c63000100000500010d0a2db40000000049454e44ae426082"
)
PDF = (
    b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
    b"2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj\n"
    b"3 0 obj << /Type /Page /Parent 2 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
)
WAV = (
    b"RIFF"
    + struct.pack("<I", 36 + 800)
    + b"WAVEfmt "
    + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16)
    + b"data"
    + struct.pack("<I", 800)
    + b"\x00" * 800
)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A PNG named like a PDF, a PDF without an extension, and a WAV: the bytes decide."""
    made = {"png": tmp_path / "chart.pdf", "pdf": tmp_path / "report", "wav": tmp_path / "a.bin"}
    made["png"].write_bytes(PNG)
    made["pdf"].write_bytes(PDF)
    made["wav"].write_bytes(WAV)
    return made


def test_files_are_attached_by_what_their_bytes_are(files: dict[str, Path]) -> None:
    assert attachment(str(files["png"])) == Image(data=PNG)
    assert attachment(str(files["pdf"])) == Document(data=PDF, filename="report")
    assert attachment(str(files["wav"])) == Audio(WAV)
    assert attachment(str(files["wav"])).format == "wav"  # type: ignore[union-attr]


def test_an_https_url_is_an_image() -> None:
    url = "https://images.example/cat.png"
    assert attachment(url) == Image(url=url)


def test_the_prompt_is_the_text_then_the_attachments(files: dict[str, Path]) -> None:
    parts = [attachment(str(files["png"])), attachment(str(files["pdf"]))]
    assert chat_prompt("Describe these", parts) == ["Describe these", *parts]
    assert chat_prompt("Hello", []) == "Hello"  # no attachments: the text as before


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"just some notes\n", "its bytes are no image, PDF or audio; attach an image (PNG"),
        (b"", "the file is empty"),
    ],
)
def test_content_that_cannot_be_attached_is_refused_naming_the_file(
    tmp_path: Path, content: bytes, words: str
) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(InvalidRequest) as info:
        attachment(str(path))
    assert str(info.value).startswith(f"-a {path}: ")
    assert words in str(info.value)


def test_missing_large_and_non_https_attachments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="cannot read the file: No such file"):
        attachment(str(tmp_path / "missing.png"))
    big = tmp_path / "big.png"
    with big.open("wb") as f:
        f.truncate(MAX_PART_BYTES + 1)
    with pytest.raises(InvalidRequest, match="more than a part may carry"):
        attachment(str(big))
    with pytest.raises(InvalidRequest, match="must be https://"):
        attachment("http://images.example/cat.png")


def test_chat_with_a_png_and_a_pdf_attached(
    env: dict[str, str], upstream: FakeOpenAI, files: dict[str, Path]
) -> None:
    result = run(
        ["chat", "-a", str(files["png"]), "Describe these", "--attach", str(files["pdf"])], env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Echo: ")
    requests = chat_requests(upstream)
    assert len(requests) == 1
    content = requests[0]["messages"][-1]["content"]
    assert [part["type"] for part in content] == ["text", "image_url", "file"]
    assert content[0]["text"] == "Describe these"
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert content[2]["file"]["file_data"].startswith("data:application/pdf;base64,")


def test_an_attachment_that_cannot_be_read_is_one_line_and_sends_nothing(
    env: dict[str, str], upstream: FakeOpenAI, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("plain text\n")
    result = run(["chat", "-a", str(notes), "Summarize"], env)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"llmproxy: -a {notes}: its bytes are no image, PDF or audio")
    assert chat_requests(upstream) == []
