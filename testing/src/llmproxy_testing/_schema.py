"""Structured output in the fakes: find the schema a request asks for, answer a fitting instance.

A request that asks for JSON fitting a schema (OpenAI's ``response_format`` json_schema, the
Responses API's ``text.format``, Gemini's ``generationConfig.responseJsonSchema``, or DeepSeek's
JSON mode with the schema written into the system message) and has no scripted reply is
answered with :func:`instance`: the smallest JSON value that validates against the schema.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def instance(schema: Any, defs: Mapping[str, Any] | None = None) -> Any:
    """The smallest value that fits ``schema``: every required property, the first enum value.

    Covers what structured-output schemas use: ``type`` (one or a list, ``null`` last choice),
    ``properties``/``required``, ``items``/``prefixItems``/``minItems``, ``enum``, ``const``,
    ``anyOf``/``oneOf``/``allOf``, ``minimum``, ``minLength`` and ``$ref`` into ``$defs``.

    >>> instance({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    {'n': 0}
    """
    if not isinstance(schema, Mapping):
        return None
    defs = {**(defs or {}), **schema.get("$defs", {}), **schema.get("definitions", {})}
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return instance(defs.get(ref.rsplit("/", 1)[-1], {}), defs)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            non_null = [
                o for o in options if not (isinstance(o, Mapping) and o.get("type") == "null")
            ]
            return instance((non_null or options)[0], defs)
    if isinstance(schema.get("allOf"), list) and schema["allOf"]:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            if isinstance(part, Mapping):
                merged.update(part)
        return instance(merged, defs)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        properties = schema.get("properties") or {}
        required = schema.get("required") or []
        return {name: instance(properties.get(name, {}), defs) for name in required}
    if kind == "array":
        prefix = schema.get("prefixItems") or []
        items = [instance(p, defs) for p in prefix]
        minimum = schema.get("minItems", 0)
        while len(items) < minimum:
            items.append(instance(schema.get("items", {}), defs))
        return items
    if kind == "string":
        return "x" * int(schema.get("minLength", 0))
    if kind == "integer":
        return int(schema.get("minimum", 0))
    if kind == "number":
        return schema.get("minimum", 0)
    if kind == "boolean":
        return False
    return None


def _is_null(schema: Any) -> bool:
    return isinstance(schema, Mapping) and schema.get("type") == "null"


def openai_schema(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The schema a Chat Completions body asks for (``response_format.json_schema.schema``)."""
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if isinstance(schema, Mapping):
            return schema
    return None


def responses_schema(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The schema a Responses API body asks for (``text.format.schema``)."""
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, Mapping) else None
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        return schema if isinstance(schema, Mapping) else None
    return None


def json_mode_schema(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """In JSON mode (``response_format: json_object``), the schema the system message holds.

    The first JSON object in a system message that looks like a schema (it has ``type`` or
    ``properties``) is taken; with none, ``{}`` (the answer is then an empty object).
    """
    fmt = body.get("response_format")
    if not (isinstance(fmt, Mapping) and fmt.get("type") == "json_object"):
        return None
    decoder = json.JSONDecoder()
    for message in body.get("messages") or ():
        if not isinstance(message, Mapping) or message.get("role") != "system":
            continue
        content = message.get("content")
        if not isinstance(content, str):
            continue
        start = content.find("{")
        while start != -1:
            try:
                value, _ = decoder.raw_decode(content, start)
            except ValueError:
                value = None
            if isinstance(value, dict) and ("type" in value or "properties" in value):
                return value
            start = content.find("{", start + 1)
    return {}


def answer(schema: Mapping[str, Any]) -> str:
    """The default answer to a request asking for ``schema``: a fitting instance, as JSON."""
    return json.dumps(instance(schema))


def strict_problem(schema: Any, context: tuple[str, ...] = ()) -> str | None:
    """What OpenAI's strict mode refuses in ``schema`` (as its 400 says it), or None.

    Every object must set ``additionalProperties: false`` and list all its properties in
    ``required``.
    """
    if not isinstance(schema, Mapping):
        return None
    where = f"context=({', '.join(repr(c) for c in context)})"
    properties = schema.get("properties") or {}
    if schema.get("type") == "object" or properties:
        if schema.get("additionalProperties") is not False:
            return f"In {where}, 'additionalProperties' is required to be supplied and to be false."
        names = list(properties)
        missing = [n for n in names if n not in (schema.get("required") or [])]
        if missing:
            return (
                f"In {where}, 'required' is required to be supplied and to be an array including"
                f" every key in properties. Missing '{missing[0]}'."
            )
        for name in names:
            found = strict_problem(properties[name], (*context, "properties", name))
            if found:
                return found
    for key in ("items",):
        found = strict_problem(schema.get(key), (*context, key))
        if found:
            return found
    for key in ("anyOf", "$defs"):
        value = schema.get(key)
        branches = value.items() if isinstance(value, Mapping) else enumerate(value or ())
        for index, branch in branches:
            found = strict_problem(branch, (*context, key, str(index)))
            if found:
                return found
    return None
