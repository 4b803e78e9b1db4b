"""Any OpenAI-compatible server, declared in configuration alone.

A ``[providers.NAME]`` table with ``kind = "openai-compatible"`` (checked by
:func:`llmproxy.config.provider_table`) is served by :class:`OpenAICompatibleProvider`: the
OpenAI provider itself (its requests, answers, streams and errors), built with the table's
settings, so ``proxy.chat(model="NAME/MODEL")`` works with no code::

    [providers.groq]
    kind = "openai-compatible"
    base_url = "https://api.groq.com/openai/v1"
    api_key_env = "GROQ_API_KEY"
    max_output_tokens = { "llama-3.3-70b-versatile" = 32768 }
    prices = { "llama-3.3-70b-versatile" = { input = 0.59, output = 0.79 } }

Differences from ``openai``: the output cap goes out as ``max_tokens`` (what every compatible
server takes), there is no Responses API (hosted tools are a ConfigError naming the provider),
and a model's output limit is the table's ``max_output_tokens`` (None otherwise). A server that
leaves usage out of a stream is counted from what arrived, as for any provider.

Authentication: the key goes out as ``Authorization: Bearer KEY``, or in the header named by
``api_key_header`` (Azure OpenAI's ``api-key``) and then with no ``Authorization`` at all. A
provider without a key (a local server) sends no ``Authorization`` header either, unless its
``default_headers`` set one. The SDK insists on a key, so it is given :data:`NO_KEY` and every
request removes the header with the SDK's ``Omit`` (on the SDK's path and the aiohttp fast
path alike). The same way, the ``OpenAI-Organization`` and ``OpenAI-Project`` headers the SDK
fills from the process's ``OPENAI_ORG_ID`` and ``OPENAI_PROJECT_ID`` are never sent to another
server (unless the table's ``default_headers`` set them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, cast

import openai

from llmproxy import env as envvars
from llmproxy.errors import ConfigError, MissingCredentials
from llmproxy.registry import ProviderSettings
from llmproxy.secret import Secret
from llmproxy.types import ChatRequest, EmbedRequest
from llmproxy_openai import env
from llmproxy_openai.provider import API, AsyncHTTP, OpenAIProvider

NO_KEY: str = "no-key"
"""The key the SDK is given for a server declared without one (the SDK needs some key); it is
never sent: requests go out without ``Authorization``."""

#: Headers the SDK fills from the process's ``OPENAI_ORG_ID`` and ``OPENAI_PROJECT_ID``: OpenAI
#: account identifiers, never sent to another server unless a table's ``default_headers`` say.
ACCOUNT_HEADERS = ("OpenAI-Organization", "OpenAI-Project")


class OpenAICompatibleProvider(OpenAIProvider):
    """The OpenAI provider against another OpenAI-compatible server (see the module docs).

    >>> OpenAICompatibleProvider(name="ollama", base_url="http://localhost:11434/v1")
    OpenAICompatibleProvider(name='ollama', base_url='http://localhost:11434/v1')
    """

    output_limit_param: ClassVar[str] = "max_tokens"
    responses_api: ClassVar[bool] = False

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        api_key: str | Secret | None = None,
        timeout: float | None = None,
        connect_timeout: float | None = None,
        default_headers: Mapping[str, str] | None = None,
        default_query: Mapping[str, str] | None = None,
        max_output_tokens: Mapping[str, int] | None = None,
        api: API = "auto",
        async_http: AsyncHTTP = "aiohttp",
        api_key_header: str | None = None,
    ) -> None:
        headers = dict(default_headers or {})
        key = api_key.get() if isinstance(api_key, Secret) else api_key
        if api_key_header is not None:
            if not key:
                raise ConfigError(
                    f"provider '{name}': api_key_header needs a key (api_key_env or api_key)",
                    path=f"providers.{name}.api_key_header",
                )
            headers[api_key_header] = key
        #: Whether requests go out without ``Authorization`` (no key, or the key in another
        #: header), unless ``default_headers`` set one.
        given = {h.lower() for h in headers}
        self.omits_authorization = (not key or api_key_header is not None) and (
            "authorization" not in given
        )
        omitted = [h for h in ACCOUNT_HEADERS if h.lower() not in given]
        if self.omits_authorization:
            omitted.append("Authorization")
        #: The headers every request removes (the SDK's ``Omit``).
        self.omitted_headers: dict[str, Any] = {h: openai.Omit() for h in omitted}
        super().__init__(
            api_key=api_key or NO_KEY,  # the real key stays the secret that errors redact
            base_url=base_url,
            timeout=timeout,
            connect_timeout=connect_timeout,
            name=name,
            default_headers=headers or None,
            default_query=default_query,
            api=api,
            async_http=async_http,
        )
        self.output_limits: dict[str, int] = dict(max_output_tokens or {})

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> OpenAICompatibleProvider:
        """Build the provider from its ``[providers.NAME]`` table.

        The key: the table's ``api_key``, else the variable named by ``api_key_env`` (unset or
        empty: :class:`MissingCredentials` naming it), else none (no ``Authorization`` is
        sent). ``api_key_header`` names the header the key goes in instead of ``Authorization``.
        ``timeout`` is the read timeout, the ``connect_timeout`` option the connect one;
        ``api`` and ``async_http`` are as for ``openai`` (``async_http`` else
        ``LLMPROXY_OPENAI_ASYNC_HTTP``).
        """
        options = settings.options
        key: str | None = settings.api_key.get() if settings.api_key else None
        variable = options.get("api_key_env")
        if key is None and variable:
            key = settings.environ.get(str(variable)) or None
            if key is None:
                raise MissingCredentials(settings.name, (str(variable),))
        if not settings.base_url:
            raise ConfigError(
                f"providers.{settings.name}.base_url is required",
                path=f"providers.{settings.name}.base_url",
            )
        return cls(
            name=settings.name,
            base_url=settings.base_url,
            api_key=key,
            timeout=settings.timeout,
            connect_timeout=envvars.seconds_option(options, "connect_timeout", settings.name),
            default_headers=options.get("default_headers"),
            default_query=options.get("default_query"),
            max_output_tokens=options.get("max_output_tokens"),
            api_key_header=options.get("api_key_header"),
            api=options.get("api") or "auto",
            async_http=cast(
                "AsyncHTTP",
                options.get("async_http") or env.async_http(settings.environ) or "aiohttp",
            ),
        )

    def _attempt(
        self, request: ChatRequest, *, stream: bool
    ) -> tuple[str, dict[str, Any], openai.RequestOptions]:
        """The base attempt, without the :attr:`omitted_headers` (a call's own headers win)."""
        path, body, options = super()._attempt(request, stream=stream)
        options["headers"] = {**self.omitted_headers, **(options.get("headers") or {})}
        return path, body, options

    def _embed_args(self, request: EmbedRequest) -> dict[str, Any]:
        """The base arguments, without the :attr:`omitted_headers`."""
        args = super()._embed_args(request)
        args["extra_headers"] = {**self.omitted_headers, **(args.get("extra_headers") or {})}
        return args

    def max_output_tokens(self, model: str) -> int | None:
        """The model's output limit from the table's ``max_output_tokens``, None when unset."""
        return self.output_limits.get(model)
