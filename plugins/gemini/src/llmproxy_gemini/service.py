"""Gemini faces in the seed's style: ``GeminiLLMConfig`` and ``GeminiService``, over a Proxy.

They mirror ``OpenAILLMConfig`` / ``OpenAIService``::

    config = GeminiLLMConfig(api_key="AIza...", enable=True, use_message=True)
    service = GeminiService(config)
    response = await service.chat("Hello, how can I help you?")
    print(response)                      # the answer's text; response.reasoning holds the thinking

    async for chunk in service.chat_stream("Tell me a story."):
        print(chunk, end="")             # answer text only; reasoning is not mixed in
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import attrs

from llmproxy import LLMBudget, LLMMessageHandler, Proxy
from llmproxy.config import load_config
from llmproxy.errors import ConfigError, MissingCredentials
from llmproxy.tools import Tool
from llmproxy.tools.offer import check_function_tools
from llmproxy.types import ChatResponse
from llmproxy_gemini import env, models
from llmproxy_gemini.provider import GeminiProvider


@attrs.define
class GeminiLLMConfig:
    """Configuration of a :class:`GeminiService` (the seed's names, plus a few of ours).

    ``api_key`` falls back on ``GEMINI_API_KEY`` / ``GOOGLE_API_KEY``; ``enable=False`` makes
    every call raise ConfigError; ``use_message`` turns chat history on (under ``session_id``);
    ``budget`` is an :class:`~llmproxy.LLMBudget` the service's calls count against;
    ``include_thoughts`` asks for (or not) the model's thought summaries on every call (None:
    the provider's default, on for thinking models). The key never shows in the repr.

    ``tools`` are offered on every call: :class:`~llmproxy.tools.Tool` values, plain functions
    or names of tools plugins register; the Proxy runs them in its tool-call loop
    (``tool_choice``, ``max_tool_rounds``). Hosted tools are a ConfigError (only OpenAI's
    Responses API runs them).
    """

    api_key: str | None = attrs.field(default=None, repr=False)
    enable: bool = True
    use_message: bool = True
    budget: LLMBudget | None = None
    model: str = models.DEFAULT_MODEL
    base_url: str | None = None
    session_id: str = "default"
    system: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    include_thoughts: bool | None = None
    tools: list[Tool | Callable[..., Any] | str] = attrs.Factory(list)
    tool_choice: str | None = None
    max_tool_rounds: int | None = None

    def __attrs_post_init__(self) -> None:
        """Check the tools now: function tools only (a hosted tool is a ConfigError)."""
        check_function_tools(self.tools, "gemini")


class GeminiService:
    """A seed-style service for Gemini: async ``chat`` and ``chat_stream`` over a Proxy.

    History goes to ``message_handler`` when given (an :class:`~llmproxy.LLMMessageHandler`
    subclass), else to the configured store (``LLMPROXY_HISTORY_URL``, embedded SQLite by default).
    """

    def __init__(
        self,
        config: GeminiLLMConfig | None = None,
        message_handler: LLMMessageHandler | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        proxy_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config or GeminiLLMConfig()
        environ = os.environ if environ is None else environ
        key = self.config.api_key or env.api_key(environ)
        if not key:
            raise MissingCredentials("gemini", env.KEY_VARIABLES)
        provider = GeminiProvider(
            api_key=key,
            base_url=self.config.base_url or env.base_url(environ),
            timeout=env.timeout(environ),
            api_version=env.api_version(environ),
        )
        self.proxy = Proxy(
            load_config(proxy_config, environ=environ),
            budgets=[self.config.budget] if self.config.budget is not None else [],
            message_handler=message_handler,
            providers={"gemini": provider},
            environ=environ,
        )

    def _kwargs(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        c = self.config
        if not c.enable:
            raise ConfigError(
                "this GeminiService is disabled (GeminiLLMConfig.enable=False)", path="enable"
            )
        kwargs: dict[str, Any] = {
            "model": f"gemini/{c.model}",
            "system": c.system,
            "session_id": c.session_id if c.use_message else None,
            "max_output_tokens": c.max_output_tokens,
            "temperature": c.temperature,
        }
        if c.include_thoughts is not None and "thinking_config" not in overrides:
            kwargs["thinking_config"] = {"include_thoughts": c.include_thoughts}
        if c.tools:
            check_function_tools(c.tools, "gemini")
            kwargs["tools"] = list(c.tools)
            kwargs["tool_choice"] = c.tool_choice
            kwargs["max_tool_rounds"] = c.max_tool_rounds
        kwargs.update(overrides)
        return kwargs

    async def chat(self, text: str, **kwargs: Any) -> ChatResponse:
        """Send ``text`` and return the answer (``str(response)`` is its text)."""
        return await self.proxy.achat(text, **self._kwargs(kwargs))

    async def chat_stream(self, text: str, **kwargs: Any) -> AsyncIterator[str]:
        """Yield the answer's text as it arrives (reasoning deltas are left out)."""
        async with self.proxy.astream(text, **self._kwargs(kwargs)) as stream:
            async for event in stream:
                if event.text:
                    yield event.text

    def chat_sync(self, text: str, **kwargs: Any) -> ChatResponse:
        """Blocking :meth:`chat`."""
        return self.proxy.chat(text, **self._kwargs(kwargs))

    def chat_stream_sync(self, text: str, **kwargs: Any) -> Iterator[str]:
        """Blocking :meth:`chat_stream`."""
        with self.proxy.stream(text, **self._kwargs(kwargs)) as stream:
            for event in stream:
                if event.text:
                    yield event.text

    def close(self) -> None:
        """Close connections and stores."""
        self.proxy.close()

    async def aclose(self) -> None:
        """Close connections (async ones too) and stores; call it inside the event loop."""
        await self.proxy.aclose()
