"""Fixtures for the cross-distribution tests: a real fake upstream and Proxy factories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmproxy import Proxy
from llmproxy.testing.fake_openai import FakeOpenAI

API_KEY = "sk-test-SECRET0123456789abcdefXYZ"

FAST_RETRY = {"initial_backoff": 0.001, "max_backoff": 0.01, "jitter": 0.0}


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
def make_proxy(env: dict[str, str]) -> Iterator[Callable[..., Proxy]]:
    made: list[Proxy] = []

    def make(config: dict[str, Any] | None = None, **kwargs: Any) -> Proxy:
        cfg = {"retry": dict(FAST_RETRY)}
        cfg.update(config or {})
        kwargs.setdefault("history", "memory://")
        kwargs.setdefault("ledger", "memory://")
        proxy = Proxy(cfg, environ=env, **kwargs)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


def chat_requests(server: FakeOpenAI) -> list[dict[str, Any]]:
    """The JSON bodies of the chat requests the fake received."""
    return [r.json() for r in server.requests if r.path.endswith("/chat/completions")]
