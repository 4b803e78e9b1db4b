"""What ``POST /v1/messages`` adds over ``POST /v1/chat/completions``, in one process.

The gateway's ASGI app is called directly (no HTTP client, no server: what is measured is the
gateway's own work, key check, parsing, the Proxy call and rendering) in front of the fake
OpenAI upstream on loopback. The two routes take turns request by request, with the same
prompt and the same scripted reply, so drift in the machine's speed hits both alike. Reported
per route and mode (whole answer, stream): p50 and p99 of the time to the end of the answer,
and the Messages route's difference at p50.

    .venv/bin/python bench/bench_messages.py             # 2000 requests per route and mode
    .venv/bin/python bench/bench_messages.py --quick     # 200: a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from llmproxy_gateway.app import create_app
from llmproxy_gateway.keys import KeyStore
from llmproxy_testing.fake_openai import FakeOpenAI

UPSTREAM_KEY = "sk-upstream-bench-0123456789"
App = Callable[..., Awaitable[None]]


async def call(app: App, path: str, key: str, body: bytes) -> float:
    """One request through the app; the seconds until its last body message was sent."""
    headers = [
        (b"content-type", b"application/json"),
        (b"authorization", b"Bearer " + key.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    done = asyncio.Event()
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    status = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif not message.get("more_body"):
            done.set()

    start = time.perf_counter()
    await app(scope, receive, send)
    elapsed = time.perf_counter() - start
    if status != 200:
        raise RuntimeError(f"{path} answered {status}")
    return elapsed


def bodies(stream: bool) -> dict[str, bytes]:
    """The same request in both shapes."""
    messages = [{"role": "user", "content": "Say hello in a few words."}]
    chat = {"model": "openai/gpt-4o-mini", "messages": messages, "max_tokens": 64}
    anthropic = {"model": "openai/gpt-4o-mini", "messages": messages, "max_tokens": 64}
    if stream:
        chat["stream"] = anthropic["stream"] = True
    return {
        "/v1/chat/completions": json.dumps(chat).encode(),
        "/v1/messages": json.dumps(anthropic).encode(),
    }


async def run(requests: int) -> None:
    """Serve the app in front of the fake upstream and time both routes, alternating."""
    with FakeOpenAI(api_key=UPSTREAM_KEY) as upstream, tempfile.TemporaryDirectory() as tmp:
        upstream.reply = "Hello there, nice to meet you today."
        keys = KeyStore(Path(tmp) / "keys.db")
        _record, key = keys.create("bench")
        environ = {
            "OPENAI_API_KEY": UPSTREAM_KEY,
            "OPENAI_BASE_URL": upstream.base_url,
            "LLMPROXY_DATA_DIR": tmp,
            "LLMPROXY_USAGE_LOG_URL": "memory://",
        }
        app = create_app(environ=environ, keys=keys)
        gateway = app.gateway  # type: ignore[attr-defined]
        gateway.warm()
        try:
            for stream in (False, True):
                timings: dict[str, list[float]] = {}
                routes = bodies(stream)
                for _ in range(20):  # warm both routes' code paths
                    for path, body in routes.items():
                        await call(app, path, key, body)
                for _ in range(requests):
                    for path, body in routes.items():
                        timings.setdefault(path, []).append(await call(app, path, key, body))
                report("stream" if stream else "whole", timings)
        finally:
            await gateway.aclose()


def report(mode: str, timings: dict[str, list[float]]) -> None:
    """Print p50/p99 per route (ms) and the Messages route's difference at p50."""
    p50 = {}
    for path, values in timings.items():
        ordered = sorted(values)
        p50[path] = statistics.median(ordered)
        p99 = ordered[int(len(ordered) * 0.99) - 1]
        print(f"{mode:6} {path:22} p50 {p50[path] * 1000:7.3f} ms  p99 {p99 * 1000:7.3f} ms")
    added = (p50["/v1/messages"] - p50["/v1/chat/completions"]) * 1000
    print(f"{mode:6} /v1/messages adds {added:+.3f} ms at p50")


def main() -> None:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="200 requests per route and mode")
    args = parser.parse_args()
    asyncio.run(run(200 if args.quick else args.requests))


if __name__ == "__main__":
    main()
