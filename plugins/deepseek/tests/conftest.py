"""Shared fixtures of the DeepSeek plugin's tests: a FakeDeepSeek upstream and Proxies aimed at it.

Everything goes through the real ``openai`` SDK over TCP on 127.0.0.1; nothing is mocked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from llmproxy import Proxy
from llmproxy.testing.fake_deepseek import FakeDeepSeek
from llmproxy_deepseek.provider import DeepSeekProvider

#: The key the fake server accepts. Long enough that its masked form differs from it.
API_KEY = "sk-ds-test-7e1c0a94b2f86d35wxyz"
MODEL = "deepseek-flash"
FAST_RETRY = {"initial_backoff": 0.001, "max_backoff": 0.01, "jitter": 0.0}


@pytest.fixture
def server() -> Iterator[FakeDeepSeek]:
    """A FakeDeepSeek that requires ``API_KEY``."""
    with FakeDeepSeek(api_key=API_KEY) as srv:
        yield srv


@pytest.fixture
async def provider(server: FakeDeepSeek) -> AsyncIterator[DeepSeekProvider]:
    """A DeepSeekProvider aimed at the fake, closed after the test."""
    p = DeepSeekProvider(api_key=API_KEY, base_url=server.base_url, timeout=10.0)
    yield p
    await p.aclose()


@pytest.fixture
def environ(server: FakeDeepSeek) -> dict[str, str]:
    """The environment a Proxy reads: the key and the fake's URL, nothing of the user's."""
    return {"DEEPSEEK_API_KEY": API_KEY, "DEEPSEEK_BASE_URL": server.base_url}


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
