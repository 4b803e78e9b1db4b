"""The seed library's DeepSeek faces: ``DeepSeekLLMConfig`` and ``DeepSeekService``, over a Proxy.

They mirror ``OpenAILLMConfig`` / ``OpenAIService``::

    config = DeepSeekLLMConfig(api_key="sk-...", enable=True, use_message=True)
    service = DeepSeekService(config)
    response = await service.chat("Hello, how can I help you?")
    print(response)                      # the answer's text; response.reasoning holds the thinking

    async for chunk in service.chat_stream("Tell me a story."):
        print(chunk, end="")             # answer text only; reasoning is not mixed in
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from llmproxy import LLMMessageHandler
from llmproxy.errors import MissingCredentials
from llmproxy.service import LLMConfig, LLMServiceBase
from llmproxy.tools import Tool
from llmproxy.tools.offer import check_function_tools
from llmproxy_deepseek import env, models
from llmproxy_deepseek.provider import DeepSeekProvider


@attrs.define
class DeepSeekLLMConfig(LLMConfig):
    """Configuration of a :class:`DeepSeekService` (the seed's names, plus a few of ours).

    ``api_key`` falls back on ``DEEPSEEK_API_KEY``; ``enable=False`` makes every call raise
    ConfigError; ``use_message`` turns chat history on (under ``session_id``); ``budget`` is an
    :class:`~llmproxy.LLMBudget` the service's calls count against; ``thinking`` turns DeepSeek's
    thinking mode on or off for every call (None: DeepSeek's default, on). The key never shows
    in the repr.

    ``tools`` are offered on every call: :class:`~llmproxy.tools.Tool` values, plain functions
    or names of tools plugins register; the Proxy runs them in its tool-call loop
    (``tool_choice``, ``max_tool_rounds``). Hosted tools are a ConfigError (only OpenAI's
    Responses API runs them).
    """

    model: str = models.DEFAULT_MODEL
    thinking: bool | None = None
    tools: list[Tool | Callable[..., Any] | str] = attrs.Factory(list)

    def __attrs_post_init__(self) -> None:
        """Check the tools now: function tools only (a hosted tool is a ConfigError)."""
        check_function_tools(self.tools, "deepseek")


class DeepSeekService(LLMServiceBase):
    """The seed's service for DeepSeek: async ``chat`` and ``chat_stream`` over a Proxy.

    History goes to ``message_handler`` when given (an :class:`~llmproxy.LLMMessageHandler`
    subclass), else to the configured store (``LLMPROXY_HISTORY_URL``), else to Redis when the
    seed's Redis variables (``LLM_PROXY_OPEN_AI_IOREDIS_HOST``...) are set (as in the seed; needs
    ``llmproxy-redis-history``), else to embedded SQLite.
    """

    provider_name = "deepseek"

    def __init__(
        self,
        config: DeepSeekLLMConfig | None = None,
        message_handler: LLMMessageHandler | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        proxy_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.config: DeepSeekLLMConfig
        super().__init__(
            config or DeepSeekLLMConfig(),
            message_handler,
            environ=environ,
            proxy_config=proxy_config,
        )

    def _make_provider(self, environ: Mapping[str, str]) -> DeepSeekProvider:
        key = self.config.api_key or env.api_key(environ)
        if not key:
            raise MissingCredentials("deepseek", env.KEY_VARIABLES)
        return DeepSeekProvider(
            api_key=key,
            base_url=self.config.base_url or env.base_url(environ),
            timeout=env.timeout(environ),
        )

    def _tools(self) -> list[Tool | Callable[..., Any] | str]:
        check_function_tools(self.config.tools, "deepseek")
        return list(self.config.tools)

    def _provider_options(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        c = self.config
        kwargs: dict[str, Any] = {}
        if c.thinking is not None and "extra_body" not in overrides:
            kwargs["extra_body"] = {"thinking": {"type": "enabled" if c.thinking else "disabled"}}
        return kwargs
