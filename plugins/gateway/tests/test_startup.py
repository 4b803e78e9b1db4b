"""The gateway's start-up does the first call's set-up before it serves (in-process app)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from llmproxy_gateway import KeyStore
from llmproxy_gateway.app import create_app
from llmproxy_openai.provider import OpenAIProvider
from llmproxy_testing.fake_openai import FakeOpenAI

from .conftest import UPSTREAM_KEY, clean_env


@contextlib.asynccontextmanager
async def running(app: Any) -> AsyncIterator[None]:
    """The app's lifespan: started (start-up complete) inside, shut down after."""
    events: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    answers: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    task = asyncio.ensure_future(app({"type": "lifespan"}, events.get, answers.put))
    await events.put({"type": "lifespan.startup"})
    assert (await answers.get())["type"] == "lifespan.startup.complete"
    try:
        yield
    finally:
        await events.put({"type": "lifespan.shutdown"})
        assert (await answers.get())["type"] == "lifespan.shutdown.complete"
        await task


async def test_start_up_makes_the_default_providers_clients_on_the_serving_loop(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    environ = clean_env(
        OPENAI_API_KEY=UPSTREAM_KEY,
        OPENAI_BASE_URL=upstream.base_url,
        LLMPROXY_DATA_DIR=str(tmp_path),
        LLMPROXY_DEFAULT_MODEL="openai/gpt-4o-mini",
    )
    keys = KeyStore(tmp_path / "keys.db")
    app = create_app(environ=environ, keys=keys)
    provider = app.gateway.proxy.provider("openai")  # type: ignore[attr-defined]
    assert isinstance(provider, OpenAIProvider)
    before = provider._aclients  # read into a name: mypy would narrow the attribute for good
    assert before is None
    sent = len(upstream.requests)
    async with running(app):
        clients = provider._aclients
        assert clients is not None and clients.direct is not None  # made before any request
        assert provider._aloop is asyncio.get_running_loop()
        assert len(upstream.requests) == sent  # warming sends nothing upstream
