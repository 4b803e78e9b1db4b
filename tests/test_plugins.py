"""Plugin discovery: entry points from outside the repo, LLMPROXY_PLUGINS, failures named."""

from __future__ import annotations

import re
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmproxy import PluginError, Proxy, hookimpl
from llmproxy.plugins import Plugins
from llmproxy.registry import RegisterProvider


def _install_dist(site: Path, dist: str, module: str, source: str, entry_name: str) -> None:
    """Lay out an installed distribution (dist-info with an llmproxy entry point) on a path."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-0.3.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3.0\n")
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


GOOD = """
    import llmproxy
    from llmproxy.types import Completion, Message, Usage

    class EchoProvider(llmproxy.BaseProvider):
        async def achat(self, request):
            text = "3p: " + request.messages[-1].content
            return Completion(Message("assistant", text), Usage(1, 1), request.model)

    @llmproxy.hookimpl
    def register_providers(register):
        register("echo3p", EchoProvider, description="third-party echo")
"""

BROKEN = """
    raise ImportError("this plugin is broken on purpose")
"""


def test_third_party_provider_discovered_through_its_entry_point(site: Path) -> None:
    _install_dist(site, "thirdparty-echo", "thirdparty_echo", GOOD, "echo3p")
    plugins = Plugins(environ={})
    assert "echo3p" in plugins.registry.providers
    info = next(i for i in plugins.infos() if i.name == "echo3p")
    assert (info.distribution, info.version) == ("thirdparty-echo", "0.3.0")
    assert info.registers == ("provider echo3p",)
    proxy = Proxy({"history_url": "memory://"}, plugins=plugins, environ={})
    assert proxy.chat("hi", model="echo3p/any").text == "3p: hi"


def test_the_plugin_that_opens_the_docs_installs_and_answers(tmp_path: Path) -> None:
    """docs/plugins.md's first example, as written there, installed as a distribution."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").read_text()
    module_source = re.search(r"```python\n(.*?)```", doc, re.S)
    entry_points = re.search(r"```toml\n(.*?)```", doc, re.S)
    assert module_source is not None and entry_points is not None
    assert doc.index(module_source.group(0)) < doc.index("## Hooks")  # it opens the page
    assert len((module_source.group(1) + entry_points.group(1)).splitlines()) < 15
    group = tomllib.loads(entry_points.group(1))["project"]["entry-points"]["llmproxy"]
    [(entry_name, module)] = group.items()
    (tmp_path / f"{module}.py").write_text(module_source.group(1))
    info = tmp_path / "llmproxy_echo-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: llmproxy-echo\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[llmproxy]\n{entry_name} = {module}\n")
    sys.path.insert(0, str(tmp_path))
    try:
        plugins = Plugins(environ={})
        assert plugins.errors == []
        info_ = next(i for i in plugins.infos() if i.name == entry_name)
        assert (info_.distribution, info_.registers) == ("llmproxy-echo", ("provider echo",))
        proxy = Proxy(plugins=plugins, environ={}, history="memory://", ledger="memory://")
        try:
            assert proxy.chat("hi", model="echo/x").text == "hi"
        finally:
            proxy.close()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module, None)


def test_broken_plugin_is_named_and_does_not_hide_others(site: Path) -> None:
    _install_dist(site, "thirdparty-broken", "thirdparty_broken", BROKEN, "broken3p")
    _install_dist(site, "thirdparty-echo", "thirdparty_echo", GOOD, "echo3p")
    plugins = Plugins(environ={})
    assert "echo3p" in plugins.registry.providers
    assert "openai" in plugins.registry.providers
    [error] = [e for e in plugins.errors if e.plugin == "broken3p"]
    assert (
        "broken3p" in str(error)
        and "thirdparty-broken" in str(error)
        and "broken on purpose" in str(error)
    )
    info = next(i for i in plugins.infos() if i.name == "broken3p")
    assert info.error is not None
    proxy = Proxy({"history_url": "memory://"}, plugins=plugins, environ={})
    with pytest.raises(PluginError, match="broken3p"):
        proxy.chat("hi", model="broken3p/model")


def test_llmproxy_plugins_limits_what_loads(site: Path) -> None:
    _install_dist(site, "thirdparty-echo", "thirdparty_echo", GOOD, "echo3p")
    only = Plugins(environ={"LLMPROXY_PLUGINS": "thirdparty-echo"})
    assert set(only.registry.providers) == {"echo3p"}
    by_entry_name = Plugins(environ={"LLMPROXY_PLUGINS": "openai, echo3p"})
    # openai also registers openai-compatible, which serves [providers.NAME] tables of that kind
    assert set(by_entry_name.registry.providers) == {"openai", "openai-compatible", "echo3p"}
    none = Plugins(environ={"LLMPROXY_PLUGINS": ""})
    assert none.registry.providers == {}
    assert "sqlite" in none.registry.history_stores  # built-ins always load


def test_a_name_in_llmproxy_plugins_that_matches_no_plugin_is_an_error() -> None:
    plugins = Plugins(environ={"LLMPROXY_PLUGINS": "opeani, llmproxy-gateway"})
    assert "serve" in plugins.registry.commands  # by distribution name
    assert "openai" not in plugins.registry.providers
    error = plugins.error_for("opeani")
    assert isinstance(error, PluginError)
    assert "LLMPROXY_PLUGINS names 'opeani'" in str(error)
    assert "openai" in str(error) and "check its spelling" in str(error)
    assert [e.plugin for e in plugins.errors] == ["opeani"]
    described = {info.name: info for info in plugins.infos()}
    assert described["opeani"].error == str(error)
    assert Plugins(environ={"LLMPROXY_PLUGINS": "openai,llmproxy-gateway"}).errors == []


def test_an_unknown_command_names_the_plugin_problems(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmproxy import cli

    monkeypatch.setenv("LLMPROXY_PLUGINS", "openai,gatewya")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'serve'" in err
    assert "plugin problems:" in err and "LLMPROXY_PLUGINS names 'gatewya'" in err


def test_plugin_registered_in_code_without_installing() -> None:
    class Plugin:
        @staticmethod
        @hookimpl
        def register_providers(register: RegisterProvider) -> None:
            register("inline", lambda settings: None)  # type: ignore[arg-type,return-value]

    plugins = Plugins(environ={"LLMPROXY_PLUGINS": ""}, extra=[Plugin])
    assert plugins.registry.providers["inline"].plugin == "Plugin"


def test_bad_registration_is_a_plugin_error() -> None:
    class Bad:
        @staticmethod
        @hookimpl
        def register_providers(register: RegisterProvider) -> None:
            register("Bad Name!", lambda settings: None)  # type: ignore[arg-type,return-value]

    plugins = Plugins(environ={"LLMPROXY_PLUGINS": ""}, extra=[Bad])
    assert any("Bad Name!" in str(e) and e.plugin == "Bad" for e in plugins.errors)


def test_misspelled_hook_is_caught() -> None:
    class Typo:
        @staticmethod
        @hookimpl
        def register_provider(register: RegisterProvider) -> None:  # missing 's'
            pass

    with pytest.raises(Exception, match="register_provider"):
        Plugins(environ={"LLMPROXY_PLUGINS": ""}, extra=[Typo])


def test_unknown_store_scheme_is_a_config_error() -> None:
    from llmproxy import ConfigError

    with pytest.raises(ConfigError, match="nosuch://"):
        Proxy({"history_url": "nosuch://x"}, environ={})
    with pytest.raises(ConfigError, match="no scheme"):
        Proxy({"ledger_url": "just-a-path"}, environ={})


def test_plugin_commands_extend_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from llmproxy.registry import RegisterCommand

    class Greeter:
        @staticmethod
        @hookimpl
        def register_commands(register: RegisterCommand) -> None:
            def configure(parser: argparse.ArgumentParser) -> None:
                parser.add_argument("name")

            def run(args: argparse.Namespace) -> int:
                print(f"hello {args.name}")
                return 3

            register("greet", "say hello", configure, run)
            register("chat", "clash", configure, run)

    plugins = Plugins(environ={"LLMPROXY_PLUGINS": ""}, extra=[Greeter])
    assert "greet" in plugins.registry.commands
    assert any("'chat'" in str(e) for e in plugins.errors)
    from llmproxy import cli
    from llmproxy import plugins as plugin_module

    plugin_module._cache[None] = plugins
    try:
        assert cli.main(["greet", "Ada"]) == 3
    finally:
        plugin_module._cache.clear()
    assert capsys.readouterr().out == "hello Ada\n"
