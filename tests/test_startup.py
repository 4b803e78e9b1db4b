"""Commands that call no provider import no provider SDK (nor the gateway's server stack)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

#: Top-level packages that only a provider call (or ``llmproxy serve``) may import.
HEAVY = (
    "openai",
    "google",
    "anthropic",
    "starlette",
    "uvicorn",
    "redis",
    "aiohttp",
    "httpx",
    "opentelemetry",  # llmproxy-otel imports it once something else has, not before
)
#: The default price table, imported when a price is first looked up (not at start-up).
PRICE_TABLE = "genai_prices"

PROBE = """
import json, sys
from llmproxy.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
if {make_openai!r}:
    from llmproxy import ProviderSettings, Secret
    from llmproxy.plugins import load_plugins
    entry = load_plugins().registry.providers["openai"]
    entry.factory(ProviderSettings("openai", api_key=Secret("sk-test")))
heavy = {heavy!r}
print("MODULES:" + json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
"""


def imported_heavy(
    args: list[str], data_dir: Path, make_openai: bool = False, heavy: tuple[str, ...] = HEAVY
) -> list[str]:
    """Run ``llmproxy ARGS`` in a fresh interpreter; return the heavy modules it imported."""
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "LLM_PROXY", "LLMPROXY"))
    }
    code = PROBE.format(make_openai=make_openai, heavy=heavy)
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**base, "LLMPROXY_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("MODULES:")]
    modules: list[str] = json.loads(line.removeprefix("MODULES:"))
    return modules


@pytest.mark.parametrize(
    "args", [["--help"], ["plugins"], ["usage"], ["history", "list"]], ids=" ".join
)
def test_commands_that_call_no_provider_import_no_sdk(args: list[str], tmp_path: Path) -> None:
    assert imported_heavy(args, tmp_path, heavy=(*HEAVY, PRICE_TABLE)) == []


def test_prices_imports_the_price_table_and_no_sdk(tmp_path: Path) -> None:
    modules = imported_heavy(
        ["prices", "openai/gpt-5.4-mini"], tmp_path, heavy=(*HEAVY, PRICE_TABLE)
    )
    assert PRICE_TABLE in modules
    assert [m for m in modules if m.split(".")[0] != PRICE_TABLE] == []


def test_the_sdk_is_imported_when_the_provider_is_first_made(tmp_path: Path) -> None:
    modules = imported_heavy(["plugins"], tmp_path, make_openai=True)
    assert "openai" in modules  # the probe sees an import when there is one


def test_plugins_lists_what_each_plugin_registers_without_sdks(tmp_path: Path) -> None:
    code = (
        "import sys; from llmproxy.cli import main; main(['plugins']);"
        f" print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("LLMPROXY")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, "LLMPROXY_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for registered in (
        "provider openai",
        "price gemini/gemini-3.8-flash",
        "provider gemini",
        "provider anthropic",
        "price anthropic/claude-sonnet-4-{date}",
    ):
        assert registered in out
    assert "command serve" in out and "ledger redis://" in out
    assert out.rstrip().endswith("[]")
