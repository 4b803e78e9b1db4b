"""The entry point llmproxy loads: registers ``openai``, ``openai-compatible`` and prices.

Discovery imports this module for every command, so it imports no SDK: the provider module
(and with it the openai SDK) is imported when the provider is first made.
"""

from __future__ import annotations

import llmproxy
from llmproxy.config import COMPATIBLE_KIND
from llmproxy.provider import Provider
from llmproxy.registry import ProviderSettings, RegisterPrice, RegisterProvider
from llmproxy_openai import env, models


def make_provider(settings: ProviderSettings) -> Provider:
    """Build the ``openai`` provider (see ``OpenAIProvider.from_settings``)."""
    from llmproxy_openai.provider import OpenAIProvider

    return OpenAIProvider.from_settings(settings)


def make_compatible(settings: ProviderSettings) -> Provider:
    """Build a configured ``openai-compatible`` provider (``OpenAICompatibleProvider``)."""
    from llmproxy_openai.compatible import OpenAICompatibleProvider

    return OpenAICompatibleProvider.from_settings(settings)


@llmproxy.hookimpl
def register_providers(register: RegisterProvider) -> None:
    """Register ``openai``, and ``openai-compatible`` for ``[providers.NAME]`` tables of that kind.

    ``openai``: Chat Completions and the Responses API through the official SDK.
    ``openai-compatible`` serves every configured table with ``kind = "openai-compatible"``
    under the table's own name (``ollama/llama3.3``), see :mod:`llmproxy_openai.compatible`.
    """
    register(
        "openai",
        make_provider,
        description="OpenAI Chat Completions and Responses API (official openai SDK)",
        env=(env.API_KEY, env.SEED_API_KEY, env.BASE_URL),
    )
    register(
        COMPATIBLE_KIND,
        make_compatible,
        description='any OpenAI-compatible server: [providers.NAME] kind = "openai-compatible"',
    )


@llmproxy.hookimpl
def register_prices(register: RegisterPrice) -> None:
    """Register what this plugin adds over the default table (genai-prices).

    ``models.PRICES`` by exact name, ``models.PRICE_PATTERNS`` as declared patterns; see
    there for what and why.
    """
    for name, price in models.PRICES.items():
        register(f"openai/{name}", price)
    for name, price in models.PRICE_PATTERNS.items():
        register(f"openai/{name}", price, pattern=True)
