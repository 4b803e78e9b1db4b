"""The seed's assistant tools, as its documentation writes them, against FakeOpenAI.

The seed's example (``llm_proxy_doc``, "Assistant tools") is copied below as written but for
its imports and the ``...`` it leaves for the config's other arguments (the key, the fake's URL
and the vector stores the seed's assistant had attached). OpenAI's Assistants API is gone: the
file search now goes to the Responses API, and the function runs in the Proxy's tool-call loop.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import pytest

from llmproxy.errors import ConfigError
from llmproxy.tools import HostedTool, Tool
from llmproxy_openai import (
    OpenAICodeInterpreter,
    OpenAIFileSearch,
    OpenAIFunctionCall,
    OpenAILLMConfig,
    OpenAIService,
)
from llmproxy_openai.tools import core_tools
from llmproxy_testing.fake_openai import FakeOpenAI, Reply


@pytest.fixture
def environ(server: FakeOpenAI) -> dict[str, str]:
    return {"LLMPROXY_HISTORY_URL": "memory://", "LLMPROXY_LEDGER_URL": "memory://"}


@pytest.fixture
async def make_service(environ: dict[str, str]) -> AsyncIterator[Callable[..., OpenAIService]]:
    made: list[OpenAIService] = []

    def make(config: OpenAILLMConfig, **kwargs: Any) -> OpenAIService:
        service = OpenAIService(config, environ=environ, **kwargs)
        made.append(service)
        return service

    yield make
    for service in made:
        await service.aclose()


def bodies(server: FakeOpenAI) -> list[tuple[str, dict[str, Any]]]:
    return [(r.path, r.json()) for r in server.requests if r.method == "POST"]


# --------------------------------------------------------------------------- the seed's example


def get_weather_today_assistant_func(location):  # type: ignore[no-untyped-def]
    # call a weather API
    return 'The weather today is ...'  # fmt: skip


def seed_config(api_key: str, base_url: str) -> OpenAILLMConfig:
    """The seed's ``LLM_OPEN_AI_BUDDY_WEB_CONFIG``, its ``...`` filled in."""
    LLM_OPEN_AI_BUDDY_WEB_CONFIG = OpenAILLMConfig(
        api_key=api_key, base_url=base_url, vector_store_ids=["vs_buddy_web"],
        tools=[
            OpenAIFileSearch(enable=True),
            OpenAICodeInterpreter(enable=False),
            OpenAIFunctionCall(
                enable=False,
                name="get_weather_today",
                description="Get today's weather",
                parameters={
                    "type": "object",
                    "properties": {
                        "location": {"type": "string", "description": "Place to get the weather for"}  # noqa: E501
                    },
                    "required": ["location"],
                },
                instance_function=get_weather_today_assistant_func,
            ),
        ],
    )  # fmt: skip
    return LLM_OPEN_AI_BUDDY_WEB_CONFIG


async def test_the_seed_example_as_written_searches_its_files(
    make_service: Callable[..., OpenAIService], server: FakeOpenAI, api_key: str
) -> None:
    service = make_service(seed_config(api_key, server.base_url))
    server.enqueue(
        Reply(
            text="Take an umbrella today.",
            hosted_outputs=[{"type": "file_search_call", "queries": ["weather today"]}],
            citations=[{"type": "file_citation", "file_id": "file-w", "filename": "weather.md"}],
        )
    )
    response = await service.chat("What is the weather today?")
    assert str(response) == "Take an umbrella today."
    assert [c.filename for c in response.message.citations] == ["weather.md"]
    assert [h.type for h in response.message.hosted_outputs] == ["file_search_call"]
    [(path, body)] = bodies(server)
    assert path == "/v1/responses"
    # Only the enabled tool is sent: the code interpreter and the function are off.
    assert body["tools"] == [{"type": "file_search", "vector_store_ids": ["vs_buddy_web"]}]
    assert body["include"] == ["file_search_call.results"]


async def test_the_seed_example_with_its_function_on_runs_the_weather_loop(
    make_service: Callable[..., OpenAIService], server: FakeOpenAI, api_key: str
) -> None:
    config = seed_config(api_key, server.base_url)
    function = config.tools[2]
    assert isinstance(function, OpenAIFunctionCall)
    function.enable = True
    service = make_service(config)
    server.enqueue(
        Reply(
            tool_calls=[
                {"id": "call_w", "name": "get_weather_today", "arguments": {"location": "Hanoi"}}
            ]
        ),
        Reply(text="Today in Hanoi: The weather today is ..."),
    )
    response = await service.chat("What is the weather in Hanoi today?")
    assert str(response) == "Today in Hanoi: The weather today is ..."
    (_, first), (_, second) = bodies(server)
    function = next(t for t in first["tools"] if t["type"] == "function")
    assert function["name"] == "get_weather_today"
    assert function["description"] == "Get today's weather"
    assert function["parameters"]["required"] == ["location"]
    assert second["input"][-1] == {
        "type": "function_call_output",
        "call_id": "call_w",
        "output": "The weather today is ...",
    }
    # The tool round is part of the conversation that history keeps.
    stored = [r.message.role for r in service.proxy.history.load(config.session_id)]
    assert stored == ["user", "assistant", "tool", "assistant"]


# --------------------------------------------------------------------------- through the service


async def test_function_tools_alone_stay_on_chat_completions_and_stream(
    make_service: Callable[..., OpenAIService], server: FakeOpenAI, api_key: str
) -> None:
    async def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    config = OpenAILLMConfig(
        api_key=api_key,
        base_url=server.base_url,
        use_message=False,
        tools=[OpenAIFunctionCall(instance_function=add)],
        tool_choice="add",
    )
    service = make_service(config)
    call = {"id": "call_1", "name": "add", "arguments": {"a": 2, "b": 3}}
    server.enqueue(Reply(tool_calls=[call]), Reply(text="It is 5."))
    chunks = [c async for c in service.chat_stream("2 + 3?")]
    assert "".join(chunks) == "It is 5."
    (path, first), (_, second) = bodies(server)
    assert path == "/v1/chat/completions"
    assert first["tools"][0]["function"]["parameters"]["properties"] == {
        "a": {"type": "integer"},
        "b": {"type": "integer"},
    }
    assert first["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    assert second["messages"][-1]["content"] == "5"
    server.enqueue(Reply(tool_calls=[call]), Reply(text="Five."))
    assert str(service.chat_sync("again")) == "Five."  # the async tool, from sync code
    assert bodies(server)[-1][1]["messages"][-1]["content"] == "5"


async def test_tools_checked_again_before_a_call(
    make_service: Callable[..., OpenAIService], server: FakeOpenAI, api_key: str
) -> None:
    config = seed_config(api_key, server.base_url)
    service = make_service(config)
    config.vector_store_ids = None  # changed after construction: caught before any request
    with pytest.raises(ConfigError) as info:
        await service.chat("hello")
    assert info.value.path == "tools[0].vector_store_ids"
    assert server.requests == []


async def test_api_responses_on_the_config(
    make_service: Callable[..., OpenAIService], server: FakeOpenAI, api_key: str
) -> None:
    service = make_service(
        OpenAILLMConfig(api_key=api_key, base_url=server.base_url, api="responses")
    )
    assert str(await service.chat("Hi")) == "Echo: Hi"
    assert [p for p, _ in bodies(server)] == ["/v1/responses"]


# --------------------------------------------------------------------------- the classes


def test_file_search_without_vector_stores_is_a_config_error_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="vector_store_ids") as info:
        OpenAILLMConfig(api_key="sk-x", tools=[OpenAIFileSearch(enable=True)])
    assert info.value.path == "tools[0].vector_store_ids"
    with pytest.raises(ConfigError) as later:
        OpenAILLMConfig(tools=[OpenAICodeInterpreter(), OpenAIFileSearch(vector_store_ids=[])])
    assert later.value.path == "tools[1].vector_store_ids"
    # Disabled, it needs nothing.
    assert OpenAILLMConfig(tools=[OpenAIFileSearch(enable=False)]).core_tools() == ()


def test_function_call_without_a_callable_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="callable instance_function") as info:
        OpenAILLMConfig(tools=[OpenAIFunctionCall(name="f", instance_function=None)])
    assert info.value.path == "tools[0].instance_function"
    with pytest.raises(ConfigError) as bad_name:
        OpenAILLMConfig(tools=[OpenAIFunctionCall(name="no spaces", instance_function=print)])
    assert bad_name.value.path == "tools[0].name"
    with pytest.raises(ConfigError, match="both named 'f'") as twice:
        OpenAILLMConfig(
            tools=[
                OpenAIFunctionCall(name="f", instance_function=print),
                OpenAIFunctionCall(name="f", instance_function=print),
            ]
        )
    assert twice.value.path == "tools[1].name"
    assert OpenAILLMConfig(tools=[OpenAIFunctionCall(enable=False)]).core_tools() == ()


def test_unknown_tool_kinds_and_raw_hosted_tools_are_checked() -> None:
    with pytest.raises(ConfigError, match="got dict") as info:
        OpenAILLMConfig(tools=[{"type": "file_search"}])  # type: ignore[list-item]
    assert info.value.path == "tools[0]"
    with pytest.raises(ConfigError) as hosted:
        OpenAILLMConfig(tools=[Tool("t"), HostedTool("file_search")])
    assert hosted.value.path == "tools[1].vector_store_ids"


def test_the_seed_classes_become_core_tools() -> None:
    def lookup(word: str, limit: int = 3) -> list[str]:
        """Look a word up.

        Args:
            word: The word.
            limit: How many senses.
        """
        return [word] * limit

    tools = core_tools(
        [
            OpenAIFileSearch(vector_store_ids=["vs_1"], max_num_results=5),
            OpenAIFileSearch(),
            OpenAICodeInterpreter(),
            OpenAICodeInterpreter(file_ids=["file-1"]),
            OpenAICodeInterpreter(container="cntr_abc"),
            OpenAICodeInterpreter(container={"type": "auto", "memory_limit": "4g"}),
            OpenAIFunctionCall(instance_function=lookup, timeout=5.0),
        ],
        vector_store_ids=["vs_default"],
    )
    assert [t.wire() for t in tools if isinstance(t, HostedTool)] == [
        {"type": "file_search", "vector_store_ids": ["vs_1"], "max_num_results": 5},
        {"type": "file_search", "vector_store_ids": ["vs_default"]},
        {"type": "code_interpreter", "container": {"type": "auto"}},
        {"type": "code_interpreter", "container": {"type": "auto", "file_ids": ["file-1"]}},
        {"type": "code_interpreter", "container": "cntr_abc"},
        {"type": "code_interpreter", "container": {"type": "auto", "memory_limit": "4g"}},
    ]
    function = tools[-1]
    assert isinstance(function, Tool)
    assert (function.name, function.description, function.timeout) == (
        "lookup",
        "Look a word up.",
        5.0,
    )
    assert function.parameters["properties"]["limit"] == {
        "type": "integer",
        "description": "How many senses.",
        "default": 3,
    }
    assert json.loads(function.run('{"word": "hi", "limit": 2}').output) == ["hi", "hi"]
    with pytest.raises(ConfigError) as bad:
        core_tools([OpenAIFileSearch(vector_store_ids=["v"], max_num_results=99)])
    assert bad.value.path == "tools[0].max_num_results"
    with pytest.raises(ConfigError) as container:
        core_tools([OpenAICodeInterpreter(container="")])
    assert container.value.path == "tools[0].container"


@pytest.mark.parametrize("kind", ["file", "code", "function"])
def test_the_seed_classes_are_exported(kind: Literal["file", "code", "function"]) -> None:
    import llmproxy_openai

    name = {"file": "OpenAIFileSearch", "code": "OpenAICodeInterpreter"}.get(
        kind, "OpenAIFunctionCall"
    )
    assert name in llmproxy_openai.__all__
