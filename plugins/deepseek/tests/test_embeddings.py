"""DeepSeek has no embeddings model: a clear error naming it, before anything is reserved."""

from __future__ import annotations

import pytest

from llmproxy import LLMBudget, Proxy
from llmproxy.errors import UnsupportedContent
from llmproxy_deepseek.provider import DeepSeekProvider


def test_deepseek_has_no_embeddings() -> None:
    provider = DeepSeekProvider(api_key="sk-x")
    with pytest.raises(UnsupportedContent, match="deepseek: has no embeddings model; use openai/"):
        provider.embed_limits("deepseek-chat")


def test_proxy_embed_names_deepseek() -> None:
    with Proxy(
        {},
        environ={"DEEPSEEK_API_KEY": "sk-x"},
        history="memory://",
        ledger="memory://",
        budgets=[LLMBudget(max_tokens=100)],
    ) as proxy:
        with pytest.raises(UnsupportedContent, match="deepseek: has no embeddings model"):
            proxy.embed("hello", model="deepseek/deepseek-chat")
        [usage] = proxy.usage()
    assert (usage.used, usage.reserved) == (0, 0)
