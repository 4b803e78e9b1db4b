"""Shared fixtures of the Gemini plugin's tests: a FakeGemini upstream and Proxies aimed at it.

Everything goes through the real ``google-genai`` SDK over TCP on 127.0.0.1; nothing is mocked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from llmproxy import Proxy
from llmproxy.testing.fake_gemini import FakeGemini
from llmproxy_gemini.provider import GeminiProvider

#: The key the fake server accepts.
API_KEY = "AIzaTest-4c1b7e0d9a2f86e35wxyz"
FAST_RETRY = {"initial_backoff": 0.001, "max_backoff": 0.01, "jitter": 0.0}


@pytest.fixture
def server() -> Iterator[FakeGemini]:
    """A FakeGemini that requires ``API_KEY``."""
    with FakeGemini(api_key=API_KEY) as srv:
        yield srv


@pytest.fixture
async def provider(server: FakeGemini) -> AsyncIterator[GeminiProvider]:
    """A GeminiProvider aimed at the fake, closed after the test."""
    p = GeminiProvider(api_key=API_KEY, base_url=server.base_url, timeout=10.0)
    yield p
    await p.aclose()


@pytest.fixture
def environ(server: FakeGemini) -> dict[str, str]:
    """The environment a Proxy reads: the key and the fake's URL, nothing of the user's."""
    return {"GEMINI_API_KEY": API_KEY, "GEMINI_BASE_URL": server.base_url}


@pytest.fixture
async def make_proxy(environ: dict[str, str]) -> AsyncIterator[Callable[..., Proxy]]:
    """Build Proxies with memory stores (nothing touches the data dir); close them all."""
    made: list[Proxy] = []

    def make(config: dict[str, Any] | None = None, **kwargs: Any) -> Proxy:
        cfg: dict[str, Any] = {"retry": dict(FAST_RETRY)}
        cfg.update(config or {})
        kwargs.setdefault("history", "memory://")
        kwargs.setdefault("ledger", "memory://")
        proxy = Proxy(cfg, environ=kwargs.pop("environ", environ), **kwargs)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        await proxy.aclose()
