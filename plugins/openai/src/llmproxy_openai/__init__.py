"""llmproxy-openai: the OpenAI provider for llmproxy, and the seed library's OpenAI faces.

>>> from llmproxy_openai import OpenAIService, OpenAILLMConfig, OpenAIFunctionCall
>>> service = OpenAIService(OpenAILLMConfig(api_key="sk-..."))   # doctest: +SKIP

The classes load on first use, so discovering the plugin does not import the openai SDK.
"""

from typing import TYPE_CHECKING

from llmproxy.lazy import lazy_exports
from llmproxy_openai.models import DEFAULT_MODEL

if TYPE_CHECKING:
    from llmproxy_openai.provider import OpenAIProvider
    from llmproxy_openai.service import OpenAILLMConfig, OpenAIService
    from llmproxy_openai.tools import (
        OpenAICodeInterpreter,
        OpenAIFileSearch,
        OpenAIFunctionCall,
    )

__version__ = "0.1.0"

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "OpenAICodeInterpreter": "llmproxy_openai.tools",
        "OpenAIFileSearch": "llmproxy_openai.tools",
        "OpenAIFunctionCall": "llmproxy_openai.tools",
        "OpenAILLMConfig": "llmproxy_openai.service",
        "OpenAIProvider": "llmproxy_openai.provider",
        "OpenAIService": "llmproxy_openai.service",
    },
)

__all__ = [
    "DEFAULT_MODEL",
    "OpenAICodeInterpreter",
    "OpenAIFileSearch",
    "OpenAIFunctionCall",
    "OpenAILLMConfig",
    "OpenAIProvider",
    "OpenAIService",
    "__version__",
]
