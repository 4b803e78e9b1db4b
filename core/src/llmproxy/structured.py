"""Structured output: ask a model for JSON that fits a schema, then parse and validate it.

``proxy.chat(..., schema=X)`` takes ``X`` as one of:

- an attrs class or a dataclass: its schema comes from its fields' type hints (the same
  generator as function tools, :mod:`llmproxy.tools.schema`) and the reply is structured into
  an instance with cattrs;
- a TypedDict: the reply is the validated dict;
- a pydantic model (duck-typed by ``model_json_schema`` and ``model_validate``, so pydantic is
  never a dependency of the core): its own schema, and ``model_validate`` builds the value;
- a JSON-schema dict: the reply is the validated JSON value (a dict for an object schema).

:func:`output_spec` turns ``X`` into an :class:`OutputSpec`, whose
:class:`~llmproxy.types.ResponseSchema` travels on the request (each provider asks for JSON in
its own way) and whose :meth:`OutputSpec.parse` turns the reply's text into the value or raises
:class:`~llmproxy.errors.SchemaError` with the raw text and what failed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import typing
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import cattrs

from llmproxy.errors import InvalidRequest, SchemaError
from llmproxy.tools.schema import _type_schema, _typed_dict_schema, validate
from llmproxy.types import ResponseSchema

log = logging.getLogger("llmproxy")

_NAME = re.compile(r"[^A-Za-z0-9_-]+")
_converter = cattrs.Converter()


def _schema_name(raw: str) -> str:
    """A name the providers accept (OpenAI: ``^[a-zA-Z0-9_-]{1,64}$``)."""
    return (_NAME.sub("_", raw).strip("_") or "response")[:64]


@attrs.frozen
class OutputSpec:
    """What a call asked its answer to be: the schema sent upstream and how to build the value.

    ``build`` turns validated JSON into the caller's value (an attrs instance, a pydantic model,
    or the JSON itself).
    """

    schema: ResponseSchema
    build: Callable[[Any], Any]
    target: Any = None

    def parse(self, text: str) -> Any:
        """Parse and validate a reply; raise :class:`~llmproxy.errors.SchemaError` if it is wrong.

        Properties the schema does not require that came back ``null`` are dropped first (OpenAI's
        strict mode makes every property required and nullable; see :func:`strict_json_schema`).
        """
        try:
            value = json.loads(_unfenced(text))
        except ValueError as exc:
            raise SchemaError(
                f"the answer is not JSON ({exc})", raw=text, errors=[f"$: not JSON: {exc}"]
            ) from None
        value = _drop_added_nulls(value, self.schema.schema)
        problems = schema_problems(value, self.schema.schema)
        if problems:
            raise SchemaError(
                "the answer does not fit the schema: " + "; ".join(problems),
                raw=text,
                errors=problems,
            )
        try:
            return self.build(value)
        except Exception as exc:  # cattrs / pydantic say what failed
            errors = _build_errors(exc)
            raise SchemaError(
                "the answer does not fit the schema: " + "; ".join(errors),
                raw=text,
                errors=errors,
            ) from exc


def _unfenced(text: str) -> str:
    """The JSON inside a reply, without a Markdown code fence some models wrap it in."""
    stripped = text.strip()
    if stripped.startswith("```"):
        body = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        if body.rstrip().endswith("```"):
            return body.rstrip()[:-3]
    return stripped


def _build_errors(exc: Exception) -> list[str]:
    errors = getattr(exc, "errors", None)
    if callable(errors):  # pydantic's ValidationError
        try:
            return [
                f"$.{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
                for e in errors()
            ]
        except Exception:  # not pydantic's after all: fall through to the generic forms
            log.debug("could not read the errors of %r", exc, exc_info=True)
    if isinstance(exc, cattrs.BaseValidationError):
        return [str(e) for e in exc.exceptions] or [str(exc)]
    return [f"$: {exc}"]


def schema_problems(value: Any, schema: Mapping[str, Any]) -> list[str]:
    """Every top-level way ``value`` breaks ``schema`` (one per property), empty when it fits.

    :func:`llmproxy.tools.schema.validate` reports the first problem; for an object this
    checks each property on its own, so that a reply with three wrong fields names all three.
    """
    problem = validate(value, schema)
    if problem is None:
        return []
    if not isinstance(value, dict) or not isinstance(schema.get("properties"), Mapping):
        return [problem]
    problems: list[str] = []
    properties: Mapping[str, Any] = schema["properties"]
    for name in schema.get("required", ()):
        if name not in value:
            problems.append(f"$: missing required property {name!r}")
    for name, item in value.items():
        if name in properties:
            found = validate(item, properties[name], f"$.{name}")
            if found:
                problems.append(found)
        elif schema.get("additionalProperties", True) is False:
            problems.append(f"$: unexpected property {name!r}")
    return problems or [problem]


def _allows_null(schema: Mapping[str, Any]) -> bool:
    kind = schema.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    options = schema.get("anyOf") or schema.get("oneOf") or ()
    return any(isinstance(o, Mapping) and _allows_null(o) for o in options) or not schema


def _drop_added_nulls(value: Any, schema: Mapping[str, Any]) -> Any:
    if isinstance(value, dict) and isinstance(schema.get("properties"), Mapping):
        properties: Mapping[str, Any] = schema["properties"]
        required = set(schema.get("required", ()))
        out = {}
        for name, item in value.items():
            sub = properties.get(name)
            if sub is None:
                out[name] = item
            elif item is None and name not in required and not _allows_null(sub):
                continue
            else:
                out[name] = _drop_added_nulls(item, sub)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [_drop_added_nulls(v, schema["items"]) for v in value]
    return value


def strict_json_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` as OpenAI's strict structured outputs need it.

    Strict mode requires every object to list all its properties in ``required`` and to set
    ``additionalProperties: false``. A property that was optional becomes nullable (its type
    gains ``"null"``, or it becomes ``anyOf [it, null]``) so the model can still leave it out;
    :meth:`OutputSpec.parse` drops such ``null`` values again before validating against the
    original schema. Nested objects, array items and ``anyOf``/``$defs`` branches are rewritten
    the same way. ``default`` is removed (strict mode refuses it).

    >>> strict_json_schema({"type": "object", "properties": {"a": {"type": "integer"}}})
    {'type': 'object', 'properties': {'a': {'type': ['integer', 'null']}}, 'required': ['a'], \
'additionalProperties': False}
    """
    return _strict(schema)


def _strict(schema: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: v for k, v in schema.items() if k != "default"}
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), Mapping):
            out[key] = _strict(out[key])
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        if isinstance(out.get(key), list):
            out[key] = [_strict(s) if isinstance(s, Mapping) else s for s in out[key]]
    for key in ("$defs", "definitions"):
        if isinstance(out.get(key), Mapping):
            out[key] = {n: _strict(s) for n, s in out[key].items()}
    properties = out.get("properties")
    if isinstance(properties, Mapping):
        required = set(out.get("required", ()))
        new: dict[str, Any] = {}
        for name, sub in properties.items():
            strict_sub = _strict(sub) if isinstance(sub, Mapping) else sub
            if name not in required and isinstance(strict_sub, dict):
                strict_sub = _nullable(strict_sub)
            new[name] = strict_sub
        out["properties"] = new
        out["required"] = list(new)
        out["additionalProperties"] = False
    elif out.get("type") == "object":
        out.setdefault("properties", {})
        out["required"] = []
        out["additionalProperties"] = False
    return out


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if _allows_null(schema):
        return schema
    kind = schema.get("type")
    if isinstance(kind, str):
        out = {**schema, "type": [kind, "null"]}
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        return out
    if isinstance(kind, list):
        return {**schema, "type": [*kind, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def schema_instructions(schema: ResponseSchema) -> str:
    """The instruction text for a provider with a JSON mode but no schema mode (DeepSeek).

    It names JSON (DeepSeek's JSON mode requires the word in the prompt) and holds the schema,
    compact. The core counts this text as the request's input when a schema is asked for, so
    budgets cover it whichever provider answers.
    """
    compact = json.dumps(schema.schema, separators=(",", ":"), ensure_ascii=False)
    return (
        "Answer with one JSON object and nothing else (no Markdown, no code fence)."
        f" It must validate against this JSON schema (named {schema.name}):\n{compact}"
    )


def _is_pydantic(target: Any) -> bool:
    return isinstance(target, type) and all(
        callable(getattr(target, n, None)) for n in ("model_json_schema", "model_validate")
    )


def output_spec(target: Any) -> OutputSpec:
    """Turn a call's ``schema=`` into what the call sends and parses with.

    Raises :class:`~llmproxy.errors.InvalidRequest` (``field="schema"``) for anything else, or
    for a class whose fields have a type with no JSON schema.
    """
    if isinstance(target, Mapping):
        return _dict_spec(target)
    try:
        return _class_spec(target)
    except TypeError as exc:
        raise InvalidRequest(
            f"schema: {exc}" if "JSON schema" in str(exc) else _WRONG_KIND.format(target=target),
            field="schema",
        ) from None


_WRONG_KIND = (
    "schema must be an attrs class, a dataclass, a TypedDict, a pydantic model or a JSON-schema"
    " dict; got {target!r}"
)


def _dict_spec(target: Mapping[str, Any]) -> OutputSpec:
    try:
        schema = json.loads(json.dumps(target))
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(
            f"schema: a JSON-schema dict must be JSON ({exc})", field="schema"
        ) from None
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise InvalidRequest(
            "schema: a JSON-schema dict must describe an object ({'type': 'object',"
            " 'properties': {...}}); wrap another value in a property",
            field="schema",
        )
    name = schema.get("title")
    return OutputSpec(
        ResponseSchema(_schema_name(name if isinstance(name, str) else "response"), schema),
        _identity,
        None,
    )


def _identity(value: Any) -> Any:
    return value


@functools.lru_cache(maxsize=256)
def _class_spec(target: Any) -> OutputSpec:
    if not isinstance(target, type):
        raise TypeError(_WRONG_KIND.format(target=target))
    name = _schema_name(target.__name__)
    if _is_pydantic(target):
        schema = target.model_json_schema()  # type: ignore[attr-defined]
        return OutputSpec(ResponseSchema(name, schema), target.model_validate, target)  # type: ignore[attr-defined]
    if typing.is_typeddict(target):
        return OutputSpec(ResponseSchema(name, _typed_dict_schema(target)), _identity, target)
    if attrs.has(target) or dataclasses.is_dataclass(target):
        schema = _type_schema(target)

        def build(value: Any) -> Any:
            return _converter.structure(value, target)

        return OutputSpec(ResponseSchema(name, schema), build, target)
    raise TypeError(_WRONG_KIND.format(target=target))


_SPEC_TYPES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
}
_SPEC_FIELD = re.compile(
    r"^\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\s+(?P<type>[a-z]+(?:\[[a-z]+\])?))?\s*"
    r"(?::\s*(?P<description>.*?))?\s*$",
    re.DOTALL,
)


def _spec_type(name: str) -> dict[str, Any] | None:
    if name in _SPEC_TYPES:
        return dict(_SPEC_TYPES[name])
    if name.startswith("list[") and name.endswith("]"):
        inner = _SPEC_TYPES.get(name[5:-1])
        return None if inner is None else {"type": "array", "items": dict(inner)}
    return None


def parse_schema_spec(spec: str) -> dict[str, Any]:
    """Turn a compact schema spec into a JSON schema (an object with every field required).

    The grammar, as ``llm --schema`` takes it::

        spec   := field ("," field)*          (or one field per line, when the spec has newlines)
        field  := name [type] [":" description]
        name   := [A-Za-z_][A-Za-z0-9_]*
        type   := str | int | float | bool | list[str] | list[int] | list[float] | list[bool]

    The type defaults to ``str``. A description (free text after ``:``) may not hold a comma in
    the one-line form; put one field per line for that.

    >>> parse_schema_spec("name, age int, tags list[str]")["properties"]
    {'name': {'type': 'string'}, 'age': {'type': 'integer'}, 'tags': {'type': 'array', 'items': \
{'type': 'string'}}}

    Raises :class:`~llmproxy.errors.InvalidRequest` (``field="schema"``) naming the bad field.
    """
    pieces = spec.splitlines() if "\n" in spec.strip() else spec.split(",")
    properties: dict[str, Any] = {}
    for piece in pieces:
        if not piece.strip():
            continue
        match = _SPEC_FIELD.match(piece)
        if match is None:
            raise InvalidRequest(
                f"schema spec field {piece.strip()!r} is not 'name [type] [: description]'",
                field="schema",
            )
        name, kind = match.group("name"), match.group("type") or "str"
        schema = _spec_type(kind)
        if schema is None:
            raise InvalidRequest(
                f"schema spec field {name!r} has unknown type {kind!r}: use str, int, float,"
                " bool or list[...] of one of them",
                field="schema",
            )
        if name in properties:
            raise InvalidRequest(f"schema spec names {name!r} twice", field="schema")
        if match.group("description"):
            schema["description"] = match.group("description")
        properties[name] = schema
    if not properties:
        raise InvalidRequest("schema spec is empty: name at least one field", field="schema")
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


__all__ = [
    "OutputSpec",
    "output_spec",
    "parse_schema_spec",
    "schema_instructions",
    "schema_problems",
    "strict_json_schema",
]
