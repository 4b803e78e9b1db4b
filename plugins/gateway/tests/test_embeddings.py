"""``POST /v1/embeddings`` through the real openai SDK against ``llmproxy serve``."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2 as httpx
import openai
import pytest

from llmproxy_testing._embeddings import fake_vector
from llmproxy_testing.fake_openai import FakeOpenAI

from .conftest import GatewayProcess, serve_gateway


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """The module's gateway, with a DeepSeek key (never used: DeepSeek has no embeddings)."""
    yield from serve_gateway(
        upstream, tmp_path_factory.mktemp("embeddings"), DEEPSEEK_API_KEY="sk-unused"
    )


def client(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def embedding_bodies(upstream: FakeOpenAI) -> list[dict[str, object]]:
    return [r.json() for r in upstream.requests if r.path == "/v1/embeddings"]


def test_float_and_base64_through_the_sdk(gateway: GatewayProcess, upstream: FakeOpenAI) -> None:
    sdk = client(gateway, gateway.key("emma"))
    texts = ["the quick brown fox", "jumps"]
    # The SDK asks for base64 by default and decodes it; float is asked for explicitly.
    for encoding in (None, "float", "base64"):
        kwargs = {} if encoding is None else {"encoding_format": encoding}
        r = sdk.embeddings.create(
            model="text-embedding-3-small",
            input=texts,
            dimensions=8,
            **kwargs,  # type: ignore[arg-type]
        )
        assert r.object == "list" and r.model == "text-embedding-3-small"
        assert [d.index for d in r.data] == [0, 1]
        if encoding == "base64":  # asked for explicitly: the SDK hands the string over
            import base64
            import struct

            decoded = [
                list(struct.unpack("<8f", base64.b64decode(str(d.embedding)))) for d in r.data
            ]
        else:
            decoded = [list(d.embedding) for d in r.data]
        assert decoded == [fake_vector(t, 8) for t in texts]
        assert (r.usage.prompt_tokens, r.usage.total_tokens) == (5, 5)
    sent = embedding_bodies(upstream)[-1]
    assert sent["input"] == texts and sent["dimensions"] == 8


def test_a_single_string_and_the_usage_log(gateway: GatewayProcess) -> None:
    key = gateway.key("emil")
    key_id = key.split("-")[2]
    r = client(gateway, key).embeddings.create(model="text-embedding-3-small", input="hello")
    assert len(r.data) == 1 and len(r.data[0].embedding) == 16
    [row] = gateway.rows(1, key=key_id)
    assert (row.operation, row.model, row.input_tokens, row.output_tokens, row.user) == (
        "embed",
        "openai/text-embedding-3-small",
        1,
        0,
        "emil",
    )


def test_the_key_budget_applies_all_or_nothing(
    gateway: GatewayProcess, upstream: FakeOpenAI
) -> None:
    sdk = client(gateway, gateway.key("ezra", "tokens:10/day"))
    before = len(embedding_bodies(upstream))
    with pytest.raises(openai.RateLimitError) as info:
        sdk.embeddings.create(model="text-embedding-3-small", input=["one two three"] * 4)
    assert info.value.code == "budget_exceeded"
    assert len(embedding_bodies(upstream)) == before  # nothing was sent upstream
    assert sdk.embeddings.create(model="text-embedding-3-small", input=["one two"] * 5).data


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "text-embedding-3-small", "input": [[1, 2, 3]]}, "input"),
        ({"model": "text-embedding-3-small", "input": [1, 2]}, "input"),
        ({"model": "text-embedding-3-small", "input": []}, "input"),
        ({"model": "text-embedding-3-small", "input": ["ok", ""]}, "input"),
        ({"input": "x"}, "model"),
        (
            {"model": "text-embedding-3-small", "input": "x", "encoding_format": "hex"},
            "encoding_format",
        ),
        ({"model": "text-embedding-3-small", "input": "x", "dimensions": 0}, "dimensions"),
    ],
)
def test_bad_bodies_are_400(gateway: GatewayProcess, body: dict[str, object], param: str) -> None:
    r = httpx.post(
        gateway.url + "/v1/embeddings",
        json=body,
        headers={"Authorization": f"Bearer {gateway.key('eve')}"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


def test_deepseek_is_refused_by_name(gateway: GatewayProcess) -> None:
    r = httpx.post(
        gateway.url + "/v1/embeddings",
        json={"model": "deepseek/deepseek-chat", "input": "x"},
        headers={"Authorization": f"Bearer {gateway.key('eve')}"},
    )
    assert r.status_code == 400, r.text
    assert "deepseek: has no embeddings model" in r.json()["error"]["message"]
