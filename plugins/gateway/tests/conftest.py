"""A real gateway (``llmproxy serve`` in its own process) in front of the fake OpenAI upstream.

The upstream runs in this process (a thread); the gateway is started as the command a user
runs, on 127.0.0.1 and a free port, and stopped by its pid. Keys are created in this process
through :class:`KeyStore` on the gateway's own file (it sees new and revoked keys at once).
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmproxy_gateway import KeyStore
from llmproxy_testing.fake_deepseek import FakeDeepSeek
from llmproxy_testing.fake_gemini import FakeGemini
from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_usage_log import SQLiteUsageLog, UsageRecord

UPSTREAM_KEY = "sk-upstream-0123456789abcdefXYZ"
ADMIN_KEY = "admin-0123456789abcdef-SECRET"
LLMPROXY = str(Path(sys.executable).with_name("llmproxy"))
CONFIG = """
[retry]
max_attempts = 2
initial_backoff = 0.001
max_backoff = 0.01
jitter = 0.0

[aliases]
fast = "openai/gpt-4o-mini"
"""


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without llmproxy's or OpenAI's variables, plus ``extra``."""
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "LLM_PROXY", "LLMPROXY"))
    }
    return {**base, **extra}


def chat_bodies(server: FakeOpenAI) -> list[dict[str, Any]]:
    """The JSON bodies of the chat requests the fake upstream received, oldest first."""
    return [r.json() for r in server.requests if r.path.endswith("/chat/completions")]


class GatewayProcess:
    """``llmproxy serve --port 0`` as a child process; ``url`` is its base URL."""

    def __init__(self, env: dict[str, str], data_dir: Path, *args: str) -> None:
        self.env = env
        self.data_dir = data_dir
        self.stderr_output = ""  # what the gateway wrote to stderr, once stopped
        self.announced = ""
        self.proc = subprocess.Popen(
            [LLMPROXY, "serve", "--port", "0", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = self._wait_for_url()
        self.keys = KeyStore(data_dir / "keys.db")

    def _wait_for_url(self) -> str:
        assert self.proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if selector.select(timeout=0.5):
                line = self.proc.stdout.readline()
                if "gateway on http://" in line:
                    self.announced = line  # the start-up line (the metrics URL...)
                    url = line.split("gateway on ", 1)[1].split()[0]
                    return url.removesuffix("/v1")
                if not line and self.proc.poll() is not None:
                    break
        self.stop()
        raise RuntimeError(f"llmproxy serve did not start: {self.stderr()}")

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def key(self, user: str = "alice", *budgets: str, admin: bool = False, models: str = "") -> str:
        """Create a key on the gateway's key store (``models``: its allow-list); return it."""
        _record, secret = self.keys.create(user, budgets=budgets, admin=admin, models=models)
        return secret

    def usage_log(self) -> SQLiteUsageLog:
        return SQLiteUsageLog(self.data_dir / "usage.db")

    def rows(self, count: int, *, key: str | None = None, timeout: float = 10) -> list[UsageRecord]:
        """Wait until the log holds ``count`` calls (of ``key``); return them, newest first."""
        log = self.usage_log()
        try:
            deadline = time.monotonic() + timeout
            while True:
                rows = log.recent(1000, key=key)
                if len(rows) >= count or time.monotonic() > deadline:
                    return rows
                time.sleep(0.05)
        finally:
            log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None and not self.proc.stderr.closed:
            self.stderr_output = self.proc.stderr.read()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=UPSTREAM_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def deepseek() -> Iterator[FakeDeepSeek]:
    with FakeDeepSeek(api_key=UPSTREAM_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def gemini() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=UPSTREAM_KEY) as server:
        yield server


def serve_gateway(
    upstream: FakeOpenAI,
    root: Path,
    *,
    args: tuple[str, ...] = (),
    deepseek: FakeDeepSeek | None = None,
    gemini: FakeGemini | None = None,
    **extra: str,
) -> Iterator[GatewayProcess]:
    """Run a gateway with its data under ``root`` in front of ``upstream``, then stop it.

    ``args`` are more arguments of ``llmproxy serve``; ``deepseek`` and ``gemini`` fakes the
    gateway's DeepSeek and Gemini providers are pointed at; ``extra`` more environment
    variables.
    """
    if deepseek is not None:
        extra.update(DEEPSEEK_API_KEY=UPSTREAM_KEY, DEEPSEEK_BASE_URL=deepseek.base_url)
    if gemini is not None:
        extra.update(GEMINI_API_KEY=UPSTREAM_KEY, GEMINI_BASE_URL=gemini.base_url)
    config = root / "llmproxy.toml"
    config.write_text(CONFIG)
    env = clean_env(
        OPENAI_API_KEY=UPSTREAM_KEY,
        OPENAI_BASE_URL=upstream.base_url,
        LLMPROXY_DATA_DIR=str(root / "data"),
        LLMPROXY_ADMIN_KEY=ADMIN_KEY,
        LLMPROXY_CONFIG=str(config),
        LLMPROXY_USAGE_LOG_URL=f"sqlite:///{root}/data/usage.db?flush_interval=0.05",
        **extra,
    )
    server = GatewayProcess(env, root / "data", *args)
    yield server
    server.stop()
    server.keys.close()


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    yield from serve_gateway(
        upstream, tmp_path_factory.mktemp("gateway"), LLMPROXY_GATEWAY_MAX_BODY="1000000"
    )
