"""Plain mappings between llmproxy's values and the Gemini API's, shared by sync and async calls.

Requests: system messages become the ``system_instruction``; a message with content parts
(``Message.parts``) is sent part by part (see :func:`wire_part`: text as ``text``, image,
document and audio bytes as ``inline_data``, an image URL or a document's ``file_id`` as
``file_data``), one without parts as one text part, exactly as before; ``assistant`` becomes
role ``model`` with ``function_call`` parts for its tool calls, each with the thought signature
kept in the message's ``state`` (see :data:`STATE_KEY`); ``tool`` messages become
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
import binascii
import json
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from google.genai import types

from llmproxy.errors import InvalidRequest
from llmproxy.tools import Tool
from llmproxy.tools.offer import read_tool_choice
from llmproxy.types import (
    Audio,
    ChatRequest,
    Document,
    Image,
    Message,
    Part,
    Text,
    ToolCall,
    Usage,
    text_of,
)

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


#: The key of this plugin's entry in :attr:`Message.state <llmproxy.types.Message.state>`.
#: Its value is ``{"thought_signatures": {call_id: base64 text}}``: the thought signature
#: Gemini attached to each function call of the answer, sent back with the call next turn.
STATE_KEY = "gemini"

#: Where the Gemini API's files live: a ``Document(file_id="files/abc")`` is sent as the file's
#: URI under it (the Files API's ``file.uri``); a ``file_id`` with a scheme is sent as it is.
FILES_BASE = "https://generativelanguage.googleapis.com/v1beta/"

#: Gemini's audio media types by the core's audio format names.
AUDIO_MEDIA_TYPES: Mapping[str, str] = {
    "wav": "audio/wav",
    "mp3": "audio/mp3",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "aac": "audio/aac",
    "m4a": "audio/mp4",
    "webm": "audio/webm",
}


def signatures_of(message: Message) -> dict[str, bytes]:
    """Return the thought signatures kept in an assistant message's state, by tool call id.

    Entries that are not base64 text are skipped (the call then goes out with
    :data:`SKIP_SIGNATURE`, as one from another process did before signatures travelled).

    >>> m = Message("assistant", "", state={"gemini": {"thought_signatures": {"c1": "c2ln"}}})
    >>> signatures_of(m)
    {'c1': b'sig'}
    """
    entry = message.state.get(STATE_KEY) if message.state else None
    raw = entry.get("thought_signatures") if isinstance(entry, Mapping) else None
    found: dict[str, bytes] = {}
    if not isinstance(raw, Mapping):
        return found
    for call_id, text in raw.items():
        if not isinstance(call_id, str) or not isinstance(text, str):
            continue
        try:
            found[call_id] = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            continue
    return found


def state_of(signatures: Mapping[str, bytes]) -> dict[str, Any]:
    """Return the :attr:`Message.state` entry keeping ``signatures`` (empty when none).

    >>> state_of({"c1": b"sig"})
    {'gemini': {'thought_signatures': {'c1': 'c2ln'}}}
    """
    if not signatures:
        return {}
    encoded = {k: base64.b64encode(v).decode("ascii") for k, v in signatures.items()}
    return {STATE_KEY: {"thought_signatures": encoded}}


def _data_url(url: str, where: str) -> tuple[bytes, str]:
    head, _, payload = url.partition(",")
    media_type = head[len("data:") :].split(";", 1)[0]
    if not head.endswith(";base64") or not media_type:
        raise InvalidRequest(
            f"{where}: a data: URL must be base64 with a media type (data:image/png;base64,...)",
            field=where,
        )
    try:
        return base64.b64decode(payload, validate=True), media_type
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{where}: the data: URL is not valid base64", field=where) from None


def _file_uri(file_id: str) -> str:
    if urllib.parse.urlsplit(file_id).scheme:
        return file_id
    return FILES_BASE + file_id.lstrip("/")


def wire_part(part: Part, where: str = "parts") -> types.Part:
    """Return Gemini's wire part of a content part (``where`` names it in errors).

    Text is a ``text`` part; image, document and audio bytes are ``inline_data`` (the media
    type with them; a ``data:`` image URL is decoded to its bytes); an ``https``/``http`` image
    URL is ``file_data`` (Gemini fetches it; the media type when known), as is a document's
    ``file_id`` (see :data:`FILES_BASE`).

    >>> wire_part(Text("Hi")).text
    'Hi'
    """
    if isinstance(part, Text):
        return types.Part.from_text(text=part.text)
    if isinstance(part, Image):
        if part.data is not None:
            assert part.media_type is not None  # Image reads it from the bytes
            return types.Part.from_bytes(data=bytes(part.data), mime_type=part.media_type)
        assert part.url is not None
        if part.url.startswith("data:"):
            data, media_type = _data_url(part.url, f"{where}.url")
            return types.Part.from_bytes(data=data, mime_type=media_type)
        return types.Part.from_uri(file_uri=part.url, mime_type=part.media_type)
    if isinstance(part, Document):
        if part.data is not None:
            return types.Part.from_bytes(data=bytes(part.data), mime_type=part.media_type)
        assert part.file_id is not None
        return types.Part.from_uri(file_uri=_file_uri(part.file_id), mime_type=part.media_type)
    if isinstance(part, Audio):
        media_type = AUDIO_MEDIA_TYPES.get(part.format or "", f"audio/{part.format}")
        return types.Part.from_bytes(data=bytes(part.data), mime_type=media_type)
    raise InvalidRequest(
        f"{where} must be a Text, Image, Document or Audio, got {type(part).__name__}",
        field=where,
    )


def _content_parts(message: Message, index: int) -> list[types.Part]:
    """A user or assistant message's own parts: its content parts, else its text."""
    if message.parts:
        return [wire_part(p, f"messages[{index}].parts[{i}]") for i, p in enumerate(message.parts)]
    return [types.Part(text=message.content)]


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


def build_contents(messages: Sequence[Message]) -> tuple[list[types.Content], str | None]:
    """Return Gemini's ``contents`` and ``system_instruction`` for a message list.

    A function call goes out with the thought signature its assistant message keeps in its
    state (:func:`signatures_of`); the first call of a message that keeps none (history from
    another provider, or stored before signatures travelled) goes out with
    :data:`SKIP_SIGNATURE`, as Google documents. A system message's non-text parts are an
    :class:`~llmproxy.errors.InvalidRequest` (the system instruction is text).

    >>> contents, system = build_contents([Message("system", "Be brief."), Message("user", "Hi")])
    >>> system, contents[0].role, contents[0].parts[0].text
    ('Be brief.', 'user', 'Hi')
    """
    system: list[str] = []
    contents: list[types.Content] = []
    names: dict[str, str] = {}
    for position, m in enumerate(messages):
        if m.role == "system":
            if any(not isinstance(p, Text) for p in m.parts):
                raise InvalidRequest(
                    f"messages[{position}] is a system message with a non-text part; Gemini's"
                    " system instruction is text: send images, documents and audio in a user"
                    " message",
                    field=f"messages[{position}].parts",
                )
            text = text_of(m.parts) if m.parts else m.content
            if text:
                system.append(text)
            continue
        if m.role == "user":
            contents.append(types.Content(role="user", parts=_content_parts(m, position)))
            continue
        if m.role == "assistant":
            parts: list[types.Part] = []
            if m.parts:
                parts.extend(_content_parts(m, position))
            elif m.content:
                parts.append(types.Part(text=m.content))
            signatures = signatures_of(m)
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
    parts: Sequence[types.Part] | None, signatures: dict[str, bytes]
) -> tuple[str, str, list[ToolCall]]:
    """Split a candidate's parts into answer text, reasoning text and tool calls.

    Function calls without an id get one made up (see :data:`SYNTHETIC_ID_PREFIX`); their
    thought signatures are added to ``signatures`` by call id (for the message's state, see
    :func:`state_of`).
    """
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCall] = []
    for part in parts or ():
        call = part.function_call
        if call is not None:
            call_id = call.id or f"{SYNTHETIC_ID_PREFIX}{uuid.uuid4().hex[:20]}"
            if part.thought_signature:
                signatures[call_id] = part.thought_signature
            arguments = json.dumps(call.args or {}, ensure_ascii=False)
            calls.append(ToolCall(call_id, call.name or "", arguments))
        elif part.text:
            (reasoning if part.thought else text).append(part.text)
    return "".join(text), "".join(reasoning), calls


def blocked(response: types.GenerateContentResponse) -> bool:
    """Tell whether Gemini refused the prompt itself (no candidates, a block reason)."""
    feedback = response.prompt_feedback
    return not response.candidates and feedback is not None and feedback.block_reason is not None
