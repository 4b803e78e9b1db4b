"""Content parts on Gemini's wire, their token bounds, and thought signatures in Message.state.

Everything goes through the real ``google-genai`` SDK to FakeGemini over TCP; the second half
of a function-calling exchange runs in a fresh Python process that only has the stored history.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import textwrap
import wave
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmproxy.errors import InvalidRequest, ProviderBadRequest
from llmproxy.history.base import HistoryRecord
from llmproxy.history.sqlite import SQLiteHistoryStore
from llmproxy.provider import ChunkAssembler, chunk_of
from llmproxy.tokens import messages_upper_bound
from llmproxy.types import (
    Audio,
    ChatRequest,
    Chunk,
    Completion,
    Document,
    Image,
    Message,
    Part,
    Text,
    ToolCall,
)
from llmproxy_gemini import bounds, convert
from llmproxy_gemini.provider import GeminiProvider, count_messages
from llmproxy_testing.fake_gemini import FakeGemini, Reply, media_tokens

from .conftest import API_KEY

MODEL = "gemini-3.8-flash"


def png(width: int, height: int) -> bytes:
    """A PNG header of the given size (all the core and the fake read of it)."""
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + b"\x08\x02\x00\x00\x00"
    return b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + ihdr + b"\x00" * 16


def pdf(pages: int) -> bytes:
    body = b"".join(b"%d 0 obj << /Type /Page >> endobj\n" % (i + 1) for i in range(pages))
    return b"%PDF-1.4\n" + body + b"%%EOF\n"


def wav(seconds: float, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(rate * seconds))
    return out.getvalue()


def b64(data: bytes) -> str:
    """Bytes as the Python SDK writes them on the wire: URL-safe base64."""
    return base64.urlsafe_b64encode(data).decode()


def bodies(server: FakeGemini) -> list[dict[str, Any]]:
    return [r.json() for r in server.requests if "Content" in r.path]


IMAGE = png(1000, 500)
DOC = pdf(2)
SOUND = wav(1.5)

#: Each part type and the exact wire part Gemini gets for it.
CASES: list[tuple[Any, dict[str, Any]]] = [
    (Text("Look:"), {"text": "Look:"}),
    (Image.from_bytes(IMAGE), {"inlineData": {"data": b64(IMAGE), "mime_type": "image/png"}}),
    (
        Image.from_url("https://example.com/cat.png"),
        {"fileData": {"file_uri": "https://example.com/cat.png", "mime_type": "image/png"}},
    ),
    (
        Image.from_url(f"data:image/png;base64,{base64.b64encode(IMAGE).decode()}"),
        {"inlineData": {"data": b64(IMAGE), "mime_type": "image/png"}},
    ),
    (
        Document(data=DOC),
        {"inlineData": {"data": b64(DOC), "mime_type": "application/pdf"}},
    ),
    (
        Document(file_id="files/abc123"),
        {
            "fileData": {
                "file_uri": "https://generativelanguage.googleapis.com/v1beta/files/abc123",
                "mime_type": "application/pdf",
            }
        },
    ),
    (
        Document(file_id="gs://bucket/report.pdf"),
        {"fileData": {"file_uri": "gs://bucket/report.pdf", "mime_type": "application/pdf"}},
    ),
    (Audio(SOUND), {"inlineData": {"data": b64(SOUND), "mime_type": "audio/wav"}}),
    (
        Audio(b"ID3" + bytes(997), format="mp3"),
        {"inlineData": {"data": b64(b"ID3" + bytes(997)), "mime_type": "audio/mp3"}},
    ),
]


@pytest.mark.parametrize("mode", ["chat", "achat", "stream", "astream"])
@pytest.mark.parametrize(("part", "wire"), CASES, ids=lambda v: type(v).__name__)
async def test_each_part_type_goes_out_as_geminis_own_part(
    provider: GeminiProvider, server: FakeGemini, mode: str, part: Any, wire: dict[str, Any]
) -> None:
    message = Message.with_parts("user", ["What is this?", part])
    request = ChatRequest((Message("system", "Be brief."), message), MODEL, "gemini")
    if mode == "chat":
        provider.chat(request)
    elif mode == "achat":
        await provider.achat(request)
    elif mode == "stream":
        list(provider.stream(request))
    else:
        [c async for c in provider.astream(request)]
    (body,) = bodies(server)
    assert body["contents"] == [{"role": "user", "parts": [{"text": "What is this?"}, wire]}]
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}], "role": "user"}


async def test_messages_without_parts_keep_todays_request(
    provider: GeminiProvider, server: FakeGemini
) -> None:
    provider.chat(ChatRequest((Message("user", "Hi"),), MODEL, "gemini"))
    (body,) = bodies(server)
    assert body["contents"] == [{"role": "user", "parts": [{"text": "Hi"}]}]


def test_a_system_message_takes_only_text() -> None:
    system = Message.with_parts("system", ["Be brief.", Image.from_bytes(IMAGE)])
    with pytest.raises(InvalidRequest, match="system instruction is text") as info:
        convert.build_contents([system, Message("user", "Hi")])
    assert info.value.field == "messages[0].parts"
    contents, text = convert.build_contents(
        [Message.with_parts("system", ["Be", "brief."]), Message("user", "Hi")]
    )
    assert text == "Be\n\nbrief."
    assert len(contents) == 1


def test_a_bad_data_url_names_the_part() -> None:
    bad = Image(url="data:image/png,not-base64")
    with pytest.raises(InvalidRequest, match="base64") as info:
        convert.build_contents([Message.with_parts("user", ["x", bad])])
    assert info.value.field == "messages[0].parts[1].url"


# -- token bounds --------------------------------------------------------------------------------


def documented_image_tokens(width: int, height: int) -> int:
    """Google's rule as its token page states it, written out independently of bounds.py."""
    if max(width, height) <= 384:
        return 258
    return 258 * -(-width // 768) * -(-height // 768)


@given(st.integers(1, 12_000), st.integers(1, 12_000))
def test_the_image_bound_holds_over_every_documented_count(width: int, height: int) -> None:
    bound = bounds.image_bound(width, height)
    assert bound >= documented_image_tokens(width, height)
    assert bound >= bounds.crop_unit_tokens(width, height)
    assert bound >= 1120  # Gemini 3 at MEDIA_RESOLUTION_HIGH, images' default
    if max(width, height) <= 3072:
        assert bound <= bounds.UNKNOWN_IMAGE_TOKENS


@given(st.integers(1, 1000))
def test_the_page_bound_holds_over_every_documented_count(pages: int) -> None:
    document = Document(data=pdf(pages))
    bound = bounds.part_bound(document)
    assert bound >= 258 * pages  # per page (document processing)
    assert bound >= 560 * pages  # Gemini 3's default for PDFs (MEDIUM)
    assert bound >= 1120 * pages  # and the highest a request can set


@given(st.floats(0.01, 30.0))
def test_the_audio_bound_holds_over_the_documented_rate(seconds: float) -> None:
    audio = Audio(wav(seconds, rate=1000))
    assert audio.seconds is not None
    assert bounds.part_bound(audio) >= 32 * audio.seconds
    assert bounds.part_bound(audio) >= media_tokens(
        {"inlineData": {"mime_type": "audio/wav", "data": audio.base64()}}
    )


def test_unknown_sizes_get_the_documented_conservative_bounds() -> None:
    assert bounds.part_bound(Image.from_url("https://example.com/x.png")) == 24 * 258
    assert bounds.part_bound(Document(file_id="files/abc")) == 1000 * 1120
    assert bounds.part_bound(Document(file_id="files/abc", pages=3)) == 3 * 1120
    mp3 = Audio(b"ID3" + bytes(49_997), format="mp3")  # 50 kB: at most 100 s at 4 kbit/s
    assert bounds.part_bound(mp3) == 32 * 100
    hidden = b"%PDF-1.7\n1 0 obj << /Type /ObjStm /N 40 >> stream\n" + bytes(8000) + b"\n%%EOF"
    assert bounds.document_pages(Document(data=hidden)) == 8  # one page per KiB
    declared = b"%PDF-1.7\n1 0 obj << /Type /Pages /Count 12 /Kids [] >> endobj\n%%EOF"
    assert bounds.document_pages(Document(data=declared)) == 12


def test_count_tokens_adds_the_parts_bounds_to_the_text_bound(provider: GeminiProvider) -> None:
    parts: list[Part] = [
        Text("What is this?"),
        Image.from_bytes(IMAGE),
        Document(data=DOC),
        Audio(SOUND),
    ]
    message = Message.with_parts("user", parts)
    text_only = Message("user", message.content)
    # 1000x500: 8 tiles by a crop unit of 333 px; 2 pages; 1.5 s of audio.
    expected = messages_upper_bound([text_only]) + 8 * 258 + 2 * 1120 + 2 * 32
    assert provider.count_tokens([message], MODEL) == expected == count_messages([message])


@pytest.mark.parametrize("stream", [False, True])
async def test_the_bound_covers_what_the_fake_bills(
    provider: GeminiProvider, server: FakeGemini, stream: bool
) -> None:
    parts: list[Part | str] = [
        "Compare these.",
        Image.from_bytes(png(3000, 2000)),
        Image.from_bytes(png(100, 100)),
        Document(data=pdf(5)),
        Audio(wav(3.2)),
    ]
    messages = (Message.with_parts("user", parts),)
    request = ChatRequest(messages, MODEL, "gemini")
    if stream:
        assembled = ChunkAssembler()
        for chunk in provider.stream(request):
            assembled.feed(chunk)
        usage = assembled.usage
    else:
        usage = provider.chat(request).usage
    assert usage is not None
    # The fake bills 258 * 4 * 3 + 258 + 5 * 258 + 32 * 4 media tokens, plus the text.
    assert usage.input_tokens >= 258 * 12 + 258 + 5 * 258 + 4 * 32
    assert provider.count_tokens(messages, MODEL) >= usage.input_tokens


# -- thought signatures in Message.state ---------------------------------------------------------


def test_state_round_trips_signatures_as_base64_text() -> None:
    state = convert.state_of({"c1": b"\x00\xffsig"})
    assert json.loads(json.dumps(state)) == state
    message = Message("assistant", "", tool_calls=(ToolCall("c1", "f", "{}"),), state=state)
    assert convert.signatures_of(message) == {"c1": b"\x00\xffsig"}
    broken = Message("assistant", "", state={"gemini": {"thought_signatures": {"c1": "%%"}}})
    assert convert.signatures_of(broken) == {}
    assert convert.state_of({}) == {}


def test_the_assembler_merges_chunk_state_onto_the_message() -> None:
    parts = ChunkAssembler()
    parts.feed(Chunk("Hi", state={"gemini": {"a": 1}}))
    parts.feed(Chunk(state={"gemini": {"b": 2}, "other": [1]}))
    message = parts.completion("m").message
    assert message.state == {"gemini": {"a": 1, "b": 2}, "other": [1]}
    again = chunk_of(Completion(message, None, "m", "stop"))
    assert again.state == message.state
    assert chunk_of(Completion(Message("assistant", "x"), None, "m", "stop")).state is None


@pytest.mark.parametrize("mode", ["chat", "achat", "stream", "astream"])
async def test_signatures_travel_in_the_answer_state(
    provider: GeminiProvider, server: FakeGemini, mode: str
) -> None:
    server.enqueue(Reply(tool_calls=[{"id": "call-1", "name": "get_weather", "arguments": {}}]))
    request = ChatRequest((Message("user", "Weather?"),), MODEL, "gemini")
    if mode in ("chat", "achat"):
        completion = provider.chat(request) if mode == "chat" else await provider.achat(request)
    else:
        assembled = ChunkAssembler()
        if mode == "stream":
            for chunk in provider.stream(request):
                assembled.feed(chunk)
        else:
            async for chunk in provider.astream(request):
                assembled.feed(chunk)
        completion = assembled.completion(MODEL)
    message = completion.message
    (issued,) = server.issued_signatures
    assert message.state == {"gemini": {"thought_signatures": {"call-1": issued}}}
    assert not hasattr(provider, "signatures")  # no in-process cache


def test_history_without_state_is_refused_by_a_strict_upstream() -> None:
    with FakeGemini(api_key=API_KEY, accept_skip=False) as strict:
        provider = GeminiProvider(api_key=API_KEY, base_url=strict.base_url, timeout=10.0)
        try:
            messages = (
                Message("user", "Weather?"),
                Message("assistant", "", tool_calls=(ToolCall("call-1", "get_weather", "{}"),)),
                Message("tool", "Sunny", tool_call_id="call-1"),
            )
            with pytest.raises(ProviderBadRequest, match="thought signature"):
                provider.chat(ChatRequest(messages, MODEL, "gemini"))
        finally:
            provider.close()


#: The second half of the exchange, run by a fresh interpreter: it reads the session from the
#: SQLite history file (or from JSON), answers the call and asks Gemini again.
SECOND_HALF = textwrap.dedent(
    """
    import json, sys
    from llmproxy.history.sqlite import SQLiteHistoryStore
    from llmproxy.types import ChatRequest, Message, ToolCall
    from llmproxy_gemini.provider import GeminiProvider

    base_url, key, source, where = sys.argv[1:5]
    if source == "history":
        store = SQLiteHistoryStore(where)
        messages = [r.message for r in store.load("s1")]
        store.close()
    else:
        messages = [
            Message(
                m["role"],
                m["content"],
                tool_calls=tuple(ToolCall(**c) for c in m["tool_calls"]),
                state=m["state"],
            )
            for m in json.loads(open(where).read())
        ]
    call = messages[-1].tool_calls[0]
    messages.append(Message("tool", "Sunny", name=call.name, tool_call_id=call.id))
    provider = GeminiProvider(api_key=key, base_url=base_url, timeout=10.0)
    print(provider.chat(ChatRequest(tuple(messages), "gemini-3.8-flash", "gemini")).message.content)
    provider.close()
    """
)


def _state_survives(path: Path) -> bool:
    """Whether the SQLite store keeps ``Message.state`` (it does from the partshistory work)."""
    store = SQLiteHistoryStore(path)
    try:
        probe = Message("assistant", "x", state={"gemini": {"probe": "1"}})
        store.append([HistoryRecord("probe", probe)])
        return store.load("probe")[0].message.state == probe.state
    finally:
        store.close()


@pytest.mark.parametrize("source", ["history", "json"])
def test_the_tool_round_continues_in_a_fresh_process(tmp_path: Path, source: str) -> None:
    with FakeGemini(api_key=API_KEY, accept_skip=False) as server:
        server.enqueue(
            Reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Hue"}}]),
            Reply(text="Sunny in Hue."),
        )
        first = GeminiProvider(api_key=API_KEY, base_url=server.base_url, timeout=10.0)
        try:
            question = Message("user", "Weather in Hue?")
            answer = first.chat(ChatRequest((question,), MODEL, "gemini")).message
        finally:
            first.close()
        (issued,) = server.issued_signatures
        assert answer.tool_calls and answer.state
        if source == "history":
            if not _state_survives(tmp_path / "probe.sqlite3"):
                pytest.skip("the SQLite history store does not keep Message.state yet")
            where = tmp_path / "history.sqlite3"
            store = SQLiteHistoryStore(where)
            store.append([HistoryRecord("s1", question), HistoryRecord("s1", answer)])
            store.close()
        else:
            where = tmp_path / "history.json"
            where.write_text(
                json.dumps(
                    [
                        {
                            "role": m.role,
                            "content": m.content,
                            "tool_calls": [
                                {"id": c.id, "name": c.name, "arguments": c.arguments}
                                for c in m.tool_calls
                            ],
                            "state": dict(m.state),
                        }
                        for m in (question, answer)
                    ]
                )
            )
        done = subprocess.run(
            [sys.executable, "-c", SECOND_HALF, server.base_url, API_KEY, source, str(where)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "Sunny in Hue."
        second = bodies(server)[-1]
        model_turn = second["contents"][1]
        assert model_turn["role"] == "model"
        assert model_turn["parts"][0]["thoughtSignature"] == issued
