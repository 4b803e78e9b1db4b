"""A real redis-server for the session (FLUSHALL before each test), and helpers to watch it."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from llmproxy.budget.base import Claim, ClaimUsage, Rates, Reservation
from llmproxy_redis_budget import RedisLedger
from llmproxy_testing.redis_fixtures import redis_server, redis_url
from llmproxy_testing.redis_server import RedisServer

T = TypeVar("T")


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def make_ledger(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., RedisLedger]]:
    """Ledgers on the session server (or ``url``), closed after the test.

    Their data dir (the fail-open journal's) is the test's ``tmp_path`` unless ``environ``
    says otherwise.
    """
    made: list[RedisLedger] = []

    def make(url: str | None = None, **options: Any) -> RedisLedger:
        options.setdefault("environ", {"LLMPROXY_DATA_DIR": str(tmp_path)})
        ledger = RedisLedger(url or redis_url, **options)
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        ledger.close()


def client_commands(server: RedisServer, action: Callable[[], object]) -> list[str]:
    """Run ``action`` and return the commands clients sent meanwhile (not those Lua ran).

    Reads the server's MONITOR stream: every command a client connection sends is one line
    with its address; commands a script runs are marked ``lua``. Ends at a sentinel ECHO.
    """
    watcher = redis.Redis.from_url(server.url, decode_responses=True)
    sentinel = f"sentinel-{uuid.uuid4().hex}"
    seen: list[str] = []
    try:
        with watcher.monitor() as monitor:  # type: ignore[no-untyped-call]
            action()
            server.command("ECHO", sentinel)
            while True:
                line = monitor.next_command()
                if sentinel in line["command"]:
                    break
                if line["client_type"] != "lua":
                    seen.append(line["command"].split(" ", 1)[0].upper())
    finally:
        watcher.close()
    return seen


class AsyncDriven:
    """A RedisLedger driven through its async methods only, from sync calls.

    The sync Ledger methods run the ledger's ``a``-methods on an event loop in a thread of its
    own, so the whole LedgerContract exercises the ``redis.asyncio`` path; the async methods
    call the ledger's directly, in the caller's loop.
    """

    def __init__(self, ledger: RedisLedger) -> None:
        self.ledger = ledger
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    def now(self) -> float:
        return self.ledger.now()

    def reserve(
        self,
        claims: Sequence[Claim],
        *,
        input_tokens: int,
        max_output_tokens: int,
        min_output_tokens: int = 1,
        lease: float = 600.0,
        rates: Rates | None = None,
    ) -> Reservation:
        return self._run(
            self.ledger.areserve(
                claims,
                input_tokens=input_tokens,
                max_output_tokens=max_output_tokens,
                min_output_tokens=min_output_tokens,
                lease=lease,
                rates=rates,
            )
        )

    def settle(
        self, reservation: Reservation, *, tokens: int, requests: int = 1, cost: float = 0.0
    ) -> None:
        self._run(self.ledger.asettle(reservation, tokens=tokens, requests=requests, cost=cost))

    def usage(self, claims: Sequence[Claim]) -> list[ClaimUsage]:
        return self._run(self.ledger.ausage(claims))

    def renew(self, reservation: Reservation, *, lease: float) -> bool:
        return self._run(self.ledger.arenew(reservation, lease=lease))

    async def arenew(self, reservation: Reservation, *, lease: float) -> bool:
        return await self.ledger.arenew(reservation, lease=lease)

    async def areserve(
        self,
        claims: Sequence[Claim],
        *,
        input_tokens: int,
        max_output_tokens: int,
        min_output_tokens: int = 1,
        lease: float = 600.0,
        rates: Rates | None = None,
    ) -> Reservation:
        return await self.ledger.areserve(
            claims,
            input_tokens=input_tokens,
            max_output_tokens=max_output_tokens,
            min_output_tokens=min_output_tokens,
            lease=lease,
            rates=rates,
        )

    async def asettle(
        self, reservation: Reservation, *, tokens: int, requests: int = 1, cost: float = 0.0
    ) -> None:
        await self.ledger.asettle(reservation, tokens=tokens, requests=requests, cost=cost)

    async def ausage(self, claims: Sequence[Claim]) -> list[ClaimUsage]:
        return await self.ledger.ausage(claims)

    def close(self) -> None:
        self._run(self.ledger.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
