"""llmproxy-anthropic: the Anthropic (Claude) provider for llmproxy (the official anthropic SDK).

>>> from llmproxy import Proxy
>>> Proxy.from_env().chat("Hello", model="anthropic/claude-sonnet-4-6").text   # doctest: +SKIP

The classes load on first use, so discovering the plugin does not import the anthropic SDK.
"""

from typing import TYPE_CHECKING

from llmproxy.lazy import lazy_exports
from llmproxy_anthropic.models import DEFAULT_MODEL

if TYPE_CHECKING:
    from llmproxy_anthropic.provider import AnthropicProvider
    from llmproxy_anthropic.service import AnthropicLLMConfig, AnthropicService

__version__ = "0.1.0"

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "AnthropicLLMConfig": "llmproxy_anthropic.service",
        "AnthropicProvider": "llmproxy_anthropic.provider",
        "AnthropicService": "llmproxy_anthropic.service",
    },
)

__all__ = [
    "DEFAULT_MODEL",
    "AnthropicLLMConfig",
    "AnthropicProvider",
    "AnthropicService",
    "__version__",
]
