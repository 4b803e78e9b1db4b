"""Fixtures for the cross-distribution tests: a real fake upstream and Proxy factories."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_testing.proxies import ProxyMaker

API_KEY = "sk-test-SECRET0123456789abcdefXYZ"


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=API_KEY) as server:
        yield server


@pytest.fixture
def env(upstream: FakeOpenAI, tmp_path: Path) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": upstream.base_url,
        "LLMPROXY_DATA_DIR": str(tmp_path / "data"),
    }


@pytest.fixture
def make_proxy(env: dict[str, str]) -> Iterator[ProxyMaker]:
    maker = ProxyMaker(env)
    yield maker
    maker.close()


def chat_requests(server: FakeOpenAI) -> list[dict[str, Any]]:
    """The JSON bodies of the chat requests the fake received."""
    return [r.json() for r in server.requests if r.path.endswith("/chat/completions")]
