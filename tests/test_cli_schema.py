"""``llmproxy chat --schema``: the compact spec grammar, and end-to-end runs against the fake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmproxy.errors import InvalidRequest
from llmproxy.structured import parse_schema_spec
from llmproxy_testing._http import Reply
from llmproxy_testing.fake_openai import FakeOpenAI
from tests.conftest import chat_requests
from tests.test_cli import run

SCALARS = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
TYPES = [*SCALARS, *(f"list[{t}]" for t in SCALARS)]


def _expected(kind: str) -> dict[str, object]:
    if kind.startswith("list["):
        return {"type": "array", "items": {"type": SCALARS[kind[5:-1]]}}
    return {"type": SCALARS[kind]}


names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
fields = st.lists(
    st.tuples(names, st.sampled_from(TYPES)), min_size=1, max_size=8, unique_by=lambda f: f[0]
)


@given(fields, st.booleans(), st.booleans())
def test_any_fields_round_trip_through_the_spec(
    pairs: list[tuple[str, str]], lines: bool, omit_str: bool
) -> None:
    written = [n if omit_str and t == "str" else f"{n} {t}" for n, t in pairs]
    spec = ("\n" if lines else ", ").join(written)
    schema = parse_schema_spec(spec)
    assert list(schema["properties"]) == [n for n, _ in pairs]
    assert schema["properties"] == {n: _expected(t) for n, t in pairs}
    assert schema["required"] == [n for n, _ in pairs]
    assert schema["additionalProperties"] is False


def test_descriptions_and_defaults() -> None:
    schema = parse_schema_spec("name: the full name\nbio: a bio, short\nage int")
    assert schema["properties"] == {
        "name": {"type": "string", "description": "the full name"},
        "bio": {"type": "string", "description": "a bio, short"},
        "age": {"type": "integer"},
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("age integer", "unknown type 'integer'"),
        ("a, a int", "twice"),
        (" , ", "empty"),
        ("9lives int", "is not 'name"),
        ("tags list[dict]", "unknown type"),
    ],
)
def test_a_bad_spec_says_what_to_fix(spec: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message.replace("[", r"\[")) as caught:
        parse_schema_spec(spec)
    assert caught.value.field == "schema"


def test_chat_schema_spec_prints_the_json(env: dict[str, str], upstream: FakeOpenAI) -> None:
    upstream.enqueue(Reply(text='{"name": "Ada", "age": 36, "tags": ["math"]}'))
    result = run(["chat", "Who?", "--schema", "name, age int, tags list[str]"], env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"name": "Ada", "age": 36, "tags": ["math"]}
    sent = chat_requests(upstream)[0]["response_format"]["json_schema"]
    assert sent["schema"]["properties"]["tags"] == {"type": "array", "items": {"type": "string"}}


def test_chat_schema_file_with_a_retry(
    env: dict[str, str], upstream: FakeOpenAI, tmp_path: Path
) -> None:
    path = tmp_path / "city.json"
    path.write_text(
        json.dumps(
            {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            }
        )
    )
    upstream.enqueue(Reply(text='{"town": "Oslo"}'))
    upstream.enqueue(Reply(text='{"city": "Oslo"}'))
    result = run(["chat", "Where?", "--schema", str(path), "--schema-retries", "1"], env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"city": "Oslo"}
    assert len(chat_requests(upstream)) == 2


def test_chat_schema_that_does_not_fit_is_one_line(
    env: dict[str, str], upstream: FakeOpenAI
) -> None:
    upstream.enqueue(Reply(text="no JSON here"))
    result = run(["chat", "Who?", "--schema", "name"], env)
    assert result.returncode == 1
    assert result.stderr.startswith("llmproxy: the answer is not JSON")
    assert result.stderr.count("\n") == 1
    assert result.stdout == ""
