"""JSON schemas from Python signatures, and a validator for the arguments a model sends.

The validator covers the JSON-schema subset function tools use: ``type`` (one or a list),
``properties``, ``required``, ``additionalProperties``, ``items``, ``prefixItems``, ``enum``,
``const``, ``minimum``/``maximum``, ``minLength``/``maxLength``, ``minItems``/``maxItems`` and
``anyOf``/``oneOf``. It reports the first problem with the path to it (``$.location``).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import attrs

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list, tuple),
    "object": (dict,),
    "null": (type(None),),
}


#: TypedDict key qualifiers, unwrapped (``ReadOnly`` exists from Python 3.13).
_QUALIFIERS = tuple(
    q for q in (typing.Required, typing.NotRequired, getattr(typing, "ReadOnly", None)) if q
)


def _typed_dict_schema(tp: Any) -> dict[str, Any]:
    hints = get_type_hints(tp, include_extras=True)
    total = getattr(tp, "__total__", True)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for key, hint in hints.items():
        inner = hint
        explicit: bool | None = None
        while get_origin(inner) in (*_QUALIFIERS, typing.Annotated):
            origin = get_origin(inner)
            if origin is typing.Required:
                explicit = True
            elif origin is typing.NotRequired:
                explicit = False
            if origin is typing.Annotated:
                break
            inner = get_args(inner)[0]
        properties[key] = _type_schema(inner)
        if explicit if explicit is not None else total:
            required.append(key)
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _class_schema(tp: type) -> dict[str, Any]:
    """The object schema of an attrs class or a dataclass: a field without a default is required.

    Fields that ``__init__`` does not take (``init=False``) are left out.
    """
    hints = get_type_hints(tp, include_extras=True)
    properties: dict[str, Any] = {}
    required: list[str] = []
    if attrs.has(tp):
        for a in attrs.fields(tp):
            if not a.init:
                continue
            key = a.alias or a.name
            properties[key] = _type_schema(hints.get(a.name, Any))
            if a.default is attrs.NOTHING:
                required.append(key)
    else:
        for f in dataclasses.fields(tp):
            if not f.init:
                continue
            properties[f.name] = _type_schema(hints.get(f.name, Any))
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(f.name)
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _type_schema(tp: Any) -> dict[str, Any]:
    """Return the JSON schema of a Python annotation."""
    if tp is Any or tp is inspect.Parameter.empty:
        return {}
    origin = get_origin(tp)
    args = get_args(tp)
    if origin in _QUALIFIERS:
        return _type_schema(args[0])
    if origin is typing.Annotated:
        schema = _type_schema(args[0])
        for extra in args[1:]:
            if isinstance(extra, str):
                schema["description"] = extra
        return schema
    if origin in (Union, types.UnionType):
        non_null = [a for a in args if a is not type(None)]
        if len(non_null) == 1 and len(args) == 2:
            inner = _type_schema(non_null[0])
            if "type" in inner and isinstance(inner["type"], str):
                inner["type"] = [inner["type"], "null"]
                if "enum" in inner and None not in inner["enum"]:
                    inner["enum"] = [*inner["enum"], None]
                return inner
            return {"anyOf": [inner, {"type": "null"}]}
        return {"anyOf": [_type_schema(a) for a in args]}
    if origin is Literal:
        values = list(args)
        kinds = {type(v) for v in values}
        literal: dict[str, Any] = {"enum": values}
        if len(kinds) == 1:
            literal.update(_type_schema(kinds.pop()))
        return literal
    if inspect.isclass(tp) and issubclass(tp, enum.Enum):
        return {"enum": [m.value for m in tp]}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if tp is type(None):
        return {"type": "null"}
    if origin is tuple and args and args[-1] is not Ellipsis and args != ((),):
        return {
            "type": "array",
            "prefixItems": [_type_schema(a) for a in args],
            "minItems": len(args),
            "maxItems": len(args),
        }
    if origin in (list, tuple, set, frozenset, Sequence) or tp in (list, tuple, set, frozenset):
        array: dict[str, Any] = {"type": "array"}
        if args and args != ((),):
            array["items"] = _type_schema(args[0])
        elif origin is tuple and args == ((),):
            array["maxItems"] = 0
        return array
    if origin in (dict, Mapping) or tp in (dict,):
        obj: dict[str, Any] = {"type": "object"}
        if len(args) == 2:
            obj["additionalProperties"] = _type_schema(args[1])
        return obj
    if typing.is_typeddict(tp):
        return _typed_dict_schema(tp)
    if inspect.isclass(tp) and (attrs.has(tp) or dataclasses.is_dataclass(tp)):
        return _class_schema(tp)
    raise TypeError(
        f"cannot derive a JSON schema for {tp!r}: annotate with str, int, float, bool, Literal,"
        " an Enum, list[...], dict[str, ...], a TypedDict, an attrs class or a dataclass, or pass"
        " parameters= explicitly"
    )


#: Google-style section headers; only the argument sections are read, the others are left
#: out of the description.
_ARG_SECTIONS = frozenset(
    {"args", "arguments", "parameters", "params", "keyword args", "keyword arguments"}
)
_OTHER_SECTIONS = frozenset(
    {
        "other parameters",
        "returns",
        "return",
        "yields",
        "yield",
        "raises",
        "exceptions",
        "examples",
        "example",
        "note",
        "notes",
        "attributes",
        "see also",
        "warning",
        "warnings",
        "todo",
        "references",
    }
)
_SECTION = re.compile(r"^([A-Za-z][A-Za-z ]*?)\s*:\s*$")
_ARG_LINE = re.compile(r"^\s*\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into its description and per-argument descriptions.

    The description is the text before the first section (``Args:``, ``Returns:``,
    ``Raises:``...); arguments come from ``Args:`` (or ``Arguments:``, ``Parameters:``), with
    an optional ``(type)`` after the name and continuation lines indented under it.

    >>> parse_docstring('''Add.
    ...
    ... Args:
    ...     a (int): The first
    ...         number.
    ...
    ... Returns:
    ...     The sum.
    ... ''')
    ('Add.', {'a': 'The first number.'})
    """
    if not doc:
        return "", {}
    summary: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    arg_indent: int | None = None
    for line in inspect.cleandoc(doc).splitlines():
        indent = len(line) - len(line.lstrip())
        header = _SECTION.match(line) if indent == 0 else None
        if header is not None:
            name = header.group(1).strip().lower()
            if name in _ARG_SECTIONS or name in _OTHER_SECTIONS:
                section, current, arg_indent = name, None, None
                continue
        if section is None:
            summary.append(line)
            continue
        if section not in _ARG_SECTIONS:
            continue
        match = _ARG_LINE.match(line)
        if match and (arg_indent is None or indent <= arg_indent):
            arg_indent = indent
            current = match.group(1)
            params[current] = match.group(2).strip()
        elif current is not None and line.strip():
            params[current] = f"{params[current]} {line.strip()}".strip()
    return "\n".join(summary).strip(), params


def callable_source(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Return what holds a callable's hints, docstring and name.

    A function or method is its own source; a :func:`functools.partial` is its function's; a
    callable object is its ``__call__`` (with the class's docstring when that has none).
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.isroutine(fn) or inspect.isclass(fn) or not callable(fn):
        return fn
    call: Callable[..., Any] = type(fn).__call__
    return call


def callable_name(fn: Callable[..., Any]) -> str:
    """Return a callable's name: its function's, or its class's for a callable object."""
    source = callable_source(fn)
    name = getattr(source, "__name__", None)
    if name == "__call__" or not isinstance(name, str):
        return type(fn).__name__
    return name


def callable_doc(fn: Callable[..., Any]) -> str | None:
    """Return a callable's docstring (see :func:`callable_source`)."""
    source = callable_source(fn)
    doc = source.__doc__
    if not doc and source is not fn and not isinstance(fn, functools.partial):
        doc = type(fn).__doc__
    return doc


def schema_from_function(fn: Callable[..., Any]) -> tuple[str, dict[str, Any]]:
    """Return ``(description, parameters schema)`` for a callable, from its hints and docstring.

    Functions, methods, :func:`functools.partial` objects (bound arguments left out) and
    callable objects (their ``__call__``) are read. Raises TypeError for an annotation with no
    JSON schema and for positional-only parameters.
    """
    description, docs = parse_docstring(callable_doc(fn))
    hints = get_type_hints(callable_source(fn), include_extras=True)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.kind is param.POSITIONAL_ONLY:
            raise TypeError(
                f"tool function {callable_name(fn)} has positional-only parameter {name!r}"
            )
        schema = _type_schema(hints.get(name, Any))
        if name in docs and "description" not in schema:
            schema["description"] = docs[name]
        if param.default is param.empty:
            required.append(name)
        elif param.default is not None and isinstance(param.default, (str, int, float, bool)):
            schema["default"] = param.default
        properties[name] = schema
    return description, {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _is_type(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _JSON_TYPES.get(name, (object,)))


def validate(value: Any, schema: Mapping[str, Any], path: str = "$") -> str | None:
    """Return the first way ``value`` breaks ``schema`` (with its path), or None when it fits."""
    if "anyOf" in schema or "oneOf" in schema:
        options = schema.get("anyOf") or schema.get("oneOf") or []
        if not any(validate(value, option, path) is None for option in options):
            return f"{path}: {value!r} matches none of the allowed forms"
    expected = schema.get("type")
    if expected is not None:
        names = [expected] if isinstance(expected, str) else list(expected)
        if not any(_is_type(value, n) for n in names):
            return f"{path}: expected {' or '.join(names)}, got {type(value).__name__} {value!r}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path}: {value!r} is not one of {schema['enum']!r}"
    if "const" in schema and value != schema["const"]:
        return f"{path}: expected {schema['const']!r}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{path}: {value} is less than {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{path}: {value} is more than {schema['maximum']}"
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            return f"{path}: shorter than {schema['minLength']} characters"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            return f"{path}: longer than {schema['maxLength']} characters"
    if isinstance(value, (list, tuple)):
        if "minItems" in schema and len(value) < schema["minItems"]:
            return f"{path}: fewer than {schema['minItems']} items"
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            return f"{path}: more than {schema['maxItems']} items"
        prefix = schema.get("prefixItems")
        prefix = list(prefix) if isinstance(prefix, Sequence) else []
        for index, (item, item_schema) in enumerate(zip(value, prefix, strict=False)):
            problem = validate(item, item_schema, f"{path}[{index}]")
            if problem:
                return problem
        items = schema.get("items")
        if isinstance(items, Mapping):
            for index, item in enumerate(value[len(prefix) :], start=len(prefix)):
                problem = validate(item, items, f"{path}[{index}]")
                if problem:
                    return problem
    if isinstance(value, dict):
        properties: Mapping[str, Any] = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                return f"{path}: missing required property {name!r}"
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                problem = validate(item, properties[name], f"{path}.{name}")
            elif extra is False:
                return f"{path}: unexpected property {name!r}"
            elif isinstance(extra, Mapping):
                problem = validate(item, extra, f"{path}.{name}")
            else:
                problem = None
            if problem:
                return problem
    return None
