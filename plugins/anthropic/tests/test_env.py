"""Every environment variable the anthropic plugin's code names is listed in its env.py."""

from __future__ import annotations

import re
from pathlib import Path

import llmproxy.env
import llmproxy_anthropic
from llmproxy_anthropic import env

PACKAGE = Path(llmproxy_anthropic.__file__).parent
PATTERN = re.compile(r"\b((?:ANTHROPIC|LLMPROXY)_[A-Z][A-Z_]*)\b")


def test_variables_used_are_documented_in_env_py() -> None:
    documented = set(PATTERN.findall((PACKAGE / "env.py").read_text()))
    # A plugin may mention the core's variables; the core documents those.
    documented |= set(PATTERN.findall(Path(llmproxy.env.__file__).read_text()))
    for source in PACKAGE.rglob("*.py"):
        used = set(PATTERN.findall(source.read_text()))
        assert used <= documented, f"{source.name} names {sorted(used - documented)}"


def test_key_variables_are_the_documented_ones() -> None:
    doc = env.__doc__ or ""
    for name in env.KEY_VARIABLES:
        assert f"``{name}``" in doc
