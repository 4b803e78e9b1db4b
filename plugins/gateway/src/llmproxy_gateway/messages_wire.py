"""Anthropic's Messages API wire format: requests in, messages and SSE events out.

``POST /v1/messages`` bodies are parsed into the core's types (:class:`~llmproxy.types.Message`
with content parts, :class:`~llmproxy.tools.ClientTool` definitions, the Proxy's keyword
arguments) and answers are rendered back from :class:`~llmproxy.types.ChatResponse` and
:class:`~llmproxy.types.StreamEvent`, so any provider behind the Proxy answers in Anthropic's
shape. Errors use Anthropic's ``{"type": "error", "error": {"type", "message"}}`` body
(:func:`error_body`).

Mapping (request):

- ``system`` (string or text blocks) becomes the Proxy's ``system=``; ``max_tokens`` (required)
  ``max_output_tokens``; ``temperature`` and ``top_p`` as they are; ``stop_sequences`` the
  provider's ``stop``; ``metadata.user_id`` the tag ``end_user``.
- content blocks: ``text`` -> :class:`Text`; ``image`` (``source`` base64 with
  ``media_type``, or ``url``) -> :class:`Image`; ``document`` (``source`` base64 PDF, ``file``
  with ``file_id``, or ``text`` plain text) -> :class:`Document` (plain text becomes a text
  part); ``tool_use`` (assistant) -> :class:`ToolCall`; ``tool_result`` (user) -> a ``tool``
  message answering ``tool_use_id`` (its text; ``is_error`` prefixes ``Error: ``);
  ``thinking`` blocks of earlier turns -> the assistant message's ``reasoning``.
- ``tools`` (``name``, ``description``, ``input_schema``) -> client tools, never run by the
  gateway (``run_tools=False``); ``tool_choice`` ``auto``/``any``/``tool``/``none`` ->
  ``auto``/``required``/the tool's name/``none``; ``disable_parallel_tool_use`` ->
  ``parallel_tool_calls=False``.
- ``thinking`` ``{"type": "enabled", "budget_tokens": N}`` -> the provider's reasoning control
  (:func:`thinking_kwargs`).

Refused with a 400 naming the field: a missing ``max_tokens``, server tools (any ``tools``
entry with a ``type`` other than ``custom``), document ``url`` sources, non-text
``tool_result`` content. ``redacted_thinking`` blocks are dropped (no other provider can read
them); ``top_k``, ``service_tier``, ``container``, ``mcp_servers``, ``speed``, ``inference_geo`` and
``cache_control`` markers are accepted and ignored (no provider behind the Proxy takes them).
``output_config.format`` (``json_schema``) becomes the Proxy's ``schema=`` (the answer is
checked against it); ``output_config.effort`` is OpenAI's ``reasoning_effort``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any, Final

from attrs import frozen

from llmproxy.errors import InvalidRequest
from llmproxy.tools import ClientTool
from llmproxy.types import (
    ChatResponse,
    Document,
    Image,
    Message,
    Part,
    Text,
    ToolCall,
    Usage,
)
from llmproxy_gateway import env
from llmproxy_gateway.errors import HTTPError, bad_request
from llmproxy_gateway.wire import BodyLimits, _check_depth, _decode, load_json

# HTTP status -> Anthropic's error type.
_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}

# budget_tokens -> OpenAI's reasoning_effort: below the first bound "low", then "medium".
EFFORT_BOUNDS: Final = ((4096, "low"), (16384, "medium"))
_STOP_REASONS: Final = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}


def error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    if status == 503:
        return "overloaded_error"
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_status(error: HTTPError, upstream_status: int | None = None) -> int:
    """The status to answer ``error`` with: an upstream 503/529 (overloaded) stays 529."""
    if upstream_status in (503, 529) and error.status >= 500:
        return 529
    return error.status


def error_payload(status: int, error: HTTPError) -> dict[str, Any]:
    """Anthropic's error body as a dict."""
    return {"type": "error", "error": {"type": error_type(status), "message": error.message}}


def error_body(status: int, error: HTTPError) -> bytes:
    """Anthropic's error body: ``{"type": "error", "error": {"type", "message"}}``."""
    return json.dumps(error_payload(status, error)).encode()


@frozen
class MessagesCall:
    """A parsed Messages request: the messages and the Proxy call's keyword arguments."""

    messages: list[Message]
    model: str
    stream: bool
    kwargs: dict[str, Any]
    thinking: str | None
    """``thinking.type`` (enabled, adaptive, disabled), None when not sent."""
    budget: int | None
    """``thinking.budget_tokens`` when thinking was enabled, else None."""
    effort: str | None
    """``output_config.effort``, None when not sent."""


def _where_string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise bad_request(f"{where} must be a non-empty string", where)
    return value


def _source(block: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    source = block.get("source")
    if not isinstance(source, Mapping):
        raise bad_request(f"{where}.source must be an object with a 'type'", f"{where}.source")
    return source


def _made(build: Any, where: str) -> Any:
    try:
        return build()
    except InvalidRequest as exc:
        raise bad_request(f"{where}: {exc}", where) from None


def _image(block: Mapping[str, Any], where: str) -> Image:
    source = _source(block, where)
    where += ".source"
    kind = source.get("type")
    if kind == "base64":
        media_type = _where_string(source.get("media_type"), f"{where}.media_type")
        data, _ = _decode(_where_string(source.get("data"), f"{where}.data"), where, "the image")
        return _made(lambda: Image(data=data, media_type=media_type), where)  # type: ignore[no-any-return]
    if kind == "url":
        url = _where_string(source.get("url"), f"{where}.url")
        if not url.startswith("https://"):
            raise bad_request(f"{where}.url must be an https:// URL", f"{where}.url")
        return _made(lambda: Image(url=url), where)  # type: ignore[no-any-return]
    raise bad_request(
        f"{where}.type must be base64 or url, got {kind!r} (upload files with the provider's"
        " own API)",
        f"{where}.type",
    )


def _document(block: Mapping[str, Any], where: str) -> Part:
    source = _source(block, where)
    where += ".source"
    kind = source.get("type")
    title = block.get("title")
    filename = title if isinstance(title, str) and title else None
    if kind == "base64":
        media_type = source.get("media_type") or "application/pdf"
        data, _ = _decode(_where_string(source.get("data"), f"{where}.data"), where, "the file")
        return _made(  # type: ignore[no-any-return]
            lambda: Document(data=data, media_type=media_type, filename=filename), where
        )
    if kind == "text":
        text = source.get("data")
        if not isinstance(text, str):
            raise bad_request(f"{where}.data must be a string", f"{where}.data")
        return Text(text)
    if kind == "file":
        file_id = _where_string(source.get("file_id"), f"{where}.file_id")
        return _made(lambda: Document(file_id=file_id, filename=filename), where)  # type: ignore[no-any-return]
    raise bad_request(
        f"{where}.type {kind!r} is not supported: send the document as base64 (or a file_id"
        " the provider holds); url sources are not fetched by this gateway",
        f"{where}.type",
    )


def _text_of_result(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where}.content must be a string or a list of text blocks", where)
    texts: list[str] = []
    for index, block in enumerate(content):
        if not isinstance(block, Mapping) or block.get("type") != "text":
            raise bad_request(
                f"{where}.content[{index}]: this gateway takes text blocks in a tool_result"
                " (send images in a user content block)",
                f"{where}.content[{index}]",
            )
        text = block.get("text")
        if not isinstance(text, str):
            raise bad_request(
                f"{where}.content[{index}].text must be a string", f"{where}.content[{index}]"
            )
        texts.append(text)
    return "\n\n".join(texts)


def _user(content: list[Any], where: str) -> list[Message]:
    """A user turn: its tool results (as tool messages) first, then its other blocks."""
    out: list[Message] = []
    parts: list[Part] = []
    for index, block in enumerate(content):
        at = f"{where}.content[{index}]"
        kind = _kind(block, at)
        if kind == "text":
            parts.append(Text(_text(block, at)))
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "document":
            parts.append(_document(block, at))
        elif kind == "tool_result":
            call_id = _where_string(block.get("tool_use_id"), f"{at}.tool_use_id")
            text = _text_of_result(block.get("content"), at)
            if block.get("is_error") is True:
                text = "Error: " + text
            out.append(Message("tool", text, tool_call_id=call_id))
        else:
            raise bad_request(
                f"{at}.type must be text, image, document or tool_result in a user message,"
                f" got {kind!r}",
                f"{at}.type",
            )
    if parts:
        if all(isinstance(p, Text) for p in parts):
            out.append(Message("user", "\n\n".join(p.text for p in parts)))  # type: ignore[union-attr]
        else:
            out.append(Message.with_parts("user", parts))
    return out


def _assistant(content: list[Any], where: str, max_depth: int) -> Message:
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCall] = []
    for index, block in enumerate(content):
        at = f"{where}.content[{index}]"
        kind = _kind(block, at)
        if kind == "text":
            texts.append(_text(block, at))
        elif kind == "thinking":
            thought = block.get("thinking")
            if isinstance(thought, str):
                reasoning.append(thought)
        elif kind == "redacted_thinking":
            continue  # encrypted for Anthropic's own models: nothing another provider can read
        elif kind == "tool_use":
            call_id = _where_string(block.get("id"), f"{at}.id")
            name = _where_string(block.get("name"), f"{at}.name")
            arguments = block.get("input", {})
            if not isinstance(arguments, Mapping):
                raise bad_request(f"{at}.input must be an object", f"{at}.input")
            _check_depth(arguments, max_depth, f"{at}.input")
            calls.append(ToolCall(call_id, name, json.dumps(arguments)))
        else:
            raise bad_request(
                f"{at}.type must be text, thinking or tool_use in an assistant message,"
                f" got {kind!r}",
                f"{at}.type",
            )
    return Message(
        "assistant",
        "".join(texts),
        tool_calls=tuple(calls),
        reasoning="".join(reasoning) or None,
    )


def _kind(block: Any, where: str) -> Any:
    if not isinstance(block, Mapping):
        raise bad_request(f"{where} must be a content block object with a 'type'", where)
    return block.get("type")


def _text(block: Mapping[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise bad_request(f"{where}.text must be a string", f"{where}.text")
    return text


def _messages(raw: Any, limits: BodyLimits) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages: field required (a non-empty list)", "messages")
    if len(raw) > limits.max_messages:
        raise bad_request(
            f"'messages' has {len(raw)} messages, more than this gateway takes in one request"
            f" ({limits.max_messages}; the operator sets it with {env.MAX_MESSAGES})",
            "messages",
        )
    out: list[Message] = []
    for index, item in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(item, Mapping):
            raise bad_request(f"{where} must be an object", where)
        role = item.get("role")
        content = item.get("content")
        if role not in ("user", "assistant"):
            raise bad_request(
                f"{where}.role must be user or assistant (the system prompt goes in 'system'),"
                f" got {role!r}",
                f"{where}.role",
            )
        if isinstance(content, str):
            out.append(Message(role, content))
            continue
        if not isinstance(content, list):
            raise bad_request(
                f"{where}.content must be a string or a list of content blocks",
                f"{where}.content",
            )
        if role == "user":
            out.extend(_user(content, where))
        else:
            out.append(_assistant(content, where, limits.max_depth))
    return out


def _system(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    if not isinstance(value, list):
        raise bad_request("system must be a string or a list of text blocks", "system")
    texts = []
    for index, block in enumerate(value):
        where = f"system[{index}]"
        if _kind(block, where) != "text":
            raise bad_request(f"{where}.type must be text", f"{where}.type")
        texts.append(_text(block, where))
    return "\n\n".join(texts) or None


def _tools(raw: Any, limits: BodyLimits) -> list[ClientTool]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise bad_request("tools must be a list of tool definitions", "tools")
    tools: list[ClientTool] = []
    for index, item in enumerate(raw):
        where = f"tools[{index}]"
        if not isinstance(item, Mapping):
            raise bad_request(f"{where} must be an object", where)
        kind = item.get("type")
        if kind not in (None, "custom"):
            raise bad_request(
                f"{where}.type {kind!r} is a server tool this gateway does not run: send"
                " custom tools (name, description, input_schema) and run them in the client",
                f"{where}.type",
            )
        schema = item.get("input_schema")
        if not isinstance(schema, Mapping):
            raise bad_request(
                f"{where}.input_schema must be a JSON schema object", f"{where}.input_schema"
            )
        _check_depth(schema, limits.max_depth, f"{where}.input_schema")
        spec = {
            "type": "function",
            "name": item.get("name"),
            "description": item.get("description"),
            "parameters": schema,
        }
        try:
            tools.append(ClientTool.from_openai(spec, where))
        except InvalidRequest as exc:
            field = (exc.field or where).replace(".parameters", ".input_schema")
            raise bad_request(str(exc).replace(".parameters", ".input_schema"), field) from None
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise bad_request(f"tool names must be unique, got {names}", "tools")
    return tools


def _tool_choice(value: Any, tools: list[ClientTool], kwargs: dict[str, Any]) -> None:
    if value is None:
        return
    kind = value.get("type") if isinstance(value, Mapping) else None
    modes = {"auto": "auto", "any": "required", "none": "none"}
    if kind in modes:
        choice = modes[kind]
    elif kind == "tool":
        choice = _where_string(value.get("name"), "tool_choice.name")
        if choice not in {t.name for t in tools}:
            raise bad_request(
                f"tool_choice names {choice!r}, which is not among the request's tools",
                "tool_choice.name",
            )
    else:
        raise bad_request(
            'tool_choice must be {"type": "auto" | "any" | "none"} or {"type": "tool",'
            ' "name": ...}',
            "tool_choice",
        )
    if not tools:
        if choice == "required":
            raise bad_request("tool_choice is 'any' but the request has no tools", "tools")
        return
    kwargs["tool_choice"] = choice
    if value.get("disable_parallel_tool_use") is True:
        kwargs["parallel_tool_calls"] = False


def _number(data: Mapping[str, Any], name: str) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"{name} must be a number", name)
    return float(value)


def _thinking(value: Any) -> tuple[str | None, int | None]:
    """``thinking`` as (mode, budget): mode enabled, adaptive or disabled (None: not sent)."""
    if value is None:
        return None, None
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind in ("disabled", "adaptive"):
        return kind, None
    if kind == "enabled":
        budget = value.get("budget_tokens")
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise bad_request(
                "thinking.budget_tokens must be an integer >= 1", "thinking.budget_tokens"
            )
        return kind, budget
    raise bad_request(
        'thinking must be {"type": "enabled", "budget_tokens": N}, {"type": "adaptive"} or'
        ' {"type": "disabled"}',
        "thinking",
    )


def _output_config(value: Any, kwargs: dict[str, Any]) -> str | None:
    """``output_config``: its ``format`` becomes the Proxy's ``schema=``; returns ``effort``."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise bad_request("output_config must be an object", "output_config")
    fmt = value.get("format")
    if fmt is not None:
        schema = fmt.get("schema") if isinstance(fmt, Mapping) else None
        if (
            not isinstance(fmt, Mapping)
            or fmt.get("type") != "json_schema"
            or not isinstance(schema, Mapping)
        ):
            raise bad_request(
                'output_config.format must be {"type": "json_schema", "schema": {...}}',
                "output_config.format",
            )
        kwargs["schema"] = dict(schema)
    effort = value.get("effort")
    if effort is not None and effort not in _EFFORTS:
        raise bad_request(
            f"output_config.effort must be one of {', '.join(_EFFORTS)}, got {effort!r}",
            "output_config.effort",
        )
    return effort


_EFFORTS: Final = ("low", "medium", "high", "xhigh", "max")


def _body(body: bytes, limits: BodyLimits) -> dict[str, Any]:
    data = load_json(body, limits)
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model: field required (a model name such as 'fast')", "model")
    return data


def parse(body: bytes, limits: BodyLimits | None = None) -> MessagesCall:
    """Parse a ``POST /v1/messages`` body; raise :class:`HTTPError` (400, 413) when bad."""
    limits = limits if limits is not None else BodyLimits()
    data = _body(body, limits)
    cap = data.get("max_tokens")
    if cap is None:
        raise bad_request("max_tokens: field required", "max_tokens")
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise bad_request(f"max_tokens must be an integer >= 1, got {cap!r}", "max_tokens")
    messages = _messages(data.get("messages"), limits)
    stream = data.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("stream must be a boolean", "stream")
    kwargs: dict[str, Any] = {"max_output_tokens": cap}
    system = _system(data.get("system"))
    if system is not None:
        kwargs["system"] = system
    tools = _tools(data.get("tools"), limits)
    if tools:
        kwargs["tools"] = tools
    if tools or data.get("tool_choice") is not None:
        kwargs["run_tools"] = False  # the client runs its tools: every call is handed back
    _tool_choice(data.get("tool_choice"), tools, kwargs)
    temperature = _number(data, "temperature")
    if temperature is not None:
        kwargs["temperature"] = temperature
    top_p = _number(data, "top_p")
    if top_p is not None:
        kwargs["top_p"] = top_p
    stops = data.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise bad_request("stop_sequences must be a list of strings", "stop_sequences")
        if stops:
            kwargs["stop"] = stops
    metadata = data.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise bad_request("metadata must be an object", "metadata")
        user_id = metadata.get("user_id")
        if isinstance(user_id, str) and user_id:
            kwargs["tags"] = {"end_user": user_id}
    mode, budget = _thinking(data.get("thinking"))
    effort = _output_config(data.get("output_config"), kwargs)
    return MessagesCall(messages, data["model"], bool(stream), kwargs, mode, budget, effort)


def parse_count(
    body: bytes, limits: BodyLimits | None = None
) -> tuple[str, list[Message], dict[str, Any]]:
    """Parse a ``POST /v1/messages/count_tokens`` body: the model, messages, system and tools."""
    limits = limits if limits is not None else BodyLimits()
    data = _body(body, limits)
    messages = _messages(data.get("messages"), limits)
    kwargs: dict[str, Any] = {}
    system = _system(data.get("system"))
    if system is not None:
        kwargs["system"] = system
    tools = _tools(data.get("tools"), limits)
    if tools:
        kwargs["tools"] = tools
    return data["model"], messages, kwargs


def thinking_kwargs(
    provider: str, mode: str | None, budget: int | None = None, effort: str | None = None
) -> dict[str, Any]:
    """The provider's own reasoning control for Anthropic's ``thinking`` (and ``effort``).

    ==========  ===================================================================
    provider    ``enabled`` with ``budget_tokens`` N / ``adaptive`` / ``disabled``
    ==========  ===================================================================
    openai      ``reasoning_effort``: ``low`` (N < 4096), ``medium`` (N < 16384),
                else ``high``; adaptive: ``output_config.effort`` (``xhigh`` and
                ``max`` as ``high``) or nothing; disabled: nothing
    gemini      ``thinking_config={"thinking_budget": N, "include_thoughts": True}``;
                adaptive: budget -1 (dynamic); disabled: budget 0
    deepseek    ``extra_body={"thinking": {"type": "enabled"}}`` (DeepSeek takes no
                budget); disabled: ``{"type": "disabled"}``
    other       nothing: the setting is ignored
    ==========  ===================================================================
    """
    if provider == "openai":
        if mode == "enabled" and budget is not None:
            level = next((name for bound, name in EFFORT_BOUNDS if budget < bound), "high")
            return {"reasoning_effort": level}
        if effort is not None and mode != "disabled":
            return {"reasoning_effort": effort if effort in ("low", "medium", "high") else "high"}
        return {}
    if mode is None:
        return {}
    if provider == "gemini":
        if mode == "disabled":
            return {"thinking_config": {"thinking_budget": 0}}
        size = budget if mode == "enabled" and budget is not None else -1
        return {"thinking_config": {"thinking_budget": size, "include_thoughts": True}}
    if provider == "deepseek":
        state = "disabled" if mode == "disabled" else "enabled"
        return {"extra_body": {"thinking": {"type": state}}}
    return {}


def new_id() -> str:
    """A fresh ``msg_...`` id."""
    return "msg_" + uuid.uuid4().hex[:24]


def stop_reason(response: ChatResponse | None, finish_reason: str | None) -> str:
    """Anthropic's ``stop_reason`` for the core's finish reason."""
    if response is not None and response.message.tool_calls:
        return "tool_use"
    return _STOP_REASONS.get(finish_reason or "stop", "end_turn")


def usage_json(usage: Usage | None) -> dict[str, Any]:
    """Anthropic's ``usage``: ``input_tokens`` excludes cache reads and writes, reported apart.

    Cache writes are split as Anthropic splits them (``cache_creation``): the 1-hour ones
    (``Usage.cache_write_1h_tokens``) and the 5-minute rest.
    """
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0}
    uncached = usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens
    hour = min(usage.cache_write_1h_tokens, usage.cache_write_tokens)
    return {
        "input_tokens": max(0, uncached),
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": usage.cache_write_tokens - hour,
            "ephemeral_1h_input_tokens": hour,
        },
    }


def tool_input(call: ToolCall) -> dict[str, Any]:
    """A tool call's arguments as the object Anthropic's ``input`` holds."""
    try:
        value = json.loads(call.arguments or "{}")
    except ValueError:
        return {"arguments": call.arguments}
    return value if isinstance(value, dict) else {"arguments": value}


def tool_id(call: ToolCall) -> str:
    """The provider's id of a call (what the client's ``tool_result`` names), or a fresh one."""
    return call.id or "toolu_" + uuid.uuid4().hex[:24]


def message_body(response: ChatResponse, message_id: str | None = None) -> bytes:
    """The JSON body of a non-streamed answer."""
    content: list[dict[str, Any]] = []
    if response.message.reasoning:
        content.append(
            {"type": "thinking", "thinking": response.message.reasoning, "signature": ""}
        )
    if response.text or not response.message.tool_calls:
        content.append({"type": "text", "text": response.text})
    for call in response.message.tool_calls:
        content.append(
            {"type": "tool_use", "id": tool_id(call), "name": call.name, "input": tool_input(call)}
        )
    body = {
        "id": message_id or new_id(),
        "type": "message",
        "role": "assistant",
        "model": response.model,
        "content": content,
        "stop_reason": stop_reason(response, response.finish_reason),
        "stop_sequence": None,
        "usage": usage_json(response.usage),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _event(kind: str, data: Mapping[str, Any]) -> bytes:
    return (
        b"event: "
        + kind.encode()
        + b"\ndata: "
        + json.dumps(data, separators=(",", ":")).encode()
        + b"\n\n"
    )


class EventWriter:
    """Encodes one stream's answer as Anthropic's SSE events, opening and closing its blocks."""

    __slots__ = ("_index", "_kind", "_model")

    def __init__(self, model: str) -> None:
        self._model = model
        self._index = -1
        self._kind: str | None = None  # the open block's type

    def start(self) -> bytes:
        """``message_start`` (empty content, zero usage) and a ``ping``."""
        message: dict[str, Any] = {
            "id": new_id(),
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event("message_start", {"type": "message_start", "message": message}) + (
            b'event: ping\ndata: {"type":"ping"}\n\n'
        )

    def _close(self) -> bytes:
        if self._kind is None:
            return b""
        self._kind = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self._index})

    def _open(self, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._index += 1
        self._kind = block["type"]
        return out + _event(
            "content_block_start",
            {"type": "content_block_start", "index": self._index, "content_block": block},
        )

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _event(
            "content_block_delta",
            {"type": "content_block_delta", "index": self._index, "delta": delta},
        )

    def text(self, text: str) -> bytes:
        """A ``text_delta`` (opening a text block first when another is open)."""
        head = b"" if self._kind == "text" else self._open({"type": "text", "text": ""})
        return head + self._delta({"type": "text_delta", "text": text})

    def thinking(self, text: str) -> bytes:
        """A ``thinking_delta`` (opening a thinking block first when another is open)."""
        head = (
            b""
            if self._kind == "thinking"
            else self._open({"type": "thinking", "thinking": "", "signature": ""})
        )
        return head + self._delta({"type": "thinking_delta", "thinking": text})

    def finish(
        self, response: ChatResponse | None, finish_reason: str | None, usage: Usage | None
    ) -> bytes:
        """The tool_use blocks, ``message_delta`` (stop reason, usage) and ``message_stop``."""
        out = [self._close()]
        calls = response.message.tool_calls if response is not None else ()
        for call in calls:
            block = {"type": "tool_use", "id": tool_id(call), "name": call.name, "input": {}}
            out.append(self._open(block))
            partial = json.dumps(tool_input(call), separators=(",", ":"))
            out.append(self._delta({"type": "input_json_delta", "partial_json": partial}))
            out.append(self._close())
        if self._index < 0:
            out.append(self._open({"type": "text", "text": ""}))
            out.append(self._close())
        delta = {"stop_reason": stop_reason(response, finish_reason), "stop_sequence": None}
        out.append(
            _event(
                "message_delta",
                {"type": "message_delta", "delta": delta, "usage": usage_json(usage)},
            )
        )
        out.append(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
        return b"".join(out)

    @staticmethod
    def error(status: int, error: HTTPError) -> bytes:
        """An ``error`` event for a stream that broke after it started."""
        return _event("error", error_payload(status, error))
