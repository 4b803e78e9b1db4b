"""Shared fixtures of the DeepSeek plugin's tests: a FakeDeepSeek upstream and Proxies aimed at it.

Everything goes through the real ``openai`` SDK over TCP on 127.0.0.1; nothing is mocked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from llmproxy_deepseek.provider import DeepSeekProvider
from llmproxy_testing.fake_deepseek import FakeDeepSeek
from llmproxy_testing.proxies import ProxyMaker

#: The key the fake server accepts. Long enough that its masked form differs from it.
API_KEY = "sk-ds-test-7e1c0a94b2f86d35wxyz"
MODEL = "deepseek-flash"


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
async def make_proxy(environ: dict[str, str]) -> AsyncIterator[ProxyMaker]:
    """Build Proxies with memory stores (nothing touches the data dir); close them all."""
    maker = ProxyMaker(environ)
    yield maker
    await maker.aclose()
