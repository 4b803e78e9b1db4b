"""llmproxy-deepseek: the DeepSeek provider for llmproxy, and the seed library's DeepSeek faces.

>>> from llmproxy_deepseek import DeepSeekService, DeepSeekLLMConfig
>>> service = DeepSeekService(DeepSeekLLMConfig(api_key="sk-..."))   # doctest: +SKIP

The classes load on first use, so discovering the plugin does not import the openai SDK.
"""

from typing import TYPE_CHECKING

from llmproxy.lazy import lazy_exports
from llmproxy_deepseek.models import DEFAULT_MODEL

if TYPE_CHECKING:
    from llmproxy_deepseek.provider import DeepSeekProvider
    from llmproxy_deepseek.service import DeepSeekLLMConfig, DeepSeekService

__version__ = "0.1.0"

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "DeepSeekLLMConfig": "llmproxy_deepseek.service",
        "DeepSeekProvider": "llmproxy_deepseek.provider",
        "DeepSeekService": "llmproxy_deepseek.service",
    },
)

__all__ = [
    "DEFAULT_MODEL",
    "DeepSeekLLMConfig",
    "DeepSeekProvider",
    "DeepSeekService",
    "__version__",
]
