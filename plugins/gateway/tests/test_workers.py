"""``llmproxy serve --workers 2``: worker processes share budgets, keys and dashboard logins."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from llmproxy.errors import ConfigError
from llmproxy.testing.fake_openai import FakeOpenAI
from llmproxy_gateway import KeyStore, env

from .conftest import ADMIN_KEY, LLMPROXY, UPSTREAM_KEY, GatewayProcess, clean_env, serve_gateway

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("workers")
    yield from serve_gateway(upstream, root, LLMPROXY_GATEWAY_WORKERS="2")


def workers_of(gateway: GatewayProcess, expected: int) -> list[int]:
    """The worker processes under ``llmproxy serve``, once ``expected`` of them have started."""
    children = Path(f"/proc/{gateway.proc.pid}/task/{gateway.proc.pid}/children")
    deadline = time.monotonic() + 30
    while True:
        workers = []
        for pid in (int(p) for p in children.read_text().split()):
            try:
                if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text():
                    workers.append(pid)
            except OSError:
                continue
        if len(workers) >= expected or time.monotonic() > deadline:
            return workers
        time.sleep(0.05)


def fresh(gateway: GatewayProcess) -> httpx.Client:
    """A client opening a new connection per request (each may land on either worker)."""
    return httpx.Client(
        base_url=gateway.url, limits=httpx.Limits(max_keepalive_connections=0), timeout=30
    )


def test_two_workers_serve_and_share_one_request_budget(gateway: GatewayProcess) -> None:
    assert len(workers_of(gateway, 2)) == 2
    key = gateway.key("wanda", "requests:6/minute")
    statuses = []
    with fresh(gateway) as client:
        for _ in range(9):
            response = client.post(
                "/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"}
            )
            statuses.append(response.status_code)
    # Per-worker ledgers would let up to 12 through; the shared one lets exactly 6.
    assert statuses == [200] * 6 + [429] * 3
    rows = gateway.rows(6, key=key.split("-")[2])
    assert len([r for r in rows if r.outcome == "ok"]) == 6


def test_a_dashboard_login_holds_on_every_worker(gateway: GatewayProcess) -> None:
    with fresh(gateway) as client:
        login = client.post("/dashboard/login", data={"key": ADMIN_KEY})
        assert login.status_code == 303
        assert all(client.get("/dashboard/data").status_code == 200 for _ in range(8))
        client.post("/dashboard/logout")
        assert all(client.get("/dashboard/data").status_code == 401 for _ in range(8))


def test_a_revoked_key_is_refused_by_every_worker(gateway: GatewayProcess) -> None:
    key = gateway.key("rex")
    gateway.keys.revoke(key.split("-")[2])
    with fresh(gateway) as client:
        for _ in range(6):
            response = client.post(
                "/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"}
            )
            assert response.status_code == 401


def test_several_workers_refuse_stores_in_memory(tmp_path: Path) -> None:
    for variable in ("LLMPROXY_LEDGER_URL", "LLMPROXY_GATEWAY_KEYS_URL"):
        result = subprocess.run(
            [LLMPROXY, "serve", "--port", "0", "--workers", "2"],
            env=clean_env(
                OPENAI_API_KEY=UPSTREAM_KEY,
                LLMPROXY_DATA_DIR=str(tmp_path),
                **{variable: "memory://"},
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0
        assert variable in result.stderr and "memory" in result.stderr
        assert "gateway on" not in result.stdout


def test_workers_variable() -> None:
    assert env.workers({}) == 1
    assert env.workers({"LLMPROXY_GATEWAY_WORKERS": " 3 "}) == 3
    for bad in ("0", "-1", "two"):
        with pytest.raises(ConfigError, match="LLMPROXY_GATEWAY_WORKERS"):
            env.workers({"LLMPROXY_GATEWAY_WORKERS": bad})
    assert env.workers({"LLMPROXY_GATEWAY_WORKERS": "5"}, 2) == 2  # --workers wins
    with pytest.raises(ConfigError, match="--workers"):
        env.workers({}, 0)
    env.check_shared_stores({"LLMPROXY_DATA_DIR": "/tmp/x"})  # the SQLite defaults are shared
    with pytest.raises(ConfigError, match="usage log"):
        env.check_shared_stores({"LLMPROXY_USAGE_LOG_URL": "off"})


def test_dashboard_sessions_are_shared_through_the_store_file(tmp_path: Path) -> None:
    first, second = KeyStore(tmp_path / "keys.db"), KeyStore(tmp_path / "keys.db")
    try:
        token = first.start_session(60)
        assert second.session_active(token)
        assert not second.session_active(token + "x")
        second.end_session(token)
        assert not first.session_active(token)
        short = first.start_session(0.05)
        time.sleep(0.1)
        assert not second.session_active(short)
        first.start_session(60)  # deletes expired sessions
        rows = first._conn.execute("SELECT digest FROM dashboard_sessions").fetchall()
        assert len(rows) == 1 and token not in rows[0][0]
    finally:
        first.close()
        second.close()
