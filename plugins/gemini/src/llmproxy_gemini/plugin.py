"""The entry point llmproxy loads: registers the ``gemini`` provider and its prices."""

from __future__ import annotations

import llmproxy
from llmproxy.pricing import Price
from llmproxy.registry import RegisterPrice, RegisterProvider
from llmproxy_gemini import env, models
from llmproxy_gemini.provider import GeminiProvider


@llmproxy.hookimpl
def register_providers(register: RegisterProvider) -> None:
    """Register ``gemini``: the Gemini API through Google's google-genai client."""
    register(
        "gemini",
        GeminiProvider.from_settings,
        description="Google Gemini API (native google-genai client)",
        env=(env.API_KEY, env.GOOGLE_API_KEY, env.BASE_URL),
    )


@llmproxy.hookimpl
def register_prices(register: RegisterPrice) -> None:
    """Register Gemini's published prices (see ``models.PRICES`` for their dates and sources)."""
    for name, (input_price, cached, output, as_of) in models.PRICES.items():
        register(f"gemini/{name}", Price(input_price, output, cached, as_of))
