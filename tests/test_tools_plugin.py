"""Tools from plugins: a distribution registers tools through ``register_tools``; calls name them.

The distribution is laid out on ``sys.path`` (a dist-info with an ``llmproxy`` entry point), so
it is found the way an installed one is.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llmproxy import Proxy, hookimpl
from llmproxy.errors import InvalidRequest, PluginError
from llmproxy.plugins import Plugins
from llmproxy.registry import RegisterTool
from llmproxy.tools import Tool, tool
from llmproxy_testing.fake_openai import FakeOpenAI, Reply
from tests.conftest import chat_requests

TOOLS_PLUGIN = """
    import llmproxy
    from llmproxy.tools import tool

    CALLS = []

    @tool
    def world_clock(city: str) -> str:
        '''The local time in a city.

        Args:
            city: The city.
        '''
        CALLS.append(city)
        return f"It is noon in {city}."

    def shout(text: str) -> str:
        '''Upper-case a text.'''
        return text.upper()

    @llmproxy.hookimpl
    def register_tools(register):
        register(world_clock)
        register(shout)          # a plain function is made a tool from its hints
"""


def _install_dist(site: Path, dist: str, module: str, source: str, entry_name: str) -> None:
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-1.2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.0\n")
    (info / "entry_points.txt").write_text(f"[llmproxy]\n{entry_name} = {module}\n")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("thirdparty_")]:
            del sys.modules[name]


def test_a_tool_distribution_is_discovered_through_its_entry_point(site: Path) -> None:
    _install_dist(site, "thirdparty-clock", "thirdparty_clock", TOOLS_PLUGIN, "clock")
    plugins = Plugins(environ={})
    tools = plugins.registry.tools
    assert isinstance(tools["world_clock"], Tool)
    assert tools["world_clock"].description == "The local time in a city."
    assert tools["world_clock"].parameters["required"] == ["city"]
    assert tools["shout"].parameters["properties"] == {"text": {"type": "string"}}
    info = next(i for i in plugins.infos() if i.name == "clock")
    assert (info.distribution, info.version) == ("thirdparty-clock", "1.2.0")
    assert info.registers == ("tool world_clock", "tool shout")
    only_others = Plugins(environ={"LLMPROXY_PLUGINS": "openai"})
    assert "world_clock" not in only_others.registry.tools


def test_a_call_names_a_plugin_tool_and_the_loop_runs_it(
    site: Path, make_proxy: Callable[..., Proxy], upstream: FakeOpenAI
) -> None:
    _install_dist(site, "thirdparty-clock", "thirdparty_clock", TOOLS_PLUGIN, "clock")
    plugins = Plugins(environ={})
    proxy = make_proxy(plugins=plugins)
    upstream.enqueue(
        Reply(tool_calls=[{"id": "c1", "name": "world_clock", "arguments": {"city": "Hue"}}]),
        Reply(text="Noon in Hue."),
    )
    r = proxy.chat("What time is it in Hue?", tools=["world_clock"])
    assert r.text == "Noon in Hue."
    first, second = chat_requests(upstream)
    assert [t["function"]["name"] for t in first["tools"]] == ["world_clock"]
    assert second["messages"][-1]["content"] == "It is noon in Hue."
    assert sys.modules["thirdparty_clock"].CALLS == ["Hue"]
    with pytest.raises(InvalidRequest, match="registered: shout, world_clock"):
        proxy.chat("x", tools=["no_such_tool"])


def test_bad_or_clashing_tool_registrations_are_plugin_errors() -> None:
    class NotATool:
        @staticmethod
        @hookimpl
        def register_tools(register: RegisterTool) -> None:
            register({"name": "x"})

    class Clash1:
        @staticmethod
        @hookimpl
        def register_tools(register: RegisterTool) -> None:
            register(Tool("same"))

    class Clash2:
        @staticmethod
        @hookimpl
        def register_tools(register: RegisterTool) -> None:
            register(Tool("same"))

    class Opaque:
        pass

    class Underivable:
        @staticmethod
        @hookimpl
        def register_tools(register: RegisterTool) -> None:
            def f(x: Opaque) -> None:
                """No schema for Opaque."""

            register(f)

    plugins = Plugins(
        environ={"LLMPROXY_PLUGINS": ""}, extra=[NotATool, Clash1, Clash2, Underivable]
    )
    errors = {e.plugin: str(e) for e in plugins.errors if isinstance(e, PluginError)}
    assert "neither a llmproxy.tools.Tool nor a function" in errors["NotATool"]
    assert "registered by both 'Clash1' and 'Clash2'" in errors["Clash2"]
    assert "not valid" in errors["Underivable"]
    assert plugins.registry.tools["same"] == Tool("same")


def test_plugin_tools_answer_like_local_ones() -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    class Math:
        @staticmethod
        @hookimpl
        def register_tools(register: RegisterTool) -> None:
            register(add)

    registered = Plugins(environ={"LLMPROXY_PLUGINS": ""}, extra=[Math]).registry.tools["add"]
    assert json.loads(registered.run('{"a": 2, "b": 3}').output) == 5
    assert registered.run('{"a": "2"}').error
