"""llmproxy: one Proxy object for LLM services, built from plugins.

>>> from llmproxy import Proxy, LLMBudget
>>> proxy = Proxy.from_env(budgets=[LLMBudget(max_tokens=100_000)])   # doctest: +SKIP
>>> proxy.chat("Hello", model="openai/gpt-5.4-mini").text                # doctest: +SKIP
"""

from llmproxy.budget.base import Claim, ClaimUsage, Ledger, Reservation
from llmproxy.budget.policy import (
    BudgetPolicy,
    CallScope,
    CostBudget,
    LLMBudget,
    RequestsPerMinute,
    TokensPerMinute,
)
from llmproxy.config import ProxyConfig, RetryConfig, load_config
from llmproxy.errors import (
    BudgetExceeded,
    ConfigError,
    InvalidRequest,
    LLMProxyError,
    MissingCredentials,
    PluginError,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderError,
    ProviderRateLimited,
    ProviderResponseError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    SchemaError,
    StoreError,
    StreamInterrupted,
    UnsupportedContent,
)
from llmproxy.history.base import HistoryRecord, HistoryStore, SessionInfo
from llmproxy.history.handler import LLMMessageHandler
from llmproxy.hookspecs import hookimpl, hookspec
from llmproxy.provider import BaseProvider, Provider
from llmproxy.proxy import AsyncChatStream, ChatStream, Proxy
from llmproxy.registry import ProviderSettings
from llmproxy.routing import Cooldown, Deployment, Router
from llmproxy.secret import Secret
from llmproxy.service import LLMConfig, LLMServiceBase
from llmproxy.tokens import InputMargin
from llmproxy.types import (
    Audio,
    CallEvent,
    ChatRequest,
    ChatResponse,
    Chunk,
    Completion,
    Document,
    EmbeddingResult,
    Embeddings,
    EmbedRequest,
    Image,
    Message,
    Part,
    ResponseSchema,
    StreamEvent,
    Text,
    ToolCall,
    Usage,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncChatStream",
    "Audio",
    "BaseProvider",
    "BudgetExceeded",
    "BudgetPolicy",
    "CallEvent",
    "CallScope",
    "ChatRequest",
    "ChatResponse",
    "ChatStream",
    "Chunk",
    "Claim",
    "ClaimUsage",
    "Completion",
    "ConfigError",
    "Cooldown",
    "CostBudget",
    "Deployment",
    "Document",
    "EmbedRequest",
    "EmbeddingResult",
    "Embeddings",
    "HistoryRecord",
    "HistoryStore",
    "Image",
    "InputMargin",
    "InvalidRequest",
    "LLMBudget",
    "LLMConfig",
    "LLMMessageHandler",
    "LLMProxyError",
    "LLMServiceBase",
    "Ledger",
    "Message",
    "MissingCredentials",
    "Part",
    "PluginError",
    "Provider",
    "ProviderAuthError",
    "ProviderBadRequest",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderRateLimited",
    "ProviderResponseError",
    "ProviderSettings",
    "ProviderTimeout",
    "ProviderUnavailable",
    "Proxy",
    "ProxyConfig",
    "RateLimited",
    "RequestsPerMinute",
    "Reservation",
    "ResponseSchema",
    "RetryConfig",
    "Router",
    "SchemaError",
    "Secret",
    "SessionInfo",
    "StoreError",
    "StreamEvent",
    "StreamInterrupted",
    "Text",
    "TokensPerMinute",
    "ToolCall",
    "UnsupportedContent",
    "Usage",
    "__version__",
    "hookimpl",
    "hookspec",
    "load_config",
]
