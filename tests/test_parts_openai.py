"""Content parts through the Proxy: DeepSeek refuses them and a fallback answers; a budget
reserves at least what the upstream bills for an image.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Iterator

import pytest

from llmproxy import CallScope, Image, LLMBudget, Message, Part, Proxy, UnsupportedContent
from llmproxy.tokens import PER_MESSAGE_OVERHEAD
from llmproxy_openai import tokenizer
from llmproxy_testing.fake_deepseek import FakeDeepSeek
from llmproxy_testing.fake_openai import FakeOpenAI
from tests.conftest import API_KEY, chat_requests


def png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">II", width, height) + b"\x08\x02\x00\x00\x00"
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + crc


CAT = Image.from_bytes(png(1600, 1200))
PROMPT: list[str | Part] = ["What is in this picture?", CAT]


@pytest.fixture
def deepseek() -> Iterator[FakeDeepSeek]:
    with FakeDeepSeek(api_key=API_KEY) as server:
        yield server


@pytest.fixture
def proxy(env: dict[str, str], deepseek: FakeDeepSeek) -> Iterator[Proxy]:
    p = Proxy(
        {"history_url": "memory://", "ledger_url": "memory://"},
        environ={**env, "DEEPSEEK_API_KEY": API_KEY, "DEEPSEEK_BASE_URL": deepseek.base_url},
        budgets=[LLMBudget(max_tokens=1_000_000, scope="provider")],
    )
    yield p
    p.close()


def test_deepseek_refuses_an_image_before_sending(proxy: Proxy, deepseek: FakeDeepSeek) -> None:
    with pytest.raises(UnsupportedContent) as info:
        proxy.chat(PROMPT, model="deepseek/deepseek-flash")
    assert info.value.provider == "deepseek"
    assert info.value.part == "messages[0].parts[1]"
    assert "deepseek" in str(info.value) and "messages[0].parts[1]" in str(info.value)
    assert not deepseek.requests


def test_deepseek_takes_text_parts_as_text(proxy: Proxy, deepseek: FakeDeepSeek) -> None:
    proxy.chat(["Hello", "there"], model="deepseek/deepseek-flash")
    body = deepseek.requests[-1].json()
    assert body["messages"] == [{"role": "user", "content": "Hello\n\nthere"}]


@pytest.mark.parametrize("streamed", [False, True])
async def test_fallback_skips_to_a_model_that_takes_the_image(
    proxy: Proxy,
    deepseek: FakeDeepSeek,
    upstream: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
    streamed: bool,
) -> None:
    prompt = PROMPT
    with caplog.at_level(logging.WARNING, logger="llmproxy"):
        if streamed:
            events = [
                e
                async for e in proxy.astream(
                    prompt, model="deepseek/deepseek-flash", fallbacks=["openai/gpt-4o"]
                )
            ]
            response = events[-1].response
            assert response is not None
        else:
            response = await proxy.achat(
                prompt, model="deepseek/deepseek-flash", fallbacks=["openai/gpt-4o"]
            )
    assert (response.provider, response.model) == ("openai", "gpt-4o")
    assert response.text == "Echo: What is in this picture?"
    assert not deepseek.requests
    sent = chat_requests(upstream)[-1]["messages"][0]["content"]
    assert [p["type"] for p in sent] == ["text", "image_url"]
    assert any(
        "falling back from deepseek/deepseek-flash to openai/gpt-4o because it cannot take a"
        " content part"
        in r.getMessage()
        and "messages[0].parts[1]" in r.getMessage()
        for r in caplog.records
    )


def test_budget_reserves_at_least_what_an_image_bills(
    proxy: Proxy, upstream: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    prompt = PROMPT
    with caplog.at_level(logging.WARNING, logger="llmproxy"):
        response = proxy.chat(prompt, model="openai/gpt-4o", max_output_tokens=50)
    billed = response.usage.input_tokens
    # The fake bills the tile formula with gpt-4o's numbers: 1600 x 1200 scales to 1024 x 768,
    # 2 x 2 tiles; plus the text's words and the framing.
    assert billed == 3 + (5 + 3) + 85 + 170 * 4
    counted = tokenizer.count_messages([Message.with_parts("user", prompt)], "gpt-4o")
    reserved = tokenizer.input_margin("gpt-4o").reserve(counted, messages=1)
    assert billed <= counted <= reserved
    assert counted - billed < 100 + PER_MESSAGE_OVERHEAD  # the formula is exact for the image
    assert not [r for r in caplog.records if "more than the" in r.getMessage()]
    # The ledger settled the bill, not the reservation.
    scope = CallScope("openai/gpt-4o", "openai")
    claims = [c for c in (p.claim(scope) for p in proxy.policies) if c is not None]
    rows = list(proxy.ledger.usage(claims))
    assert rows and rows[0].reserved == 0
    assert rows[0].used == response.usage.total_tokens
