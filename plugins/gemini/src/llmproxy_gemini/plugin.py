"""The entry point llmproxy loads: registers the ``gemini`` provider and its prices.

Discovery imports this module for every command, so it imports no SDK: the provider module
(and with it the SDK) is imported when the provider is first made.
"""

from __future__ import annotations

import llmproxy
from llmproxy.provider import Provider
from llmproxy.registry import ProviderSettings, RegisterPrice, RegisterProvider
from llmproxy_gemini import env, models


def make_provider(settings: ProviderSettings) -> Provider:
    """Build the ``gemini`` provider (see ``GeminiProvider.from_settings``)."""
    from llmproxy_gemini.provider import GeminiProvider

    return GeminiProvider.from_settings(settings)


@llmproxy.hookimpl
def register_providers(register: RegisterProvider) -> None:
    """Register ``gemini``: the Gemini API through Google's google-genai client."""
    register(
        "gemini",
        make_provider,
        description="Google Gemini API (native google-genai client)",
        env=(env.API_KEY, env.GOOGLE_API_KEY, env.BASE_URL),
    )


@llmproxy.hookimpl
def register_prices(register: RegisterPrice) -> None:
    """Register what this plugin adds over the default table (genai-prices).

    ``models.PRICES`` by exact name, ``models.PRICE_PATTERNS`` as declared patterns; see
    there for what and why.
    """
    for name, price in models.PRICES.items():
        register(f"gemini/{name}", price)
    for name, price in models.PRICE_PATTERNS.items():
        register(f"gemini/{name}", price, pattern=True)
