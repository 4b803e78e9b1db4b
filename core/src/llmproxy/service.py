"""The seed's ``llm_service_base``: one service face over a Proxy, for one provider.

Provider plugins subclass :class:`LLMServiceBase` for their seed-style services
(``OpenAIService``, ``DeepSeekService``, ``GeminiService``): they say how to build their provider
from the config and, if needed, which provider-specific options each call carries.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import attrs

from llmproxy import env as envvars
from llmproxy import redis_url
from llmproxy.budget.policy import LLMBudget
from llmproxy.config import ProxyConfig, load_config
from llmproxy.errors import ConfigError
from llmproxy.history.handler import LLMMessageHandler
from llmproxy.plugins import Plugins, load_plugins
from llmproxy.provider import Provider
from llmproxy.proxy import Proxy
from llmproxy.types import ChatResponse

#: The seed's Redis variables: any of them set tells a seed service to keep history in Redis.
SEED_REDIS_VARIABLES = (
    redis_url.SEED_HOST,
    redis_url.SEED_PORT,
    redis_url.SEED_DB_INDEX,
    redis_url.SEED_KEY_PREFIX,
)


def seed_history_url(
    config: ProxyConfig, environ: Mapping[str, str], plugins: Plugins, *, required: bool
) -> str | None:
    """The history URL a seed-style service uses instead of the configured default, or None.

    The seed kept history in Redis: when any of its Redis variables (``SEED_REDIS_VARIABLES``:
    ``LLM_PROXY_OPEN_AI_IOREDIS_HOST``, ``..._PORT``, ``..._DB_INDEX``, ``..._KEY_PREFIX``) is
    set and no history URL is configured (``LLMPROXY_HISTORY_URL``, the TOML file or
    ``proxy_config``), this is a bare ``redis://``, which the Redis history plugin resolves from
    those variables (``LLMPROXY_REDIS_URL`` still wins over them). Without that plugin it is a
    :class:`~llmproxy.ConfigError` when ``required`` (history is on), else None.
    """
    if config.history_url:
        return None
    seed_set = [name for name in SEED_REDIS_VARIABLES if environ.get(name, "").strip()]
    if not seed_set:
        return None
    if "redis" in plugins.registry.history_stores:
        return "redis://"
    if not required:
        return None
    raise ConfigError(
        f"{', '.join(seed_set)} {'is' if len(seed_set) == 1 else 'are'} set, so this service"
        " keeps history in Redis as the seed library did, but no installed plugin provides"
        " redis:// history: pip install llmproxy-redis-history (or set"
        f" {envvars.HISTORY_URL} to choose another store, e.g. sqlite:///history.db)",
        path=envvars.HISTORY_URL,
    )


@attrs.define
class LLMConfig:
    """The seed's ``llm_config``: what every seed-style service config has.

    ``api_key`` (never shown in the repr; the provider's variable when None), ``enable``
    (False: every call raises ConfigError), ``use_message`` (history on, under
    ``session_id``), ``budget`` (an :class:`~llmproxy.LLMBudget` every call counts against),
    ``model``, ``base_url``, ``system``, ``max_output_tokens``, ``temperature``, and ``tools``
    offered on every call with ``tool_choice`` and ``max_tool_rounds``. Provider plugins
    subclass it (``OpenAILLMConfig``...) with their default model and own options.
    """

    api_key: str | None = attrs.field(default=None, repr=False)
    enable: bool = True
    use_message: bool = True
    budget: LLMBudget | None = None
    model: str = ""
    base_url: str | None = None
    session_id: str = "default"
    system: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    tools: list[Any] = attrs.Factory(list)
    tool_choice: str | None = None
    max_tool_rounds: int | None = None


class LLMServiceBase:
    """Async ``chat`` and ``chat_stream`` (and blocking twins) over a :class:`~llmproxy.Proxy`.

    History goes to ``message_handler`` when given (an :class:`~llmproxy.LLMMessageHandler`
    subclass), else to the configured store (``LLMPROXY_HISTORY_URL``), else, as in the seed, to
    Redis when any of the seed's Redis variables (``LLM_PROXY_OPEN_AI_IOREDIS_HOST``...) is set
    (this needs ``llmproxy-redis-history``; see :func:`seed_history_url`), else to SQLite. The
    config's ``budget`` counts every call. ``environ`` is where the provider's key and settings
    are read (``os.environ`` by default); ``proxy_config`` holds Proxy configuration.
    """

    provider_name: ClassVar[str]

    def __init__(
        self,
        config: LLMConfig,
        message_handler: LLMMessageHandler | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        proxy_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        environ = os.environ if environ is None else environ
        budget = config.budget
        proxy_conf = load_config(proxy_config, environ=environ)
        plugins = load_plugins(environ)
        history = None
        if message_handler is None:
            history = seed_history_url(proxy_conf, environ, plugins, required=config.use_message)
        self.proxy = Proxy(
            proxy_conf,
            budgets=[budget] if budget is not None else [],
            history=history,
            message_handler=message_handler,
            plugins=plugins,
            providers={self.provider_name: self._make_provider(environ)},
            environ=environ,
        )

    def _make_provider(self, environ: Mapping[str, str]) -> Provider:
        """Build the provider from ``self.config`` and the environment."""
        raise NotImplementedError(f"{type(self).__name__} must implement _make_provider")

    def _tools(self) -> Sequence[Any]:
        """The tools every call offers (default: the config's ``tools`` as they are)."""
        return list(self.config.tools)

    def _provider_options(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """Provider-specific call options from the config (``overrides`` are the call's own)."""
        return {}

    def _call_kwargs(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        c = self.config
        if not c.enable:
            raise ConfigError(
                f"this {type(self).__name__} is disabled ({type(c).__name__}.enable=False)",
                path="enable",
            )
        kwargs: dict[str, Any] = {
            "model": f"{self.provider_name}/{c.model}",
            "system": c.system,
            "session_id": c.session_id if c.use_message else None,
            "max_output_tokens": c.max_output_tokens,
            "temperature": c.temperature,
            **self._provider_options(overrides),
        }
        tools = self._tools()
        if tools:
            kwargs["tools"] = list(tools)
            kwargs["tool_choice"] = c.tool_choice
            kwargs["max_tool_rounds"] = c.max_tool_rounds
        kwargs.update(overrides)
        return kwargs

    async def chat(self, text: str, **kwargs: Any) -> ChatResponse:
        """Send ``text`` and return the answer (``str(response)`` is its text)."""
        return await self.proxy.achat(text, **self._call_kwargs(kwargs))

    async def chat_stream(self, text: str, **kwargs: Any) -> AsyncIterator[str]:
        """Yield the answer's text as it arrives (reasoning is not mixed in)."""
        async with self.proxy.astream(text, **self._call_kwargs(kwargs)) as stream:
            async for event in stream:
                if event.text:
                    yield event.text

    def chat_sync(self, text: str, **kwargs: Any) -> ChatResponse:
        """Blocking :meth:`chat`."""
        return self.proxy.chat(text, **self._call_kwargs(kwargs))

    def chat_stream_sync(self, text: str, **kwargs: Any) -> Iterator[str]:
        """Blocking :meth:`chat_stream`."""
        with self.proxy.stream(text, **self._call_kwargs(kwargs)) as stream:
            for event in stream:
                if event.text:
                    yield event.text

    def close(self) -> None:
        """Close connections and stores."""
        self.proxy.close()

    async def aclose(self) -> None:
        """Close connections (async ones too) and stores; call it inside the event loop."""
        await self.proxy.aclose()
