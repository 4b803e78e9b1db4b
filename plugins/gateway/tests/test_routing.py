"""One alias over two OpenAI-compatible servers (two fake upstreams) from configuration alone.

One upstream answers 500 or 429: the call fails over to the other at once, the failing one
cools down (the next calls skip it), usage is recorded against the deployment that answered
with the alias beside it, the dashboard rolls the deployments up under the alias, and
``GET /v1/models`` lists the alias.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from llmproxy import CallEvent, ProviderUnavailable, Proxy, load_config
from llmproxy_gateway import KeyStore
from llmproxy_gateway.app import Gateway, create_app
from llmproxy_gateway.dashboard import data
from llmproxy_testing._http import Fault
from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_usage_log import UsageLog, open_usage_log

from .conftest import chat_bodies, clean_env
from .test_login_throttle import Served

EAST_KEY = "sk-east-0123456789abcdefXYZ"
WEST_KEY = "sk-west-0123456789abcdefXYZ"


class FirstOfTies(random.Random):
    """A "random" choice that always takes the first candidate (declaration order)."""

    def choices(self, population: Sequence[Any], *args: Any, **kwargs: Any) -> list[Any]:  # type: ignore[override]  # only what Router calls
        return [population[0]]


@dataclass
class Setup:
    proxy: Proxy
    east: FakeOpenAI
    west: FakeOpenAI
    usage: UsageLog
    events: list[CallEvent]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    with (
        FakeOpenAI(api_key=EAST_KEY, reply="from east") as east,
        FakeOpenAI(api_key=WEST_KEY, reply="from west") as west,
    ):
        environ = clean_env(EAST_KEY=EAST_KEY, WEST_KEY=WEST_KEY)
        config = load_config(
            {
                "retry": {"max_attempts": 2, "initial_backoff": 0.001, "jitter": 0.0},
                "use_history": False,
                "providers": {
                    "east": {
                        "kind": "openai-compatible",
                        "base_url": east.base_url,
                        "api_key_env": "EAST_KEY",
                    },
                    "west": {
                        "kind": "openai-compatible",
                        "base_url": west.base_url,
                        "api_key_env": "WEST_KEY",
                    },
                },
                "models": {
                    "smart": {
                        "strategy": "least-in-flight",
                        "deployments": [
                            {"model": "east/gpt-4o-mini"},
                            {"model": "west/gpt-4o-mini"},
                        ],
                        "cooldown_seconds": 600,
                    }
                },
            }
        )
        usage = open_usage_log("memory://")
        events: list[CallEvent] = []
        proxy = Proxy(
            config,
            environ=environ,
            ledger="memory://",
            history="memory://",
            observers=[usage, events.append],
        )
        yield Setup(proxy, east, west, usage, events)
        proxy.close()
        usage.close()


@pytest.mark.parametrize("status", [500, 429])
def test_a_failing_upstream_is_cooled_down_and_the_call_fails_over(
    setup: Setup, status: int
) -> None:
    proxy, east, west = setup.proxy, setup.east, setup.west
    router = proxy.routers["smart"]
    router.rng = FirstOfTies()  # least-in-flight with nothing in flight: east, then west
    east.enqueue(Fault.status(status))
    response = proxy.chat("hi", model="smart")
    assert response.text == "from west" and response.provider == "west"
    assert len(chat_bodies(east)) == 1 and len(chat_bodies(west)) == 1
    # one failover, not a retry: two attempts, no retry of east
    assert setup.events[-1].attempts == 2 and setup.events[-1].alias == "smart"
    assert not router.healthy("east/gpt-4o-mini") and router.healthy("west/gpt-4o-mini")
    for _ in range(5):
        assert proxy.chat("hi", model="smart").provider == "west"
    assert len(chat_bodies(east)) == 1  # cooling down: not called again

    records = setup.usage.recent(10)
    assert {(r.model, r.alias) for r in records} == {("west/gpt-4o-mini", "smart")}
    by_model = {t.group: t.calls for t in setup.usage.totals("model")}
    by_alias = {t.group: t.calls for t in setup.usage.totals("alias")}
    assert by_model == {"west/gpt-4o-mini": 6} and by_alias == {"smart": 6}


def test_every_deployment_failing_raises_after_the_callers_retries(setup: Setup) -> None:
    setup.east.enqueue(Fault.status(503), Fault.status(503))
    setup.west.enqueue(Fault.status(503), Fault.status(503))
    with pytest.raises(ProviderUnavailable):
        setup.proxy.chat("hi", model="smart")
    # two deployments (free failover) plus max_attempts - 1 = 1 retry
    assert len(chat_bodies(setup.east)) + len(chat_bodies(setup.west)) == 3
    assert setup.events[-1].attempts == 3 and setup.events[-1].outcome == "error"


def test_the_gateway_lists_the_alias_and_the_dashboard_rolls_it_up(
    setup: Setup, tmp_path: Path
) -> None:
    root = Path(str(tmp_path))
    environ = clean_env(LLMPROXY_DATA_DIR=str(root))
    keys = KeyStore(root / "keys.db")
    _record, key = keys.create("alice")
    gateway = Gateway(proxy=setup.proxy, keys=keys, usage=setup.usage, environ=environ)
    server = Served(create_app(gateway), environ)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        ids = [m.id for m in client.models.list()]
        assert "smart" in ids
        assert client.models.retrieve("smart").owned_by == "llmproxy"
        setup.east.enqueue(Fault.status(500))
        for _ in range(3):
            reply = client.chat.completions.create(
                model="smart", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content in ("from east", "from west")
        page = data(gateway, 3600)
        models = {t["group"]: t["calls"] for t in page["by"]["model"]["totals"]}
        aliases = {t["group"]: t["calls"] for t in page["by"]["alias"]["totals"]}
        assert aliases == {"smart": 3}
        assert sum(models.values()) == 3 and set(models) <= {"east/gpt-4o-mini", "west/gpt-4o-mini"}
        assert {r["alias"] for r in page["recent"]} == {"smart"}
    finally:
        server.stop()
