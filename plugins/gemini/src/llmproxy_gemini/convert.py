"""Plain mappings between llmproxy's values and the Gemini API's, shared by sync and async calls.

Requests: system messages become the ``system_instruction``; ``assistant`` becomes role
``model`` with ``function_call`` parts for its tool calls; ``tool`` messages become
``function_response`` parts of a ``user`` turn (consecutive ones share one turn, as parallel
calls must). The request's function tools (``ChatRequest.tools``) become one Gemini tool of
function declarations (the JSON schema as ``parameters_json_schema``) and ``tool_choice`` a
function-calling mode (``auto``/``none``/``required`` as ``AUTO``/``NONE``/``ANY``, a tool's
name as ``ANY`` limited to that function). OpenAI-style ``tools``/``tool_choice`` in ``extra``
are translated the same way, so one call shape works across providers.

Answers: parts marked ``thought`` are reasoning, other text parts the answer, ``function_call``
parts tool calls. Usage: ``input = prompt + tool-use prompt`` (Gemini reports the prompts its
tools fed back separately from the prompt and bills them as input), ``cached = cached content``
(part of the prompt), ``output = candidates + thoughts`` (thinking is billed as output) and
``reasoning = thoughts``.
"""

from __future__ import annotations

import base64
import collections
import json
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from google.genai import types

from llmproxy.errors import InvalidRequest
from llmproxy.tools import Tool
from llmproxy.tools.offer import read_tool_choice
from llmproxy.types import ChatRequest, Message, ToolCall, Usage

#: Google's documented placeholder for function calls whose signature is unknown (history from
#: another model or process); the SDK sends these bytes as ``skip_thought_signature_validator``.
SKIP_SIGNATURE = base64.urlsafe_b64decode("skip_thought_signature_validator")

#: Prefix of the ids this plugin makes up for function calls that came without one; such ids
#: are never sent to Gemini.
SYNTHETIC_ID_PREFIX = "gemini-call-"

_FILTERED = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}


class SignatureCache:
    """Thought signatures of recent function calls, by tool call id (bounded, thread-safe).

    Gemini 3 refuses function-call history without the signature it attached to the call, and
    a :class:`~llmproxy.types.Message` has no field for it, so the provider keeps the signatures
    of the calls it saw; a call it did not see (another process, another provider) is sent with
    :data:`SKIP_SIGNATURE`.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._items: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._lock = threading.Lock()

    def put(self, call_id: str, signature: bytes) -> None:
        """Remember the signature of a call."""
        with self._lock:
            self._items[call_id] = signature
            self._items.move_to_end(call_id)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def get(self, call_id: str) -> bytes | None:
        """Return the signature of a call, or None when unknown."""
        with self._lock:
            return self._items.get(call_id)


def _wire_id(call_id: str | None) -> str | None:
    if not call_id or call_id.startswith(SYNTHETIC_ID_PREFIX):
        return None
    return call_id


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        return {"arguments": text}
    return value if isinstance(value, dict) else {"value": value}


def _tool_result(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {"output": text}
    return value if isinstance(value, dict) else {"output": value}


def build_contents(
    messages: Sequence[Message], signatures: SignatureCache
) -> tuple[list[types.Content], str | None]:
    """Return Gemini's ``contents`` and ``system_instruction`` for a message list.

    >>> contents, system = build_contents(
    ...     [Message("system", "Be brief."), Message("user", "Hi")], SignatureCache())
    >>> system, contents[0].role, contents[0].parts[0].text
    ('Be brief.', 'user', 'Hi')
    """
    system: list[str] = []
    contents: list[types.Content] = []
    names: dict[str, str] = {}
    for m in messages:
        if m.role == "system":
            if m.content:
                system.append(m.content)
            continue
        if m.role == "user":
            contents.append(types.Content(role="user", parts=[types.Part(text=m.content)]))
            continue
        if m.role == "assistant":
            parts: list[types.Part] = []
            if m.content:
                parts.append(types.Part(text=m.content))
            for index, call in enumerate(m.tool_calls):
                names[call.id] = call.name
                signature = signatures.get(call.id)
                if signature is None and index == 0:
                    signature = SKIP_SIGNATURE
                parts.append(
                    types.Part(
                        function_call=types.FunctionCall(
                            id=_wire_id(call.id), name=call.name, args=_arguments(call.arguments)
                        ),
                        thought_signature=signature,
                    )
                )
            if parts:  # an empty assistant turn (nothing arrived) would be refused
                contents.append(types.Content(role="model", parts=parts))
            continue
        # A tool result: a function_response part of a user turn, named after its call.
        name = m.name or names.get(m.tool_call_id or "", "")
        if not name:
            raise InvalidRequest(
                "a tool message needs the name of its function: give it name=..., or keep the"
                " assistant message whose tool call it answers (tool_call_id) before it",
                field="messages",
            )
        part = types.Part(
            function_response=types.FunctionResponse(
                id=_wire_id(m.tool_call_id), name=name, response=_tool_result(m.content)
            )
        )
        last = contents[-1] if contents else None
        if (
            last is not None
            and last.role == "user"
            and last.parts
            and all(p.function_response is not None for p in last.parts)
        ):
            last.parts.append(part)
        else:
            contents.append(types.Content(role="user", parts=[part]))
    return contents, "\n\n".join(system) or None


def function_declaration(tool: Tool) -> dict[str, Any]:
    """Return Gemini's function declaration of a function tool.

    >>> function_declaration(Tool("lookup", "Look it up."))["name"]
    'lookup'
    """
    declaration: dict[str, Any] = {"name": tool.name}
    if tool.description:
        declaration["description"] = tool.description
    if tool.parameters:
        declaration["parameters_json_schema"] = dict(tool.parameters)
    return declaration


def _tools(raw: Iterable[Any], functions: Sequence[Tool] = ()) -> list[Any]:
    """Turn function tools (ours and OpenAI-style ones) into one Gemini tool; pass others on."""
    declarations: list[dict[str, Any]] = [function_declaration(t) for t in functions]
    others: list[Any] = []
    for tool in raw:
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(tool, Mapping) and tool.get("type") == "function" and function:
            declaration: dict[str, Any] = {"name": function["name"]}
            if function.get("description"):
                declaration["description"] = function["description"]
            if function.get("parameters"):
                declaration["parameters_json_schema"] = function["parameters"]
            declarations.append(declaration)
        else:
            others.append(tool)
    if declarations:
        others.insert(0, {"function_declarations": declarations})
    return others


def _choice_config(request: ChatRequest, functions: Sequence[Tool]) -> dict[str, Any] | None:
    choice = read_tool_choice(request.tool_choice, functions)
    if choice is None:
        return None
    if choice.kind == "function":
        return {"function_calling_config": {"mode": "ANY", "allowed_function_names": [choice.name]}}
    return {"function_calling_config": {"mode": _TOOL_MODES[choice.kind]}}


def _tool_config(choice: Any) -> dict[str, Any]:
    if isinstance(choice, str) and choice in _TOOL_MODES:
        return {"function_calling_config": {"mode": _TOOL_MODES[choice]}}
    if isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        name = choice["function"].get("name")
        return {"function_calling_config": {"mode": "ANY", "allowed_function_names": [name]}}
    raise InvalidRequest(
        f"tool_choice {choice!r} is not one of 'auto', 'none', 'required' or"
        " {'type': 'function', 'function': {'name': ...}}",
        field="tool_choice",
    )


def build_config(
    request: ChatRequest,
    system: str | None,
    *,
    include_thoughts: bool,
    http_options: types.HttpOptions | None = None,
    functions: Sequence[Tool] = (),
) -> types.GenerateContentConfig:
    """Return the ``GenerateContentConfig`` of a request.

    The output cap goes out as ``max_output_tokens``; a ``response_schema`` as
    ``response_mime_type="application/json"`` with ``response_json_schema``; the SDK's
    automatic function calling and automatic continuation are off (one attempt is one upstream
    request, so the Proxy sees and budgets every one). ``functions`` are the request's function
    tools (``tool_choice`` is read against them). ``request.extra`` holds
    ``GenerateContentConfig`` fields (``top_p=...``, ``safety_settings=...``,
    ``thinking_config=...``) and OpenAI-style ``tools``/``tool_choice`` (OpenAI's
    ``parallel_tool_calls`` is dropped: Gemini has no such switch); an unknown key raises
    :class:`~llmproxy.errors.InvalidRequest`.
    """
    fields: dict[str, Any] = {
        "system_instruction": system,
        "max_output_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "automatic_function_calling": {"disable": True},
        "automatic_continuation": False,
    }
    if include_thoughts:
        fields["thinking_config"] = {"include_thoughts": True}
    if http_options is not None:
        fields["http_options"] = http_options
    if request.response_schema is not None:
        # Gemini takes a JSON schema as it is (response_json_schema, not the OpenAPI subset
        # of response_schema).
        fields["response_mime_type"] = "application/json"
        fields["response_json_schema"] = dict(request.response_schema.schema)
    extra = dict(request.extra)
    # OpenAI's switch; Gemini has none (it may call several functions in one turn): dropped.
    extra.pop("parallel_tool_calls", None)
    if "tools" in extra or functions:
        fields["tools"] = _tools(extra.pop("tools", None) or (), functions)
    choice = _choice_config(request, functions)
    if choice is not None and functions and "tool_config" not in extra:
        fields["tool_config"] = choice
    if "tool_choice" in extra:
        choice = extra.pop("tool_choice")
        if "tool_config" not in extra:
            fields["tool_config"] = _tool_config(choice)
    thinking = extra.pop("thinking_config", None)
    if isinstance(thinking, Mapping):
        merged = dict(fields.get("thinking_config") or {})
        merged.update(thinking)
        fields["thinking_config"] = merged
    elif thinking is not None:
        fields["thinking_config"] = thinking
    fields.update(extra)
    try:
        return types.GenerateContentConfig(**fields)
    except ValueError as exc:
        raise InvalidRequest(
            f"the request's options are not valid for Gemini: {exc}", field="extra"
        ) from None


def _name(value: Any) -> str | None:
    if value is None:
        return None
    raw = getattr(value, "value", value)
    return str(raw)


def finish_reason(raw: Any, *, has_calls: bool) -> str | None:
    """Map Gemini's finish reason onto the core's names.

    ``STOP`` is ``stop`` (``tool_calls`` when the answer calls functions), ``MAX_TOKENS`` is
    ``length``, the safety/recitation/blocklist family is ``content_filter``; anything else is
    Gemini's name in lower case (``malformed_function_call``, ``other``...).

    >>> finish_reason("MAX_TOKENS", has_calls=False)
    'length'
    """
    name = _name(raw)
    if name is None:
        return None
    if name == "STOP":
        return "tool_calls" if has_calls else "stop"
    if name == "MAX_TOKENS":
        return "length"
    if name in _FILTERED:
        return "content_filter"
    if name == "FINISH_REASON_UNSPECIFIED":
        return "other"
    return name.lower()


def usage_from_metadata(meta: types.GenerateContentResponseUsageMetadata | None) -> Usage | None:
    """Map ``usage_metadata`` onto :class:`~llmproxy.types.Usage` (see the module's note)."""
    if meta is None:
        return None
    prompt = meta.prompt_token_count or 0
    tool_prompt = meta.tool_use_prompt_token_count or 0
    candidates = meta.candidates_token_count or 0
    thoughts = meta.thoughts_token_count or 0
    if not (prompt or tool_prompt or candidates or thoughts or meta.total_token_count):
        return None
    return Usage(
        input_tokens=prompt + tool_prompt,
        output_tokens=candidates + thoughts,
        cached_input_tokens=meta.cached_content_token_count or 0,
        reasoning_tokens=thoughts,
    )


def read_parts(
    parts: Sequence[types.Part] | None, signatures: SignatureCache
) -> tuple[str, str, list[ToolCall]]:
    """Split a candidate's parts into answer text, reasoning text and tool calls.

    Function calls without an id get one made up (see :data:`SYNTHETIC_ID_PREFIX`); their
    thought signatures are remembered in ``signatures``.
    """
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCall] = []
    for part in parts or ():
        call = part.function_call
        if call is not None:
            call_id = call.id or f"{SYNTHETIC_ID_PREFIX}{uuid.uuid4().hex[:20]}"
            if part.thought_signature:
                signatures.put(call_id, part.thought_signature)
            arguments = json.dumps(call.args or {}, ensure_ascii=False)
            calls.append(ToolCall(call_id, call.name or "", arguments))
        elif part.text:
            (reasoning if part.thought else text).append(part.text)
    return "".join(text), "".join(reasoning), calls


def blocked(response: types.GenerateContentResponse) -> bool:
    """Tell whether Gemini refused the prompt itself (no candidates, a block reason)."""
    feedback = response.prompt_feedback
    return not response.candidates and feedback is not None and feedback.block_reason is not None
