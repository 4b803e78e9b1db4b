"""Fixtures of the fault suite: a fake upstream that bills, worker processes, a real Redis.

Every process a test starts is stopped by its pid in the fixture's teardown; every wait is
bounded (a count or a timeout) and waits on a condition (a held request, a pid, a ledger
clock), never on a sleep being long enough.

Sizes: each scenario's size (calls, connections, budget) is a module constant read through
:func:`size` from ``LLMPROXY_FAULT_<NAME>``; unset, it is the fast form's (CI) size;
``bench/bench_faults.py`` sets bigger ones for the full form. Figures: when
``LLMPROXY_FAULT_FIGURES`` names a file, each test appends one JSON line of its figures to it
(:func:`record_figures`); unset, nothing is written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from llmproxy import Proxy
from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_testing.redis_fixtures import need_redis_server, redis_server, redis_url
from llmproxy_testing.redis_server import RedisServer

__all__ = ["redis_server", "redis_url"]

API_KEY = "sk-fault-SECRET-0123456789abcdefXYZ"
#: The reply every call gets: 40 words, so 40 completion tokens at the fake and in our count.
OUTPUT_WORDS = 40
REPLY = " ".join(["word"] * OUTPUT_WORDS)
#: The setting of the SQLite budget-lease length (issue 16: "every lease length is a setting").
LEASE_SECONDS_ENV = "LLMPROXY_LEDGER_LEASE_SECONDS"
WORKER = Path(__file__).with_name("worker.py")
FAST_RETRY = {"initial_backoff": 0.001, "max_backoff": 0.01, "jitter": 0.0}
#: The file the tests append their figures to (JSON lines), when set.
FIGURES_ENV = "LLMPROXY_FAULT_FIGURES"
#: The prefix of the variables that set the scenarios' sizes (``LLMPROXY_FAULT_<NAME>``).
SIZE_PREFIX = "LLMPROXY_FAULT_"


def size(name: str, default: int) -> int:
    """A scenario's size: ``LLMPROXY_FAULT_<name>`` when set (a positive integer), else ``default``.

    Raises:
        ValueError: If the variable is set to anything but a positive integer.

    """
    variable = SIZE_PREFIX + name
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{variable}={raw!r}: set it to a positive integer (default {default})")
    return value


def record_figures(
    fault: str,
    store: str,
    *,
    budget: int | None,
    billed: int,
    used: float | None,
    answers_lost: int,
    duplicates: int,
    notes: str = "",
) -> None:
    """Append one scenario's figures to the file ``LLMPROXY_FAULT_FIGURES`` names, if it is set.

    One JSON line: ``fault``, ``store`` (the ledger or store kind), ``budget`` (tokens, or
    None without one), ``billed`` (tokens the fake upstream billed), ``used`` (what the ledger
    recorded as spent, or None without a ledger to read), ``answers_lost`` (answers produced
    upstream, or calls a client made, that did not reach their caller), ``duplicates``
    (requests or records that arrived more than once) and ``notes``. Without the variable,
    nothing is written.
    """
    target = os.environ.get(FIGURES_ENV, "").strip()
    if not target:
        return
    line = {
        "fault": fault,
        "store": store,
        "budget": budget,
        "billed": billed,
        "used": used,
        "answers_lost": answers_lost,
        "duplicates": duplicates,
        "notes": notes,
    }
    with open(target, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


def duplicate_requests(fake: FakeOpenAI) -> int:
    """How many requests the fake upstream received with a body it had received before."""
    bodies = [request.body for request in fake.requests]
    return len(bodies) - len(set(bodies))


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    """A fake OpenAI upstream answering :data:`REPLY`; held requests are released at the end."""
    with FakeOpenAI(api_key=API_KEY, reply=REPLY) as server:
        try:
            yield server
        finally:
            server.release()


def proxy_env(fake: FakeOpenAI, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment a Proxy (in this process or a worker) is built on."""
    return {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": fake.base_url,
        "LLMPROXY_DATA_DIR": str(data_dir),
        "LLMPROXY_USAGE_LOG_URL": "memory://",
        **extra,
    }


def proxy_config(
    budget: int, *, lease: float, limit_wait: float = 0.0, **extra: Any
) -> dict[str, Any]:
    """A Proxy configuration with one global token budget of ``budget`` tokens."""
    return {
        "budgets": [{"kind": "tokens", "max_tokens": budget}],
        "reservation_lease": lease,
        "limit_wait": limit_wait,
        "on_limit": "raise",
        "retry": dict(FAST_RETRY),
        **extra,
    }


@pytest.fixture
def proxies() -> Iterator[list[Proxy]]:
    """Proxies made by a test, closed at its end."""
    made: list[Proxy] = []
    yield made
    for proxy in made:
        proxy.close()


@dataclass
class Worker:
    """A worker process (tests/faults/worker.py) and what it printed."""

    name: str
    process: subprocess.Popen[str]
    lines: list[dict[str, Any]] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def answered(self) -> list[int]:
        """Total tokens of each answer the worker got."""
        return [int(line["ok"]) for line in self.lines if "ok" in line]

    @property
    def refused(self) -> list[str]:
        """Messages of the BudgetExceeded errors the worker got."""
        return [str(line["refused"]) for line in self.lines if "refused" in line]

    @property
    def errors(self) -> list[str]:
        """Any other error the worker got."""
        return [str(line["error"]) for line in self.lines if "error" in line]


class Workers:
    """Starts worker processes; kills any still running at teardown (by pid)."""

    def __init__(self) -> None:
        self.started: list[Worker] = []

    def start(
        self,
        name: str,
        *,
        environ: Mapping[str, str],
        config: Mapping[str, Any],
        ledger: str,
        threads: int,
        calls: int,
        max_output_tokens: int = OUTPUT_WORDS,
    ) -> Worker:
        """Start a worker: ``threads`` threads each calling up to ``calls`` times until refused."""
        spec = {
            "name": name,
            "environ": dict(environ),
            "config": dict(config),
            "ledger": ledger,
            "threads": threads,
            "calls": calls,
            "max_output_tokens": max_output_tokens,
        }
        process = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **environ},
        )
        worker = Worker(name, process)
        worker.reader = threading.Thread(target=self._read, args=(worker,), daemon=True)
        worker.reader.start()
        self.started.append(worker)
        return worker

    @staticmethod
    def _read(worker: Worker) -> None:
        assert worker.process.stdout is not None
        for line in worker.process.stdout:
            if line.strip():
                worker.lines.append(json.loads(line))

    def kill(self, worker: Worker) -> None:
        """SIGKILL the worker and reap it."""
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.wait(timeout=10)

    def wait(self, worker: Worker, timeout: float) -> Worker:
        """Wait for the worker to exit (fails the test after ``timeout`` seconds)."""
        try:
            code = worker.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {worker.name} still running after {timeout} s")
        if worker.reader is not None:
            worker.reader.join(timeout=10)
        assert worker.process.stderr is not None
        assert code == 0, f"worker {worker.name} exited {code}: {worker.process.stderr.read()}"
        return worker

    def close(self) -> None:
        """Kill every worker still running, by pid."""
        for worker in self.started:
            if worker.process.poll() is None:
                os.kill(worker.process.pid, signal.SIGKILL)
                worker.process.wait(timeout=10)
            for stream in (worker.process.stdout, worker.process.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def workers() -> Iterator[Workers]:
    """Worker processes of one test, killed at its end if still running."""
    made = Workers()
    yield made
    made.close()


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test that keeps its data across a kill (appendfsync always)."""
    need_redis_server()
    server = RedisServer(args=["--appendonly", "yes", "--appendfsync", "always"])
    with server:
        yield server


def wait_for_ledger_clock(ledger: Any, moment: float, *, steps: int = 400) -> None:
    """Wait until the ledger's clock (``ledger.now()``) passes ``moment``, in bounded steps.

    Holds expire by the ledger's clock, so this waits on the clock that decides, not on a
    sleep being long enough; it fails the test if the clock is still short after ``steps``.
    """
    tick = threading.Event()
    for _ in range(steps):
        if ledger.now() > moment:
            return
        tick.wait(0.02)
    pytest.fail(f"the ledger clock did not reach {moment} (now {ledger.now()})")


def ledger_url(kind: str, tmp_path: Path, redis: str | None) -> str:
    """The ledger URL of a ledger kind: memory, sqlite, sqlite-lease or redis."""
    if kind == "memory":
        return "memory://"
    if kind.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    assert redis is not None
    return redis


def lease_env(kind: str, seconds: float) -> dict[str, str]:
    """The environment that turns SQLite leasing on (with a lease of ``seconds``) or off."""
    if kind == "sqlite-lease":
        return {"LLMPROXY_LEDGER_LEASE": "on", LEASE_SECONDS_ENV: str(seconds)}
    return {"LLMPROXY_LEDGER_LEASE": "off"}
