"""The entry point llmproxy loads: registers the ``deepseek`` provider and its prices.

Discovery imports this module for every command, so it imports no SDK: the provider module
(and with it the SDK) is imported when the provider is first made.
"""

from __future__ import annotations

import llmproxy
from llmproxy.provider import Provider
from llmproxy.registry import ProviderSettings, RegisterPrice, RegisterProvider
from llmproxy_deepseek import env, models


def make_provider(settings: ProviderSettings) -> Provider:
    """Build the ``deepseek`` provider (see ``DeepSeekProvider.from_settings``)."""
    from llmproxy_deepseek.provider import DeepSeekProvider

    return DeepSeekProvider.from_settings(settings)


@llmproxy.hookimpl
def register_providers(register: RegisterProvider) -> None:
    """Register ``deepseek``: DeepSeek's OpenAI-compatible API through the openai SDK."""
    register(
        "deepseek",
        make_provider,
        description="DeepSeek chat completions (OpenAI-compatible, through the openai SDK)",
        env=(env.API_KEY, env.BASE_URL),
    )


@llmproxy.hookimpl
def register_prices(register: RegisterPrice) -> None:
    """Register what this plugin adds over the default table (genai-prices).

    ``models.PRICES`` by exact name, ``models.PRICE_PATTERNS`` as declared patterns; see
    there for what and why.
    """
    for name, price in models.PRICES.items():
        register(f"deepseek/{name}", price)
    for name, price in models.PRICE_PATTERNS.items():
        register(f"deepseek/{name}", price, pattern=True)
