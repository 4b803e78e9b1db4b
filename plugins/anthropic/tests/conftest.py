"""Shared fixtures: a FakeAnthropic upstream, a provider and Proxies aimed at it.

Everything goes through the real ``anthropic`` SDK over TCP on 127.0.0.1; nothing is mocked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from llmproxy_anthropic.provider import AnthropicProvider
from llmproxy_testing.fake_anthropic import FakeAnthropic
from llmproxy_testing.proxies import ProxyMaker

#: The key the fake server accepts.
API_KEY = "sk-ant-test-0123456789"


@pytest.fixture
def server() -> Iterator[FakeAnthropic]:
    """A FakeAnthropic that requires ``API_KEY``."""
    with FakeAnthropic(api_key=API_KEY) as srv:
        yield srv


@pytest.fixture
async def provider(server: FakeAnthropic) -> AsyncIterator[AnthropicProvider]:
    """An AnthropicProvider aimed at the fake, closed after the test."""
    p = AnthropicProvider(api_key=API_KEY, base_url=server.base_url, timeout=10.0)
    yield p
    await p.aclose()


@pytest.fixture
def environ(server: FakeAnthropic) -> dict[str, str]:
    """The environment a Proxy reads: the key and the fake's URL, nothing of the user's."""
    return {"ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": server.base_url}


@pytest.fixture
async def make_proxy(environ: dict[str, str]) -> AsyncIterator[ProxyMaker]:
    """Build Proxies with memory stores (nothing touches the data dir); close them all."""
    maker = ProxyMaker(environ)
    yield maker
    await maker.aclose()
