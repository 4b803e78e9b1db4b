"""Anthropic faces in the seed's style: ``AnthropicLLMConfig`` and ``AnthropicService``.

They mirror ``GeminiLLMConfig`` / ``GeminiService``::

    config = AnthropicLLMConfig(api_key="sk-ant-...", enable=True, use_message=True)
    service = AnthropicService(config)
    response = await service.chat("Hello, how can I help you?")
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
from llmproxy_anthropic import env, models
from llmproxy_anthropic.provider import AnthropicProvider


@attrs.define
class AnthropicLLMConfig(LLMConfig):
    """Configuration of an :class:`AnthropicService` (the seed's names, plus ours).

    ``api_key`` falls back on ``ANTHROPIC_API_KEY``; ``thinking_budget`` (tokens) turns
    extended thinking on for every call; ``prompt_cache`` puts a prompt-cache breakpoint on every
    call's last message and ``auto_cache`` (default on) on long system prompts and tool lists,
    as the provider's options of the same names do; ``tools`` are offered on every call
    (function tools only: a hosted tool is a ConfigError).
    """

    model: str = models.DEFAULT_MODEL
    thinking_budget: int | None = None
    prompt_cache: bool = False
    auto_cache: bool = True
    tools: list[Tool | Callable[..., Any] | str] = attrs.Factory(list)

    def __attrs_post_init__(self) -> None:
        """Check the tools now: function tools only."""
        check_function_tools(self.tools, "anthropic")


class AnthropicService(LLMServiceBase):
    """A seed-style service for Claude: async ``chat`` and ``chat_stream`` over a Proxy."""

    provider_name = "anthropic"

    def __init__(
        self,
        config: AnthropicLLMConfig | None = None,
        message_handler: LLMMessageHandler | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        proxy_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.config: AnthropicLLMConfig
        super().__init__(
            config or AnthropicLLMConfig(),
            message_handler,
            environ=environ,
            proxy_config=proxy_config,
        )

    def _make_provider(self, environ: Mapping[str, str]) -> AnthropicProvider:
        key = self.config.api_key or env.api_key(environ)
        if not key:
            raise MissingCredentials("anthropic", env.KEY_VARIABLES)
        return AnthropicProvider(
            api_key=key,
            base_url=self.config.base_url or env.base_url(environ),
            timeout=env.timeout(environ),
            prompt_cache=self.config.prompt_cache,
            auto_cache=self.config.auto_cache,
        )

    def _tools(self) -> list[Tool | Callable[..., Any] | str]:
        check_function_tools(self.config.tools, "anthropic")
        return list(self.config.tools)

    def _provider_options(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        budget = self.config.thinking_budget
        if budget is not None and "thinking" not in overrides:
            return {"thinking": {"type": "enabled", "budget_tokens": budget}}
        return {}
