"""A third party's provider, defined only here, found through its entry point, passes the contract.

The tiny distribution ``thirdparty-llm`` is laid out on ``sys.path`` (a dist-info directory with
an ``llmproxy`` entry point, as pip would install it). Its provider speaks the Chat Completions
wire format with nothing but the standard library (``http.client``), against FakeOpenAI.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from llmproxy import Proxy
from llmproxy.plugins import Plugins
from llmproxy.provider import Provider
from llmproxy.registry import ProviderSettings
from llmproxy.secret import Secret
from llmproxy_testing.fake_openai import FakeOpenAI, Fault
from llmproxy_testing.provider_contract import ProviderContract

KEY = "sk-3p-test-0123456789abcdefwxyz"

SOURCE = '''
    """thirdparty_llm: an llmproxy provider with no SDK, over http.client."""

    import asyncio
    import http.client
    import json
    import urllib.parse

    import llmproxy
    from llmproxy.errors import (
        MissingCredentials, ProviderAuthError, ProviderBadRequest, ProviderConnectionError,
        ProviderRateLimited, ProviderResponseError, ProviderTimeout, ProviderUnavailable,
    )
    from llmproxy.tokens import messages_upper_bound, text_upper_bound
    from llmproxy.types import Chunk, Completion, Message, ToolCall, Usage

    _END = object()


    def _usage(u):
        if not u:
            return None
        details = u.get("completion_tokens_details") or {}
        cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        return Usage(u["prompt_tokens"], u["completion_tokens"], cached,
                     details.get("reasoning_tokens") or 0)


    def _wire(m):
        out = {"role": m.role, "content": m.content}
        if m.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments}}
                for c in m.tool_calls
            ]
        if m.tool_call_id:
            out["tool_call_id"] = m.tool_call_id
        return out


    class ThirdPartyProvider:
        def __init__(self, name, api_key, base_url, timeout=10.0):
            self.name = name
            self._key = api_key
            url = urllib.parse.urlsplit(base_url)
            self._host, self._port, self._path = url.hostname, url.port, url.path.rstrip("/")
            self._timeout = timeout

        # -- one request ------------------------------------------------------------------
        def _send(self, request, stream):
            body = {"model": request.model, "messages": [_wire(m) for m in request.messages]}
            if request.max_output_tokens is not None:
                body["max_completion_tokens"] = request.max_output_tokens
            if stream:
                body["stream"] = True
                body["stream_options"] = {"include_usage": True}
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            try:
                conn.request("POST", self._path + "/chat/completions", json.dumps(body), {
                    "authorization": "Bearer " + self._key.get(),
                    "content-type": "application/json",
                })
                response = conn.getresponse()
            except TimeoutError:
                conn.close()
                raise ProviderTimeout("timed out", provider=self.name, model=request.model)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise ProviderConnectionError(type(exc).__name__, provider=self.name,
                                              model=request.model)
            if response.status >= 400:
                raw = response.read()
                conn.close()
                raise self._error(response, raw, request.model)
            return conn, response

        def _error(self, response, raw, model):
            try:
                message = json.loads(raw)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode("utf-8", "replace")
            status = response.status
            after = response.getheader("retry-after")
            cls = (ProviderAuthError if status in (401, 403) else
                   ProviderRateLimited if status == 429 else
                   ProviderUnavailable if status >= 500 else ProviderBadRequest)
            return cls(message, provider=self.name, model=model, status=status,
                       retry_after=float(after) if after else None)

        # -- the Provider protocol ------------------------------------------------------------
        def chat(self, request):
            conn, response = self._send(request, stream=False)
            try:
                raw = response.read()
            except (OSError, http.client.HTTPException) as exc:
                raise ProviderConnectionError(type(exc).__name__, provider=self.name,
                                              model=request.model)
            finally:
                conn.close()
            try:
                data = json.loads(raw)
                choice = data["choices"][0]
                wire = choice["message"]
            except (ValueError, KeyError, IndexError, TypeError):
                raise ProviderResponseError("not a chat completion", provider=self.name,
                                            model=request.model)
            calls = tuple(ToolCall(c["id"], c["function"]["name"], c["function"]["arguments"])
                          for c in wire.get("tool_calls") or ())
            message = Message("assistant", wire.get("content") or "", tool_calls=calls,
                              reasoning=wire.get("reasoning_content"))
            model = data.get("model") or request.model
            return Completion(message, _usage(data.get("usage")), model,
                              choice.get("finish_reason"), data.get("id"))

        async def achat(self, request):
            return await asyncio.to_thread(self.chat, request)

        def stream(self, request):
            conn, response = self._send(request, stream=True)
            calls, finished = {}, False
            try:
                while True:
                    try:
                        line = response.readline()
                    except (OSError, http.client.HTTPException) as exc:
                        raise ProviderConnectionError(type(exc).__name__, provider=self.name,
                                                      model=request.model)
                    if not line:
                        break
                    line = line.decode().strip()
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        return
                    try:
                        data = json.loads(payload)
                    except ValueError:
                        raise ProviderResponseError("bad event", provider=self.name,
                                                    model=request.model)
                    text = reasoning = ""
                    finish, done_calls = None, ()
                    for choice in data.get("choices") or ():
                        delta = choice.get("delta") or {}
                        text = delta.get("content") or ""
                        reasoning = delta.get("reasoning_content") or ""
                        for part in delta.get("tool_calls") or ():
                            entry = calls.setdefault(part.get("index", 0), ["", "", ""])
                            entry[0] = part.get("id") or entry[0]
                            entry[1] += (part.get("function") or {}).get("name") or ""
                            entry[2] += (part.get("function") or {}).get("arguments") or ""
                        finish = choice.get("finish_reason")
                        if finish:
                            finished = True
                            done_calls = tuple(ToolCall(*v) for _, v in sorted(calls.items()))
                    yield Chunk(text, reasoning, _usage(data.get("usage")), finish,
                                data.get("model"), done_calls, data.get("id"))
                if not finished:
                    raise ProviderConnectionError("the stream ended early", provider=self.name,
                                                  model=request.model)
            finally:
                conn.close()

        async def astream(self, request):
            iterator = await asyncio.to_thread(self.stream, request)
            try:
                while True:
                    chunk = await asyncio.to_thread(next, iterator, _END)
                    if chunk is _END:
                        return
                    yield chunk
            finally:
                await asyncio.to_thread(iterator.close)

        def count_tokens(self, messages, model):
            return messages_upper_bound(messages)

        def count_text_tokens(self, text, model):
            return text_upper_bound(text)

        def max_output_tokens(self, model):
            return None

        def close(self):
            pass  # every request closes its own connection

        async def aclose(self):
            pass


    def make(settings):
        key = settings.api_key or (llmproxy.Secret(settings.environ["THIRDPARTY_KEY"])
                                   if settings.environ.get("THIRDPARTY_KEY") else None)
        if not key:
            raise MissingCredentials(settings.name, ("THIRDPARTY_KEY",))
        base_url = settings.base_url or settings.environ.get("THIRDPARTY_URL", "")
        return ThirdPartyProvider(settings.name, key, base_url, settings.timeout or 10.0)


    @llmproxy.hookimpl
    def register_providers(register):
        register("thirdparty", make, description="a third party's provider",
                 env=("THIRDPARTY_KEY", "THIRDPARTY_URL"))
'''


def _install(site: Path) -> None:
    """Lay out an installed distribution (dist-info with an llmproxy entry point) on a path."""
    (site / "thirdparty_llm.py").write_text(textwrap.dedent(SOURCE))
    info = site / "thirdparty_llm-1.2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-llm\nVersion: 1.2.0\n")
    (info / "entry_points.txt").write_text("[llmproxy]\nthirdparty = thirdparty_llm\n")


@pytest.fixture
def plugins(tmp_path: Path) -> Iterator[Plugins]:
    """The plugins found with ``thirdparty-llm`` installed; it is uninstalled afterwards."""
    _install(tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        yield Plugins(environ={})
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("thirdparty_llm", None)


class TestThirdPartyProviderContract(ProviderContract):
    @pytest.fixture
    def upstream(self) -> Iterator[FakeOpenAI]:
        with FakeOpenAI(api_key=KEY) as server:
            yield server

    @pytest.fixture
    async def provider(self, plugins: Plugins, upstream: FakeOpenAI) -> AsyncIterator[Provider]:
        entry = plugins.registry.providers["thirdparty"]
        assert entry.plugin == "thirdparty"
        settings = ProviderSettings("thirdparty", api_key=Secret(KEY), base_url=upstream.base_url)
        provider = entry.factory(settings)
        yield provider
        await provider.aclose()

    @pytest.fixture
    def model(self) -> str:
        return "any-model"


def test_discovered_as_its_own_distribution_and_used_through_a_proxy(plugins: Plugins) -> None:
    info = next(i for i in plugins.infos() if i.name == "thirdparty")
    assert (info.distribution, info.version, info.error) == ("thirdparty-llm", "1.2.0", None)
    assert info.registers == ("provider thirdparty",)
    assert plugins.registry.providers["thirdparty"].env == ("THIRDPARTY_KEY", "THIRDPARTY_URL")
    with FakeOpenAI(api_key=KEY) as upstream:
        environ = {"THIRDPARTY_KEY": KEY, "THIRDPARTY_URL": upstream.base_url}
        retry = {"initial_backoff": 0.001, "jitter": 0.0}
        proxy = Proxy(
            {"retry": retry},
            plugins=plugins,
            environ=environ,
            history="memory://",
            ledger="memory://",
        )
        upstream.enqueue(Fault.status(429, retry_after=0.01))
        r = proxy.chat("Hello", model="thirdparty/any-model", session_id="s")
        assert (r.text, r.provider, r.usage.input_tokens) == ("Echo: Hello", "thirdparty", 7)
        with proxy.stream("Again", model="thirdparty/any-model", session_id="s") as stream:
            assert "".join(ev.text for ev in stream) == "Echo: Again"
        assert len(proxy.history.load("s")) == 4
        proxy.close()
