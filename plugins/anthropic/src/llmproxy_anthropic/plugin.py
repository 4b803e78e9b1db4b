"""The entry point llmproxy loads: registers the ``anthropic`` provider and its prices.

Discovery imports this module for every command, so it imports no SDK: the provider module
(and with it the anthropic SDK) is imported when the provider is first made.
"""

from __future__ import annotations

import llmproxy
from llmproxy.provider import Provider
from llmproxy.registry import ProviderSettings, RegisterPrice, RegisterProvider
from llmproxy_anthropic import env, models


def make_provider(settings: ProviderSettings) -> Provider:
    """Build the ``anthropic`` provider (see ``AnthropicProvider.from_settings``)."""
    from llmproxy_anthropic.provider import AnthropicProvider

    return AnthropicProvider.from_settings(settings)


@llmproxy.hookimpl
def register_providers(register: RegisterProvider) -> None:
    """Register ``anthropic``: the Messages API through the official anthropic SDK."""
    register(
        "anthropic",
        make_provider,
        description="Anthropic Messages API (Claude, official anthropic SDK)",
        env=(env.API_KEY, env.BASE_URL),
    )


@llmproxy.hookimpl
def register_prices(register: RegisterPrice) -> None:
    """Register what this plugin adds over the default table (genai-prices).

    ``models.PRICES`` by exact name, ``models.PRICE_PATTERNS`` as declared patterns; see
    there for what and why.
    """
    for name, price in models.PRICES.items():
        register(f"anthropic/{name}", price)
    for name, price in models.PRICE_PATTERNS.items():
        register(f"anthropic/{name}", price, pattern=True)
