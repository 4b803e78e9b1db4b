"""Dashboard logins are throttled per client address, on a clock the tests move."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import uvicorn

from llmproxy_gateway import KeyStore
from llmproxy_gateway.app import create_app
from llmproxy_gateway.guard import server_config
from llmproxy_gateway.workers import listeners
from llmproxy_testing.fake_openai import FakeOpenAI

from .conftest import ADMIN_KEY, UPSTREAM_KEY, clean_env


class Clock:
    """Wall-clock seconds that move only when the test says."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Served:
    """A gateway app served by uvicorn (with the gateway's limits) in a thread on 127.0.0.1."""

    def __init__(self, app: Any, environ: dict[str, str]) -> None:
        self.sock = listeners("127.0.0.1", 0, 1)[0]
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(
            server_config(app, {"log_level": "warning", "lifespan": "on"}, environ)
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:  # a condition, polled with a bound
            assert self.thread.is_alive() and time.monotonic() < deadline, "did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def served(upstream: FakeOpenAI, tmp_path: Path, clock: Clock) -> Iterator[Served]:
    environ = clean_env(
        OPENAI_API_KEY=UPSTREAM_KEY,
        OPENAI_BASE_URL=upstream.base_url,
        LLMPROXY_DATA_DIR=str(tmp_path),
        LLMPROXY_LEDGER_URL="memory://",
        LLMPROXY_HISTORY_URL="memory://",
    )
    keys = KeyStore(tmp_path / "keys.db")
    app = create_app(environ=environ, keys=keys, admin_key=ADMIN_KEY, clock=clock)
    server = Served(app, environ)
    yield server
    server.stop()


def login(url: str, key: str, source: str = "127.0.0.1") -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=url, transport=transport, timeout=30) as client:
        return client.post("/dashboard/login", data={"key": key})


def test_five_failed_logins_then_429_until_the_window_passes(served: Served, clock: Clock) -> None:
    for _ in range(5):
        assert login(served.url, "wrong-key-0123456789").status_code == 401
        clock.now += 1
    refused = login(served.url, ADMIN_KEY)  # even the right key, once throttled
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "55"  # when the first failure leaves the window
    assert "Too many failed dashboard logins" in refused.text
    # The header form of a guess is throttled too, answered in OpenAI's error shape.
    with httpx.Client(base_url=served.url, timeout=30) as client:
        data = client.get("/dashboard/data", headers={"authorization": "Bearer guess-0123456789"})
    assert data.status_code == 429
    assert data.json()["error"]["code"] == "too_many_login_attempts"
    # Another address is not held up.
    assert login(served.url, ADMIN_KEY, source="127.0.0.2").status_code == 303
    clock.now += 55
    assert login(served.url, ADMIN_KEY).status_code == 303


def test_a_successful_login_forgets_the_failures(served: Served, clock: Clock) -> None:
    for _ in range(4):
        assert login(served.url, "wrong-key-0123456789").status_code == 401
    assert login(served.url, ADMIN_KEY).status_code == 303
    for _ in range(5):
        assert login(served.url, "wrong-key-0123456789").status_code == 401
    assert login(served.url, "wrong-key-0123456789").status_code == 429


def test_the_count_is_shared_by_every_store_on_the_file(tmp_path: Path) -> None:
    # Each worker process opens the key store's file: two stores here stand for two workers.
    first, second = KeyStore(tmp_path / "keys.db"), KeyStore(tmp_path / "keys.db")
    try:
        now = 1000.0
        for store in (first, second, first, second, first):
            assert store.login_attempt("10.0.0.1", attempts=5, window=60, now=now) == 0.0
            now += 2
        assert second.login_attempt("10.0.0.1", attempts=5, window=60, now=now) == 50.0
        assert first.login_attempt("10.0.0.2", attempts=5, window=60, now=now) == 0.0
        assert second.login_attempt("10.0.0.1", attempts=5, window=60, now=1060.0) == 0.0
    finally:
        first.close()
        second.close()
