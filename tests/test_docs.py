"""The docs stay true: every hook is documented, every variable read is listed, versions agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import llmproxy
import llmproxy_openai
import llmproxy_testing
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
    plugins = sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))
    return [ROOT / "core", ROOT / "testing", *plugins]


def _project(dist: Path) -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((dist / "pyproject.toml").read_text())["project"]
    return project


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0].lower()


def test_versions_move_in_lockstep_and_plugins_pin_the_core() -> None:
    core_version = _project(ROOT / "core")["version"]
    assert llmproxy.__version__ == core_version
    assert llmproxy_openai.__version__ == core_version
    assert llmproxy_testing.__version__ == core_version
    for dist in _distributions()[1:]:
        project = _project(dist)
        assert project["version"] == core_version, dist
        assert f"llmproxy=={core_version}" in project["dependencies"], dist
    # Every pin on a workspace distribution, extras included, is an exact pin on this version.
    for dist in _distributions():
        project = _project(dist)
        requirements = list(project["dependencies"])
        for extra in project.get("optional-dependencies", {}).values():
            requirements += extra
        for requirement in requirements:
            name = _requirement_name(requirement)
            if name.startswith("llmproxy"):
                assert requirement == f"{name}=={core_version}", (dist, requirement)


def test_distributions_whose_tests_use_llmproxy_testing_declare_it() -> None:
    """The test helpers are not in the core wheel: a distribution's tests need the test extra."""
    core_version = _project(ROOT / "core")["version"]
    for dist in _distributions():
        if dist.name == "testing":
            continue
        sources = (dist / "tests").rglob("*.py")
        if not any("llmproxy_testing" in source.read_text() for source in sources):
            continue
        test_extra = _project(dist).get("optional-dependencies", {}).get("test", [])
        assert f"llmproxy-testing=={core_version}" in test_extra, dist


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
                if source.name == "env.py":
                    continue
                used = set(pattern.findall(source.read_text()))
                missing = used - documented
                assert not missing, (
                    f"{source} uses {sorted(missing)}, not listed in {package / 'env.py'}"
                )


def test_core_depends_on_no_provider_sdk_or_redis() -> None:
    deps = tomllib.loads((ROOT / "core" / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {_requirement_name(d) for d in deps}
    # genai-prices is the default price table (issue 20); it is imported only when a price is
    # first looked up (tests/test_startup.py), never by a provider SDK's or Redis's reasons.
    assert names <= {"pluggy", "attrs", "cattrs", "importlib-metadata", "genai-prices"}
