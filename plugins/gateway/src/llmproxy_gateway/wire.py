"""OpenAI's Chat Completions wire format: requests in, responses and SSE chunks out.

Parsing checks what the gateway relies on and answers 400 (OpenAI's error shape, ``param``
naming the field) for anything else; the rest passes to the provider untouched. Stream chunks
are built from pre-encoded bytes around one ``json.dumps`` of the text delta.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

from attrs import frozen

from llmproxy.errors import InvalidRequest
from llmproxy.tools import ClientTool
from llmproxy.types import (
    MAX_PART_BYTES,
    Audio,
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
class BodyLimits:
    """How much work one request body may ask of the gateway (see :mod:`llmproxy_gateway.env`).

    ``max_items`` bounds the array elements and object members of the whole body, checked on
    its bytes before it is parsed (parsing holds the interpreter lock: a body of a million tiny
    values would stall every other request of the worker for seconds); ``max_messages`` the
    ``messages``; ``max_depth`` the nesting of the values passed upstream as they are.
    """

    max_messages: int = env.DEFAULT_MAX_MESSAGES
    max_items: int = env.DEFAULT_MAX_JSON_ITEMS
    max_depth: int = env.DEFAULT_MAX_JSON_DEPTH

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> BodyLimits:
        """The limits the environment sets; a bad value is a ConfigError naming its variable."""
        return cls(
            max_messages=env.count(environ, env.MAX_MESSAGES, env.DEFAULT_MAX_MESSAGES),
            max_items=env.count(environ, env.MAX_JSON_ITEMS, env.DEFAULT_MAX_JSON_ITEMS),
            max_depth=env.count(environ, env.MAX_JSON_DEPTH, env.DEFAULT_MAX_JSON_DEPTH),
        )


# A JSON string token; possessive, so malformed input cannot make it backtrack.
_STRING: Final = re.compile(rb'"(?:[^"\\]++|\\.)*+"')


_NESTING_REFUSED: Final = 1000
"""Openers in a row past which a body is malformed (nested past what the parser recurses)."""

_NESTED: Final = re.compile(rb"(?:[\[{]\s*){%d}" % (_NESTING_REFUSED + 1))


def _items_upper_bound(data: bytes) -> int:
    # Every element or member but a container's first follows a comma; the first follows [ or {.
    return data.count(b",") + data.count(b"[") + data.count(b"{")


def check_items(body: bytes, limit: int) -> None:
    """Raise 413 when ``body`` holds more than ``limit`` array elements and object members.

    Cheap first: the count of ``,``, ``[`` and ``{`` bytes bounds the items from above (a few
    milliseconds for megabytes), and only a body over the limit by that count is looked at
    closer. Strings bound the items from below (each is an element, a member's key or its
    value), so a body with more than ``2 * limit`` of them is refused at once; otherwise its
    strings (fewer than ``2 * limit``) are cut out and the structural bytes left are counted.
    """
    if _items_upper_bound(body) <= limit:
        return
    # Real quotes are at least all quotes minus the escaped ones (\" inside strings).
    strings = (body.count(b'"') - body.count(b'\\"')) // 2
    skeleton = b"" if strings > 2 * limit else _STRING.sub(b"", body)
    if _NESTED.search(skeleton):
        # Malformed rather than large: no request nests this deep (the parser could not).
        raise bad_request(
            "We could not parse the JSON body of your request: it nests arrays and objects"
            f" more than {_NESTING_REFUSED} deep."
        )
    if strings > 2 * limit or _items_upper_bound(skeleton) > limit:
        raise HTTPError(
            413,
            f"The request body has more than {limit} JSON array elements and object members,"
            f" more than this gateway parses for one request (the operator sets the limit with"
            f" {env.MAX_JSON_ITEMS}).",
            code="request_too_large",
        )


class _BadNumber(ValueError):
    """A JSON number Python would parse but no JSON peer can take (NaN, Infinity, 1e999)."""


def _refuse_constant(name: str) -> Any:
    raise _BadNumber(f"{name} is not a JSON number: send a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber(f"{text[:40]} is too large for a 64-bit float: send a finite number")
    return value


_DECODER: Final = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def _check_depth(value: Any, limit: int, where: str) -> None:
    """Raise 400 when ``value`` nests arrays and objects deeper than ``limit`` levels."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise bad_request(
                f"'{where}' nests arrays and objects more than {limit} levels deep (the"
                f" operator sets the limit with {env.MAX_JSON_DEPTH})",
                where,
            )
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))


def load_json(body: bytes, limits: BodyLimits) -> Any:
    r"""Parse a request body as strict JSON, or raise :class:`HTTPError` (400 or 413).

    Strict: UTF-8 only, no ``NaN``/``Infinity`` and no number a float cannot hold, no lone
    UTF-16 surrogate escape (``"\\ud800"``: no UTF-8 encoder takes the string), nesting within
    the interpreter's recursion limit, items within ``limits.max_items``.
    """
    check_items(body, limits.max_items)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(
            f"The request body is not valid UTF-8 (byte {exc.start}): send JSON in UTF-8."
        ) from None
    try:
        data = _DECODER.decode(text)
    except _BadNumber as exc:
        raise bad_request(f"We could not parse the JSON body of your request: {exc}.") from None
    except RecursionError:
        raise bad_request(
            "We could not parse the JSON body of your request: it nests arrays and objects too"
            " deeply."
        ) from None
    except ValueError as exc:
        raise bad_request(
            f"We could not parse the JSON body of your request ({exc}): send a JSON object."
        ) from None
    if "\\ud" in text or "\\uD" in text:
        # A surrogate escape: fine in a pair (one character), not alone.
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise bad_request(
                "The request body has a lone UTF-16 surrogate escape (such as \\ud800) in a"
                " string: it is not a character; send valid Unicode text."
            ) from None
        except (ValueError, RecursionError):
            pass  # nothing to say about surrogates; the checks below refuse what is bad
    return data


# The type each passed-through parameter must have (OpenAI's), checked before it goes upstream.
_PASSTHROUGH_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "top_p": (int, float),
    "stop": (str, list),
    "presence_penalty": (int, float),
    "frequency_penalty": (int, float),
    "seed": (int,),
    "response_format": (dict,),
    "logit_bias": (dict,),
    "reasoning_effort": (str,),
    "verbosity": (str,),
}


def _passthrough(name: str, value: Any, limits: BodyLimits) -> Any:
    kinds = _PASSTHROUGH_TYPES[name]
    if isinstance(value, bool) or not isinstance(value, kinds):
        wanted = " or ".join(
            {"int": "an integer", "float": "a number", "str": "a string", "list": "a list"}.get(
                k.__name__, "an object"
            )
            for k in kinds
        )
        raise bad_request(f"'{name}' must be {wanted}, got {type(value).__name__}", name)
    if name == "stop" and isinstance(value, list) and not all(isinstance(v, str) for v in value):
        raise bad_request("'stop' must be a string or a list of strings", name)
    if isinstance(value, (dict, list)):
        _check_depth(value, limits.max_depth, name)
    return value


@frozen
class ChatCall:
    """A parsed request: the messages and the Proxy call's keyword arguments."""

    messages: list[Message]
    model: str
    stream: bool
    include_usage: bool
    kwargs: dict[str, Any]


_PART_KINDS: Final = "text, image_url, file, input_audio"
_DETAILS: Final = ("auto", "low", "high")
# base64 characters a part of MAX_PART_BYTES takes, with padding: longer is refused undecoded.
_MAX_BASE64: Final = 4 * -(-MAX_PART_BYTES // 3)
_DATA_URL: Final = re.compile(
    r"data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*);base64,", re.ASCII
)


def _decode(value: str, where: str, what: str) -> tuple[bytes, str | None]:
    """``value`` (a ``data:...;base64,`` URL or bare base64) as bytes and its declared type.

    Over :data:`~llmproxy.types.MAX_PART_BYTES` is refused before it is decoded; base64 must
    be strict (no whitespace, the standard alphabet, padded).
    """
    declared: str | None = None
    start = 0
    if value.startswith("data:"):
        head = _DATA_URL.match(value)
        if head is None:
            raise bad_request(
                f"{where}: {what} is a data: URL that is not base64; send"
                " data:<media type>;base64,<data>",
                where,
            )
        declared, start = head.group(1), head.end()
    if len(value) - start > _MAX_BASE64:
        raise _too_big(where, what, (len(value) - start) * 3 // 4)
    try:
        data = base64.b64decode(value[start:], validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{where}: {what} is not valid base64", where) from None
    if len(data) > MAX_PART_BYTES:
        raise _too_big(where, what, len(data))
    return data, declared


def _too_big(where: str, what: str, size: int) -> HTTPError:
    return bad_request(
        f"{where}: {what} is {size:,} bytes, more than a part may carry ({MAX_PART_BYTES:,});"
        " upload it to the provider's file API and send its file_id",
        where,
    )


def _string(part: Mapping[str, Any], name: str, where: str, *, required: bool = True) -> Any:
    value = part.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise bad_request(f"{where}.{name} must be a non-empty string", f"{where}.{name}")
    return value


def _object(part: Mapping[str, Any], name: str, where: str) -> Mapping[str, Any]:
    value = part.get(name)
    if not isinstance(value, Mapping):
        raise bad_request(f"{where}.{name} must be an object", f"{where}.{name}")
    return value


_T = TypeVar("_T")


def _made(build: Callable[[], _T], where: str, fields: Mapping[str | None, str]) -> _T:
    """``build()``; its InvalidRequest (bad bytes, format, size) as a 400.

    ``fields`` maps the core's field names to the wire's (``where`` prefixed), for ``param``.
    """
    try:
        return build()
    except InvalidRequest as exc:
        param = f"{where}.{fields.get(exc.field) or fields[None]}"
        raise bad_request(f"{param}: {exc}", param) from None


def _image(part: Mapping[str, Any], where: str) -> Image:
    image = _object(part, "image_url", where)
    where += ".image_url"
    url = _string(image, "url", where)
    detail = image.get("detail")
    if detail is not None and detail not in _DETAILS:
        raise bad_request(
            f"{where}.detail must be auto, low or high, got {detail!r}", f"{where}.detail"
        )
    fields = {None: "url", "detail": "detail"}
    if url.startswith("data:"):
        data, _declared = _decode(url, f"{where}.url", "the image")
        # The media type is read from the bytes (as the core does for files), not trusted.
        return _made(lambda: Image(data=data, detail=detail), where, fields)
    if url.startswith("https://"):
        return _made(lambda: Image(url=url, detail=detail), where, fields)
    raise bad_request(
        f"{where}.url must be an https:// URL or a data:image/...;base64, URL", f"{where}.url"
    )


def _file(part: Mapping[str, Any], where: str) -> Document:
    file = _object(part, "file", where)
    where += ".file"
    filename = _string(file, "filename", where, required=False)
    if (file.get("file_id") is None) == (file.get("file_data") is None):
        raise bad_request(f"{where} needs exactly one of file_data or file_id", where)
    if file.get("file_id") is not None:
        file_id = _string(file, "file_id", where)
        return _made(lambda: Document(file_id=file_id, filename=filename), where, {None: "file_id"})
    data, declared = _decode(_string(file, "file_data", where), f"{where}.file_data", "the file")
    media_type = declared or "application/pdf"
    return _made(
        lambda: Document(data=data, media_type=media_type, filename=filename),
        where,
        {None: "file_data"},
    )


def _audio(part: Mapping[str, Any], where: str) -> Audio:
    audio = _object(part, "input_audio", where)
    where += ".input_audio"
    fmt = _string(audio, "format", where, required=False)
    data, _declared = _decode(_string(audio, "data", where), f"{where}.data", "the audio")
    return _made(lambda: Audio(data, fmt), where, {None: "data", "format": "format"})


def _part(part: Any, where: str, role: str) -> Part:
    if not isinstance(part, Mapping):
        raise bad_request(f"{where} must be an object with a 'type'", where)
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise bad_request(f"{where}.text must be a string", f"{where}.text")
        return Text(text)
    if kind in ("image_url", "file", "input_audio") and role != "user":
        raise bad_request(
            f"{where}.type: a {role} message takes text parts only ({kind} parts go in user"
            " messages)",
            f"{where}.type",
        )
    if kind == "image_url":
        return _image(part, where)
    if kind == "file":
        return _file(part, where)
    if kind == "input_audio":
        return _audio(part, where)
    raise bad_request(f"{where}.type must be one of {_PART_KINDS}; got {kind!r}", f"{where}.type")


def _content(value: Any, where: str, role: str) -> str | list[Part]:
    """A message's content: a string, or its parts when it has more than text.

    A list of text parts only is joined into one string, as before parts were taken.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = [_part(p, f"{where}.content[{i}]", role) for i, p in enumerate(value)]
        if all(isinstance(p, Text) for p in parts):
            return "".join(p.text for p in parts if isinstance(p, Text))
        return parts
    raise bad_request(f"{where}.content must be a string or a list of content parts", where)


def _tool_calls(value: Any, where: str, max_depth: int) -> tuple[ToolCall, ...]:
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
            _check_depth(arguments, max_depth, f"{where}.tool_calls[{index}].function.arguments")
            arguments = json.dumps(arguments)
        calls.append(ToolCall(str(item.get("id") or f"call_{index}"), function["name"], arguments))
    return tuple(calls)


def _message(item: Any, index: int, max_depth: int) -> Message:
    where = f"messages[{index}]"
    if not isinstance(item, Mapping):
        raise bad_request(f"{where} must be an object", where)
    raw_role = item.get("role")
    role = _ROLES.get(raw_role) if isinstance(raw_role, str) else None
    if role is None:
        raise bad_request(
            f"{where}.role must be one of system, developer, user, assistant, tool;"
            f" got {item.get('role')!r}",
            f"{where}.role",
        )
    name = item.get("name")
    tool_call_id = item.get("tool_call_id")
    content = _content(item.get("content"), where, role)
    fields: dict[str, Any] = {
        "name": name if isinstance(name, str) else None,
        "tool_calls": _tool_calls(item.get("tool_calls"), where, max_depth),
        "tool_call_id": tool_call_id if isinstance(tool_call_id, str) else None,
    }
    try:
        if isinstance(content, list):
            return Message.with_parts(role, content, **fields)  # type: ignore[arg-type]
        return Message(role, content, **fields)  # type: ignore[arg-type]
    except InvalidRequest as exc:
        raise bad_request(f"{where}: {exc}", where) from None


def client_tools(data: Mapping[str, Any], limits: BodyLimits) -> list[ClientTool]:
    """The client's ``tools``: function tools it runs itself, as :class:`ClientTool` values.

    Each must be ``{"type": "function", "function": {"name", "description", "parameters",
    "strict"}}``; anything else (another type, a bad name, a schema that is not an object) is a
    400 naming ``tools[i]...``.
    """
    return function_tools(data.get("tools"), limits, nested=True)


def function_tools(raw: Any, limits: BodyLimits, *, nested: bool) -> list[ClientTool]:
    """A request's function ``tools`` as :class:`ClientTool` values, or a 400 naming the tool.

    ``nested``: Chat Completions' shape (the definition under ``function``, ``type`` optional);
    else the Responses API's flat one (``{"type": "function", "name", ...}``). Names must be
    unique, and a schema no deeper than ``limits.max_depth``.
    """
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise bad_request("'tools' must be a list of function tools", "tools")
    tools: list[ClientTool] = []
    allowed = (None, "function") if nested else ("function",)
    parameters = "function.parameters" if nested else "parameters"
    for index, item in enumerate(raw):
        where = f"tools[{index}]"
        if isinstance(item, Mapping) and item.get("type") not in allowed:
            raise bad_request(
                f"{where}.type {item.get('type')!r} is not supported: this gateway passes"
                " function tools only",
                f"{where}.type",
            )
        if nested and isinstance(item, Mapping) and not isinstance(item.get("function"), Mapping):
            raise bad_request(
                f"{where}.function must be an object with the function's name", f"{where}.function"
            )
        try:
            tool = ClientTool.from_openai(item, where)
        except InvalidRequest as exc:
            raise bad_request(str(exc), exc.field or where) from None
        _check_depth(dict(tool.parameters), limits.max_depth, f"{where}.{parameters}")
        tools.append(tool)
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise bad_request(f"tool names must be unique, got {names}", "tools")
    return tools


def _tool_choice(value: Any, tools: list[ClientTool]) -> str | None:
    """``tool_choice`` as the Proxy takes it: a mode or the name of an offered tool."""
    if value is None:
        return None
    if isinstance(value, str):
        if value not in ("auto", "none", "required"):
            raise bad_request(
                f"'tool_choice' must be 'auto', 'none', 'required' or"
                f' {{"type": "function", "function": {{"name": ...}}}}; got {value!r}',
                "tool_choice",
            )
        name = value
    else:
        function = value.get("function") if isinstance(value, Mapping) else None
        if (
            not isinstance(value, Mapping)
            or value.get("type") != "function"
            or not isinstance(function, Mapping)
            or not isinstance(function.get("name"), str)
        ):
            raise bad_request(
                """'tool_choice' must be a mode or {"type": "function", "function": {"name":"""
                """ ...}}""",
                "tool_choice",
            )
        name = function["name"]
        if name not in {t.name for t in tools}:
            raise bad_request(
                f"'tool_choice' names {name!r}, which is not among the request's 'tools'",
                "tool_choice",
            )
    if not tools:
        # Nothing to choose from: "none"/"auto" are what a request without tools means anyway.
        if name == "required":
            raise bad_request("'tool_choice' is 'required' but the request has no 'tools'", "tools")
        return None
    return name


def _int(data: Mapping[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_request(f"'{name}' must be an integer >= 1, got {value!r}", name)
    return value


def parse(body: bytes, limits: BodyLimits | None = None) -> ChatCall:
    """Parse a ``POST /v1/chat/completions`` body; raise :class:`HTTPError` when bad.

    400 for a body that is not a valid request, 413 for one over ``limits.max_items``
    (:func:`load_json`); ``limits`` defaults to :class:`BodyLimits`'s defaults.
    """
    limits = limits if limits is not None else BodyLimits()
    data = load_json(body, limits)
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("Missing required parameter: 'model'.", "model")
    raw_messages = data.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise bad_request("Missing required parameter: 'messages'.", "messages")
    if len(raw_messages) > limits.max_messages:
        raise bad_request(
            f"'messages' has {len(raw_messages)} messages, more than this gateway takes in one"
            f" request ({limits.max_messages}; the operator sets it with {env.MAX_MESSAGES})",
            "messages",
        )
    messages = [_message(m, i, limits.max_depth) for i, m in enumerate(raw_messages)]
    stream = data.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", "stream")
    options = data.get("stream_options")
    include_usage = isinstance(options, Mapping) and options.get("include_usage") is True
    n = data.get("n")
    if n not in (None, 1):
        raise bad_request("this gateway answers with one choice: 'n' must be 1", "n")
    if data.get("functions") or data.get("function_call") is not None:
        raise bad_request(
            "'functions' and 'function_call' are OpenAI's deprecated form: send 'tools' and"
            " 'tool_choice'",
            "functions" if data.get("functions") else "function_call",
        )
    kwargs: dict[str, Any] = {}
    tools = client_tools(data, limits)
    if tools:
        kwargs["tools"] = tools
    if tools or "tool_choice" in data or "parallel_tool_calls" in data:
        # The client runs its tools: the Proxy hands every call back (each request is a call).
        kwargs["run_tools"] = False
    choice = _tool_choice(data.get("tool_choice"), tools)
    if choice is not None:
        kwargs["tool_choice"] = choice
    parallel = data.get("parallel_tool_calls")
    if parallel is not None:
        if not isinstance(parallel, bool):
            raise bad_request("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
        if tools:  # OpenAI refuses the switch without tools
            kwargs["parallel_tool_calls"] = parallel
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
            kwargs[name] = _passthrough(name, value, limits)
    schema = _json_schema(kwargs.get("response_format"))
    if schema is not None:
        # Structured output through the Proxy, so every provider is asked in its own way
        # (OpenAI's strict json_schema, Gemini's response_json_schema, DeepSeek's JSON mode)
        # and the answer is checked against the schema before it is returned.
        del kwargs["response_format"]
        kwargs["schema"] = schema
    end_user = data.get("user")
    if isinstance(end_user, str) and end_user:
        kwargs["tags"] = {"end_user": end_user}
    return ChatCall(messages, model, bool(stream), include_usage, kwargs)


def _json_schema(response_format: Any) -> dict[str, Any] | None:
    """The JSON schema a ``response_format`` of type ``json_schema`` asks for, else None.

    ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}`` becomes the
    Proxy's ``schema=``; other types (``text``, ``json_object``) pass through as they are.
    """
    if not isinstance(response_format, Mapping) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("schema"), Mapping):
        raise bad_request(
            "'response_format.json_schema.schema' must be a JSON schema object",
            "response_format",
        )
    schema = dict(spec["schema"])
    if isinstance(spec.get("name"), str) and "title" not in schema:
        schema["title"] = spec["name"]
    return schema


def usage_json(usage: Usage) -> dict[str, Any]:
    """OpenAI's ``usage`` object.

    Prompt-cache writes (a part of ``prompt_tokens``, as cached tokens are) are reported as
    ``prompt_tokens_details.cache_write_tokens``, OpenRouter's name, when there are any.
    """
    details: dict[str, int] = {"cached_tokens": usage.cached_input_tokens}
    if usage.cache_write_tokens:
        details["cache_write_tokens"] = usage.cache_write_tokens
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": details,
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

    def tool_calls(self, calls: Sequence[ToolCall]) -> bytes:
        """The model's tool calls as OpenAI streams them: two chunks per call, by ``index``.

        The first delta of call ``i`` has its ``index``, ``id``, ``type`` and ``function.name``
        (with empty ``arguments``), the second the arguments: what the openai SDK's stream
        accumulation (and any client that concatenates ``arguments`` by index) expects.
        """
        out: list[bytes] = []
        for index, call in enumerate(calls):
            head = {
                "index": index,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            rest = {"index": index, "function": {"arguments": call.arguments}}
            for delta in (head, rest):
                out.append(
                    self._head
                    + b'"tool_calls":['
                    + json.dumps(delta, separators=(",", ":")).encode()
                    + b"]"
                    + self._tail
                )
        return b"".join(out)

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
