r"""The Responses API (``POST /v1/responses``) of :class:`~llmproxy_testing.fake_openai.FakeOpenAI`.

Request checks, answers and stream events in the Responses API's wire shapes, kept apart from
the Chat Completions code. What the endpoint does, as the real API does it:

* **Input** is a string or a list of items: messages (``{"role", "content"}``, role ``user``,
  ``assistant``, ``system`` or ``developer``, content a string or ``input_text``/``output_text``
  parts), ``function_call`` items (``call_id``, ``name``, ``arguments``) and
  ``function_call_output`` items (``call_id``, ``output``). With nothing stored server-side,
  every output must follow its call in the same input (``No tool call found for function call
  output with call_id ...``) and every call must have its output (``No tool output found for
  function call ...``); both are 400.
* **Tools**: ``function`` (needs ``name``), ``file_search`` (needs a non-empty
  ``vector_store_ids``), ``code_interpreter`` (needs ``container``) and the other hosted types
  by name; a missing field is 400 ``Missing required parameter: 'tools[i].field'``.
  ``tool_choice`` is a mode or ``{"type": "function", "name": ...}`` naming a given function.
* **Output items**, in order: a ``reasoning`` item when the reply has reasoning (its summary
  text only when the request asks for ``reasoning.summary``), the reply's hosted outputs
  (``file_search_call`` results only with ``include=["file_search_call.results"]``,
  ``code_interpreter_call`` outputs only with ``include=["code_interpreter_call.outputs"]``), a
  ``message`` with one ``output_text`` part carrying the reply's annotations (none when the
  reply is only function calls), then one ``function_call`` item per scripted tool call.
* **Output cap**: ``max_output_tokens`` below ``min_output_tokens`` (16, as OpenAI's) is 400;
  an answer longer than the cap is cut (reasoning words first), the response is
  ``incomplete`` with ``incomplete_details.reason = "max_output_tokens"`` and no function calls.
* **Usage**: ``input_tokens = 3 + sum(words(item) + 3)`` over the input items and the
  instructions (a message's words are its text's, a call's its arguments', an output's its
  output's; at least 1 each), plus the ``input_image``, ``input_file`` and audio parts' tokens
  (the fake's media rule, :mod:`llmproxy_testing._media`);
  ``output_tokens = max(1, words(reasoning) + words(text))``;
  ``output_tokens_details.reasoning_tokens = words(reasoning)``; ``cached_tokens = 0``.
  ``Reply.usage`` overrides fields (nested mappings merged one level deep).
* **Streams** (``stream: true``): ``response.created``, ``response.in_progress``, then per item
  ``response.output_item.added``, its deltas (``response.reasoning_summary_text.delta``,
  ``response.output_text.delta`` one per word piece, ``response.output_text.annotation.added``,
  ``response.function_call_arguments.delta``), its ``.done`` events and
  ``response.output_item.done``; last ``response.completed`` (or ``response.incomplete``) with
  the whole response. ``Fault.drop_after(n)`` aborts after n delta events; ``Fault.malformed()``
  sends an event that is not JSON.

Only the standard library is used.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import _schema
from ._media import content_media_tokens

__all__ = [
    "HOSTED_TOOL_TYPES",
    "MIN_OUTPUT_TOKENS",
    "ResponsesAnswer",
    "ResponsesBadRequest",
    "input_items",
    "input_tokens",
]

#: OpenAI refuses ``max_output_tokens`` below this.
MIN_OUTPUT_TOKENS = 16

#: Tool types the endpoint accepts besides ``function``.
HOSTED_TOOL_TYPES: frozenset[str] = frozenset(
    {
        "file_search",
        "code_interpreter",
        "web_search",
        "web_search_preview",
        "image_generation",
        "mcp",
        "computer_use_preview",
        "local_shell",
        "shell",
        "custom",
        "apply_patch",
    }
)

_WORD_RE = re.compile(r"\s*\S+|\s+")
_MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})
_REQUIRED_TOOL_FIELDS: dict[str, tuple[str, ...]] = {
    "function": ("name",),
    "file_search": ("vector_store_ids",),
    "code_interpreter": ("container",),
    "mcp": ("server_label",),
}
_ID_PREFIX: dict[str, str] = {
    "file_search_call": "fs",
    "code_interpreter_call": "ci",
    "web_search_call": "ws",
    "image_generation_call": "ig",
    "mcp_call": "mcp",
}


class ResponsesBadRequest(Exception):
    """A request the Responses API would refuse with 400: message, param and code."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def _pieces(text: str) -> list[str]:
    return _WORD_RE.findall(text)


def _words(text: str | None) -> int:
    return len(text.split()) if text else 0


def _missing(param: str) -> ResponsesBadRequest:
    return ResponsesBadRequest(
        f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
    )


def input_items(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Return the request's ``input`` as a list of items (a string is one user message).

    Raises:
        ResponsesBadRequest: When ``input`` is missing or not a string or a list of objects.

    """
    raw = body.get("input")
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise _missing("input")
    if not all(isinstance(item, dict) for item in raw):
        raise ResponsesBadRequest(
            "Invalid type for 'input': expected an array of objects.", "input", "invalid_type"
        )
    return list(raw)


def item_text(item: Mapping[str, Any]) -> str:
    """Return the text of one input item as the fake counts it (see the module's usage rule)."""
    kind = item.get("type", "message")
    if kind == "function_call":
        return str(item.get("arguments") or "")
    if kind == "function_call_output":
        output = item.get("output")
        return output if isinstance(output, str) else json.dumps(output)
    content = item.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p["text"])
            for p in content
            if isinstance(p, Mapping) and isinstance(p.get("text"), str)
        )
    return ""


def input_tokens(body: Mapping[str, Any]) -> int:
    """Compute ``usage.input_tokens`` for a request body (see the module's usage rule)."""
    texts = [item_text(item) for item in input_items(body)]
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        texts.append(instructions)
    media = sum(content_media_tokens(item.get("content")) for item in input_items(body))
    return 3 + sum(max(1, _words(t)) + 3 for t in texts) + media


def default_text(body: Mapping[str, Any]) -> str:
    """Return the default answer: ``"Echo: "`` + the text of the last user message.

    A request asking for a schema (``text.format``) is answered with JSON that fits it.
    """
    schema = _schema.responses_schema(body)
    if schema is not None:
        return _schema.answer(schema)
    for item in reversed(input_items(body)):
        if item.get("type", "message") == "message" and item.get("role") == "user":
            return "Echo: " + item_text(item)
    return "Echo: "


def _check_items(items: Sequence[Mapping[str, Any]]) -> None:
    calls: dict[str, int] = {}
    answered: set[str] = set()
    for index, item in enumerate(items):
        kind = item.get("type", "message")
        where = f"input[{index}]"
        if kind == "message":
            role = item.get("role")
            if role not in _MESSAGE_ROLES:
                raise ResponsesBadRequest(
                    f"Invalid value: '{role}'. Supported values are: 'user', 'assistant',"
                    " 'system', and 'developer'.",
                    f"{where}.role",
                    "invalid_value",
                )
            if not isinstance(item.get("content"), (str, list)):
                raise _missing(f"{where}.content")
        elif kind == "function_call":
            for name in ("call_id", "name", "arguments"):
                if not isinstance(item.get(name), str):
                    raise _missing(f"{where}.{name}")
            calls[str(item["call_id"])] = index
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise _missing(f"{where}.call_id")
            if "output" not in item:
                raise _missing(f"{where}.output")
            if call_id not in calls:
                raise ResponsesBadRequest(
                    f"No tool call found for function call output with call_id {call_id}.",
                    "input",
                )
            answered.add(call_id)
    for call_id in calls:
        if call_id not in answered:
            raise ResponsesBadRequest(f"No tool output found for function call {call_id}.", "input")


def _check_tools(body: Mapping[str, Any]) -> set[str]:
    tools = body.get("tools")
    if tools is None:
        return set()
    if not isinstance(tools, list):
        raise ResponsesBadRequest(
            "Invalid type for 'tools': expected an array of objects.", "tools", "invalid_type"
        )
    functions: set[str] = set()
    for index, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise ResponsesBadRequest(
                f"Invalid type for 'tools[{index}]': expected an object.",
                f"tools[{index}]",
                "invalid_type",
            )
        kind = tool.get("type")
        if kind != "function" and kind not in HOSTED_TOOL_TYPES:
            raise ResponsesBadRequest(
                f"Invalid value: '{kind}'. Supported values are: 'function', "
                + ", ".join(f"'{t}'" for t in sorted(HOSTED_TOOL_TYPES))
                + ".",
                f"tools[{index}].type",
                "invalid_value",
            )
        for name in _REQUIRED_TOOL_FIELDS.get(str(kind), ()):
            value = tool.get(name)
            if value is None or (isinstance(value, (list, str)) and not value):
                raise _missing(f"tools[{index}].{name}")
        if kind == "function":
            functions.add(str(tool["name"]))
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        if choice.get("name") not in functions:
            raise ResponsesBadRequest(
                f"Tool choice 'function' not found in 'tools' parameter: {choice.get('name')!r}.",
                "tool_choice",
            )
    elif isinstance(choice, str) and choice not in ("auto", "none", "required"):
        raise ResponsesBadRequest(
            f"Invalid value: '{choice}'. Supported values are: 'none', 'auto', and 'required'.",
            "tool_choice",
            "invalid_value",
        )
    return functions


def check_request(body: Mapping[str, Any], min_output_tokens: int) -> tuple[str, int | None]:
    """Check a request body as the Responses API does; return ``(model, max_output_tokens)``.

    Raises:
        ResponsesBadRequest: With the real API's message for the first problem found.

    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _missing("model")
    _check_items(input_items(body))
    _check_tools(body)
    limit = body.get("max_output_tokens")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise ResponsesBadRequest(
                "Invalid type for 'max_output_tokens': expected an integer.",
                "max_output_tokens",
                "invalid_type",
            )
        if limit < min_output_tokens:
            raise ResponsesBadRequest(
                "Invalid 'max_output_tokens': integer below minimum value. Expected a value >="
                f" {min_output_tokens}, but got {limit} instead.",
                "max_output_tokens",
                "integer_below_min_value",
            )
    return model, limit


def _includes(body: Mapping[str, Any]) -> set[str]:
    include = body.get("include")
    return {str(i) for i in include} if isinstance(include, list) else set()


def _wants_summary(body: Mapping[str, Any]) -> bool:
    reasoning = body.get("reasoning")
    return isinstance(reasoning, Mapping) and reasoning.get("summary") is not None


@dataclasses.dataclass(slots=True)
class ResponsesAnswer:
    """A resolved answer: the output items (completed) and what streaming needs to replay them."""

    output: list[dict[str, Any]]
    summary_pieces: dict[int, list[str]]
    text_pieces: dict[int, list[str]]
    status: str
    incomplete_reason: str | None
    usage: dict[str, Any]
    chunk_delay: float


def _hosted_item(raw: Mapping[str, Any], number: int, includes: set[str]) -> dict[str, Any]:
    item = dict(raw)
    kind = str(item.get("type") or "file_search_call")
    item["type"] = kind
    item.setdefault("id", f"{_ID_PREFIX.get(kind, 'ho')}_fake{number:020d}")
    item.setdefault("status", "completed")
    if kind == "file_search_call":
        item.setdefault("queries", [])
        if "file_search_call.results" not in includes:
            item["results"] = None
        else:
            item.setdefault("results", [])
    elif kind == "code_interpreter_call":
        item.setdefault("code", "")
        item.setdefault("container_id", f"cntr_fake{number:020d}")
        if "code_interpreter_call.outputs" not in includes:
            item["outputs"] = None
        else:
            item.setdefault("outputs", [])
    return item


def _annotation(raw: Mapping[str, Any], text: str) -> dict[str, Any]:
    annotation = dict(raw)
    kind = annotation.setdefault("type", "file_citation")
    if kind in ("file_citation", "file_path"):
        annotation.setdefault("index", len(text))
        annotation.setdefault("file_id", "file-fake")
        if kind == "file_citation":
            annotation.setdefault("filename", "file.txt")
    else:
        annotation.setdefault("start_index", 0)
        annotation.setdefault("end_index", len(text))
        if kind == "url_citation":
            annotation.setdefault("title", "")
            annotation.setdefault("url", "https://example.invalid/")
    return annotation


def _function_call(raw: Mapping[str, Any], number: int) -> dict[str, Any]:
    function = raw.get("function")
    source = function if isinstance(function, Mapping) else raw
    arguments = source.get("arguments", "{}")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    call_id = raw.get("call_id") or raw.get("id") or f"call_fake{number:020d}"
    return {
        "id": f"fc_fake{number:020d}",
        "type": "function_call",
        "status": "completed",
        "call_id": call_id,
        "name": source.get("name", ""),
        "arguments": arguments,
    }


def build_answer(
    body: Mapping[str, Any],
    *,
    text: str | None,
    reasoning: str | None,
    tool_calls: Sequence[Mapping[str, Any]],
    hosted_outputs: Sequence[Mapping[str, Any]],
    citations: Sequence[Mapping[str, Any]],
    usage: Mapping[str, Any] | None,
    chunk_delay: float,
    limit: int | None,
    next_number: Callable[[], int],
) -> ResponsesAnswer:
    """Resolve a reply into the Responses API's output items, status and usage.

    ``next_number`` gives fresh numbers for ids.
    """
    includes = _includes(body)
    reasoning_words = _words(reasoning)
    text_words = _words(text)
    summary = _pieces(reasoning) if reasoning and _wants_summary(body) else []
    text_pieces = _pieces(text) if text else []
    truncated = limit is not None and reasoning_words + text_words > limit
    if truncated and limit is not None:
        reasoning_words = min(reasoning_words, limit)
        summary = summary[:reasoning_words]
        text_words = limit - reasoning_words
        text_pieces = text_pieces[:text_words]
    output: list[dict[str, Any]] = []
    summaries: dict[int, list[str]] = {}
    texts: dict[int, list[str]] = {}
    if reasoning:
        summaries[len(output)] = summary
        output.append(
            {
                "id": f"rs_fake{next_number():020d}",
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": "".join(summary)}] if summary else [],
            }
        )
    for raw in hosted_outputs:
        output.append(_hosted_item(raw, next_number(), includes))
    if text is not None or not tool_calls:
        answer = "".join(text_pieces)
        texts[len(output)] = text_pieces
        output.append(
            {
                "id": f"msg_fake{next_number():020d}",
                "type": "message",
                "status": "incomplete" if truncated else "completed",
                "role": "assistant",
                "content": [
                    {
                        "type": "output_text",
                        "text": answer,
                        "annotations": [_annotation(a, answer) for a in citations],
                        "logprobs": [],
                    }
                ],
            }
        )
    if not truncated:
        output.extend(_function_call(raw, next_number()) for raw in tool_calls)
    prompt = input_tokens(body)
    completion = max(1, reasoning_words + text_words)
    totals: dict[str, Any] = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning_words},
        "total_tokens": prompt + completion,
    }
    if usage:
        for key, value in usage.items():
            current = totals.get(key)
            if isinstance(value, Mapping) and isinstance(current, dict):
                current.update(value)
            else:
                totals[key] = value
        if "total_tokens" not in usage:
            totals["total_tokens"] = int(totals["input_tokens"]) + int(totals["output_tokens"])
    return ResponsesAnswer(
        output=output,
        summary_pieces=summaries,
        text_pieces=texts,
        status="incomplete" if truncated else "completed",
        incomplete_reason="max_output_tokens" if truncated else None,
        usage=totals,
        chunk_delay=chunk_delay,
    )


def response_object(
    body: Mapping[str, Any],
    response_id: str,
    created: int,
    model: str,
    *,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    incomplete_reason: str | None = None,
) -> dict[str, Any]:
    """Return a ``response`` object in the Responses API's shape, echoing the request."""
    reasoning = body.get("reasoning")
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": (
            {"reason": incomplete_reason} if incomplete_reason is not None else None
        ),
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": dict(reasoning) if isinstance(reasoning, Mapping) else {"effort": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


def stream_events(
    answer: ResponsesAnswer, final: dict[str, Any]
) -> list[tuple[dict[str, Any], bool]]:
    """Return the stream's events (without ``sequence_number``), each with whether it is a delta.

    ``final`` is the completed ``response`` object; the first events carry it in progress.
    """
    started = {**final, "status": "in_progress", "output": [], "usage": None}
    started["incomplete_details"] = None
    events: list[tuple[dict[str, Any], bool]] = [
        ({"type": "response.created", "response": started}, False),
        ({"type": "response.in_progress", "response": started}, False),
    ]

    def add(event: dict[str, Any], delta: bool = False) -> None:
        events.append((event, delta))

    for index, item in enumerate(answer.output):
        kind = item["type"]
        item_id = item["id"]
        where = {"item_id": item_id, "output_index": index}
        if kind == "message":
            add(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {**item, "status": "in_progress", "content": []},
                }
            )
            part = item["content"][0]
            empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            add({"type": "response.content_part.added", **where, "content_index": 0, "part": empty})
            for piece in answer.text_pieces.get(index, []):
                add(
                    {
                        "type": "response.output_text.delta",
                        **where,
                        "content_index": 0,
                        "delta": piece,
                        "logprobs": [],
                    },
                    True,
                )
            for number, annotation in enumerate(part["annotations"]):
                add(
                    {
                        "type": "response.output_text.annotation.added",
                        **where,
                        "content_index": 0,
                        "annotation_index": number,
                        "annotation": annotation,
                    }
                )
            add(
                {
                    "type": "response.output_text.done",
                    **where,
                    "content_index": 0,
                    "text": part["text"],
                    "logprobs": [],
                }
            )
            add({"type": "response.content_part.done", **where, "content_index": 0, "part": part})
        elif kind == "reasoning":
            add(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {**item, "summary": []},
                }
            )
            pieces = answer.summary_pieces.get(index, [])
            if pieces:
                text = "".join(pieces)
                at = {**where, "summary_index": 0}
                add(
                    {
                        "type": "response.reasoning_summary_part.added",
                        **at,
                        "part": {"type": "summary_text", "text": ""},
                    }
                )
                for piece in pieces:
                    add(
                        {"type": "response.reasoning_summary_text.delta", **at, "delta": piece},
                        True,
                    )
                add({"type": "response.reasoning_summary_text.done", **at, "text": text})
                add(
                    {
                        "type": "response.reasoning_summary_part.done",
                        **at,
                        "part": {"type": "summary_text", "text": text},
                    }
                )
        elif kind == "function_call":
            add(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {**item, "status": "in_progress", "arguments": ""},
                }
            )
            for piece in _pieces(item["arguments"]):
                add(
                    {"type": "response.function_call_arguments.delta", **where, "delta": piece},
                    True,
                )
            add(
                {
                    "type": "response.function_call_arguments.done",
                    **where,
                    "name": item["name"],
                    "arguments": item["arguments"],
                }
            )
        else:
            add(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {**item, "status": "in_progress"},
                }
            )
            prefix = f"response.{kind}"
            if kind in ("file_search_call", "web_search_call"):
                for step in ("in_progress", "searching", "completed"):
                    add({"type": f"{prefix}.{step}", **where})
            elif kind == "code_interpreter_call":
                add({"type": f"{prefix}.in_progress", **where})
                code = str(item.get("code") or "")
                if code:
                    add({"type": f"{prefix}_code.delta", **where, "delta": code})
                add({"type": f"{prefix}_code.done", **where, "code": code})
                add({"type": f"{prefix}.interpreting", **where})
                add({"type": f"{prefix}.completed", **where})
        add({"type": "response.output_item.done", "output_index": index, "item": item})
    last = "response.completed" if final["status"] == "completed" else "response.incomplete"
    add({"type": last, "response": final})
    return events
