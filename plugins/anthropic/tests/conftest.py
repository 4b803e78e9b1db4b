"""Shared fixtures: a FakeAnthropic upstream and a provider aimed at it (real SDK, real TCP)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from llmproxy_anthropic.provider import AnthropicProvider
from llmproxy_testing.fake_anthropic import FakeAnthropic

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
