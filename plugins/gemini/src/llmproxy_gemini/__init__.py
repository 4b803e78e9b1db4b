"""llmproxy-gemini: the Gemini provider for llmproxy (Google's native google-genai client).

>>> from llmproxy import Proxy
>>> Proxy.from_env().chat("Hello", model="gemini/gemini-3.8-flash").text   # doctest: +SKIP
"""

from llmproxy_gemini.models import DEFAULT_MODEL
from llmproxy_gemini.provider import GeminiProvider
from llmproxy_gemini.service import GeminiLLMConfig, GeminiService

__version__ = "0.1.0"

__all__ = ["DEFAULT_MODEL", "GeminiLLMConfig", "GeminiProvider", "GeminiService", "__version__"]
