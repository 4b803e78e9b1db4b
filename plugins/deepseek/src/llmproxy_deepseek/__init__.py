"""llmproxy-deepseek: the DeepSeek provider for llmproxy, and the seed library's DeepSeek faces.

>>> from llmproxy_deepseek import DeepSeekService, DeepSeekLLMConfig
>>> service = DeepSeekService(DeepSeekLLMConfig(api_key="sk-..."))   # doctest: +SKIP
"""

from llmproxy_deepseek.models import DEFAULT_MODEL
from llmproxy_deepseek.provider import DeepSeekProvider
from llmproxy_deepseek.service import DeepSeekLLMConfig, DeepSeekService

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "DeepSeekLLMConfig",
    "DeepSeekProvider",
    "DeepSeekService",
    "__version__",
]
