"""Per-deployment limits of an alias hold across Proxies (processes) sharing one Redis ledger."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from llmproxy import (
    BaseProvider,
    ChatRequest,
    Completion,
    Deployment,
    Message,
    Proxy,
    RateLimited,
    Router,
    Usage,
)


class Named(BaseProvider):
    """Answers with its name."""

    def __init__(self, name: str) -> None:
        super().__init__(None)
        self.name = name

    def chat(self, request: ChatRequest) -> Completion:
        return Completion(Message("assistant", self.name), Usage(3, 1), request.model, "stop")

    async def achat(self, request: ChatRequest) -> Completion:
        return self.chat(request)


def test_deployment_rpm_is_shared_through_redis(redis_url: str, tmp_path: Path) -> None:
    proxies = [
        Proxy(
            {"use_history": False},
            providers={"a": Named("a"), "b": Named("b")},
            routers={
                "smart": Router(
                    [Deployment("a/m", rpm=3), Deployment("b/m", rpm=2)], rng=random.Random(seed)
                )
            },
            ledger=redis_url,
            history="memory://",
            environ={"LLMPROXY_DATA_DIR": str(tmp_path / str(seed))},
        )
        for seed in (1, 2)
    ]
    try:
        # Five calls from two Proxies, each with its own router: the limits are in Redis.
        served = Counter(proxies[i % 2].chat("hi", model="smart").provider for i in range(5))
        assert served == {"a": 3, "b": 2}
        for proxy in proxies:
            with pytest.raises(RateLimited) as caught:
                proxy.chat("hi", model="smart")
            assert caught.value.policy == "deployment-rpm"
        rows = {r.claim.key: r.used for r in proxies[0].usage(model="a/m")}
        assert rows["deployment-rpm|model:a/m"] == 3
    finally:
        for proxy in proxies:
            proxy.close()
