"""OpenAI's Responses API: the request body, the answer and the stream events, as plain mappings.

The provider (:class:`~llmproxy_openai.provider.OpenAIProvider`) sends these through the SDK's
``client.responses.with_raw_response.create`` and reads the raw JSON body and SSE lines with
them; nothing here touches the network.

Requests: system messages become ``instructions``; user and assistant messages become message
items; an assistant's tool calls become ``function_call`` items and ``tool`` messages
``function_call_output`` items (tied by ``call_id``), so a conversation with tool rounds is sent
whole each time (``store`` is false: nothing is kept at OpenAI between calls). Function tools go
out as ``{"type": "function", "name", "description", "parameters", "strict"}``, hosted tools as
``{"type": ..., **config}``; offering ``file_search`` or ``code_interpreter`` also asks for their
results (``include``), so they come back on the message's ``hosted_outputs``.

Answers: ``output_text`` parts are the text (message items joined by a blank line), their
annotations :class:`~llmproxy.types.Citation` values with offsets into that text,
``function_call`` items :class:`~llmproxy.types.ToolCall` values (id = ``call_id``), reasoning
summaries the message's ``reasoning``, and every other item (``file_search_call``,
``code_interpreter_call``, ``web_search_call``...) a :class:`~llmproxy.types.HostedOutput`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from llmproxy.errors import (
    ConfigError,
    InvalidRequest,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderError,
    ProviderRateLimited,
    ProviderResponseError,
    ProviderUnavailable,
)
from llmproxy.secret import Secret, redact
from llmproxy.structured import strict_json_schema
from llmproxy.tools import HostedTool, Tool
from llmproxy.tools.offer import read_tool_choice
from llmproxy.types import (
    ChatRequest,
    Chunk,
    Citation,
    Completion,
    HostedOutput,
    Message,
    ResponseSchema,
    ToolCall,
    Usage,
)
from llmproxy_openai.parts import responses_content

__all__ = [
    "ResponsesStreamReader",
    "check_hosted",
    "input_items",
    "parse_response",
    "request_params",
    "usage_from_wire",
]

#: What each hosted tool needs in its configuration before anything is sent.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "file_search": ("vector_store_ids",),
    "code_interpreter": ("container",),
}
#: What to ``include`` so a hosted tool's results come back in its output item.
_INCLUDE: dict[str, str] = {
    "file_search": "file_search_call.results",
    "code_interpreter": "code_interpreter_call.outputs",
}
#: Error codes of failed responses and error events that are worth another attempt.
_RATE_LIMIT_CODES = frozenset({"rate_limit_exceeded"})
_RETRYABLE_CODES = frozenset({"server_error", "vector_store_timeout", "internal_error"})
_SEPARATOR = "\n\n"


def check_hosted(tools: Sequence[Any]) -> None:
    """Raise ConfigError when a hosted tool lacks what it needs (``tools[i].vector_store_ids``).

    ``i`` is the tool's index in ``tools`` (the request's tools).
    """
    for index, tool in enumerate(tools):
        if not isinstance(tool, HostedTool):
            continue
        for name in _REQUIRED.get(tool.type, ()):
            value = tool.config.get(name)
            if value is None or (isinstance(value, (list, tuple, str)) and not value):
                raise ConfigError(
                    f"hosted tool {tool.type!r} needs {name!r}"
                    + (" (the vector stores to search)" if name == "vector_store_ids" else ""),
                    path=f"tools[{index}].{name}",
                )


def input_items(messages: Sequence[Message]) -> tuple[str | None, list[dict[str, Any]]]:
    """Return ``(instructions, input items)`` for a message list (see the module's note).

    >>> input_items([Message("system", "Be brief."), Message("user", "Hi")])
    ('Be brief.', [{'type': 'message', 'role': 'user', 'content': 'Hi'}])
    """
    system: list[str] = []
    items: list[dict[str, Any]] = []
    for index, m in enumerate(messages):
        # A message with parts: the user's in input_* parts, the others' text (a non-text part
        # on them is refused here, naming it).
        content = responses_content(m, f"messages[{index}]") if m.parts else m.content
        if m.role == "system":
            if m.content:
                system.append(m.content)
        elif m.role == "user":
            items.append({"type": "message", "role": "user", "content": content})
        elif m.role == "assistant":
            if m.content or not m.tool_calls:
                items.append({"type": "message", "role": "assistant", "content": m.content})
            items.extend(
                {
                    "type": "function_call",
                    "call_id": c.id,
                    "name": c.name,
                    "arguments": c.arguments,
                }
                for c in m.tool_calls
            )
        else:
            if not m.tool_call_id:
                raise InvalidRequest(
                    "a tool message needs the tool_call_id of the call it answers",
                    field="messages",
                )
            items.append(
                {"type": "function_call_output", "call_id": m.tool_call_id, "output": m.content}
            )
    return (_SEPARATOR.join(system) or None), items


def _tool_choice(request: ChatRequest, functions: list[Tool], hosted: list[HostedTool]) -> Any:
    choice = read_tool_choice(request.tool_choice, functions, hosted)
    if choice is None:
        return None
    if choice.kind == "function":
        return {"type": "function", "name": choice.name}
    if choice.kind == "hosted":
        return {"type": choice.name}
    return choice.kind


def wire_schema(schema: ResponseSchema) -> dict[str, Any]:
    """``name``, ``schema`` and ``strict`` of a structured-output request, as OpenAI takes them.

    Chat Completions nests them in ``response_format.json_schema``; the Responses API puts them
    beside ``type`` in ``text.format``. With ``strict`` the schema is rewritten as strict mode
    needs (:func:`llmproxy.structured.strict_json_schema`: every property required, optional
    ones nullable, ``additionalProperties: false``).

    >>> wire_schema(ResponseSchema("r", {"type": "object", "properties": {}}, strict=False))
    {'name': 'r', 'schema': {'type': 'object', 'properties': {}}, 'strict': False}
    """
    body = strict_json_schema(schema.schema) if schema.strict else dict(schema.schema)
    return {"name": schema.name, "schema": body, "strict": schema.strict}


def request_params(
    request: ChatRequest, functions: list[Tool], hosted: list[HostedTool]
) -> dict[str, Any]:
    """Return the keyword arguments of ``responses.create`` for a request.

    ``functions`` and ``hosted`` are the request's tools, sorted; ``request.extra`` is merged
    last (its ``include`` entries are added to the ones the hosted tools ask for).
    """
    instructions, items = input_items(request.messages)
    params: dict[str, Any] = {"model": request.model, "input": items, "store": False}
    if instructions is not None:
        params["instructions"] = instructions
    choice = _tool_choice(request, functions, hosted)  # checked even with nothing offered
    if functions or hosted:
        params["tools"] = [t.wire() for t in functions] + [t.wire() for t in hosted]
        if choice is not None:
            params["tool_choice"] = choice
    include = [_INCLUDE[t.type] for t in hosted if t.type in _INCLUDE]
    if request.max_output_tokens is not None:
        params["max_output_tokens"] = request.max_output_tokens
    if request.temperature is not None:
        params["temperature"] = request.temperature
    if request.response_schema is not None:
        params["text"] = {"format": {"type": "json_schema", **wire_schema(request.response_schema)}}
    extra = dict(request.extra)
    for entry in extra.pop("include", None) or ():
        include.append(entry)
    if include:
        params["include"] = list(dict.fromkeys(include))
    params.update(extra)
    return params


def usage_from_wire(u: Mapping[str, Any] | None) -> Usage | None:
    """Map a Responses API ``usage`` object onto :class:`~llmproxy.types.Usage`.

    ``input_tokens_details.cache_write_tokens`` (llmproxy's gateway's) are prompt-cache writes.
    """
    if not u:
        return None
    details = u.get("input_tokens_details") or {}
    cached = details.get("cached_tokens") or 0
    written = details.get("cache_write_tokens") or 0
    reasoning = (u.get("output_tokens_details") or {}).get("reasoning_tokens") or 0
    return Usage(
        int(u.get("input_tokens") or 0),
        int(u.get("output_tokens") or 0),
        int(cached),
        int(reasoning),
        cache_write_tokens=int(written),
    )


def _citation(annotation: Mapping[str, Any], shift: int) -> Citation:
    def offset(name: str) -> int | None:
        value = annotation.get(name)
        return int(value) + shift if isinstance(value, int) else None

    start = offset("start_index")
    if start is None:
        start = offset("index")
    return Citation(
        str(annotation.get("type") or "citation"),
        text=annotation.get("title") or annotation.get("text"),
        file_id=annotation.get("file_id"),
        filename=annotation.get("filename"),
        url=annotation.get("url"),
        start=start,
        end=offset("end_index"),
    )


class _Output:
    """What a response's output items say, gathered in order."""

    __slots__ = ("calls", "citations", "hosted", "reasoning", "text")

    def __init__(self) -> None:
        self.text = ""
        self.reasoning: list[str] = []
        self.calls: list[ToolCall] = []
        self.citations: list[Citation] = []
        self.hosted: list[HostedOutput] = []

    def read(self, output: Sequence[Mapping[str, Any]]) -> _Output:
        for item in output:
            kind = item.get("type")
            if kind == "message":
                self._message(item)
            elif kind == "function_call":
                self.calls.append(
                    ToolCall(
                        str(item["call_id"]),
                        str(item.get("name") or ""),
                        str(item.get("arguments") or "{}"),
                    )
                )
            elif kind == "reasoning":
                parts = item.get("summary") or item.get("content") or ()
                text = _SEPARATOR.join(str(p.get("text") or "") for p in parts)
                if text:
                    self.reasoning.append(text)
            else:
                data = {k: v for k, v in item.items() if k not in ("type", "id", "status")}
                self.hosted.append(
                    HostedOutput(str(kind), item.get("id"), item.get("status"), data)
                )
        return self

    def _message(self, item: Mapping[str, Any]) -> None:
        started = False
        for part in item.get("content") or ():
            kind = part.get("type")
            if kind == "output_text":
                piece = str(part.get("text") or "")
            elif kind == "refusal":
                piece = str(part.get("refusal") or "")
            else:
                continue
            if not started and self.text:
                self.text += _SEPARATOR
            started = True
            shift = len(self.text)
            self.text += piece
            self.citations.extend(_citation(a, shift) for a in part.get("annotations") or ())


def _finish_reason(data: Mapping[str, Any], has_calls: bool) -> str:
    if has_calls:
        return "tool_calls"
    if data.get("status") == "incomplete":
        reason = (data.get("incomplete_details") or {}).get("reason")
        if reason in (None, "max_output_tokens"):
            return "length"
        return str(reason)
    return "stop"


def response_error(
    error: Mapping[str, Any] | None,
    provider: str,
    model: str,
    what: str,
    secret: Secret | None = None,
) -> ProviderError:
    """Map a failed response's ``error`` (or an ``error`` event) onto the core's error tree.

    Rate limits are :class:`~llmproxy.errors.ProviderRateLimited`, server-side failures
    :class:`~llmproxy.errors.ProviderUnavailable` (both retryable), anything else
    :class:`~llmproxy.errors.ProviderBadRequest`; an error without a code counts as
    server-side. ``secret`` (the API key) is redacted from the message.
    """
    error = error or {}
    code = error.get("code")
    message = f"{what}: {error.get('message') or 'no message'}"
    if code:
        message += f" ({code})"
    if secret is not None:
        message = redact(message, secret)
    cls: type[ProviderError]
    if code in _RATE_LIMIT_CODES:
        cls = ProviderRateLimited
    elif code is None or code in _RETRYABLE_CODES:
        cls = ProviderUnavailable
    else:
        cls = ProviderBadRequest
    return cls(message, provider=provider, model=model)


def parse_response(
    data: Any, provider: str, model: str, secret: Secret | None = None
) -> Completion:
    """Turn a Responses API ``response`` object into a :class:`~llmproxy.types.Completion`.

    A ``failed`` response raises its mapped error (see :func:`response_error`); a body that is
    not a response raises :class:`~llmproxy.errors.ProviderResponseError`.
    """
    try:
        if data.get("status") == "failed":
            raise response_error(data.get("error"), provider, model, "the response failed", secret)
        out = _Output().read(data["output"])
        message = Message(
            "assistant",
            out.text,
            tool_calls=tuple(out.calls),
            reasoning=_SEPARATOR.join(out.reasoning) or None,
            citations=tuple(out.citations),
            hosted_outputs=tuple(out.hosted),
        )
        return Completion(
            message,
            usage_from_wire(data.get("usage")),
            data.get("model") or model,
            _finish_reason(data, bool(out.calls)),
            data.get("id"),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ProviderResponseError(
            f"the response is not a valid Responses API answer ({type(exc).__name__}: {exc})",
            provider=provider,
            model=model,
        ) from None


class ResponsesStreamReader:
    """Turns Responses API SSE lines into chunks.

    Text and reasoning deltas become chunks as they arrive (a new message item after earlier
    text is preceded by a blank line, as in :func:`parse_response`); ``response.completed`` (or
    ``response.incomplete``) becomes the last chunk: usage, finish reason, and the tool calls,
    citations and hosted outputs read from the final output items. ``response.failed`` and
    ``error`` events raise.
    """

    __slots__ = ("done", "id", "model", "provider", "secret", "text_item", "wrote_text")

    def __init__(self, provider: str, model: str, secret: Secret | None = None) -> None:
        self.provider = provider
        self.model = model
        self.secret = secret
        self.done = False
        self.id: str | None = None
        self.text_item: str | None = None
        self.wrote_text = False

    def _bad(self, message: str) -> ProviderResponseError:
        return ProviderResponseError(message, provider=self.provider, model=self.model)

    def line(self, line: str) -> Chunk | None:
        """Read one SSE line; return a chunk when it carries one."""
        if not line.startswith("data:"):
            return None
        payload = line[5:].strip()
        if not payload or payload == "[DONE]":
            return None
        try:
            event = json.loads(payload)
        except ValueError:
            raise self._bad("the stream sent an event that is not JSON") from None
        if not isinstance(event, dict):
            raise self._bad("the stream sent a non-object event")
        kind = event.get("type")
        if kind == "response.output_text.delta" or kind == "response.refusal.delta":
            delta = str(event.get("delta") or "")
            item = event.get("item_id")
            if item != self.text_item:
                if self.wrote_text and self.text_item is not None:
                    delta = _SEPARATOR + delta
                self.text_item = item
            if not delta:
                return None
            self.wrote_text = True
            return Chunk(delta, model=self.model, id=self.id)
        if kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            delta = str(event.get("delta") or "")
            return Chunk(reasoning=delta, model=self.model, id=self.id) if delta else None
        if kind in ("response.created", "response.in_progress"):
            response = event.get("response") or {}
            self.id = response.get("id") or self.id
            self.model = response.get("model") or self.model
            return None
        if kind in ("response.completed", "response.incomplete"):
            self.done = True
            completion = parse_response(
                event.get("response"), self.provider, self.model, self.secret
            )
            message = completion.message
            return Chunk(
                usage=completion.usage,
                finish_reason=completion.finish_reason,
                model=completion.model,
                tool_calls=message.tool_calls,
                id=completion.id,
                citations=message.citations,
                hosted_outputs=message.hosted_outputs,
            )
        if kind == "response.failed":
            self.done = True
            response = event.get("response") or {}
            raise response_error(
                response.get("error"), self.provider, self.model, "the response failed", self.secret
            )
        if kind == "error":
            self.done = True
            error = event.get("error") if isinstance(event.get("error"), Mapping) else event
            raise response_error(
                error, self.provider, self.model, "the stream reported an error", self.secret
            )
        return None

    def check_complete(self) -> None:
        """Raise ProviderConnectionError when the stream ended before its last event."""
        if not self.done:
            raise ProviderConnectionError(
                "the stream ended before the response was complete",
                provider=self.provider,
                model=self.model,
            )
