"""llmproxy-openai: the OpenAI provider for llmproxy, and the seed library's OpenAI faces.

>>> from llmproxy_openai import OpenAIService, OpenAILLMConfig, OpenAIFunctionCall
>>> service = OpenAIService(OpenAILLMConfig(api_key="sk-..."))   # doctest: +SKIP
"""

from llmproxy_openai.models import DEFAULT_MODEL
from llmproxy_openai.provider import OpenAIProvider
from llmproxy_openai.service import OpenAILLMConfig, OpenAIService
from llmproxy_openai.tools import OpenAICodeInterpreter, OpenAIFileSearch, OpenAIFunctionCall

__version__ = "0.1.0"

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
