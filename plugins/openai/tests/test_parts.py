"""Content parts on OpenAI: exact wire bodies (Chat Completions and Responses, sync and async)
through the real openai SDK against FakeOpenAI, and the token bounds of image parts.
"""

from __future__ import annotations

import base64
import io
import struct
import wave
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmproxy import tokens
from llmproxy.errors import InvalidRequest
from llmproxy.types import Audio, ChatRequest, Document, Image, Message, Text
from llmproxy_openai import tokenizer
from llmproxy_openai.provider import OpenAIProvider
from llmproxy_testing.fake_openai import FakeOpenAI

MODEL = "gpt-4o"


def png(width: int, height: int) -> bytes:
    """A PNG header of the given size (enough for the size to be read; never decoded)."""
    ihdr = struct.pack(">II", width, height) + b"\x08\x02\x00\x00\x00"
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + crc


def wav(seconds: float, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(rate)
        w.writeframes(b"\x80" * int(rate * seconds))
    return out.getvalue()


PDF = b"%PDF-1.4\n1 0 obj <</Type /Page>> endobj\ntrailer <<>>\n%%EOF\n"
IMAGE = Image.from_bytes(png(1024, 768), detail="high")
AUDIO = Audio(wav(1.5))
DOC = Document(data=PDF, filename="report.pdf")
b64 = base64.b64encode


def data_url(kind: str, data: bytes) -> str:
    return f"data:{kind};base64,{b64(data).decode()}"


def ask(*parts: Any, model: str = MODEL) -> ChatRequest:
    return ChatRequest((Message.with_parts("user", ["Look:", *parts]),), model, "openai")


async def send(provider: OpenAIProvider, request: ChatRequest, mode: str) -> None:
    if mode == "sync":
        provider.chat(request)
    elif mode == "async":
        await provider.achat(request)
    else:
        async for _chunk in provider.astream(request):
            pass


def last_body(server: FakeOpenAI) -> dict[str, Any]:
    body: dict[str, Any] = server.requests[-1].json()
    return body


CHAT_CASES: list[tuple[Any, dict[str, Any]]] = [
    (
        IMAGE,
        {
            "type": "image_url",
            "image_url": {"url": data_url("image/png", png(1024, 768)), "detail": "high"},
        },
    ),
    (
        Image.from_url("https://example.com/cat.png"),
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ),
    (
        DOC,
        {
            "type": "file",
            "file": {"file_data": data_url("application/pdf", PDF), "filename": "report.pdf"},
        },
    ),
    (Document(file_id="file-abc"), {"type": "file", "file": {"file_id": "file-abc"}}),
    (
        AUDIO,
        {"type": "input_audio", "input_audio": {"data": b64(wav(1.5)).decode(), "format": "wav"}},
    ),
]


@pytest.mark.parametrize("mode", ["sync", "async", "stream"])
@pytest.mark.parametrize(("part", "wire"), CHAT_CASES)
async def test_chat_completions_body_per_part(
    make_provider: Callable[..., OpenAIProvider],
    server: FakeOpenAI,
    part: Any,
    wire: dict[str, Any],
    mode: str,
) -> None:
    await send(make_provider(), ask(part), mode)
    body = last_body(server)
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Look:"}, wire]}
    ]


RESPONSES_CASES: list[tuple[Any, dict[str, Any]]] = [
    (
        IMAGE,
        {
            "type": "input_image",
            "image_url": data_url("image/png", png(1024, 768)),
            "detail": "high",
        },
    ),
    (
        Image.from_url("https://example.com/cat.png"),
        {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "auto"},
    ),
    (
        DOC,
        {
            "type": "input_file",
            "file_data": data_url("application/pdf", PDF),
            "filename": "report.pdf",
        },
    ),
    (Document(file_id="file-abc"), {"type": "input_file", "file_id": "file-abc"}),
]


@pytest.mark.parametrize("mode", ["sync", "async", "stream"])
@pytest.mark.parametrize(("part", "wire"), RESPONSES_CASES)
async def test_responses_body_per_part(
    make_provider: Callable[..., OpenAIProvider],
    server: FakeOpenAI,
    part: Any,
    wire: dict[str, Any],
    mode: str,
) -> None:
    await send(make_provider(api="responses"), ask(part), mode)
    body = last_body(server)
    assert body["input"] == [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Look:"}, wire],
        }
    ]


async def test_audio_on_responses_is_refused_naming_the_part(
    make_provider: Callable[..., OpenAIProvider], server: FakeOpenAI
) -> None:
    with pytest.raises(InvalidRequest) as info:
        await make_provider(api="responses").achat(ask(AUDIO))
    assert info.value.field == "messages[0].parts[1]"
    assert "Responses API" in str(info.value)
    assert not server.requests


def test_audio_format_openai_cannot_take_is_refused(
    make_provider: Callable[..., OpenAIProvider], server: FakeOpenAI
) -> None:
    flac = Audio(b"fLaC" + b"\x00" * 64)
    with pytest.raises(InvalidRequest) as info:
        make_provider().chat(ask(flac))
    assert info.value.field == "messages[0].parts[1].format"
    assert not server.requests


def test_image_on_an_assistant_message_is_refused(
    make_provider: Callable[..., OpenAIProvider], server: FakeOpenAI
) -> None:
    req = ChatRequest(
        (Message("user", "Hi"), Message.with_parts("assistant", ["Here", IMAGE])), MODEL, "openai"
    )
    with pytest.raises(InvalidRequest) as info:
        make_provider().chat(req)
    assert info.value.field == "messages[1].parts[1]"
    assert not server.requests


def test_text_only_messages_keep_their_bodies(
    make_provider: Callable[..., OpenAIProvider], server: FakeOpenAI
) -> None:
    make_provider().chat(ChatRequest((Message("user", "Hi"),), MODEL, "openai"))
    assert last_body(server)["messages"] == [{"role": "user", "content": "Hi"}]


def test_fake_bills_an_image_by_the_tile_formula_and_the_count_covers_it(
    make_provider: Callable[..., OpenAIProvider],
) -> None:
    req = ask(IMAGE, Text("and this"))
    completion = make_provider().chat(req)
    assert completion.usage is not None
    # The fake: 3 + (words + 3) + 85 + 170 * 4 tiles (1024 x 768 scales to 1024 x 768).
    assert completion.usage.input_tokens == 3 + (3 + 3) + 85 + 170 * 4
    assert tokenizer.count_messages(req.messages, MODEL) >= completion.usage.input_tokens


# -- bounds -------------------------------------------------------------------------------------

sizes = st.integers(min_value=1, max_value=20_000)


@settings(max_examples=300, deadline=None)
@given(width=sizes, height=sizes, family=st.sampled_from(sorted(tokenizer.TILE_MODELS)))
def test_tile_family_bound_covers_the_formula(width: int, height: int, family: str) -> None:
    base, per_tile = tokenizer.TILE_MODELS[family]
    for detail in ("low", "high", "auto", None):
        formula = tokens.tile_tokens(width, height, base, per_tile, detail)
        assert tokenizer.image_tokens(family, width, height, detail) == formula
        assert tokenizer.image_tokens(family, None, None, detail) >= formula
        assert tokenizer.image_tokens("gpt-9-unlisted", width, height, detail) >= formula
        assert formula <= tokens.IMAGE_UNKNOWN_TOKENS
    known = Image(url="https://x/y.png", width=width, height=height)
    assert tokens.image_upper_bound(known) >= tokens.tile_tokens(width, height, base, per_tile)


@settings(max_examples=300, deadline=None)
@given(width=sizes, height=sizes, family=st.sampled_from(sorted(tokenizer.PATCH_MODELS)))
def test_patch_family_bound_covers_the_formula(width: int, height: int, family: str) -> None:
    formula = tokens.patch_tokens(width, height, tokenizer.PATCH_MODELS[family])
    assert formula <= tokenizer.image_worst(family)
    assert tokenizer.image_tokens(family, width, height) == formula
    assert tokenizer.image_tokens(family, None, None) >= formula
    assert tokenizer.image_tokens("gpt-9-unlisted", width, height) >= formula
    known = Image(url="https://x/y.png", width=width, height=height)
    assert tokens.image_upper_bound(known) >= formula
    assert tokens.image_upper_bound(known) <= tokens.IMAGE_UNKNOWN_TOKENS


def test_published_examples() -> None:
    # OpenAI's worked examples: gpt-4o 1024 x 1024 high = 765, 2048 x 4096 = 1105, low = 85;
    # patch models: 1024 x 1024 = 1024 patches, 1800 x 2400 = 1452 patches.
    assert tokenizer.image_tokens("gpt-4o-2024-08-06", 1024, 1024, "high") == 765
    assert tokenizer.image_tokens("gpt-4o", 2048, 4096, "high") == 1105
    assert tokenizer.image_tokens("gpt-4o", 4096, 8192, "low") == 85
    assert tokenizer.image_tokens("gpt-4o-mini", 1024, 1024, "high") == 2833 + 4 * 5667
    assert tokens.patch_tokens(1024, 1024, 1.0) == 1024
    assert tokens.patch_tokens(1800, 2400, 1.0) == 1452
    assert tokenizer.image_tokens("gpt-4.1-mini", 1800, 2400) == 2353  # ceil(1452 * 1.62)


def test_documents_and_audio_are_bounded_per_page_and_second() -> None:
    assert DOC.pages is not None
    per_page = tokens.PAGE_TEXT_TOKENS + tokenizer.image_worst(MODEL)
    assert tokenizer.part_tokens(DOC, MODEL) == DOC.pages * per_page
    assert tokenizer.part_tokens(Document(file_id="f"), MODEL) == tokenizer.MAX_PAGES * per_page
    assert tokenizer.part_tokens(AUDIO, MODEL) == 2 * tokens.AUDIO_TOKENS_PER_SECOND
    mp3 = Audio(b"ID3" + b"\x00" * 1997)
    assert tokens.audio_upper_bound(mp3) == 4 * tokens.AUDIO_TOKENS_PER_SECOND
    core = tokens.messages_upper_bound([Message.with_parts("user", ["Hi", IMAGE, DOC, AUDIO])])
    assert core >= tokenizer.count_messages(
        [Message.with_parts("user", ["Hi", IMAGE, DOC, AUDIO])], "gpt-4o-mini"
    )
