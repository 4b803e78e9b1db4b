"""The OpenTelemetry call observer: spans and metrics after the GenAI semantic conventions.

Per call, one span named ``{gen_ai.operation.name} {gen_ai.request.model}`` (``chat
openai/gpt-5.4-mini`` is ``chat gpt-5.4-mini``; an embed call's operation is ``embeddings``),
kind CLIENT, with the request's and the response's ``gen_ai.*`` attributes and the usage. Its
children: one span per upstream attempt (``attempt {model}``; a retry or a fallback is another
one, and its context goes upstream as the W3C ``traceparent``), one ``execute_tool {name}``
span per tool run, and one span per round trip to the history store or the ledger
(``llmproxy.ledger.reserve``...). Metrics: ``gen_ai.client.operation.duration``,
``gen_ai.client.token.usage`` and, for streams, ``gen_ai.client.operation.time_to_first_chunk``,
with the convention's bucket boundaries. Message content only with the convention's opt-in
variable (:mod:`llmproxy_otel.env`). The spans are made in :mod:`llmproxy_otel.spans`.

This module imports no OpenTelemetry: the plugin is registered at every start of every
``llmproxy`` process, and the API's import (about 0.1 s) is paid only once a call is followed,
or something else imported it.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from llmproxy.observe import CallStart, CallTrace
from llmproxy_otel.env import capture_content

if TYPE_CHECKING:
    from llmproxy_otel.spans import Instruments

SCOPE = "llmproxy"

TOKEN_BUCKETS: tuple[float, ...] = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
"""The bucket boundaries the convention gives ``gen_ai.client.token.usage``."""

DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
"""The bucket boundaries of ``gen_ai.client.operation.duration`` and of time to first chunk."""

PROVIDER_NAMES: dict[str, str] = {
    "openai": "openai",
    "gemini": "gcp.gemini",
    "vertex": "gcp.vertex_ai",
    "anthropic": "anthropic",
    "deepseek": "deepseek",
    "azure": "azure.ai.openai",
    "bedrock": "aws.bedrock",
    "cohere": "cohere",
    "groq": "groq",
    "mistral": "mistral_ai",
    "perplexity": "perplexity",
    "xai": "x_ai",
}
"""``gen_ai.provider.name`` of llmproxy's provider names (another name is used as it is)."""


def provider_name(provider: str) -> str:
    """The convention's ``gen_ai.provider.name`` of a registered provider name."""
    return PROVIDER_NAMES.get(provider, provider)


def error_type(error: BaseException) -> str:
    """The ``error.type`` of an exception: its class name (low-cardinality, as asked)."""
    return type(error).__qualname__


class OtelObserver:
    """Reports every call it is given as OpenTelemetry spans and metrics.

    >>> observer = OtelObserver(tracer_provider=tp, meter_provider=mp)  # doctest: +SKIP
    >>> proxy = Proxy(observers=[observer])  # doctest: +SKIP

    Without providers it uses the global ones (``trace.set_tracer_provider``...), and follows
    no call while neither is an SDK's (the installed plugin registers one such observer).
    ``capture_content`` None reads ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` from
    ``environ`` (``os.environ`` by default) at each call.
    """

    def __init__(
        self,
        *,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        capture_content: bool | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._given = tracer_provider is not None or meter_provider is not None
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._capture = capture_content
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._made: Instruments | None = None
        self._made_for: tuple[Any, Any] | None = None
        self._lock = threading.Lock()

    def _instruments(self) -> Instruments | None:
        """The tracer and histograms, or None when nothing would record them."""
        if (
            not self._given
            and not _PROVIDERS_FROM_ENV
            and "opentelemetry.trace" not in sys.modules
            and "opentelemetry.metrics" not in sys.modules
        ):
            return None  # nothing imported OpenTelemetry's API: no SDK was configured
        from llmproxy_otel import spans

        if self._given:
            providers = (self._tracer_provider, self._meter_provider)
        else:
            found = spans.global_providers()
            if found is None:
                return None
            providers = found
        made = self._made
        if made is None or self._made_for != providers:
            with self._lock:
                made = self._made = spans.Instruments(*providers)
                self._made_for = providers
        return made

    def start_call(self, call: CallStart) -> CallTrace | None:
        """Follow ``call`` when an SDK records spans or metrics; else None (no cost)."""
        instruments = self._instruments()
        if instruments is None:
            return None
        from llmproxy_otel.spans import CallSpans

        capture = self._capture if self._capture is not None else capture_content(self._environ)
        return CallSpans(instruments, call, capture)


_PROVIDERS_FROM_ENV = any(
    name in os.environ for name in ("OTEL_PYTHON_TRACER_PROVIDER", "OTEL_PYTHON_METER_PROVIDER")
)
"""A provider the API's getters load from the environment (then they decide, at each call)."""


__all__ = [
    "DURATION_BUCKETS",
    "PROVIDER_NAMES",
    "TOKEN_BUCKETS",
    "OtelObserver",
    "error_type",
    "provider_name",
]
