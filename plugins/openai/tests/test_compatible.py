"""OpenAI-compatible servers declared in configuration alone: ``[providers.NAME]`` tables."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmproxy import CostBudget, LLMBudget, Proxy
from llmproxy.config import PRESETS, load_config
from llmproxy.errors import ConfigError, MissingCredentials
from llmproxy.registry import ProviderSettings
from llmproxy_openai.compatible import NO_KEY, OpenAICompatibleProvider
from llmproxy_testing._http import RecordedRequest, ResponseWriter
from llmproxy_testing.fake_openai import FakeOpenAI


@pytest.fixture
def keyed() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key="gsk-test") as server:
        yield server


@pytest.fixture
def local() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:  # a local server: takes any key, or none
        yield server


def tables(keyed: FakeOpenAI, local: FakeOpenAI) -> dict[str, Any]:
    return {
        "providers": {
            "groq": {
                "kind": "openai-compatible",
                "base_url": keyed.base_url,
                "api_key_env": "GROQ_API_KEY",
                "default_headers": {"x-team": "search"},
                "default_query": {"api-version": "2024-10-21"},
                "prices": {"llama-3.3-70b": {"input": 1.0, "output": 2.0}},
                "max_output_tokens": {"llama-3.3-70b": 50},
            },
            "ollama": {"kind": "openai-compatible", "base_url": local.base_url},
        }
    }


def make_proxy(keyed: FakeOpenAI, local: FakeOpenAI, **kwargs: Any) -> Proxy:
    return Proxy(
        tables(keyed, local),
        environ={"GROQ_API_KEY": "gsk-test"},
        history="memory://",
        ledger="memory://",
        **kwargs,
    )


def test_chat_sends_key_headers_and_query(keyed: FakeOpenAI, local: FakeOpenAI) -> None:
    with make_proxy(keyed, local) as proxy:
        answer = proxy.chat("hello there", model="groq/llama-3.3-70b", use_history=False)
    assert answer.text == "Echo: hello there"
    sent = keyed.last_request
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer gsk-test"
    assert sent.headers["x-team"] == "search"
    assert sent.query == {"api-version": "2024-10-21"}
    body = json.loads(sent.body)
    assert body["model"] == "llama-3.3-70b"


@pytest.mark.parametrize("async_http", ["aiohttp", "httpx"])
def test_keyless_local_server_sends_no_authorization(
    keyed: FakeOpenAI, local: FakeOpenAI, async_http: str
) -> None:
    async def go(proxy: Proxy) -> tuple[str, str]:
        answer = await proxy.achat("async hi", model="ollama/m", use_history=False)
        parts = [ev.text or "" async for ev in proxy.astream("async s", model="ollama/m")]
        await proxy.aembed(["a text"], model="ollama/nomic-embed-text")
        return answer.text, "".join(parts)

    config = tables(keyed, local)
    config["providers"]["ollama"]["async_http"] = async_http
    proxy = Proxy(config, environ={}, history="memory://", ledger="memory://")
    with proxy:
        answer = proxy.chat("hi local", model="ollama/llama3.3", use_history=False)
        text = "".join(ev.text or "" for ev in proxy.stream("streamed", model="ollama/llama3.3"))
        proxy.embed(["a text"], model="ollama/nomic-embed-text")
        assert (answer.text, text) == ("Echo: hi local", "Echo: streamed")
        assert asyncio.run(go(proxy)) == ("Echo: async hi", "Echo: async s")
    assert [r.path for r in local.requests] == [
        *["/v1/chat/completions"] * 2,
        "/v1/embeddings",
        *["/v1/chat/completions"] * 2,
        "/v1/embeddings",
    ]
    for sent in local.requests:
        assert "authorization" not in sent.headers
        assert NO_KEY not in json.dumps(sent.headers)
        assert "x-team" not in sent.headers and sent.query == {}
    assert keyed.requests == []


@pytest.mark.parametrize("mode", ["chat", "astream", "aembed"])
def test_openai_account_headers_of_the_process_stay_home(
    keyed: FakeOpenAI, local: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    # The SDK fills OpenAI-Organization and OpenAI-Project from the process environment.
    monkeypatch.setenv("OPENAI_ORG_ID", "org-process")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-process")

    async def go(proxy: Proxy) -> None:
        if mode == "astream":
            [ev async for ev in proxy.astream("hi", model="groq/llama-3.3-70b")]
        else:
            await proxy.aembed(["a text"], model="groq/nomic-embed-text")

    with make_proxy(keyed, local) as proxy:
        if mode == "chat":
            proxy.chat("hi", model="groq/llama-3.3-70b", use_history=False)
        else:
            asyncio.run(go(proxy))
    [sent] = keyed.requests
    assert "openai-organization" not in sent.headers
    assert "openai-project" not in sent.headers
    assert sent.headers["authorization"] == "Bearer gsk-test"
    assert sent.headers["x-team"] == "search"


def test_a_keyless_table_may_set_its_own_authorization(local: FakeOpenAI) -> None:
    table = {
        "kind": "openai-compatible",
        "base_url": local.base_url,
        "default_headers": {"Authorization": "Token abc"},
    }
    proxy = Proxy({"providers": {"gw": table}}, environ={}, history="memory://", ledger="memory://")
    with proxy:
        proxy.chat("hi", model="gw/m", use_history=False)
        proxy.chat("hi", model="gw/m", use_history=False, extra_headers={"Authorization": "T x"})
    first, second = local.requests
    assert first.headers["authorization"] == "Token abc"
    assert second.headers["authorization"] == "T x"  # a call's own header wins


class FakeAzure(FakeOpenAI):
    """Azure OpenAI's wire: ``api-key`` header, ``api-version`` query, deployment URLs."""

    prefix = "/openai/deployments/my-deployment"

    async def dispatch(self, request: RecordedRequest, response: ResponseWriter) -> None:
        if request.headers.get("api-key") != "azure-key-123" or "api-version" not in request.query:
            self.send_error(response, 401, "Access denied due to invalid subscription key.")
            return
        path = "/v1" + request.path.removeprefix(self.prefix)
        await super().dispatch(dataclasses.replace(request, path=path), response)


@pytest.mark.parametrize("mode", ["chat", "astream"])
def test_azure_preset_sends_api_key_header_and_version(mode: str) -> None:
    with FakeAzure() as server:
        table = {
            "kind": "openai-compatible",
            "preset": "azure",
            "base_url": server.base_url.removesuffix("/v1") + FakeAzure.prefix,
        }
        proxy = Proxy(
            {"providers": {"azure": table}},
            environ={"AZURE_OPENAI_API_KEY": "azure-key-123"},
            history="memory://",
            ledger="memory://",
        )
        with proxy:
            if mode == "chat":
                text = proxy.chat("hi azure", model="azure/gpt-5.4", use_history=False).text
            else:

                async def go() -> str:
                    stream = proxy.astream("hi azure", model="azure/gpt-5.4", use_history=False)
                    return "".join([ev.text or "" async for ev in stream])

                text = asyncio.run(go())
        assert text == "Echo: hi azure"
        [sent] = server.requests
        assert sent.path == "/openai/deployments/my-deployment/chat/completions"
        assert sent.query == {"api-version": "2024-10-21"}
        assert sent.headers["api-key"] == "azure-key-123"
        assert "authorization" not in sent.headers


def test_azure_preset_needs_its_url_and_key() -> None:
    with pytest.raises(ConfigError, match=r"providers\.azure\.base_url"):
        load_config({"providers": {"azure": {"kind": "openai-compatible", "preset": "azure"}}})
    table = {"kind": "openai-compatible", "preset": "azure", "base_url": "http://127.0.0.1:9"}
    proxy = Proxy(
        {"providers": {"azure": table}}, environ={}, history="memory://", ledger="memory://"
    )
    with proxy, pytest.raises(MissingCredentials, match="AZURE_OPENAI_API_KEY"):
        proxy.chat("hi", model="azure/gpt-5.4")
    with pytest.raises(ConfigError, match="api_key_header needs a key"):
        OpenAICompatibleProvider(name="x", base_url="http://127.0.0.1:9", api_key_header="api-key")


def test_a_key_in_another_header_is_redacted_from_errors() -> None:
    with FakeAzure() as server:
        provider = OpenAICompatibleProvider(
            name="azure",
            base_url=server.base_url,
            api_key="azure-key-123",
            api_key_header="api-key",
        )
        assert provider.omits_authorization
        error = provider.map_error(ValueError("bad azure-key-123"), "m")
        provider.close()
    assert "azure-key-123" not in str(error)


def test_async_chat_and_stream(keyed: FakeOpenAI, local: FakeOpenAI) -> None:
    async def go(proxy: Proxy) -> tuple[str, str]:
        answer = await proxy.achat("async hi", model="groq/llama-3.3-70b", use_history=False)
        parts = [ev.text or "" async for ev in proxy.astream("async s", model="ollama/m")]
        return answer.text, "".join(parts)

    with make_proxy(keyed, local) as proxy:
        assert asyncio.run(go(proxy)) == ("Echo: async hi", "Echo: async s")
    assert keyed.last_request.query == {"api-version": "2024-10-21"}
    assert keyed.last_request.headers["x-team"] == "search"


def test_table_prices_and_output_limit_drive_budgets(keyed: FakeOpenAI, local: FakeOpenAI) -> None:
    with make_proxy(keyed, local, budgets=[CostBudget(max_usd=10)]) as proxy:
        answer = proxy.chat("one two three", model="groq/llama-3.3-70b", use_history=False)
        [usage] = proxy.usage()
    body = json.loads(keyed.last_request.body)
    assert body["max_tokens"] == 50  # the table's limit caps what the budget reserves
    u = answer.usage
    assert u is not None
    assert usage.used == pytest.approx((u.input_tokens * 1.0 + u.output_tokens * 2.0) / 1e6)
    provider = OpenAICompatibleProvider(name="x", base_url=local.base_url)
    assert provider.max_output_tokens("anything") is None


def test_output_limit_caps_token_budget(keyed: FakeOpenAI, local: FakeOpenAI) -> None:
    with make_proxy(keyed, local, budgets=[LLMBudget(max_tokens=100_000)]) as proxy:
        proxy.chat("hi", model="groq/llama-3.3-70b", use_history=False)
    body = json.loads(keyed.last_request.body)
    assert body["max_tokens"] == 50 and "max_completion_tokens" not in body


def test_missing_key_variable_names_it(keyed: FakeOpenAI, local: FakeOpenAI) -> None:
    proxy = Proxy(tables(keyed, local), environ={}, history="memory://", ledger="memory://")
    with proxy, pytest.raises(MissingCredentials, match="GROQ_API_KEY"):
        proxy.chat("hi", model="groq/llama-3.3-70b")


def test_environment_form(local: FakeOpenAI, tmp_path: Path) -> None:
    environ = {
        "LLMPROXY_PROVIDERS__LMSTUDIO__KIND": "openai-compatible",
        "LLMPROXY_PROVIDERS__LMSTUDIO__BASE_URL": local.base_url,
        "LLMPROXY_PROVIDERS__LMSTUDIO__DEFAULT_QUERY": '{"api-version": "v1"}',
        "LLMPROXY_PROVIDERS__LMSTUDIO__MAX_OUTPUT_TOKENS": '{"qwen": 7}',
        "LLMPROXY_DATA_DIR": str(tmp_path),
    }
    with Proxy.from_env(environ=environ, history="memory://", ledger="memory://") as proxy:
        proxy.chat("from env", model="lmstudio/qwen", use_history=False, max_output_tokens=99)
    sent = local.last_request
    assert sent.query == {"api-version": "v1"}
    assert json.loads(sent.body)["model"] == "qwen"


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "llmproxy.toml"
    path.write_text('[providers.groq]\nkind = "openai-compatible"\npreset = "groq"\n')
    config = load_config(
        path=path,
        environ={"LLMPROXY_PROVIDERS__GROQ__BASE_URL": "http://127.0.0.1:9/v1"},
    )
    table = config.providers["groq"]
    assert table["base_url"] == "http://127.0.0.1:9/v1"
    assert table["api_key_env"] == "GROQ_API_KEY"  # from the preset


@pytest.mark.parametrize(
    ("preset", "url", "key"),
    [
        ("ollama", "http://localhost:11434/v1", None),
        ("vllm", "http://localhost:8000/v1", None),
        ("lmstudio", "http://localhost:1234/v1", None),
        ("openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
        ("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
        ("together", "https://api.together.xyz/v1", "TOGETHER_API_KEY"),
    ],
)
def test_presets(preset: str, url: str, key: str | None) -> None:
    config = load_config({"providers": {"p": {"kind": "openai-compatible", "preset": preset}}})
    assert config.providers["p"]["base_url"] == url
    assert config.providers["p"].get("api_key_env") == key
    environ = {key: "k-123"} if key else {}
    provider = OpenAICompatibleProvider.from_settings(
        ProviderSettings("p", options=config.providers["p"], base_url=url, environ=environ)
    )
    assert provider.base_url == url
    assert provider.omits_authorization == (key is None)


README = Path(__file__).parents[3] / "README.md"


def readme_tables() -> dict[str, dict[str, Any]]:
    """The ``[providers.*]`` tables of the README's preset listings, parsed as TOML."""
    text = README.read_text()
    start = text.index("### Any OpenAI-compatible server")
    end = min(text.index("\n## ", start), text.index("\n### ", start + 1))
    blocks = re.findall(r"```toml\n(.*?)```", text[start:end], flags=re.S)
    tables: dict[str, dict[str, Any]] = {}
    for block in blocks:
        tables.update(tomllib.loads(block).get("providers", {}))
    return tables


def test_readme_presets_are_what_the_code_fills_in() -> None:
    # Each preset is written out in the README exactly as preset = "NAME" fills it in.
    tables = readme_tables()
    assert set(tables) == set(PRESETS)
    for name, preset in PRESETS.items():
        for key, value in preset.items():
            assert tables[name][key] == value, (name, key)
        extra = set(tables[name]) - set(preset) - {"kind", "base_url"}
        assert not extra, (name, extra)
        parsed = load_config({"providers": {name: tables[name]}}).providers[name]
        assert parsed["kind"] == "openai-compatible"


def test_preset_through_the_proxy(local: FakeOpenAI) -> None:
    table = {"kind": "openai-compatible", "preset": "ollama", "base_url": local.base_url}
    with Proxy(
        {"providers": {"ollama": table}}, environ={}, history="memory://", ledger="memory://"
    ) as proxy:
        assert proxy.chat("p", model="ollama/llama3.3", use_history=False).text == "Echo: p"


@pytest.mark.parametrize(
    ("table", "path"),
    [
        ({"kind": "openai-compatible"}, "providers.x.base_url"),
        ({"kind": "openai-compatible", "base_url": 3}, "providers.x.base_url"),
        ({"kind": "anthropic-compatible", "base_url": "u"}, "providers.x.kind"),
        ({"kind": "openai-compatible", "preset": "nope"}, "providers.x.preset"),
        (
            {"kind": "openai-compatible", "base_url": "u", "api_key_env": 5},
            "providers.x.api_key_env",
        ),
        (
            {"kind": "openai-compatible", "base_url": "u", "default_headers": {"a": 1}},
            "providers.x.default_headers",
        ),
        (
            {"kind": "openai-compatible", "base_url": "u", "default_query": "api-version=1"},
            "providers.x.default_query",
        ),
        (
            {"kind": "openai-compatible", "base_url": "u", "max_output_tokens": {"m": -1}},
            "providers.x.max_output_tokens.m",
        ),
        (
            {"kind": "openai-compatible", "base_url": "u", "prices": {"m": 1.0}},
            "providers.x.prices.m",
        ),
        (
            {"kind": "openai-compatible", "base_url": "u", "prices": {"m": {"input": "a"}}},
            "providers.x.prices.m",
        ),
    ],
)
def test_bad_tables_name_the_key(table: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        load_config({"providers": {"x": table}})


def test_bad_environment_variables() -> None:
    with pytest.raises(ConfigError, match="LLMPROXY_PROVIDERS__X__DEFAULT_QUERY"):
        load_config(environ={"LLMPROXY_PROVIDERS__X__DEFAULT_QUERY": "{oops"})
    with pytest.raises(ConfigError, match="NAME__KEY"):
        load_config(environ={"LLMPROXY_PROVIDERS__X": "y"})


def test_tables_without_kind_are_left_to_their_plugin() -> None:
    config = load_config({"providers": {"openai": {"organization": "org-1"}}})
    assert config.providers["openai"] == {"organization": "org-1"}


@pytest.mark.parametrize("mode", ["stream", "astream"])
def test_a_server_that_omits_stream_usage_is_counted_from_what_arrived(mode: str) -> None:
    """``stream_options.include_usage`` ignored: the usage is an estimate, an upper bound of the
    server's own count, and the token budget is settled with it (nothing left held)."""
    prompt = "Count the words of this sentence, please, all of them."
    with FakeOpenAI(stream_usage=False) as server:
        proxy = Proxy(
            {"providers": {"vllm": {"kind": "openai-compatible", "base_url": server.base_url}}},
            environ={},
            history="memory://",
            ledger="memory://",
            budgets=[LLMBudget(max_tokens=100_000)],
        )
        with proxy:
            whole = proxy.chat(prompt, model="vllm/llama3.3", use_history=False)
            reported = whole.usage  # a whole answer always carries the server's count
            assert not reported.estimated and reported.input_tokens and reported.output_tokens
            if mode == "stream":
                events = list(proxy.stream(prompt, model="vllm/llama3.3", use_history=False))
            else:

                async def collect() -> list[Any]:
                    stream = proxy.astream(prompt, model="vllm/llama3.3", use_history=False)
                    return [ev async for ev in stream]

                events = asyncio.run(collect())
            [budget] = proxy.usage()
        body = json.loads(server.last_request.body)
    assert body["stream_options"] == {"include_usage": True}  # asked, and ignored
    assert "".join(ev.text or "" for ev in events) == whole.text
    final = events[-1]
    assert final.done and final.usage is not None
    usage = final.usage
    assert usage.estimated
    # Upper bounds of what the server counted, and plausible ones: no more tokens than the
    # text has bytes (plus, for the input, the message's framing and the input margin), not
    # the budget's room or the model's output limit.
    assert reported.input_tokens <= usage.input_tokens <= 2 * len(prompt.encode())
    assert reported.output_tokens <= usage.output_tokens <= len(whole.text.encode())
    # The budget settled both calls with what they used: nothing is left held.
    assert budget.reserved == 0
    assert budget.used == reported.total_tokens + usage.total_tokens
