"""Shared fixtures of the Gemini plugin's tests: a FakeGemini upstream and Proxies aimed at it.

Everything goes through the real ``google-genai`` SDK over TCP on 127.0.0.1; nothing is mocked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from llmproxy_gemini.provider import GeminiProvider
from llmproxy_testing.fake_gemini import FakeGemini
from llmproxy_testing.proxies import ProxyMaker

#: The key the fake server accepts.
API_KEY = "AIzaTest-4c1b7e0d9a2f86e35wxyz"


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
async def make_proxy(environ: dict[str, str]) -> AsyncIterator[ProxyMaker]:
    """Build Proxies with memory stores (nothing touches the data dir); close them all."""
    maker = ProxyMaker(environ)
    yield maker
    await maker.aclose()
