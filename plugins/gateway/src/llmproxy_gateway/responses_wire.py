"""OpenAI's Responses API wire format: ``POST /v1/responses`` bodies in, response objects out.

A request is parsed into the core's types (:class:`~llmproxy.types.Message` values with their
parts, the Proxy call's keyword arguments), and the answer rendered back from a
:class:`~llmproxy.types.ChatResponse` (or, streamed, from :class:`~llmproxy.types.StreamEvent`
values) as a ``response`` object or the Responses event sequence: any provider the Proxy knows
answers in this shape. What maps to what:

==============================  ================================================================
Responses                       the Proxy call
==============================  ================================================================
``input`` string                one user message
``input`` message items         messages; ``input_text`` / ``input_image`` / ``input_file``
                                parts as :class:`~llmproxy.types.Text` / ``Image`` / ``Document``
``function_call`` items         ``tool_calls`` of one assistant message
``function_call_output`` items  ``Message("tool", output, tool_call_id=call_id)``
``instructions``                ``system=``
``tools`` (function)            :class:`~llmproxy.tools.ClientTool` values, ``run_tools=False``
``tool_choice``                 ``tool_choice=`` (a mode or a tool's name)
``text.format`` json_schema     ``schema=`` (the answer is checked against it)
``text.format`` json_object     ``response_format={"type": "json_object"}`` (passed through)
``max_output_tokens``           ``max_output_tokens=``
``temperature``, ``top_p``      as they are
``reasoning.effort``            ``reasoning_effort=`` (passed through)
``user``                        the ``end_user`` tag
==============================  ================================================================

``previous_response_id`` and ``store`` are the gateway's (see :mod:`llmproxy_gateway.app`).
Refused with a 400 naming the field: hosted tools (web search, file search...), ``background``,
``conversation``, ``prompt`` templates, and input items of other types. ``reasoning`` items sent
back are skipped (the reasoning text of an answer is not part of this route's output).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs
from attrs import define, frozen

from llmproxy.errors import InvalidRequest
from llmproxy.tools import ClientTool
from llmproxy.types import ChatResponse, Document, Image, Message, Part, Text, ToolCall, Usage
from llmproxy_gateway.errors import HTTPError, bad_request
from llmproxy_gateway.wire import (
    _DETAILS,
    BodyLimits,
    _check_depth,
    _decode,
    _made,
    _passthrough,
    _string,
    function_tools,
    load_json,
)

_ROLES: Final = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}
_REFUSED: Final = {
    "background": "background responses are not served by this gateway: send background=false",
    "conversation": "conversations are not kept by this gateway: send previous_response_id",
    "prompt": "prompt templates are not served by this gateway: send the input itself",
}
_SEPARATORS: Final = (",", ":")


@frozen
class ResponsesCall:
    """A parsed ``POST /v1/responses`` request.

    ``messages`` are the request's own input (the earlier exchange of a
    ``previous_response_id`` is added by the gateway), ``kwargs`` the Proxy call's keyword
    arguments, ``echo`` the request fields a response object repeats back.
    """

    model: str
    messages: list[Message]
    stream: bool
    store: bool
    previous_response_id: str | None
    kwargs: dict[str, Any]
    echo: dict[str, Any]


def _text_of(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise bad_request(f"{where} must be a string", where)
    return value


def _image(part: Mapping[str, Any], where: str) -> Image:
    detail = part.get("detail")
    if detail is not None and detail not in _DETAILS:
        raise bad_request(
            f"{where}.detail must be auto, low or high, got {detail!r}", f"{where}.detail"
        )
    if part.get("file_id") is not None:
        raise bad_request(
            f"{where}.file_id: images by file id are not served by this gateway; send image_url"
            " (an https:// or data: URL)",
            f"{where}.file_id",
        )
    url = _string(part, "image_url", where)
    fields = {None: "image_url", "detail": "detail"}
    if url.startswith("data:"):
        data, _declared = _decode(url, f"{where}.image_url", "the image")
        return _made(lambda: Image(data=data, detail=detail), where, fields)
    if url.startswith("https://"):
        return _made(lambda: Image(url=url, detail=detail), where, fields)
    raise bad_request(
        f"{where}.image_url must be an https:// URL or a data:image/...;base64, URL",
        f"{where}.image_url",
    )


def _file(part: Mapping[str, Any], where: str) -> Document:
    filename = _string(part, "filename", where, required=False)
    if part.get("file_url") is not None:
        raise bad_request(
            f"{where}.file_url is not served by this gateway: send file_data or file_id",
            f"{where}.file_url",
        )
    if (part.get("file_id") is None) == (part.get("file_data") is None):
        raise bad_request(f"{where} needs exactly one of file_data or file_id", where)
    if part.get("file_id") is not None:
        file_id = _string(part, "file_id", where)
        return _made(lambda: Document(file_id=file_id, filename=filename), where, {None: "file_id"})
    data, declared = _decode(_string(part, "file_data", where), f"{where}.file_data", "the file")
    media_type = declared or "application/pdf"
    return _made(
        lambda: Document(data=data, media_type=media_type, filename=filename),
        where,
        {None: "file_data"},
    )


def _part(part: Any, where: str, role: str) -> Part:
    if not isinstance(part, Mapping):
        raise bad_request(f"{where} must be an object with a 'type'", where)
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        return Text(_text_of(part.get("text"), f"{where}.text"))
    if kind == "refusal":
        return Text(_text_of(part.get("refusal"), f"{where}.refusal"))
    if kind in ("input_image", "input_file") and role != "user":
        raise bad_request(
            f"{where}.type: a {role} message takes text parts only ({kind} parts go in user"
            " messages)",
            f"{where}.type",
        )
    if kind == "input_image":
        return _image(part, where)
    if kind == "input_file":
        return _file(part, where)
    raise bad_request(
        f"{where}.type must be one of input_text, input_image, input_file, output_text;"
        f" got {kind!r}",
        f"{where}.type",
    )


def _message(item: Mapping[str, Any], where: str) -> Message:
    raw_role = item.get("role")
    role = _ROLES.get(raw_role) if isinstance(raw_role, str) else None
    if role is None:
        raise bad_request(
            f"{where}.role must be one of user, system, developer, assistant; got {raw_role!r}",
            f"{where}.role",
        )
    content = item.get("content")
    try:
        if isinstance(content, str):
            return Message(role, content)  # type: ignore[arg-type]
        if isinstance(content, list):
            parts = [_part(p, f"{where}.content[{i}]", role) for i, p in enumerate(content)]
            if all(isinstance(p, Text) for p in parts):
                return Message(role, "".join(p.text for p in parts if isinstance(p, Text)))  # type: ignore[arg-type]
            return Message.with_parts(role, parts)  # type: ignore[arg-type]
    except InvalidRequest as exc:
        raise bad_request(f"{where}: {exc}", where) from None
    raise bad_request(
        f"{where}.content must be a string or a list of content parts", f"{where}.content"
    )


def _call(item: Mapping[str, Any], where: str, max_depth: int) -> ToolCall:
    call_id = _string(item, "call_id", where)
    name = _string(item, "name", where)
    arguments = item.get("arguments", "{}")
    if not isinstance(arguments, str):
        _check_depth(arguments, max_depth, f"{where}.arguments")
        arguments = json.dumps(arguments)
    return ToolCall(call_id, name, arguments)


def _output(item: Mapping[str, Any], where: str) -> Message:
    call_id = _string(item, "call_id", where)
    output = item.get("output")
    if isinstance(output, list):
        # Content parts: the text ones are the tool's output (the core's tool message is text).
        texts = []
        for index, part in enumerate(output):
            if not isinstance(part, Mapping) or part.get("type") != "input_text":
                raise bad_request(
                    f"{where}.output[{index}] must be an input_text part (tool outputs are text"
                    " on this gateway)",
                    f"{where}.output",
                )
            texts.append(_text_of(part.get("text"), f"{where}.output[{index}].text"))
        output = "".join(texts)
    if not isinstance(output, str):
        raise bad_request(f"{where}.output must be a string", f"{where}.output")
    return Message("tool", output, tool_call_id=call_id)


def parse_input(value: Any, limits: BodyLimits) -> list[Message]:
    """The messages of a request's ``input``: a string, or a list of input items."""
    if isinstance(value, str):
        return [Message("user", value)]
    if not isinstance(value, list) or not value:
        raise bad_request(
            "Missing required parameter: 'input' (a string or a list of input items).", "input"
        )
    if len(value) > limits.max_messages:
        raise bad_request(
            f"'input' has {len(value)} items, more than this gateway takes in one request"
            f" ({limits.max_messages})",
            "input",
        )
    messages: list[Message] = []
    for index, item in enumerate(value):
        where = f"input[{index}]"
        if not isinstance(item, Mapping):
            raise bad_request(f"{where} must be an object", where)
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            call = _call(item, where, limits.max_depth)
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                # The calls of one answer (after its text, if it had any) are one message.
                messages[-1] = _with_call(last, call)
            else:
                messages.append(Message("assistant", "", tool_calls=(call,)))
        elif kind == "function_call_output":
            messages.append(_output(item, where))
        elif kind == "reasoning":
            continue  # reasoning sent back: not carried (the core keeps no reasoning items)
        else:
            raise bad_request(
                f"{where}.type must be message, function_call or function_call_output;"
                f" got {kind!r}",
                f"{where}.type",
            )
    return messages


def _with_call(message: Message, call: ToolCall) -> Message:
    return attrs.evolve(message, tool_calls=(*message.tool_calls, call))


def _tool_choice(value: Any, tools: list[ClientTool]) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and value in ("auto", "none", "required"):
        name = value
    elif (
        isinstance(value, Mapping)
        and value.get("type") == "function"
        and isinstance(value.get("name"), str)
    ):
        name = value["name"]
        if name not in {t.name for t in tools}:
            raise bad_request(
                f"'tool_choice' names {name!r}, which is not among the request's 'tools'",
                "tool_choice",
            )
    else:
        raise bad_request(
            """'tool_choice' must be 'auto', 'none', 'required' or {"type": "function","""
            """ "name": ...}""",
            "tool_choice",
        )
    if not tools:
        if name == "required":
            raise bad_request("'tool_choice' is 'required' but the request has no 'tools'", "tools")
        return None
    return name


def _text_format(text: Any, kwargs: dict[str, Any], limits: BodyLimits) -> None:
    if text is None:
        return
    if not isinstance(text, Mapping):
        raise bad_request("'text' must be an object", "text")
    verbosity = text.get("verbosity")
    if verbosity is not None:
        kwargs["verbosity"] = _passthrough("verbosity", verbosity, limits)
    fmt = text.get("format")
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    if kind == "text":
        return
    if kind == "json_object":
        kwargs["response_format"] = {"type": "json_object"}
        return
    if kind != "json_schema" or not isinstance(fmt, Mapping):
        raise bad_request(
            "'text.format.type' must be text, json_object or json_schema", "text.format.type"
        )
    schema = fmt.get("schema")
    if not isinstance(schema, Mapping):
        raise bad_request("'text.format.schema' must be a JSON schema object", "text.format.schema")
    _check_depth(schema, limits.max_depth, "text.format.schema")
    out = dict(schema)
    name = fmt.get("name")
    if isinstance(name, str) and "title" not in out:
        out["title"] = name
    kwargs["schema"] = out


def _positive(data: Mapping[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_request(f"'{name}' must be an integer >= 1, got {value!r}", name)
    return value


def _number(data: Mapping[str, Any], name: str) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"'{name}' must be a number", name)
    return float(value)


def parse(body: bytes, limits: BodyLimits | None = None) -> ResponsesCall:
    """Parse a ``POST /v1/responses`` body; raise :class:`HTTPError` (400, 413) when bad."""
    limits = limits if limits is not None else BodyLimits()
    data = load_json(body, limits)
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("Missing required parameter: 'model'.", "model")
    for name, why in _REFUSED.items():
        if data.get(name) not in (None, False):
            raise bad_request(f"'{name}': {why}", name)
    messages = parse_input(data.get("input"), limits)
    stream = data.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", "stream")
    store = data.get("store", True)
    if store is not None and not isinstance(store, bool):
        raise bad_request("'store' must be a boolean", "store")
    previous = data.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous):
        raise bad_request("'previous_response_id' must be a response id", "previous_response_id")
    kwargs: dict[str, Any] = {}
    instructions = data.get("instructions")
    if instructions is not None:
        kwargs["system"] = _text_of(instructions, "instructions")
    tools = function_tools(data.get("tools"), limits, nested=False)
    if tools:
        kwargs["tools"] = tools
    if tools or "tool_choice" in data:
        kwargs["run_tools"] = False  # the client runs its tools: every call is handed back
    choice = _tool_choice(data.get("tool_choice"), tools)
    if choice is not None:
        kwargs["tool_choice"] = choice
    parallel = data.get("parallel_tool_calls")
    if parallel is not None:
        if not isinstance(parallel, bool):
            raise bad_request("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
        if tools:
            kwargs["parallel_tool_calls"] = parallel
    cap = _positive(data, "max_output_tokens")
    if cap is not None:
        kwargs["max_output_tokens"] = cap
    temperature = _number(data, "temperature")
    if temperature is not None:
        kwargs["temperature"] = temperature
    top_p = _number(data, "top_p")
    if top_p is not None:
        kwargs["top_p"] = top_p
    reasoning = data.get("reasoning")
    if isinstance(reasoning, Mapping) and reasoning.get("effort") is not None:
        kwargs["reasoning_effort"] = _passthrough("reasoning_effort", reasoning["effort"], limits)
    _text_format(data.get("text"), kwargs, limits)
    end_user = data.get("user")
    if isinstance(end_user, str) and end_user:
        kwargs["tags"] = {"end_user": end_user}
    metadata = data.get("metadata")
    echo = {
        "instructions": instructions,
        "max_output_tokens": cap,
        "temperature": temperature,
        "top_p": top_p,
        "tool_choice": data.get("tool_choice") or "auto",
        "tools": [_tool_json(t) for t in tools],
        "parallel_tool_calls": parallel if parallel is not None else True,
        "text": {"format": data["text"]["format"]}
        if isinstance(data.get("text"), Mapping) and isinstance(data["text"].get("format"), Mapping)
        else {"format": {"type": "text"}},
        "metadata": metadata if isinstance(metadata, Mapping) else {},
        "user": end_user if isinstance(end_user, str) else None,
        "previous_response_id": previous,
        "store": store is not False,
    }
    return ResponsesCall(model, messages, bool(stream), store is not False, previous, kwargs, echo)


def _tool_json(tool: ClientTool) -> dict[str, Any]:
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": dict(tool.parameters),
        "strict": tool.strict,
    }


def new_response_id() -> str:
    """A fresh ``resp_...`` id."""
    return "resp_" + uuid.uuid4().hex


def usage_json(usage: Usage) -> dict[str, Any]:
    """The Responses API's ``usage`` object.

    Prompt-cache writes (a part of ``input_tokens``) are reported as
    ``input_tokens_details.cache_write_tokens`` when there are any.
    """
    details: dict[str, int] = {"cached_tokens": usage.cached_input_tokens}
    if usage.cache_write_tokens:
        details["cache_write_tokens"] = usage.cache_write_tokens
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": details,
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


_INCOMPLETE: Final = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [] if status == "in_progress" else [_text_part(text)]
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _call_item(item_id: str, call: ToolCall, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call.id,
        "name": call.name,
        "arguments": arguments,
    }


@define
class ResponseRenderer:
    """One response's ids and request echo: renders its object whole, or as stream events.

    The same renderer (the same item ids) serves a stream's events and its final
    ``response.completed`` object, as the SDK's stream helper matches them.
    """

    id: str
    model: str
    echo: Mapping[str, Any]
    created_at: int = 0
    message_id: str = ""
    sequence: int = 0
    text_started: bool = False

    def __attrs_post_init__(self) -> None:
        self.created_at = int(time.time())
        self.message_id = "msg_" + self.id.removeprefix("resp_")

    # -- whole objects ----------------------------------------------------------------------------

    def _call_ids(self, calls: Sequence[ToolCall]) -> list[str]:
        return [f"fc_{self.id.removeprefix('resp_')}_{i}" for i in range(len(calls))]

    def output(self, response: ChatResponse) -> list[dict[str, Any]]:
        """The ``output`` items of a finished answer: its text message, then its calls."""
        calls = response.message.tool_calls
        items: list[dict[str, Any]] = []
        if response.text or not calls or self.text_started:
            items.append(_message_item(self.message_id, response.text, "completed"))
        items.extend(
            _call_item(item_id, call, call.arguments, "completed")
            for item_id, call in zip(self._call_ids(calls), calls, strict=True)
        )
        return items

    def status(self, response: ChatResponse | None) -> tuple[str, dict[str, str] | None]:
        """The object's ``status`` and ``incomplete_details`` for an answer (None: running)."""
        if response is None:
            return "in_progress", None
        reason = _INCOMPLETE.get(response.finish_reason or "")
        if reason is not None:
            return "incomplete", {"reason": reason}
        return "completed", None

    def payload(self, response: ChatResponse | None) -> dict[str, Any]:
        """The ``response`` object: finished (``response``) or in progress (None)."""
        status, incomplete = self.status(response)
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None,
            "incomplete_details": incomplete,
            "model": response.model if response is not None else self.model,
            "output": self.output(response) if response is not None else [],
            "usage": usage_json(response.usage) if response is not None else None,
            "reasoning": {"effort": None, "summary": None},
            "truncation": "disabled",
            **self.echo,
        }

    def body(self, response: ChatResponse) -> bytes:
        """The JSON body of a non-streamed answer."""
        return json.dumps(self.payload(response), separators=_SEPARATORS).encode()

    # -- stream events ----------------------------------------------------------------------------

    def event(self, kind: str, fields: dict[str, Any]) -> bytes:
        """One SSE event of ``kind`` with ``fields`` and the next ``sequence_number``."""
        data = {"type": kind, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        return (
            b"event: "
            + kind.encode()
            + b"\ndata: "
            + json.dumps(data, separators=_SEPARATORS).encode()
            + b"\n\n"
        )

    def start(self) -> bytes:
        """``response.created`` and ``response.in_progress``."""
        running = self.payload(None)
        return self.event("response.created", {"response": running}) + self.event(
            "response.in_progress", {"response": running}
        )

    def _open_text(self) -> bytes:
        self.text_started = True
        return self.event(
            "response.output_item.added",
            {"output_index": 0, "item": _message_item(self.message_id, "", "in_progress")},
        ) + self.event(
            "response.content_part.added",
            {
                "item_id": self.message_id,
                "output_index": 0,
                "content_index": 0,
                "part": _text_part(""),
            },
        )

    def text(self, delta: str) -> bytes:
        """A text delta (the message item and its part opened before the first)."""
        head = b"" if self.text_started else self._open_text()
        return head + self.event(
            "response.output_text.delta",
            {
                "item_id": self.message_id,
                "output_index": 0,
                "content_index": 0,
                "delta": delta,
                "logprobs": [],
            },
        )

    def finish(self, response: ChatResponse) -> bytes:
        """Everything after the last delta: items closed, calls, ``response.completed``."""
        out: list[bytes] = []
        calls = response.message.tool_calls
        index = 0
        if self.text_started or not calls:
            if not self.text_started:
                out.append(self._open_text())
            where = {"item_id": self.message_id, "output_index": 0, "content_index": 0}
            out.append(
                self.event(
                    "response.output_text.done", {**where, "text": response.text, "logprobs": []}
                )
            )
            out.append(
                self.event(
                    "response.content_part.done", {**where, "part": _text_part(response.text)}
                )
            )
            out.append(
                self.event(
                    "response.output_item.done",
                    {
                        "output_index": 0,
                        "item": _message_item(self.message_id, response.text, "completed"),
                    },
                )
            )
            index = 1
        for offset, (item_id, call) in enumerate(zip(self._call_ids(calls), calls, strict=True)):
            at = index + offset
            out.append(
                self.event(
                    "response.output_item.added",
                    {"output_index": at, "item": _call_item(item_id, call, "", "in_progress")},
                )
            )
            where = {"item_id": item_id, "output_index": at}
            out.append(
                self.event(
                    "response.function_call_arguments.delta", {**where, "delta": call.arguments}
                )
            )
            out.append(
                self.event(
                    "response.function_call_arguments.done",
                    {**where, "name": call.name, "arguments": call.arguments},
                )
            )
            out.append(
                self.event(
                    "response.output_item.done",
                    {
                        "output_index": at,
                        "item": _call_item(item_id, call, call.arguments, "completed"),
                    },
                )
            )
        status, _ = self.status(response)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        out.append(self.event(kind, {"response": self.payload(response)}))
        return b"".join(out)

    def error(self, error: HTTPError) -> bytes:
        """An ``error`` event and ``response.failed``, for a stream that broke after it started."""
        failed = {
            **self.payload(None),
            "status": "failed",
            "error": {"code": error.code or "server_error", "message": error.message},
        }
        return self.event(
            "error", {"code": error.code, "message": error.message, "param": error.param}
        ) + self.event("response.failed", {"response": failed})
