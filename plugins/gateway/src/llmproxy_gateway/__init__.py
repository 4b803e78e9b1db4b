"""llmproxy-gateway: OpenAI's Chat Completions API in front of a Proxy, and a dashboard.

Run it with ``llmproxy serve``; create keys with ``llmproxy keys create --user NAME``. In code::

    from llmproxy_gateway import Gateway, create_app

    app = create_app(Gateway())  # an ASGI app for any ASGI server
"""

from llmproxy_gateway.app import Gateway, create_app
from llmproxy_gateway.budgets import KeyBudgetSlot, key_policies
from llmproxy_gateway.errors import HTTPError, from_exception
from llmproxy_gateway.keys import KeyRecord, KeyStore, parse_budget

__version__ = "0.1.0"

__all__ = [
    "Gateway",
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
