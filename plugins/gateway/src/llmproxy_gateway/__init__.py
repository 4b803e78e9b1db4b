"""llmproxy-gateway: OpenAI's Chat Completions and Responses APIs in front of a Proxy; a dashboard.

Run it with ``llmproxy serve``; create keys with ``llmproxy keys create --user NAME``. In code::

    from llmproxy_gateway import Gateway, create_app

    app = create_app(Gateway())  # an ASGI app for any ASGI server

The names load on first use, so discovering the plugin (every ``llmproxy`` command does)
imports neither starlette nor uvicorn.
"""

from typing import TYPE_CHECKING

from llmproxy.lazy import lazy_exports

if TYPE_CHECKING:
    from llmproxy_gateway.app import Gateway, create_app
    from llmproxy_gateway.budgets import KeyBudgetSlot, key_policies
    from llmproxy_gateway.errors import HTTPError, from_exception
    from llmproxy_gateway.keys import KeyRecord, KeyStore, parse_budget
    from llmproxy_gateway.metrics import GatewayMetrics

__version__ = "0.1.0"

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Gateway": "llmproxy_gateway.app",
        "GatewayMetrics": "llmproxy_gateway.metrics",
        "HTTPError": "llmproxy_gateway.errors",
        "KeyBudgetSlot": "llmproxy_gateway.budgets",
        "KeyRecord": "llmproxy_gateway.keys",
        "KeyStore": "llmproxy_gateway.keys",
        "create_app": "llmproxy_gateway.app",
        "from_exception": "llmproxy_gateway.errors",
        "key_policies": "llmproxy_gateway.budgets",
        "parse_budget": "llmproxy_gateway.keys",
    },
)

__all__ = [
    "Gateway",
    "GatewayMetrics",
    "HTTPError",
    "KeyBudgetSlot",
    "KeyRecord",
    "KeyStore",
    "__version__",
    "create_app",
    "from_exception",
    "key_policies",
    "parse_budget",
]
