"""The entry point llmproxy loads: adds the ``serve`` and ``keys`` commands."""

from __future__ import annotations

import llmproxy
from llmproxy.registry import RegisterCommand
from llmproxy_gateway import cli


@llmproxy.hookimpl
def register_commands(register: RegisterCommand) -> None:
    """Register ``llmproxy serve`` and ``llmproxy keys``."""
    register(
        "serve",
        "run the OpenAI-compatible gateway and the dashboard (127.0.0.1:8080)",
        cli.configure_serve,
        cli.serve,
    )
    register(
        "keys",
        "create, list or revoke gateway keys",
        cli.configure_keys,
        cli.keys,
    )
