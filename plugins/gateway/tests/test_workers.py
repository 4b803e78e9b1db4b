"""``llmproxy serve --workers 2``: worker processes share budgets, keys and dashboard logins."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from multiprocessing.context import SpawnContext
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from llmproxy.errors import ConfigError
from llmproxy_gateway import KeyStore, env
from llmproxy_gateway import workers as workers_module
from llmproxy_testing.fake_openai import FakeOpenAI

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
                # Forked workers (Linux) run the supervisor's command line; multiprocessing's
                # resource tracker, a child of a supervisor that spawns, is not a worker.
                if "resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_text():
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
    # Each worker writes its own calls to the log in batches: wait for all nine (a refusal
    # logged by one worker can land before another worker's answered call).
    rows = gateway.rows(9, key=key.split("-")[2])
    assert sorted(r.outcome for r in rows) == ["error"] * 3 + ["ok"] * 6


def test_workers_admit_calls_from_budget_leases_and_the_ledger_adds_up(
    gateway: GatewayProcess,
) -> None:
    """With room to spare, each worker leases a share and admits calls without a transaction
    per call; the shared ledger still ends up with every token and request, counted once."""
    key = gateway.key("lena", "tokens:100000000/month", "requests:100000/minute")
    key_id = key.split("-")[2]
    ledger = gateway.data_dir / "ledger.db"

    def totals() -> tuple[float, float, int]:
        with contextlib.closing(sqlite3.connect(ledger)) as conn:
            ((tokens,),) = conn.execute(
                "SELECT coalesce(sum(used), 0) FROM ledger_periods WHERE key LIKE ?",
                (f"key-tokens-%|key:{key_id}",),
            ).fetchall()
            ((requests,),) = conn.execute(
                "SELECT coalesce(sum(amount), 0) FROM ledger_events WHERE key LIKE ?",
                (f"key-requests-%|key:{key_id}",),
            ).fetchall()
            ((leases,),) = conn.execute(
                "SELECT count(*) FROM ledger_holds WHERE key LIKE ? AND reservation LIKE 'lease-%'",
                (f"%|key:{key_id}",),
            ).fetchall()
        return tokens, requests, leases

    def admitted_from_leases() -> int:
        # A call a worker admits from its lease settles in the lease's batch under a local id
        # ("l<process>-<n>"); a call that went to the ledger itself has a plain uuid4 id.
        with contextlib.closing(sqlite3.connect(ledger)) as conn:
            ((count,),) = conn.execute(
                "SELECT count(*) FROM ledger_events WHERE key LIKE ? AND reservation GLOB 'l*-*'",
                (f"key-requests-%|key:{key_id}",),
            ).fetchall()
        return int(count)

    # A worker leases once it sees its budget busy, a background sync later: send rounds of
    # 40 calls (at most 5) until some were admitted from a lease, each round's spend counted.
    spent = calls = 0
    with fresh(gateway) as client:
        for _round in range(5):
            for _ in range(40):
                response = client.post(
                    "/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"}
                )
                assert response.status_code == 200
                spent += response.json()["usage"]["total_tokens"]
                calls += 1
            deadline = time.monotonic() + 10
            while totals()[:2] != (spent, calls):
                assert time.monotonic() < deadline, (totals(), spent, calls)
                time.sleep(0.02)
            if admitted_from_leases():
                break
    # Calls were admitted from leases, without a ledger transaction of their own (the first
    # ones, and any while a lease is being sized, go to the ledger itself).
    assert admitted_from_leases() > 0
    # Unused for a while, each worker gives its leases back.
    while totals()[2]:
        assert time.monotonic() < deadline + 10, totals()
        time.sleep(0.05)


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


def test_a_bad_admin_key_stops_several_workers_before_they_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [LLMPROXY, "serve", "--port", "0", "--workers", "2"],
        env=clean_env(
            OPENAI_API_KEY=UPSTREAM_KEY,
            LLMPROXY_DATA_DIR=str(tmp_path),
            LLMPROXY_ADMIN_KEY="short",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "LLMPROXY_ADMIN_KEY must be at least" in result.stderr
    assert "gateway on" not in result.stdout


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("LLMPROXY_LEDGER_URL", "bogus://x", "ledger URL scheme 'bogus://'"),
        ("LLMPROXY_GATEWAY_KEYS_URL", "bogus://x", "gateway keys URL scheme 'bogus://'"),
        ("LLMPROXY_HISTORY_URL", "bogus://x", "history"),
        ("LLMPROXY_GATEWAY_MAX_BODY", "lots", "LLMPROXY_GATEWAY_MAX_BODY must be a whole number"),
        ("LLMPROXY_LEDGER_LEASE", "sometimes", "LLMPROXY_LEDGER_LEASE must be on or off"),
    ],
)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_configuration_the_workers_read_is_checked_before_the_gateway_says_it_is_up(
    tmp_path: Path, variable: str, value: str, named: str, workers: str
) -> None:
    # Each worker builds its own app; a setting only that reads used to fail in every worker
    # after the supervisor had printed the URL (scripts wait for that line), with status 1.
    result = subprocess.run(
        [LLMPROXY, "serve", "--port", "0", "--workers", workers],
        env=clean_env(
            OPENAI_API_KEY=UPSTREAM_KEY, LLMPROXY_DATA_DIR=str(tmp_path), **{variable: value}
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert named in result.stderr
    assert result.stderr.count("llmproxy") == 1  # said once, by the supervisor
    assert "gateway on" not in result.stdout


def test_budget_leasing_is_on_unless_the_variable_says_off() -> None:
    assert env.proxy_environ({})["LLMPROXY_LEDGER_LEASE"] == "on"
    assert env.proxy_environ({"LLMPROXY_LEDGER_LEASE": "off"})["LLMPROXY_LEDGER_LEASE"] == "off"
    assert env.proxy_environ({"LLMPROXY_LEDGER_LEASE": " "})["LLMPROXY_LEDGER_LEASE"] == "on"


def test_max_body_variable() -> None:
    assert env.max_body({}) == 32 * 1024 * 1024
    assert env.max_body({"LLMPROXY_GATEWAY_MAX_BODY": " 2048 "}) == 2048
    for bad in ("0", "-5", "1.5", "32MiB"):
        with pytest.raises(ConfigError, match="LLMPROXY_GATEWAY_MAX_BODY"):
            env.max_body({"LLMPROXY_GATEWAY_MAX_BODY": bad})


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


# -- the supervisor: one socket per worker, restarts, start-up failures --------------------------

linux_only = pytest.mark.skipif(
    not workers_module.SPREAD_BY_KERNEL, reason="one socket per worker needs Linux SO_REUSEPORT"
)


def tcp_sockets(port: int) -> dict[int, tuple[str, int]]:
    """Loopback IPv4 sockets on ``port`` (local side): inode -> (state, remote port)."""
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
        if int(local.split(":")[1], 16) == port and inode:
            found[inode] = (state, int(remote.split(":")[1], 16))
    return found


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process ``pid`` holds open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


@linux_only
def test_each_worker_listens_on_its_own_socket_and_connections_spread(
    gateway: GatewayProcess,
) -> None:
    port = int(gateway.url.rsplit(":", 1)[1])
    workers = workers_of(gateway, 2)
    listening = {i for i, (state, _) in tcp_sockets(port).items() if state == "0A"}
    assert len(listening) == 2
    # A worker just forked still holds the other workers' sockets until its first lines close
    # them: wait for that (a condition, polled with a bound).
    deadline = time.monotonic() + 30
    while True:
        held = [socket_inodes(pid) & listening for pid in workers]
        if all(len(h) == 1 for h in held) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert all(len(h) == 1 for h in held) and held[0] != held[1], held

    key = gateway.key("spread")
    clients = []
    try:
        for _ in range(40):
            client = socket.create_connection(("127.0.0.1", port), timeout=30)
            clients.append(client)
            client.sendall(
                b"GET /v1/models HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer "
                + key.encode()
                + b"\r\n\r\n"
            )
        for client in clients:
            assert client.recv(64).startswith(b"HTTP/1.1 200")
        ours = {c.getsockname()[1] for c in clients}
        accepted = {i for i, (state, peer) in tcp_sockets(port).items() if peer in ours}
        assert len(accepted) == 40
        per_worker = [len(socket_inodes(pid) & accepted) for pid in workers]
    finally:
        for client in clients:
            client.close()
    # The kernel hashes each connection to a worker's socket: about 20 each. Fewer than 5 on
    # one worker has a probability under 1e-6.
    assert sum(per_worker) == 40 and min(per_worker) >= 5, per_worker


@linux_only
def test_a_second_gateway_on_the_same_port_is_refused(gateway: GatewayProcess) -> None:
    port = gateway.url.rsplit(":", 1)[1]
    for workers in ("2", "1"):
        result = subprocess.run(
            [LLMPROXY, "serve", "--port", port, "--workers", workers],
            env=gateway.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert f"cannot listen on 127.0.0.1 port {port}" in result.stderr
        assert "gateway on" not in result.stdout


def test_a_worker_that_dies_is_replaced_and_its_connections_wait(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    served = serve_gateway(upstream, tmp_path, LLMPROXY_GATEWAY_WORKERS="2")
    gateway = next(served)
    try:
        key = gateway.key("phoenix")
        before = workers_of(gateway, 2)
        # Both workers are serving once 16 fresh connections were answered: each connection
        # waits for the worker whose socket the kernel picked, and 16 all picking the same
        # one has a probability of 2**-15.
        with fresh(gateway) as client:
            assert all(
                client.get("/v1/models", headers={"authorization": f"Bearer {key}"}).status_code
                == 200
                for _ in range(16)
            )
        os.kill(before[0], signal.SIGKILL)
        # New connections hashed to the dead worker's socket wait in its backlog for the
        # replacement rather than being refused.
        with fresh(gateway) as client:
            for _ in range(12):
                response = client.post(
                    "/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"}
                )
                assert response.status_code == 200
        after = workers_of(gateway, 2)
        assert len(after) == 2 and before[0] not in after and before[1] in after
    finally:
        next(served, None)  # stops the gateway
    assert gateway.proc.returncode == 0
    assert "exited with status -9; starting a new one" in gateway.stderr_output
    for pid in after:  # the supervisor stopped and reaped its workers
        assert not Path(f"/proc/{pid}").exists()


def exit_at_start(_options: Mapping[str, Any], _sock: socket.socket, _ready: Event) -> None:
    """A worker whose app cannot start (a spawned process: module level, importable)."""
    sys.stderr.write("the worker's own error\n")
    sys.exit(3)


def test_a_worker_that_cannot_start_stops_the_others(capfd: pytest.CaptureFixture[str]) -> None:
    sockets = workers_module.listeners("127.0.0.1", 0, 2)
    try:
        supervisor = workers_module.Supervisor(sockets, 2, {}, target=exit_at_start)
        started = time.monotonic()
        assert supervisor.run() == 1
        assert time.monotonic() - started < 30
    finally:
        for sock in sockets:
            sock.close()
    err = capfd.readouterr().err
    assert "the worker's own error" in err
    assert "exited with status 3 before it was ready" in err
    assert all(w.process is None for w in supervisor.workers)  # stopped and reaped


def smaps(pid: int) -> dict[str, int]:
    """``/proc/<pid>/smaps_rollup`` in KiB: Rss, Pss, ..."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return fields


@pytest.mark.skipif(not workers_module.FORK, reason="workers are forked on Linux only")
def test_forked_workers_share_the_preloaded_tokenizer(gateway: GatewayProcess) -> None:
    workers = workers_of(gateway, 2)
    key = gateway.key("sharer")
    with fresh(gateway) as client:  # every worker has counted tokens for a request
        for _ in range(8):
            response = client.post(
                "/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"}
            )
            assert response.status_code == 200
    for pid in workers:
        memory = smaps(pid)
        # The o200k_base tables (about 130 MiB) are the supervisor's pages, shared three ways:
        # a copy of their own would make a worker's PSS about its RSS.
        assert memory["Rss"] - memory["Pss"] > 60 * 1024, memory


@pytest.mark.skipif(not workers_module.FORK, reason="workers are forked on Linux only")
def test_workers_are_spawned_when_another_thread_runs(capfd: pytest.CaptureFixture[str]) -> None:
    # Forking beside a running thread can leave the child stuck on a lock the thread held.
    release = threading.Event()
    thread = threading.Thread(target=release.wait, daemon=True)
    thread.start()
    sockets = workers_module.listeners("127.0.0.1", 0, 1)
    try:
        supervisor = workers_module.Supervisor(sockets, 1, {}, target=exit_at_start)
        assert supervisor.run() == 1
        assert isinstance(supervisor.context, SpawnContext)
    finally:
        release.set()
        thread.join()
        for sock in sockets:
            sock.close()
    assert "exited with status 3 before it was ready" in capfd.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_stop_when_the_supervisor_is_killed(upstream: FakeOpenAI, tmp_path: Path) -> None:
    served = serve_gateway(upstream, tmp_path, LLMPROXY_GATEWAY_WORKERS="2")
    gateway = next(served)
    try:
        workers = workers_of(gateway, 2)
        os.kill(gateway.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() for pid in workers):
            assert time.monotonic() < deadline, "workers outlived their supervisor"
            time.sleep(0.05)
    finally:
        next(served, None)
