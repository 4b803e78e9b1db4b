"""Content parts through the gateway: the real openai SDK in, the core's parts out.

The gateway runs in this process (uvicorn in a thread) in front of a Proxy whose one provider,
``recorder``, is a real :class:`llmproxy.BaseProvider` plugin that keeps the messages of each
:class:`~llmproxy.types.ChatRequest` it gets: what the gateway built from the wire is what the
provider saw. How each provider puts parts on its own wire is tested in its plugin.
"""

from __future__ import annotations

import base64
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx
import openai
import pytest

import llmproxy
from llmproxy import Proxy
from llmproxy.types import MAX_PART_BYTES, Audio, ChatRequest, Document, Image, Message, Text
from llmproxy_gateway import KeyStore
from llmproxy_gateway.app import Gateway, create_app
from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_usage_log import open_usage_log

from .conftest import GatewayProcess, chat_bodies, clean_env
from .test_login_throttle import Served

# A 1x1 PNG, a one-page PDF and 0.5 s of 8 kHz mono 16-bit WAV silence.
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
    + struct.pack("<I", 36 + 8000)
    + b"WAVEfmt "
    + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16)
    + b"data"
    + struct.pack("<I", 8000)
    + b"\x00" * 8000
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Recorder(llmproxy.BaseProvider):
    """A provider that keeps every request's messages and answers how many parts it saw."""

    def __init__(self, settings: Any = None) -> None:
        super().__init__(settings)
        self.seen: list[tuple[Message, ...]] = []
        self.lock = threading.Lock()

    async def achat(self, request: ChatRequest) -> llmproxy.Completion:
        with self.lock:
            self.seen.append(request.messages)
        parts = sum(len(m.parts) for m in request.messages)
        return llmproxy.Completion(llmproxy.Message("assistant", f"{parts} parts"), None, "m")

    def last_user(self) -> Message:
        with self.lock:
            return [m for m in self.seen[-1] if m.role == "user"][-1]


@dataclass
class Served_:
    """The served gateway's URL, its recorder and a key."""

    url: str
    recorder: Recorder
    key: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served_]:
    root = tmp_path_factory.mktemp("parts")
    environ = clean_env(LLMPROXY_DATA_DIR=str(root))  # the default body limit (32 MiB)
    recorder = Recorder()
    proxy = Proxy(
        {"default_model": "recorder/m"},
        providers={"recorder": recorder},
        ledger="memory://",
        history="memory://",
        environ=environ,
    )
    keys = KeyStore(root / "keys.db")
    _record, key = keys.create("alice")
    gateway = Gateway(proxy=proxy, keys=keys, usage=open_usage_log("memory://"), environ=environ)
    server = Served(create_app(gateway), environ)
    yield Served_(server.url, recorder, key)
    server.stop()
    proxy.close()


def sdk(served: Served_) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1", api_key=served.key, max_retries=0)


def ask(served: Served_, content: list[dict[str, Any]], **extra: Any) -> Message:
    """Send one user message of ``content`` through the SDK; the message the provider saw."""
    reply = sdk(served).chat.completions.create(
        model="recorder/m",
        messages=[{"role": "user", "content": content}],  # type: ignore[misc, list-item]
        **extra,
    )
    assert reply.choices[0].message.content is not None
    return served.recorder.last_user()


def test_an_image_as_a_data_url_reaches_the_provider_as_bytes(served: Served_) -> None:
    message = ask(
        served,
        [
            {"type": "text", "text": "What is in this picture?"},
            {
                "type": "image_url",
                "image_url": {"url": f"data:image/png;base64,{b64(PNG)}", "detail": "low"},
            },
        ],
    )
    assert message.parts == (
        Text("What is in this picture?"),
        Image(data=PNG, media_type="image/png", detail="low", width=1, height=1),
    )
    assert message.content == "What is in this picture?"


def test_an_https_image_is_kept_as_a_url(served: Served_) -> None:
    url = "https://images.example/cat.png?size=large"
    message = ask(
        served, [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]
    )
    assert message.parts == (Image(url=url), Text("?"))


def test_a_pdf_file_and_a_file_id_become_documents(served: Served_) -> None:
    message = ask(
        served,
        [
            {"type": "text", "text": "Compare these."},
            {
                "type": "file",
                "file": {
                    "file_data": f"data:application/pdf;base64,{b64(PDF)}",
                    "filename": "a.pdf",
                },
            },
            {"type": "file", "file": {"file_id": "file-abc123"}},
        ],
    )
    assert message.parts == (
        Text("Compare these."),
        Document(data=PDF, filename="a.pdf", pages=1),
        Document(file_id="file-abc123"),
    )


def test_input_audio_becomes_audio(served: Served_) -> None:
    message = ask(
        served,
        [
            {"type": "input_audio", "input_audio": {"data": b64(WAV), "format": "wav"}},
            {"type": "text", "text": "Transcribe this."},
        ],
    )
    assert message.parts == (Audio(WAV, "wav", 0.5), Text("Transcribe this."))


def test_a_streamed_request_carries_its_parts_too(served: Served_) -> None:
    stream = sdk(served).chat.completions.create(
        model="recorder/m",
        stream=True,
        messages=[
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "and this?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": f"data:image/png;base64,{b64(PNG)}"},
                    },
                ],
            },
        ],
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "2 parts"
    messages = served.recorder.seen[-1]
    assert messages[0] == Message("system", "Be brief.")
    assert [type(p) for p in messages[1].parts] == [Text, Image]


def test_text_only_parts_stay_a_plain_string(served: Served_) -> None:
    message = ask(served, [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "you"}])
    assert message == Message("user", "Hello, you")


def test_a_part_of_the_largest_size_fits_the_default_body_limit(served: Served_) -> None:
    image = PNG + b"\x00" * (MAX_PART_BYTES - len(PNG))
    message = ask(
        served, [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(image)}"}}]
    )
    assert message.parts == (Image(data=image, media_type="image/png", width=1, height=1),)


def _user(*parts: dict[str, Any], role: str = "user") -> dict[str, Any]:
    return {"model": "recorder/m", "messages": [{"role": role, "content": list(parts)}]}


def _image(url: str, **more: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, **more}}


TOO_LARGE = b"\x00" * (MAX_PART_BYTES + 1)


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (
            _user({"type": "text", "text": "x"}, _image("data:image/png;base64,iVBOR w0K")),
            "messages[0].content[1].image_url.url",
            "not valid base64",
        ),
        (
            _user(_image("data:image/png;base64,iVBORw0KGgo")),  # no padding
            "messages[0].content[0].image_url.url",
            "not valid base64",
        ),
        (
            _user(_image("data:image/png," + "%89PNG")),
            "messages[0].content[0].image_url.url",
            "not base64",
        ),
        (
            _user({"type": "video_url", "video_url": {"url": "https://v.example/a.mp4"}}),
            "messages[0].content[0].type",
            "must be one of text, image_url, file, input_audio; got 'video_url'",
        ),
        (_user("just a string"), "messages[0].content[0]", "must be an object"),  # type: ignore[arg-type]
        (
            _user({"type": "text", "text": 5}),
            "messages[0].content[0].text",
            "must be a string",
        ),
        (
            _user(_image(f"data:image/png;base64,{b64(TOO_LARGE)}")),
            "messages[0].content[0].image_url.url",
            f"20,971,521 bytes, more than a part may carry ({MAX_PART_BYTES:,})",
        ),
        (
            _user(_image("data:image/png;base64," + "A" * (4 * (MAX_PART_BYTES // 3 + 2)))),
            "messages[0].content[0].image_url.url",
            "more than a part may carry",
        ),
        (
            _user(_image("http://images.example/cat.png")),
            "messages[0].content[0].image_url.url",
            "must be an https:// URL or a data:image/...;base64, URL",
        ),
        (
            _user(_image(f"data:image/png;base64,{b64(PDF)}")),
            "messages[0].content[0].image_url.url",
            "image data is application/pdf",
        ),
        (
            _user(_image("https://images.example/a.png", detail="ultra")),
            "messages[0].content[0].image_url.detail",
            "auto, low or high",
        ),
        (
            _user({"type": "image_url", "image_url": "https://images.example/a.png"}),
            "messages[0].content[0].image_url",
            "must be an object",
        ),
        (
            _user(
                {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{b64(PNG)}"}}
            ),
            "messages[0].content[0].file.file_data",
            "document data is image/png: send a PDF",
        ),
        (
            _user({"type": "file", "file": {"filename": "a.pdf"}}),
            "messages[0].content[0].file",
            "exactly one of file_data or file_id",
        ),
        (
            _user({"type": "input_audio", "input_audio": {"data": b64(WAV), "format": "opus9"}}),
            "messages[0].content[0].input_audio.format",
            "audio format opus9",
        ),
        (
            _user({"type": "input_audio", "input_audio": {"format": "wav"}}),
            "messages[0].content[0].input_audio.data",
            "must be a non-empty string",
        ),
        (
            _user(_image("https://images.example/a.png"), role="system"),
            "messages[0].content[0].type",
            "a system message takes text parts only",
        ),
    ],
)
def test_malformed_parts_are_400_naming_the_part(
    served: Served_, body: dict[str, Any], param: str, words: str
) -> None:
    calls = len(served.recorder.seen)
    r = httpx.post(
        served.url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {served.key}"},
        timeout=60,
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_request"
    assert error["param"] == param
    assert words in error["message"]
    assert error["message"].startswith(param)
    assert len(served.recorder.seen) == calls  # refused before any provider call


def test_the_sdk_raises_bad_request_naming_the_part(served: Served_) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        ask(served, [{"type": "text", "text": "hi"}, {"type": "audio_url", "audio_url": "x"}])
    assert info.value.param == "messages[0].content[1].type"


def test_an_image_through_the_gateway_process_reaches_the_fake_upstream(
    gateway: GatewayProcess, upstream: FakeOpenAI
) -> None:
    """The whole path with the OpenAI provider: budgets, history and the upstream call."""
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key("erin"))
    sent = len(chat_bodies(upstream))
    reply = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": f"data:image/png;base64,{b64(PNG)}"},
                    },
                ],
            }
        ],
    )
    assert reply.choices[0].message.content
    bodies = chat_bodies(upstream)
    assert len(bodies) == sent + 1
    assert bodies[-1]["messages"][-1]["content"] == [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(PNG)}"}},
    ]


def test_a_body_limit_smaller_than_a_part_is_413(gateway: GatewayProcess) -> None:
    """The body limit applies first (this gateway's is 1,000,000 bytes)."""
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key(), max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image_url",
                            "image_url": {"url": f"data:image/png;base64,{b64(PNG * 60000)}"},
                        }
                    ],
                }
            ],
        )
    assert info.value.status_code == 413
