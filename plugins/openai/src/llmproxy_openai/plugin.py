"""The entry point llmproxy loads: registers the ``openai`` provider."""

from __future__ import annotations

import llmproxy
from llmproxy.registry import RegisterProvider
from llmproxy_openai import env
from llmproxy_openai.provider import OpenAIProvider


@llmproxy.hookimpl
def register_providers(register: RegisterProvider) -> None:
    """Register ``openai``: Chat Completions through the official SDK."""
    register(
        "openai",
        OpenAIProvider.from_settings,
        description="OpenAI Chat Completions (official openai SDK)",
        env=(env.API_KEY, env.SEED_API_KEY, env.BASE_URL),
    )
