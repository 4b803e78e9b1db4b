"""The entry point llmproxy loads: registers the ``gemini`` provider and its prices.

Discovery imports this module for every command, so it imports no SDK: the provider module
(and with it the SDK) is imported when the provider is first made.
"""

from __future__ import annotations

import datetime

import llmproxy
from llmproxy.pricing import Price
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
    """Register Gemini's published prices (see ``models.PRICES`` for their dates and sources).

    A price announced to change (``models.PRICE_CHANGES``) is registered with its successor,
    which the price table answers with from the announced moment on.
    """
    for name, (input_price, cached, output, as_of) in models.PRICES.items():
        change = models.PRICE_CHANGES.get(name)
        if change is None:
            register(f"gemini/{name}", Price(input_price, output, cached, as_of))
            continue
        when, (new_input, new_cached, new_output, new_as_of) = change
        register(
            f"gemini/{name}",
            Price(
                input_price,
                output,
                cached,
                as_of,
                until=datetime.datetime.fromisoformat(when).timestamp(),
                then=Price(new_input, new_output, new_cached, new_as_of),
            ),
        )
