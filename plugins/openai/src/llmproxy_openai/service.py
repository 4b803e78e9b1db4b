"""The seed library's faces: ``OpenAILLMConfig`` and ``OpenAIService``, thin over a Proxy.

Code written for the seed keeps working::

    config = OpenAILLMConfig(api_key="sk-...", enable=True, use_message=True)
    service = OpenAIService(config=config)
    response = await service.chat("Hello, how can I help you?")
    print(response)                      # the answer's text

    async for chunk in service.chat_stream("Tell me a story."):
        print(chunk, end="")

Tools (the seed's ``OpenAIFileSearch``, ``OpenAICodeInterpreter``, ``OpenAIFunctionCall``, see
:mod:`llmproxy_openai.tools`) go on the config; every call offers the enabled ones, and the
Proxy runs function tools in its tool-call loop (hosted tools send the call to the Responses
API)::

    config = OpenAILLMConfig(api_key="sk-...", tools=[OpenAIFunctionCall(
        name="get_weather_today", instance_function=get_weather_today_assistant_func,
        parameters={...})])
    response = await OpenAIService(config).chat("What is the weather in Hanoi today?")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from llmproxy import LLMMessageHandler
from llmproxy.errors import MissingCredentials
from llmproxy.service import LLMConfig, LLMServiceBase
from llmproxy.tools import HostedTool, Tool
from llmproxy_openai import env, models
from llmproxy_openai.provider import API, OpenAIProvider
from llmproxy_openai.tools import OpenAITool, core_tools


@attrs.define
class OpenAILLMConfig(LLMConfig):
    """Configuration of an :class:`OpenAIService` (the seed's names, plus a few of ours).

    ``api_key`` falls back on ``OPENAI_API_KEY`` / ``LLM_PROXY_OPEN_AI_DEFAULT_OPEN_API_KEY``;
    ``enable=False`` makes every call raise ConfigError; ``use_message`` turns chat history on
    (under ``session_id``); ``budget`` is an :class:`~llmproxy.LLMBudget` the service's calls
    count against. The key never shows in the repr.

    ``tools`` are offered on every call: the seed's ``OpenAIFileSearch``,
    ``OpenAICodeInterpreter`` and ``OpenAIFunctionCall`` (disabled ones are left out), or core
    ``Tool``/``HostedTool`` values. ``vector_store_ids`` are the stores a file search without
    its own searches (what the seed's assistant had attached). They are checked here: an
    enabled file search with no stores, or a function call without a callable
    ``instance_function``, is a ConfigError naming the field (``tools[0].vector_store_ids``).
    ``tool_choice`` and ``max_tool_rounds`` go to the Proxy's tool-call loop; ``api`` picks
    the OpenAI API (``auto``: Chat Completions, the Responses API when a hosted tool is
    offered; ``chat``; ``responses``).
    """

    model: str = models.DEFAULT_MODEL
    tools: list[OpenAITool] = attrs.Factory(list)
    vector_store_ids: list[str] | None = None
    api: API = "auto"

    def __attrs_post_init__(self) -> None:
        """Check the tools now, so a bad one fails where it is configured."""
        self.core_tools()

    def core_tools(self) -> tuple[Tool | HostedTool, ...]:
        """Return the enabled tools as core tools (see :func:`llmproxy_openai.tools.core_tools`)."""
        return core_tools(self.tools, vector_store_ids=self.vector_store_ids)


class OpenAIService(LLMServiceBase):
    """The seed's service: async ``chat`` and ``chat_stream`` over a :class:`~llmproxy.Proxy`.

    History goes to ``message_handler`` when given (an :class:`~llmproxy.LLMMessageHandler`
    subclass), else to the configured store (``LLMPROXY_HISTORY_URL``), else to Redis when the
    seed's Redis variables (``LLM_PROXY_OPEN_AI_IOREDIS_HOST``...) are set (as in the seed; needs
    ``llmproxy-redis-history``), else to embedded SQLite.
    """

    provider_name = "openai"

    def __init__(
        self,
        config: OpenAILLMConfig | None = None,
        message_handler: LLMMessageHandler | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        proxy_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.config: OpenAILLMConfig
        super().__init__(
            config or OpenAILLMConfig(),
            message_handler,
            environ=environ,
            proxy_config=proxy_config,
        )

    def _make_provider(self, environ: Mapping[str, str]) -> OpenAIProvider:
        key = self.config.api_key or env.api_key(environ)
        if not key:
            raise MissingCredentials("openai", env.KEY_VARIABLES)
        return OpenAIProvider(
            api_key=key,
            base_url=self.config.base_url or env.base_url(environ),
            timeout=env.timeout(environ),
            api=self.config.api,
        )

    def _tools(self) -> Sequence[Tool | HostedTool]:
        return self.config.core_tools()
