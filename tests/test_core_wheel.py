"""The core wheel carries no test helpers, and no production code needs llmproxy-testing.

Building the wheel needs hatchling from the network, so these read what decides the wheel's
contents instead: the core's hatch configuration (only ``src/llmproxy`` is packaged) and the
files under that directory. Production code (the core and every plugin's ``src``) is parsed
and must never import ``llmproxy_testing`` (nor the old ``llmproxy.testing``).
"""

from __future__ import annotations

import ast
import importlib.util
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "core"
TESTING_MODULES = ("llmproxy_testing", "llmproxy.testing")


def _is_testing_module(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in TESTING_MODULES)


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else None


def helper_imports(source: str, filename: str = "<test>") -> Iterator[tuple[int, str]]:
    """(line, module) for every import of the test helpers in ``source``, including
    ``importlib.import_module("llmproxy_testing...")`` and ``from llmproxy import testing``."""
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_testing_module(alias.name):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if _is_testing_module(node.module):
                yield node.lineno, node.module
            elif node.module == "llmproxy" and any(a.name == "testing" for a in node.names):
                yield node.lineno, "llmproxy.testing"
        elif (
            isinstance(node, ast.Call)
            and _called_name(node.func) in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and _is_testing_module(node.args[0].value)
        ):
            yield node.lineno, node.args[0].value


def _production_sources() -> list[Path]:
    roots = [CORE / "src", *sorted((ROOT / "plugins").glob("*/src"))]
    return [source for root in roots for source in sorted(root.rglob("*.py"))]


def test_core_wheel_packages_only_the_llmproxy_directory() -> None:
    hatch = tomllib.loads((CORE / "pyproject.toml").read_text())["tool"]["hatch"]
    wheel = hatch["build"]["targets"]["wheel"]
    assert wheel["packages"] == ["src/llmproxy"]
    # None of these could add files from elsewhere to the wheel.
    for table in (hatch["build"], wheel):
        assert not {"include", "only-include", "force-include", "sources"} & set(table), table


def test_core_package_has_no_testing_subpackage() -> None:
    package = CORE / "src" / "llmproxy"
    assert (package / "__init__.py").is_file()
    assert not (package / "testing").exists()
    assert not (package / "testing.py").exists()
    assert importlib.util.find_spec("llmproxy.testing") is None


def test_production_code_never_imports_llmproxy_testing() -> None:
    sources = _production_sources()
    assert len(sources) > 20, "the production sources were not found"
    found = [
        f"{source.relative_to(ROOT)}:{line} imports {module}"
        for source in sources
        for line, module in helper_imports(source.read_text(), str(source))
    ]
    assert found == []


@pytest.mark.parametrize(
    "source",
    [
        "import llmproxy_testing",
        "import llmproxy_testing.fake_openai as fake",
        "from llmproxy_testing.contracts import LedgerContract",
        "from llmproxy.testing import fake_openai",
        "from llmproxy import testing",
        "import importlib\nimportlib.import_module('llmproxy_testing.proxies')",
        "def f():\n    from llmproxy_testing import redis_server\n",
    ],
)
def test_the_scan_finds_every_form_of_import(source: str) -> None:
    assert list(helper_imports(source))


@pytest.mark.parametrize(
    "source",
    [
        "import llmproxy",
        "from llmproxy import proxy",
        "import llmproxy_testingx",
        "print('llmproxy_testing')",
    ],
)
def test_the_scan_ignores_other_imports(source: str) -> None:
    assert list(helper_imports(source)) == []
