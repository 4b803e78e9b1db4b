"""The spans and metrics of one followed call (:class:`CallSpans`), after the GenAI conventions.

Imported by :class:`llmproxy_otel.OtelObserver` once a call is followed (it imports the
OpenTelemetry API, which the observer itself does not); see :mod:`llmproxy_otel.observer` for
what is recorded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry import trace as _trace_api
from opentelemetry.metrics import _internal as _metrics_api
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

import llmproxy
from llmproxy.flow import Closed
from llmproxy.observe import CallEnd, CallStart, CallTrace, RoundTrip
from llmproxy.tools import Tool, ToolResult
from llmproxy.types import (
    ChatRequest,
    Completion,
    EmbeddingResult,
    EmbedRequest,
    Message,
    ToolCall,
)
from llmproxy_otel.observer import (
    _PROVIDERS_FROM_ENV,
    DURATION_BUCKETS,
    SCOPE,
    TOKEN_BUCKETS,
    error_type,
    provider_name,
)

_OPERATIONS = {"chat": "chat", "embed": "embeddings"}


def global_providers() -> tuple[Any, Any] | None:
    """The global tracer and meter providers, or None while neither is an SDK's."""
    if _none_set():
        return None
    providers = (trace.get_tracer_provider(), metrics.get_meter_provider())
    if _from_api(providers[0]) and _from_api(providers[1]):
        return None
    return providers


def _none_set() -> bool:
    """Whether neither global provider has been set, without the getters' environment lookups.

    The API's getters look ``OTEL_PYTHON_TRACER_PROVIDER``/``..._METER_PROVIDER`` up in
    ``os.environ`` on every call until a provider is set; reading the globals they return is
    cheaper, and this runs at every call of every Proxy while no SDK is configured. With those
    variables set (a provider loaded from the environment), the getters decide.
    """
    if _PROVIDERS_FROM_ENV:
        return False
    try:
        return _trace_api._TRACER_PROVIDER is None and _metrics_api._METER_PROVIDER is None
    except AttributeError:  # another API version: ask the getters
        return False


def _from_api(provider: object) -> bool:
    """Whether a global provider is the API's own (a proxy or no-op): no SDK configured."""
    return type(provider).__module__.startswith(("opentelemetry.trace", "opentelemetry.metrics"))


class Instruments:
    """A tracer and the three histograms, made from one pair of providers."""

    __slots__ = ("duration", "first_chunk", "tokens", "tracer")

    def __init__(self, tracer_provider: Any, meter_provider: Any) -> None:
        version = llmproxy.__version__
        self.tracer = trace.get_tracer(SCOPE, version, tracer_provider)
        meter = metrics.get_meter(SCOPE, version, meter_provider)
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=list(TOKEN_BUCKETS),
        )
        self.first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="Time to receive the first chunk of a streamed response.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )


def _message_json(message: Message) -> dict[str, Any]:
    """A message in the convention's JSON form (role and parts)."""
    parts: list[dict[str, Any]] = []
    if message.role == "tool":
        parts.append(
            {"type": "tool_call_response", "id": message.tool_call_id, "response": message.content}
        )
    else:
        if message.parts:
            for part in message.parts:
                kind = type(part).__name__.lower()
                if kind == "text":
                    parts.append({"type": "text", "content": getattr(part, "text", "")})
                else:  # an image, a document, audio: its kind, never its bytes
                    parts.append({"type": "blob", "modality": kind})
        elif message.content:
            parts.append({"type": "text", "content": message.content})
        if message.reasoning:
            parts.append({"type": "reasoning", "content": message.reasoning})
        for call in message.tool_calls:
            parts.append(_tool_call_json(call))
    return {"role": message.role, "parts": parts}


def _tool_call_json(call: ToolCall) -> dict[str, Any]:
    try:
        arguments: Any = json.loads(call.arguments)
    except ValueError:
        arguments = call.arguments
    return {"type": "tool_call", "id": call.id, "name": call.name, "arguments": arguments}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class CallSpans(CallTrace):
    """One call's spans and metrics."""

    def __init__(self, instruments: Instruments, call: CallStart, capture: bool) -> None:
        self.instruments = instruments
        self.call = call
        self.capture = capture
        self.operation = _OPERATIONS.get(call.operation, call.operation)
        parent = otel_context.get_current()
        if call.inbound and not trace.get_current_span(parent).get_span_context().is_valid:
            # A server's request from a traced client: the call continues the client's trace.
            parent = propagate.extract(call.inbound, context=parent)
        self.parent = parent
        self.span: Span = trace.INVALID_SPAN
        self.context = parent
        self.attempt: Span | None = None
        self.trip: Span | None = None
        self.sent: Sequence[Message] = ()

    def _attributes(self) -> dict[str, AttributeValue]:
        call = self.call
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": self.operation,
            "gen_ai.provider.name": provider_name(call.provider),
            "gen_ai.request.model": call.model,
        }
        if call.max_output_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = call.max_output_tokens
        if call.temperature is not None:
            attributes["gen_ai.request.temperature"] = call.temperature
        if call.session_id is not None:
            attributes["gen_ai.conversation.id"] = call.session_id
        if call.structured:
            attributes["gen_ai.output.type"] = "json"
        if call.dimensions is not None:
            attributes["gen_ai.embeddings.dimension.count"] = call.dimensions
        if call.user is not None:
            attributes["user.id"] = call.user
        if call.key is not None:
            attributes["llmproxy.key"] = call.key
        if call.streamed:
            attributes["llmproxy.streamed"] = True
        if call.tools:
            attributes["llmproxy.tools"] = list(call.tools)
        for name, value in call.tags.items():
            attributes[f"llmproxy.tag.{name}"] = value
        if self.capture and call.system:
            attributes["gen_ai.system_instructions"] = _dumps(
                [{"type": "text", "content": call.system}]
            )
        return attributes

    def began(self) -> None:
        """Start the call's span (at the call's own start time), under its parent."""
        call = self.call
        self.span = self.instruments.tracer.start_span(
            f"{self.operation} {call.model}",
            context=self.parent,
            kind=SpanKind.CLIENT,
            attributes=self._attributes(),
            start_time=int(call.started_at * 1e9) if call.started_at else None,
        )
        self.context = trace.set_span_in_context(self.span, self.parent)

    def _child(self, name: str, kind: SpanKind, attributes: Mapping[str, AttributeValue]) -> Span:
        return self.instruments.tracer.start_span(
            name, context=self.context, kind=kind, attributes=attributes
        )

    def round_trip_started(self, kind: RoundTrip) -> None:
        """Start a round trip's span."""
        self.trip = self._child(f"llmproxy.{kind}", SpanKind.INTERNAL, {"llmproxy.store": kind})

    def round_trip_ended(self, kind: RoundTrip, error: BaseException | None) -> None:
        """End the round trip's span."""
        span, self.trip = self.trip, None
        if span is not None:
            _end(span, error)

    def attempt_started(
        self, request: ChatRequest | EmbedRequest, number: int, streamed: bool
    ) -> Mapping[str, str] | None:
        """Start an attempt's span; its context goes upstream as the headers returned."""
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": self.operation,
            "gen_ai.provider.name": provider_name(request.provider),
            "gen_ai.request.model": request.model,
            "llmproxy.attempt": number,
        }
        if isinstance(request, ChatRequest):
            # What is really sent: the output cap the budget granted, the call's temperature.
            if request.max_output_tokens is not None:
                attributes["gen_ai.request.max_tokens"] = request.max_output_tokens
                self.span.set_attribute("gen_ai.request.max_tokens", request.max_output_tokens)
            if self.capture:
                self.sent = request.messages
        self.attempt = span = self._child(f"attempt {request.model}", SpanKind.CLIENT, attributes)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span, self.context))
        return carrier or None

    def first_chunk(self, seconds: float) -> None:
        """Note a stream's first chunk: an event on the attempt, seconds on the call."""
        if self.attempt is not None:
            self.attempt.add_event("gen_ai.first_chunk")
        self.span.set_attribute("gen_ai.response.time_to_first_chunk", seconds)

    def attempt_ended(
        self, result: Completion | EmbeddingResult | None, error: BaseException | None
    ) -> None:
        """End the attempt's span with what the upstream answered, or its error."""
        span, self.attempt = self.attempt, None
        if span is None:
            return
        if isinstance(result, Completion):
            span.set_attribute("gen_ai.response.model", result.model)
            if result.finish_reason is not None:
                span.set_attribute("gen_ai.response.finish_reasons", [result.finish_reason])
            if result.id is not None:
                span.set_attribute("gen_ai.response.id", result.id)
        elif isinstance(result, EmbeddingResult) and result.model is not None:
            span.set_attribute("gen_ai.response.model", result.model)
        _end(span, error)

    def waiting(self, seconds: float) -> None:
        """Note a wait before a retry as an event on the call's span."""
        self.span.add_event("llmproxy.wait", {"llmproxy.wait.seconds": seconds})

    def tool_started(self, call: ToolCall, tool: Tool | None) -> object:
        """Start an ``execute_tool`` span, current while the tool runs (handle: it and a token).

        A call the tool makes through a Proxy is then a child of the tool's span.
        """
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": call.name,
            "gen_ai.tool.call.id": call.id,
            "gen_ai.tool.type": "function",
        }
        if tool is not None and tool.description:
            attributes["gen_ai.tool.description"] = tool.description
        if self.capture:
            attributes["gen_ai.tool.call.arguments"] = call.arguments
        span = self._child(f"execute_tool {call.name}", SpanKind.INTERNAL, attributes)
        return span, otel_context.attach(trace.set_span_in_context(span, self.context))

    def tool_ended(
        self, handle: object, result: ToolResult | None, error: BaseException | None
    ) -> None:
        """End the tool's span (failed when the tool did) and make it current no more."""
        if not isinstance(handle, tuple):
            return
        span, token = handle
        otel_context.detach(token)  # in the thread or task that attached it
        if result is not None:
            if self.capture:
                span.set_attribute("gen_ai.tool.call.result", result.output)
            if result.error and error is None:
                span.set_attribute("error.type", "tool_error")
                span.set_status(Status(StatusCode.ERROR, "the tool failed"))
        _end(span, error)

    def call_ended(self, end: CallEnd) -> None:
        """Set the response and usage attributes, end the call's span, record the metrics."""
        span = self.span
        usage = end.usage
        attributes: dict[str, AttributeValue] = {
            "gen_ai.response.model": end.model,
            "gen_ai.usage.input_tokens": usage.input_tokens,
            "llmproxy.outcome": end.outcome,
            "llmproxy.attempts": end.attempts,
        }
        if self.operation != "embeddings":
            attributes["gen_ai.usage.output_tokens"] = usage.output_tokens
        if usage.cached_input_tokens:
            attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cached_input_tokens
        if usage.cache_write_tokens:
            attributes["gen_ai.usage.cache_creation.input_tokens"] = usage.cache_write_tokens
        if usage.reasoning_tokens:
            attributes["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning_tokens
        if end.cache_hit:
            attributes["llmproxy.cache_hit"] = True
        if end.alias is not None:
            attributes["llmproxy.alias"] = end.alias
        if usage.cost is not None:
            attributes["llmproxy.usage.cost_usd"] = usage.cost
        if usage.estimated:
            attributes["llmproxy.usage.estimated"] = True
        if end.finish_reason is not None:
            attributes["gen_ai.response.finish_reasons"] = [end.finish_reason]
        if end.response_id is not None:
            attributes["gen_ai.response.id"] = end.response_id
        if end.provider != self.call.provider:
            attributes["llmproxy.response.provider"] = provider_name(end.provider)
        if self.capture:
            inputs = [m for m in self.sent if m.role != "system"]
            if inputs:
                attributes["gen_ai.input.messages"] = _dumps([_message_json(m) for m in inputs])
            if end.message is not None:
                output = _message_json(end.message)
                if end.finish_reason is not None:
                    output["finish_reason"] = end.finish_reason
                attributes["gen_ai.output.messages"] = _dumps([output])
        span.set_attributes(attributes)
        _end(span, end.error)
        self._measure(end)

    def _measure(self, end: CallEnd) -> None:
        call = self.call
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": self.operation,
            "gen_ai.provider.name": provider_name(call.provider),
            "gen_ai.request.model": call.model,
            "gen_ai.response.model": end.model,
        }
        if end.error is not None:
            attributes["error.type"] = error_type(end.error)
        instruments = self.instruments
        instruments.duration.record(end.duration, attributes)
        if end.first_chunk is not None:
            instruments.first_chunk.record(end.first_chunk, attributes)
        usage = end.usage
        if usage.estimated or (usage.input_tokens == 0 and usage.output_tokens == 0):
            return  # the convention: report usage the service reported, not a count of ours
        tokens = dict(attributes)
        tokens.pop("error.type", None)
        instruments.tokens.record(usage.input_tokens, {**tokens, "gen_ai.token.type": "input"})
        if self.operation != "embeddings":
            instruments.tokens.record(
                usage.output_tokens, {**tokens, "gen_ai.token.type": "output"}
            )


def _end(span: Span, error: BaseException | None) -> None:
    """End ``span``, marked failed with ``error.type`` when ``error`` is given.

    A stream its caller closed is not a failure: its attempt is marked ``llmproxy.closed``.
    """
    if isinstance(error, Closed):
        span.set_attribute("llmproxy.closed", True)
    elif error is not None:
        span.set_attribute("error.type", error_type(error))
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.end(end_time=time.time_ns())


__all__ = ["CallSpans", "Instruments", "global_providers"]
