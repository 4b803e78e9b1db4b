"""The entry point llmproxy loads: registers the ``openai`` provider."""

from __future__ import annotations

import llmproxy
from llmproxy.pricing import Price
from llmproxy.registry import RegisterPrice, RegisterProvider
from llmproxy_openai import env, models
from llmproxy_openai.provider import OpenAIProvider


@llmproxy.hookimpl
def register_providers(register: RegisterProvider) -> None:
    """Register ``openai``: Chat Completions and the Responses API through the official SDK."""
    register(
        "openai",
        OpenAIProvider.from_settings,
        description="OpenAI Chat Completions and Responses API (official openai SDK)",
        env=(env.API_KEY, env.SEED_API_KEY, env.BASE_URL),
    )


@llmproxy.hookimpl
def register_prices(register: RegisterPrice) -> None:
    """Register OpenAI's published prices (see ``models.PRICES`` for their dates)."""
    for name, (input_price, cached, output, as_of) in models.PRICES.items():
        register(f"openai/{name}", Price(input_price, output, cached, as_of))
