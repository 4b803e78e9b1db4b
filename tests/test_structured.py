"""Structured output through the Proxy: schema kinds, validation errors, retries, streams."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, Literal, TypedDict

import attrs
import pytest

from llmproxy import InvalidRequest, LLMBudget, Proxy, SchemaError
from llmproxy.structured import output_spec, strict_json_schema
from llmproxy_testing._http import Reply
from llmproxy_testing._schema import instance, strict_problem
from llmproxy_testing.fake_openai import FakeOpenAI
from tests.conftest import chat_requests

MakeProxy = Callable[..., Proxy]


@attrs.frozen
class Pet:
    name: str
    kind: Literal["cat", "dog"]


@attrs.frozen
class Person:
    name: str
    age: int
    pets: list[Pet]
    nickname: str | None = None


@dataclasses.dataclass
class Point:
    x: float
    y: float
    label: str = "origin"


class Movie(TypedDict):
    title: str
    year: int


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def _format(body: dict[str, Any]) -> dict[str, Any]:
    fmt: dict[str, Any] = body["response_format"]
    return fmt


def test_an_attrs_class_is_asked_for_strictly_and_parsed(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    upstream.enqueue(
        Reply(
            text='{"name": "Ada", "age": 36, "pets": [{"name": "Tom", "kind": "cat"}],'
            ' "nickname": null}'
        )
    )
    response = make_proxy().chat("Who?", schema=Person)
    assert response.parsed == Person("Ada", 36, [Pet("Tom", "cat")])
    fmt = _format(chat_requests(upstream)[0])
    assert fmt["type"] == "json_schema"
    spec = fmt["json_schema"]
    assert spec["name"] == "Person" and spec["strict"] is True
    schema = spec["schema"]
    assert schema["required"] == ["name", "age", "pets", "nickname"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["nickname"] == {"type": ["string", "null"]}
    pet = schema["properties"]["pets"]["items"]
    assert pet == {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "kind": {"enum": ["cat", "dog"], "type": "string"},
        },
        "required": ["name", "kind"],
        "additionalProperties": False,
    }


def test_the_fake_answers_a_minimal_instance_when_nothing_is_enqueued(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy()
    # Strict mode makes every property required, so the fake fills the optional ones too.
    assert proxy.chat("a point", schema=Point).parsed == Point(0, 0, "")
    assert proxy.chat("a movie", schema=Movie).parsed == {"title": "", "year": 0}
    assert proxy.chat("a person", schema=Person).parsed == Person("", 0, [], "")
    assert proxy.chat("a dict", schema=PERSON).parsed == {"name": "", "age": 0}


def test_a_dataclass_and_a_typed_dict_are_parsed(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    upstream.enqueue(Reply(text='{"x": 1.5, "y": 2, "label": null}'))
    upstream.enqueue(Reply(text='{"title": "Alien", "year": 1979}'))
    proxy = make_proxy()
    assert proxy.chat("p", schema=Point).parsed == Point(1.5, 2, "origin")
    movie = proxy.chat("m", schema=Movie).parsed
    assert movie == {"title": "Alien", "year": 1979}


def test_a_json_schema_dict_gives_a_dict(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    upstream.enqueue(Reply(text='{"name": "Ada", "age": 36}'))
    response = make_proxy().chat("p", schema={**PERSON, "title": "a person!"})
    assert response.parsed == {"name": "Ada", "age": 36}
    assert response.text == '{"name": "Ada", "age": 36}'
    assert _format(chat_requests(upstream)[0])["json_schema"]["name"] == "a_person"


def test_a_pydantic_model_is_parsed_when_pydantic_is_installed(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    pydantic = pytest.importorskip("pydantic")

    class City(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        name: str
        people: int

    upstream.enqueue(Reply(text='{"name": "Oslo", "people": 700000}'))
    parsed = make_proxy().chat("c", schema=City).parsed
    assert isinstance(parsed, City) and parsed.people == 700000


def test_an_answer_that_does_not_fit_raises_with_the_raw_text_and_every_error(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=10_000)])
    raw = '{"name": 7, "age": "ten", "extra": true}'
    upstream.enqueue(Reply(text=raw))
    with pytest.raises(SchemaError) as caught:
        proxy.chat("p", schema=Person)
    assert caught.value.raw == raw
    assert caught.value.errors == [
        "$: missing required property 'pets'",
        "$.name: expected string, got int 7",
        "$.age: expected integer, got str 'ten'",
        "$: unexpected property 'extra'",
    ]
    budget = proxy.usage()[0]
    assert budget.reserved == 0 and budget.used > 0  # the bad answer's tokens are counted


def test_an_answer_that_is_not_json_raises(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    upstream.enqueue(Reply(text="Sure! Here it is"))
    with pytest.raises(SchemaError) as caught:
        make_proxy().chat("p", schema=PERSON)
    assert caught.value.raw == "Sure! Here it is"
    assert caught.value.errors[0].startswith("$: not JSON")


def test_a_retry_sends_the_errors_back_and_budgets_both_rounds(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=10_000)])
    upstream.enqueue(Reply(text='{"name": "Ada"}'))
    upstream.enqueue(Reply(text='{"name": "Ada", "age": 36}'))
    response = proxy.chat("p", schema=PERSON, schema_retries=2, session_id="s")
    assert response.parsed == {"name": "Ada", "age": 36}
    _, second = chat_requests(upstream)
    assert second["messages"][-2] == {"role": "assistant", "content": '{"name": "Ada"}'}
    assert second["messages"][-1]["role"] == "user"
    assert "$: missing required property 'age'" in second["messages"][-1]["content"]
    usage = response.usage
    assert proxy.usage()[0].used == usage.total_tokens == upstream.billed_tokens
    assert [m.role for m in response.steps] == ["assistant", "user"]
    stored = [r.message.role for r in proxy.history.load("s")]
    assert stored == ["user", "assistant", "user", "assistant"]


def test_retries_are_bounded(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=10_000)])
    for _ in range(3):
        upstream.enqueue(Reply(text="{}"))
    with pytest.raises(SchemaError):
        proxy.chat("p", schema=PERSON, schema_retries=1)
    assert len(chat_requests(upstream)) == 2
    assert proxy.usage()[0].used == upstream.billed_tokens
    assert proxy.usage()[0].reserved == 0


def test_a_stream_delivers_text_and_the_parsed_value_last(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    upstream.enqueue(Reply(text='{"name": "Ada", "age": 36}'))
    events = list(make_proxy().stream("p", schema=PERSON))
    assert "".join(e.text for e in events) == '{"name": "Ada", "age": 36}'
    assert all(e.response is None for e in events[:-1])
    final = events[-1].response
    assert final is not None and final.parsed == {"name": "Ada", "age": 36}


async def test_an_async_stream_retries_then_parses(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    upstream.enqueue(Reply(text="nope"))
    upstream.enqueue(Reply(text='{"name": "Ada", "age": 1}'))
    events = [e async for e in make_proxy().astream("p", schema=PERSON, schema_retries=1)]
    final = events[-1].response
    assert final is not None and final.parsed == {"name": "Ada", "age": 1}
    assert final.text == '{"name": "Ada", "age": 1}'


async def test_achat_parses(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    response = await make_proxy().achat("p", schema=Movie)
    assert response.parsed == {"title": "", "year": 0}


def test_a_stream_whose_answer_does_not_fit_raises_and_stores_nothing(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=10_000)])
    upstream.enqueue(Reply(text='{"name": 1}'))
    with pytest.raises(SchemaError):
        for _ in proxy.stream("p", schema=PERSON, session_id="s"):
            pass
    assert proxy.history.load("s") == []
    assert proxy.usage()[0].reserved == 0 and proxy.usage()[0].used > 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"schema": int}, "schema"),
        ({"schema": {"type": "array"}}, "schema"),
        ({"schema": PERSON, "schema_retries": -1}, "schema_retries"),
        ({"schema": PERSON, "schema_retries": True}, "schema_retries"),
        ({"schema_retries": 2}, "schema"),
    ],
)
def test_bad_schema_options_are_refused_before_any_call(
    make_proxy: MakeProxy, upstream: FakeOpenAI, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        make_proxy().chat("p", **kwargs)
    assert caught.value.field == field
    assert chat_requests(upstream) == []


def test_a_class_field_with_no_schema_is_refused_by_name() -> None:
    @attrs.frozen
    class Bad:
        when: complex

    with pytest.raises(InvalidRequest, match="cannot derive a JSON schema"):
        output_spec(Bad)


def test_the_schema_counts_as_input_in_the_reservation(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=10_000)])
    seen: list[int] = []
    reserve = proxy.ledger.reserve

    def spy(claims: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["input_tokens"])
        return reserve(claims, **kwargs)

    proxy.ledger.reserve = spy  # type: ignore[method-assign]
    proxy.chat("p")
    proxy.chat("p", schema=Person)
    assert seen[1] > seen[0] + len(json.dumps(output_spec(Person).schema.schema)) // 8


def test_strict_schemas_pass_openais_strict_checks() -> None:
    for target in (Person, Point, Movie, PERSON):
        schema = output_spec(target).schema.schema
        assert strict_problem(strict_json_schema(schema)) is None
    assert strict_problem(PERSON) is not None


def test_minimal_instances_fit_their_schemas() -> None:
    for target in (Person, Point, Movie, PERSON):
        spec = output_spec(target)
        for schema in (spec.schema.schema, strict_json_schema(spec.schema.schema)):
            spec.parse(json.dumps(instance(schema)))  # raises if it does not fit
