"""The docs stay true: every hook is documented, every variable read is listed, versions agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import llmproxy
import llmproxy_openai
from llmproxy import hookspecs

ROOT = Path(__file__).resolve().parent.parent


def _hooks() -> list[str]:
    return [name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "llmproxy_spec")]


def test_every_hook_is_documented() -> None:
    doc = (ROOT / "docs" / "plugins.md").read_text()
    headings = set(re.findall(r"^### (\w+)$", doc, re.M))
    hooks = set(_hooks())
    assert hooks, "no hookspecs found"
    assert hooks <= headings, f"undocumented hooks: {sorted(hooks - headings)}"
    for name in hooks:
        assert getattr(hookspecs, name).__doc__, f"hookspec {name} has no docstring"


def _distributions() -> list[Path]:
    return [ROOT / "core", *sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))]


def test_versions_move_in_lockstep_and_plugins_pin_the_core() -> None:
    core_version = tomllib.loads((ROOT / "core" / "pyproject.toml").read_text())["project"][
        "version"
    ]
    assert llmproxy.__version__ == core_version
    assert llmproxy_openai.__version__ == core_version
    for dist in _distributions()[1:]:
        project = tomllib.loads((dist / "pyproject.toml").read_text())["project"]
        assert project["version"] == core_version, dist
        assert f"llmproxy=={core_version}" in project["dependencies"], dist


def test_each_distribution_has_readme_env_and_typed_marker() -> None:
    for dist in _distributions():
        assert (dist / "README.md").is_file(), dist
        packages = [
            p for p in (dist / "src").iterdir() if p.is_dir() and not p.name.endswith(".egg-info")
        ]
        for package in packages:
            assert (package / "env.py").is_file(), package
            assert (package / "py.typed").is_file(), package


def test_environment_variables_read_are_documented() -> None:
    """Every LLMPROXY_/OPENAI_/LLM_PROXY_ name used in a package's code is listed in its env.py."""
    pattern = re.compile(r"\b((?:LLMPROXY|OPENAI|LLM_PROXY)_[A-Z_]+)\b")
    core_documented = set(pattern.findall((ROOT / "core/src/llmproxy/env.py").read_text()))
    for dist in _distributions():
        for package in (p for p in (dist / "src").iterdir() if (p / "env.py").is_file()):
            # A plugin may mention the core's variables; the core documents those.
            documented = set(pattern.findall((package / "env.py").read_text())) | core_documented
            for source in package.rglob("*.py"):
                if source.name == "env.py" or "testing" in source.parts:
                    continue
                used = set(pattern.findall(source.read_text()))
                missing = used - documented
                assert not missing, (
                    f"{source} uses {sorted(missing)}, not listed in {package / 'env.py'}"
                )


def test_core_depends_on_no_provider_sdk_or_redis() -> None:
    deps = tomllib.loads((ROOT / "core" / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower() for d in deps}
    assert names <= {"pluggy", "attrs", "cattrs", "importlib-metadata"}
