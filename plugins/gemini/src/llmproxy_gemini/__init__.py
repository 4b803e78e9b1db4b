"""llmproxy-gemini: the Gemini provider for llmproxy (Google's native google-genai client).

>>> from llmproxy import Proxy
>>> Proxy.from_env().chat("Hello", model="gemini/gemini-3.8-flash").text   # doctest: +SKIP

The classes load on first use, so discovering the plugin does not import google-genai.
"""

from typing import TYPE_CHECKING

from llmproxy.lazy import lazy_exports
from llmproxy_gemini.models import DEFAULT_MODEL

if TYPE_CHECKING:
    from llmproxy_gemini.provider import GeminiProvider
    from llmproxy_gemini.service import GeminiLLMConfig, GeminiService

__version__ = "0.1.0"

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "GeminiLLMConfig": "llmproxy_gemini.service",
        "GeminiProvider": "llmproxy_gemini.provider",
        "GeminiService": "llmproxy_gemini.service",
    },
)

__all__ = ["DEFAULT_MODEL", "GeminiLLMConfig", "GeminiProvider", "GeminiService", "__version__"]
