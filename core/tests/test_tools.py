"""Function tools: schemas from hints and docstrings, validation, runs, timeouts and errors."""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, NotRequired, Optional, TypedDict, Union

import pytest

from llmproxy.errors import ConfigError, InvalidRequest
from llmproxy.tools import HostedTool, Tool, ToolResult, schema_from_function, tool, validate
from llmproxy.tools.offer import (
    ToolChoice,
    check_function_tools,
    read_tool_choice,
    refuse_hosted,
    split_tools,
)
from llmproxy.tools.schema import parse_docstring


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


class Place(TypedDict):
    city: str
    country: NotRequired[str]


class Options(TypedDict, total=False):
    verbose: bool


def properties(fn: Any) -> dict[str, Any]:
    found: dict[str, Any] = schema_from_function(fn)[1]["properties"]
    return found


# --------------------------------------------------------------------------- schemas


def test_plain_types_required_and_defaults() -> None:
    def f(name: str, count: int, ratio: float, on: bool, anything, maybe: str = "x", n: int = 2):  # type: ignore[no-untyped-def]
        """F."""

    description, schema = schema_from_function(f)
    assert description == "F."
    assert schema["properties"] == {
        "name": {"type": "string"},
        "count": {"type": "integer"},
        "ratio": {"type": "number"},
        "on": {"type": "boolean"},
        "anything": {},
        "maybe": {"type": "string", "default": "x"},
        "n": {"type": "integer", "default": 2},
    }
    assert schema["required"] == ["name", "count", "ratio", "on", "anything"]
    assert schema["additionalProperties"] is False


def test_optional_and_unions() -> None:
    def f(
        a: Optional[int],  # noqa: UP045 - both spellings are read
        b: str | None = None,
        c: Union[int, str] = 1,  # noqa: UP007
        d: Literal["x", "y"] | None = None,
        e: Unit | None = None,
        f: list[int] | None = None,
    ) -> None:
        """F."""

    props = properties(f)
    assert props["a"] == {"type": ["integer", "null"]}
    assert props["b"] == {"type": ["string", "null"]}
    assert props["c"] == {"anyOf": [{"type": "integer"}, {"type": "string"}], "default": 1}
    assert props["d"] == {"enum": ["x", "y", None], "type": ["string", "null"]}
    assert props["e"] == {"anyOf": [{"enum": ["celsius", "fahrenheit"]}, {"type": "null"}]}
    assert props["f"] == {"type": ["array", "null"], "items": {"type": "integer"}}
    # None is accepted wherever the hint allows it, the enum included.
    schema = schema_from_function(f)[1]
    assert validate({"a": None, "d": None, "e": None, "f": None}, schema) is None
    assert validate({"a": 1, "d": "z"}, schema) == "$.d: 'z' is not one of ['x', 'y', None]"


def test_literals_and_enums() -> None:
    def f(
        unit: Unit, mode: Literal["fast", "slow"], level: Literal[1, 2], mixed: Literal["a", 1]
    ) -> None:
        """F."""

    props = properties(f)
    assert props["unit"] == {"enum": ["celsius", "fahrenheit"]}
    assert props["mode"] == {"enum": ["fast", "slow"], "type": "string"}
    assert props["level"] == {"enum": [1, 2], "type": "integer"}
    assert props["mixed"] == {"enum": ["a", 1]}


def test_containers() -> None:
    def f(
        names: list[str],
        pair: tuple[int, str],
        many: tuple[float, ...],
        tags: set[str],
        seq: Sequence[bool],
        scores: dict[str, float],
        meta: Mapping[str, Any],
        raw: list,  # type: ignore[type-arg]
        blob: dict,  # type: ignore[type-arg]
    ) -> None:
        """F."""

    props = properties(f)
    assert props["names"] == {"type": "array", "items": {"type": "string"}}
    assert props["pair"] == {
        "type": "array",
        "prefixItems": [{"type": "integer"}, {"type": "string"}],
        "minItems": 2,
        "maxItems": 2,
    }
    assert props["many"] == {"type": "array", "items": {"type": "number"}}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["seq"] == {"type": "array", "items": {"type": "boolean"}}
    assert props["scores"] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert props["meta"] == {"type": "object", "additionalProperties": {}}
    assert props["raw"] == {"type": "array"}
    assert props["blob"] == {"type": "object"}
    schema = schema_from_function(f)[1]
    good = {
        "names": ["a"],
        "pair": [1, "x"],
        "many": [1, 2.5],
        "tags": [],
        "seq": [True],
        "scores": {"a": 1},
        "meta": {"k": [1]},
        "raw": [1, "a"],
        "blob": {},
    }
    assert validate(good, schema) is None
    assert validate({**good, "pair": [1, 2]}, schema) == "$.pair[1]: expected string, got int 2"
    assert validate({**good, "pair": [1]}, schema) == "$.pair: fewer than 2 items"
    assert validate({**good, "scores": {"a": "x"}}, schema) == (
        "$.scores.a: expected number, got str 'x'"
    )


def test_typed_dicts_nested() -> None:
    def f(place: Place, stops: list[Place], options: Options) -> None:
        """F."""

    props = properties(f)
    place = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    assert props["place"] == place
    assert props["stops"] == {"type": "array", "items": place}
    assert props["options"]["required"] == []
    schema = schema_from_function(f)[1]
    args = {"place": {"city": "Hue"}, "stops": [{"city": "A"}, {"country": "VN"}], "options": {}}
    assert validate(args, schema) == "$.stops[1]: missing required property 'city'"


def test_annotated_descriptions_win_over_the_docstring() -> None:
    def f(
        city: Annotated[str, "The city, in English."],
        days: Annotated[int, "ignored metadata", 3] = 1,
        note: str = "",
    ) -> None:
        """Forecast.

        Args:
            city: Overridden by the annotation.
            days: How many days.
            note: A note.
        """

    props = properties(f)
    assert props["city"] == {"type": "string", "description": "The city, in English."}
    assert props["days"] == {"type": "integer", "description": "ignored metadata", "default": 1}
    assert props["note"] == {"type": "string", "description": "A note.", "default": ""}


class Opaque:
    pass


def test_unsupported_hints_and_positional_only_are_config_errors() -> None:
    class Local:
        pass

    def f(x: Opaque) -> None:
        """F."""

    def g(x: int, /) -> None:
        """G."""

    with pytest.raises(ConfigError, match="cannot derive a JSON schema") as info:
        Tool.from_function(f)
    assert info.value.path == "tools.parameters"
    with pytest.raises(ConfigError, match="positional-only"):
        Tool.from_function(g)

    def h(x: Local) -> None:  # under postponed annotations a local class cannot be resolved
        """H."""

    with pytest.raises(ConfigError, match="'Local' is not defined"):
        Tool.from_function(h)
    # With a schema given, the hints are not read.
    given = {"type": "object", "properties": {"x": {}}}
    assert Tool.from_function(f, parameters=given).parameters == given


def test_variadic_parameters_are_left_out() -> None:
    def f(a: int, *rest: int, b: str = "x", **more: Any) -> None:
        """F."""

    assert list(properties(f)) == ["a", "b"]


# --------------------------------------------------------------------------- docstrings


def test_google_docstrings() -> None:
    doc = """Get the weather.

    Reads a weather service; the answer is
    plain text.

    Args:
        location (str): The place to get the weather for,
            a city or a region.
        unit: celsius or fahrenheit.
        *extra: Ignored.
        **options: Passed on.

    Returns:
        The weather, as text.

    Raises:
        ValueError: When the place is unknown.
    """
    description, params = parse_docstring(doc)
    assert description == "Get the weather.\n\nReads a weather service; the answer is\nplain text."
    assert params == {
        "location": "The place to get the weather for, a city or a region.",
        "unit": "celsius or fahrenheit.",
        "extra": "Ignored.",
        "options": "Passed on.",
    }


@pytest.mark.parametrize("header", ["Args:", "Arguments:", "Parameters:", "Keyword Args:"])
def test_argument_section_names(header: str) -> None:
    assert parse_docstring(f"Do it.\n\n{header}\n    x: The x.\n") == ("Do it.", {"x": "The x."})


def test_docstring_edge_cases() -> None:
    assert parse_docstring(None) == ("", {})
    assert parse_docstring("") == ("", {})
    assert parse_docstring("Only a summary.") == ("Only a summary.", {})
    # A section before Args is left out; a colon inside a description is kept.
    doc = "Sum.\n\nNote:\n    Slow.\n\nArgs:\n    a: One: the first.\n    b: Two.\n"
    assert parse_docstring(doc) == ("Sum.", {"a": "One: the first.", "b": "Two."})
    # A line that merely ends with a colon is not a section.
    doc = "Call it.\n\n    Like this:\n        f(1)\n    "
    assert parse_docstring(doc)[0] == "Call it.\n\nLike this:\n    f(1)"


# --------------------------------------------------------------------------- validation


SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 2, "maxLength": 5},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "kind": {"const": "person"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
        "size": {"type": ["number", "null"]},
        "either": {"oneOf": [{"type": "integer"}, {"type": "boolean"}]},
        "address": {
            "type": "object",
            "properties": {"zip": {"type": "string"}},
            "required": ["zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"name": "Al"}, None),
        ({"name": "Al", "age": 3.0, "size": None, "either": True}, None),
        ({}, "$: missing required property 'name'"),
        ({"name": "A"}, "$.name: shorter than 2 characters"),
        ({"name": "Alexander"}, "$.name: longer than 5 characters"),
        ({"name": "Al", "age": -1}, "$.age: -1 is less than 0"),
        ({"name": "Al", "age": 200}, "$.age: 200 is more than 150"),
        ({"name": "Al", "age": True}, "$.age: expected integer, got bool True"),
        ({"name": "Al", "age": 1.5}, "$.age: expected integer, got float 1.5"),
        ({"name": "Al", "kind": "dog"}, "$.kind: expected 'person'"),
        ({"name": "Al", "tags": []}, "$.tags: fewer than 1 items"),
        ({"name": "Al", "tags": ["a", "b", "c"]}, "$.tags: more than 2 items"),
        ({"name": "Al", "tags": ["a", 2]}, "$.tags[1]: expected string, got int 2"),
        ({"name": "Al", "size": "big"}, "$.size: expected number or null, got str 'big'"),
        ({"name": "Al", "either": "x"}, "$.either: 'x' matches none of the allowed forms"),
        ({"name": "Al", "address": {}}, "$.address: missing required property 'zip'"),
        ({"name": "Al", "address": {"zip": 1}}, "$.address.zip: expected string, got int 1"),
        ({"name": "Al", "address": {"zip": "1", "x": 1}}, "$.address: unexpected property 'x'"),
        ({"name": "Al", "extra": 1}, "$: unexpected property 'extra'"),
        ("Al", "$: expected object, got str 'Al'"),
    ],
)
def test_validation_reports_the_first_problem_with_its_path(
    value: Any, problem: str | None
) -> None:
    assert validate(value, SCHEMA) == problem


# --------------------------------------------------------------------------- tools


@tool
def get_weather(location: str, unit: Unit = Unit.CELSIUS) -> str:
    """Get today's weather.

    Args:
        location: The place to get the weather for.
        unit: The unit of the temperature.
    """
    return f"Sunny in {location} ({unit})"


def test_the_decorator_builds_a_tool() -> None:
    assert isinstance(get_weather, Tool)
    assert get_weather.name == "get_weather"
    assert get_weather.description == "Get today's weather."
    assert get_weather.parameters["required"] == ["location"]
    assert get_weather.parameters["properties"]["unit"] == {
        "enum": ["celsius", "fahrenheit"],
        "description": "The unit of the temperature.",
    }
    assert get_weather.wire() == {
        "type": "function",
        "name": "get_weather",
        "description": "Get today's weather.",
        "parameters": dict(get_weather.parameters),
        "strict": False,
    }
    assert not get_weather.is_async


def test_the_decorator_takes_overrides() -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}

    @tool(name="search-docs", description="Search.", parameters=schema, timeout=None, strict=True)
    def search(q):  # type: ignore[no-untyped-def]
        """Not the description."""
        return [q]

    assert (search.name, search.description, search.timeout, search.strict) == (
        "search-docs",
        "Search.",
        None,
        True,
    )
    assert search.parameters == schema
    assert search.run('{"q": "x"}').output == '["x"]'


@pytest.mark.parametrize("name", ["", "has space", "dots.not.allowed", "x" * 65])
def test_bad_names_are_config_errors(name: str) -> None:
    with pytest.raises(ConfigError, match="1-64 letters") as info:
        Tool(name)
    assert info.value.path == "tools.name"


def test_from_function_reads_methods_partials_and_callable_objects() -> None:
    class Weather:
        """Weather lookups."""

        def today(self, city: str) -> str:
            """Today's weather.

            Args:
                city: The city.
            """
            return f"sun in {city}"

        def __call__(self, city: str, days: int = 1) -> str:
            return f"{days} days of sun in {city}"

    def forecast(city: str, days: int) -> str:
        """Forecast."""
        return f"{days}: {city}"

    method = Tool.from_function(Weather().today)
    assert (method.name, method.description) == ("today", "Today's weather.")
    assert list(method.parameters["properties"]) == ["city"]
    assert method.run('{"city": "Hue"}').output == "sun in Hue"
    obj = Tool.from_function(Weather())
    assert (obj.name, obj.description) == ("Weather", "Weather lookups.")
    assert obj.run('{"city": "Hue", "days": 2}').output == "2 days of sun in Hue"
    part = Tool.from_function(functools.partial(forecast, days=3), name="three_days")
    assert part.parameters["properties"]["days"] == {"type": "integer", "default": 3}
    assert part.parameters["required"] == ["city"]
    assert part.run('{"city": "Hue"}').output == "3: Hue"
    assert Tool.from_function(functools.partial(forecast, days=3)).name == "forecast"
    with pytest.raises(ConfigError, match="must be callable"):
        Tool.from_function("not a function")  # type: ignore[arg-type]


def test_results_become_text() -> None:
    @tool
    def value(kind: str) -> Any:
        """Return something."""
        return {"text": "héllo", "list": [1, 2], "none": None, "obj": object}.get(kind, kind)

    assert value.run('{"kind": "text"}') == ToolResult("", "value", "héllo")
    assert value.run('{"kind": "list"}', "c1") == ToolResult("c1", "value", "[1, 2]")
    assert value.run('{"kind": "none"}').output == "null"
    assert value.run('{"kind": "obj"}').output == json.dumps(str(object))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("{not json", "arguments are not valid JSON"),
        ("[1, 2]", "arguments must be a JSON object"),
        ("{}", "invalid arguments: $: missing required property 'location'"),
        ('{"location": 3}', "invalid arguments: $.location: expected string, got int 3"),
        ('{"location": "x", "unit": "kelvin"}', "invalid arguments: $.unit: 'kelvin' is not one"),
        ('{"location": "x", "when": "now"}', "invalid arguments: $: unexpected property 'when'"),
    ],
)
async def test_bad_arguments_become_error_outputs_and_the_function_never_runs(
    arguments: str, message: str
) -> None:
    ran: list[str] = []

    @tool
    def get_weather(location: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> str:
        """Weather."""
        ran.append(location)
        return "sunny"

    for result in (get_weather.run(arguments, "c"), await get_weather.arun(arguments, "c")):
        assert result.error and result.call_id == "c" and result.name == "get_weather"
        assert result.output.startswith(message), result.output
    assert ran == []


async def test_empty_arguments_mean_no_arguments() -> None:
    @tool
    def now() -> str:
        """The time."""
        return "noon"

    assert now.run("").output == "noon"
    assert (await now.arun("{}")).output == "noon"


async def test_exceptions_become_error_outputs() -> None:
    @tool
    def broken(x: int) -> str:
        """Always fails."""
        raise ValueError(f"no {x}")

    @tool
    async def abroken(x: int) -> str:
        """Always fails, asynchronously."""
        raise KeyError(x)

    assert broken.run('{"x": 1}') == ToolResult("", "broken", "tool failed: ValueError: no 1", True)
    assert (await broken.arun('{"x": 2}')).output == "tool failed: ValueError: no 2"
    assert abroken.run('{"x": 3}').output == "tool failed: KeyError: 3"
    assert (await abroken.arun('{"x": 4}')).error


def test_a_tool_without_a_function_is_an_error_output() -> None:
    result = Tool("declared_only").run("{}", "c9")
    assert result == ToolResult(
        "c9", "declared_only", "tool 'declared_only' has no function to run", True
    )


async def test_sync_and_async_functions_run_from_both_sides() -> None:
    @tool
    def plain(x: int) -> int:
        """Double."""
        return 2 * x

    @tool
    async def coro(x: int) -> int:
        """Triple."""
        await asyncio.sleep(0)
        return 3 * x

    assert coro.is_async and not plain.is_async
    assert plain.run('{"x": 2}').output == "4"
    assert coro.run('{"x": 2}').output == "6"  # no loop runs here: a fresh one
    assert (await plain.arun('{"x": 2}')).output == "4"
    assert (await coro.arun('{"x": 2}')).output == "6"
    # Sync code called from inside a running loop still runs the coroutine (in a worker).
    assert coro.run('{"x": 5}').output == "15"


async def test_callable_objects_with_async_call_are_async() -> None:
    class Lookup:
        async def __call__(self, key: str) -> str:
            return key.upper()

    lookup = Tool.from_function(Lookup(), name="lookup")
    assert lookup.is_async
    assert (await lookup.arun('{"key": "a"}')).output == "A"


async def test_timeouts_become_error_outputs() -> None:
    release = threading.Event()

    @tool(timeout=0.05)
    def stuck() -> str:
        """Never answers in time."""
        release.wait(2)
        return "late"

    @tool(timeout=0.05)
    async def astuck() -> str:
        """Never answers in time, asynchronously."""
        await asyncio.sleep(2)
        return "late"

    try:
        started = time.perf_counter()
        for result in (
            stuck.run("{}"),
            await stuck.arun("{}"),
            astuck.run("{}"),
            await astuck.arun("{}"),
        ):
            assert result.error and result.output == "tool timed out after 0.05s"
        assert time.perf_counter() - started < 1.5
    finally:
        release.set()


async def test_sync_tools_run_in_threads_so_they_overlap() -> None:
    # Each call waits for all four to be running: one after another, the first would break the
    # barrier at its timeout and answer an error.
    barrier = threading.Barrier(4, timeout=30)

    @tool
    def meet(n: int) -> int:
        """Wait for the other calls."""
        barrier.wait()
        return n

    results = await asyncio.gather(*(meet.arun(json.dumps({"n": i})) for i in range(4)))
    assert [r.output for r in results] == ["0", "1", "2", "3"]


def test_no_timeout_runs_inline() -> None:
    seen: list[int] = []

    @tool(timeout=None)
    def here() -> str:
        """Note the thread."""
        seen.append(threading.get_ident())
        return "ok"

    assert here.run("{}").output == "ok"
    assert seen == [threading.get_ident()]


def test_hosted_tools_are_their_provider_json() -> None:
    search = HostedTool("file_search", {"vector_store_ids": ["vs_1"], "max_num_results": 3})
    assert search.wire() == {
        "type": "file_search",
        "vector_store_ids": ["vs_1"],
        "max_num_results": 3,
    }
    assert HostedTool("web_search").wire() == {"type": "web_search"}


# --------------------------------------------------------------------------- what providers use


def test_split_tools_and_tool_choice() -> None:
    search = HostedTool("file_search", {"vector_store_ids": ["v"]})
    functions, hosted = split_tools([get_weather, search])
    assert functions == [get_weather] and hosted == [search]
    with pytest.raises(InvalidRequest) as info:
        split_tools([get_weather, {"type": "function"}])
    assert info.value.field == "tools[1]"
    assert read_tool_choice(None, functions) is None
    assert read_tool_choice("auto", []) == ToolChoice("auto")
    assert read_tool_choice("required", functions) == ToolChoice("required")
    assert read_tool_choice("get_weather", functions) == ToolChoice("function", "get_weather")
    assert read_tool_choice("file_search", functions, hosted) == ToolChoice("hosted", "file_search")
    with pytest.raises(InvalidRequest, match="offered: get_weather, file_search") as bad:
        read_tool_choice("sometimes", functions, hosted)
    assert bad.value.field == "tool_choice"


def test_refusing_hosted_tools_names_the_provider() -> None:
    refuse_hosted([], "gemini")
    with pytest.raises(ConfigError, match=r"provider 'gemini' cannot run hosted tools \(a, b\): x"):
        refuse_hosted([HostedTool("b"), HostedTool("a")], "gemini", "x")
    check_function_tools([get_weather, print, "registered_name"], "deepseek")
    with pytest.raises(ConfigError, match="'deepseek'") as info:
        check_function_tools([get_weather, HostedTool("file_search")], "deepseek")
    assert info.value.path == "tools[1]"
    with pytest.raises(ConfigError, match="must be a list"):
        check_function_tools("get_weather", "deepseek")
