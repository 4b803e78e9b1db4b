"""The entry point llmproxy loads: registers the ``deepseek`` provider and its prices."""

from __future__ import annotations

import llmproxy
from llmproxy.pricing import Price
from llmproxy.registry import RegisterPrice, RegisterProvider
from llmproxy_deepseek import env, models
from llmproxy_deepseek.provider import DeepSeekProvider


@llmproxy.hookimpl
def register_providers(register: RegisterProvider) -> None:
    """Register ``deepseek``: DeepSeek's OpenAI-compatible API through the openai SDK."""
    register(
        "deepseek",
        DeepSeekProvider.from_settings,
        description="DeepSeek chat completions (OpenAI-compatible, through the openai SDK)",
        env=(env.API_KEY, env.BASE_URL),
    )


@llmproxy.hookimpl
def register_prices(register: RegisterPrice) -> None:
    """Register DeepSeek's published (peak) prices; see ``models.PRICES`` for dates and caveats."""
    for name, (input_price, cached, output, as_of) in models.PRICES.items():
        register(f"deepseek/{name}", Price(input_price, output, cached, as_of))
