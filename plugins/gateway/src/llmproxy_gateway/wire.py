"""OpenAI's Chat Completions wire format: requests in, responses and SSE chunks out.

Parsing checks what the gateway relies on and answers 400 (OpenAI's error shape, ``param``
naming the field) for anything else; the rest passes to the provider untouched. Stream chunks
are built from pre-encoded bytes around one ``json.dumps`` of the text delta.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any, Final

from attrs import frozen

from llmproxy.errors import InvalidRequest
from llmproxy.types import ChatResponse, Message, ToolCall, Usage
from llmproxy_gateway.errors import HTTPError, bad_request

# Parameters passed to the provider as they are (extra keyword arguments of the Proxy).
PASSTHROUGH: Final = frozenset(
    (
        "top_p",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "response_format",
        "logit_bias",
        "reasoning_effort",
        "verbosity",
    )
)
# Accepted and not forwarded: they describe the caller, not the answer.
IGNORED: Final = frozenset(("user", "store", "metadata", "service_tier", "stream_options", "n"))
_ROLES: Final = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}


@frozen
class ChatCall:
    """A parsed request: the messages and the Proxy call's keyword arguments."""

    messages: list[Message]
    model: str
    stream: bool
    include_usage: bool
    kwargs: dict[str, Any]


def _content(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts: list[str] = []
        for index, part in enumerate(value):
            if isinstance(part, Mapping) and part.get("type") == "text":
                text = part.get("text")
                if isinstance(text, str):
                    texts.append(text)
                    continue
            raise bad_request(
                f"{where}.content[{index}]: only text parts are supported by this gateway",
                f"{where}.content",
            )
        return "".join(texts)
    raise bad_request(f"{where}.content must be a string or a list of text parts", where)


def _tool_calls(value: Any, where: str) -> tuple[ToolCall, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise bad_request(f"{where}.tool_calls must be a list", f"{where}.tool_calls")
    calls: list[ToolCall] = []
    for index, item in enumerate(value):
        function = item.get("function") if isinstance(item, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise bad_request(
                f"{where}.tool_calls[{index}] needs a function with a name",
                f"{where}.tool_calls",
            )
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        calls.append(ToolCall(str(item.get("id") or f"call_{index}"), function["name"], arguments))
    return tuple(calls)


def _message(item: Any, index: int) -> Message:
    where = f"messages[{index}]"
    if not isinstance(item, Mapping):
        raise bad_request(f"{where} must be an object", where)
    role = _ROLES.get(item.get("role"))  # type: ignore[arg-type]
    if role is None:
        raise bad_request(
            f"{where}.role must be one of system, developer, user, assistant, tool;"
            f" got {item.get('role')!r}",
            f"{where}.role",
        )
    name = item.get("name")
    tool_call_id = item.get("tool_call_id")
    try:
        return Message(
            role,  # type: ignore[arg-type]
            _content(item.get("content"), where),
            name=name if isinstance(name, str) else None,
            tool_calls=_tool_calls(item.get("tool_calls"), where),
            tool_call_id=tool_call_id if isinstance(tool_call_id, str) else None,
        )
    except InvalidRequest as exc:
        raise bad_request(f"{where}: {exc}", where) from None


def _int(data: Mapping[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_request(f"'{name}' must be an integer >= 1, got {value!r}", name)
    return value


def parse(body: bytes) -> ChatCall:
    """Parse a ``POST /v1/chat/completions`` body; raise :class:`HTTPError` (400) when bad."""
    try:
        data = json.loads(body)
    except ValueError:
        raise bad_request(
            "We could not parse the JSON body of your request: send a JSON object."
        ) from None
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("Missing required parameter: 'model'.", "model")
    raw_messages = data.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise bad_request("Missing required parameter: 'messages'.", "messages")
    messages = [_message(m, i) for i, m in enumerate(raw_messages)]
    stream = data.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", "stream")
    options = data.get("stream_options")
    include_usage = isinstance(options, Mapping) and options.get("include_usage") is True
    n = data.get("n")
    if n not in (None, 1):
        raise bad_request("this gateway answers with one choice: 'n' must be 1", "n")
    if data.get("tools") or data.get("functions"):
        raise bad_request(
            "client-side tools are not supported by this gateway yet; send requests without"
            " 'tools'",
            "tools",
        )
    kwargs: dict[str, Any] = {}
    cap = _int(data, "max_completion_tokens") or _int(data, "max_tokens")
    if cap is not None:
        kwargs["max_output_tokens"] = cap
    temperature = data.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise bad_request("'temperature' must be a number", "temperature")
        kwargs["temperature"] = float(temperature)
    for name, value in data.items():
        if name in PASSTHROUGH and value is not None:
            kwargs[name] = value
    end_user = data.get("user")
    if isinstance(end_user, str) and end_user:
        kwargs["tags"] = {"end_user": end_user}
    return ChatCall(messages, model, bool(stream), include_usage, kwargs)


def usage_json(usage: Usage) -> dict[str, Any]:
    """OpenAI's ``usage`` object."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def new_id() -> str:
    """A fresh ``chatcmpl-...`` id."""
    return "chatcmpl-" + uuid.uuid4().hex


def completion_body(response: ChatResponse) -> bytes:
    """The JSON body of a non-streamed answer."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": response.text if response.text or not response.message.tool_calls else None,
        "refusal": None,
    }
    if response.message.reasoning:
        message["reasoning_content"] = response.message.reasoning
    if response.message.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in response.message.tool_calls
        ]
    body = {
        "id": response.id or new_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": response.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": response.finish_reason or "stop",
            }
        ],
        "usage": usage_json(response.usage),
        "system_fingerprint": None,
    }
    return json.dumps(body, separators=(",", ":")).encode()


class ChunkWriter:
    """Encodes one stream's ``chat.completion.chunk`` events as SSE ``data:`` lines."""

    __slots__ = ("_head", "_id", "_model", "_tail", "created")

    def __init__(self, model: str) -> None:
        self._id = new_id()
        self.created = int(time.time())
        self._model = model
        self._head = (
            f'data: {{"id":"{self._id}","object":"chat.completion.chunk","created":{self.created},'
            f'"model":{json.dumps(model)},"choices":[{{"index":0,"delta":{{'
        ).encode()
        self._tail = b'},"logprobs":null,"finish_reason":null}]}\n\n'

    def role(self) -> bytes:
        """The first chunk: the assistant role and empty content."""
        return self._head + b'"role":"assistant","content":""' + self._tail

    def content(self, text: str) -> bytes:
        """A content delta."""
        return self._head + b'"content":' + json.dumps(text).encode() + self._tail

    def reasoning(self, text: str) -> bytes:
        """A reasoning delta (``reasoning_content``, as DeepSeek-compatible clients read it)."""
        return self._head + b'"reasoning_content":' + json.dumps(text).encode() + self._tail

    def finish(self, reason: str | None) -> bytes:
        """The chunk carrying the finish reason."""
        return (
            self._head
            + b'},"logprobs":null,"finish_reason":'
            + json.dumps(reason or "stop").encode()
            + b"}]}\n\n"
        )

    def usage(self, usage: Usage) -> bytes:
        """The final chunk of ``stream_options.include_usage``: no choices, the usage."""
        body = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self._model,
            "choices": [],
            "usage": usage_json(usage),
        }
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    @staticmethod
    def error(error: HTTPError) -> bytes:
        """An error event for a stream that broke after it started."""
        return b"data: " + error.body() + b"\n\n"

    DONE: Final = b"data: [DONE]\n\n"
