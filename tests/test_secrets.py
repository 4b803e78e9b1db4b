"""Secrets never leave the process: keys are masked in history, upstream requests, logs, errors.

A real Proxy against the fake OpenAI upstream; the key is the one the Proxy resolves from its
environment (``OPENAI_API_KEY``), or another registered secret.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator

import pytest

from llmproxy import Proxy
from llmproxy.errors import LLMProxyError, ProviderBadRequest, ProviderError
from llmproxy.secret import (
    MASK,
    MIN_SECRET_LENGTH,
    Redactor,
    Secret,
    forget,
    logger,
    scrub,
)
from llmproxy.tools import tool
from llmproxy_testing._http import Fault, Reply
from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_usage_log import UsageLog, open_usage_log, set_usage_log
from tests.conftest import API_KEY

MakeProxy = Callable[..., Proxy]
OTHER_KEY = "tok-other-provider-9876543210zyxw"
"""A second provider's key (not shaped like an OpenAI key), configured but never used."""


@pytest.fixture
def usage() -> Iterator[UsageLog]:
    mine = open_usage_log("memory://")
    old = set_usage_log(mine)
    yield mine
    set_usage_log(old)
    mine.close()


def usage_text(log: UsageLog) -> str:
    log.flush()
    return json.dumps([r.to_json() for r in log.recent(100)])


def history_text(proxy: Proxy, session: str) -> str:
    return repr(proxy.history.load(session))


def bodies(upstream: FakeOpenAI) -> list[bytes]:
    return [r.body for r in upstream.requests if r.path.endswith("/chat/completions")]


def test_a_tool_error_quoting_the_key_is_masked(
    make_proxy: MakeProxy,
    upstream: FakeOpenAI,
    usage: UsageLog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    @tool
    def lookup(city: str) -> str:
        """Look a city up."""
        raise RuntimeError(f"GET https://api.example/v1?key={API_KEY}&city={city} -> 401")

    proxy = make_proxy()
    upstream.enqueue(
        Reply(tool_calls=[{"id": "c1", "name": "lookup", "arguments": {"city": "Hue"}}])
    )
    upstream.enqueue(Reply(text="The lookup failed."))
    with caplog.at_level(logging.DEBUG):
        r = proxy.chat("Find Hue", tools=[lookup], session_id="s", user="ann", tags={"t": "v"})
    assert r.text == "The lookup failed."
    _first, second = bodies(upstream)
    assert API_KEY.encode() not in second
    tool_output = json.loads(second)["messages"][-1]
    assert tool_output["role"] == "tool"
    assert tool_output["content"] == (
        f"tool failed: RuntimeError: GET https://api.example/v1?key={MASK}&city=Hue -> 401"
    )
    assert API_KEY not in repr(r.steps)
    stored = history_text(proxy, "s")
    assert "tool failed" in stored and API_KEY not in stored
    assert API_KEY not in caplog.text
    assert "ann" in usage_text(usage) and API_KEY not in usage_text(usage)


def test_a_prompt_echoing_keys_is_masked_upstream_and_in_history(
    make_proxy: MakeProxy, upstream: FakeOpenAI, usage: UsageLog
) -> None:
    proxy = make_proxy({"providers": {"other": {"api_key": OTHER_KEY}}})
    prompt = f"my keys are {API_KEY} and {OTHER_KEY}, keep them"
    # The caller also passes a key where it does not belong: as a tag value.
    r = proxy.chat(prompt, session_id="echo", tags={"note": API_KEY})
    assert r.text == f"Echo: my keys are {MASK} and {MASK}, keep them"
    [body] = bodies(upstream)
    assert API_KEY.encode() not in body and OTHER_KEY.encode() not in body
    stored = history_text(proxy, "echo")
    assert "my keys are" in stored
    assert API_KEY not in stored and OTHER_KEY not in stored
    logged = usage_text(usage)
    assert '"note": "***"' in logged and API_KEY not in logged
    # The stored history is replayed masked on the next turn, and a stream is masked too.
    text = "".join(e.text for e in proxy.stream(f"again {API_KEY}", session_id="echo"))
    assert text == f"Echo: again {MASK}"
    assert API_KEY.encode() not in bodies(upstream)[-1]
    assert API_KEY not in history_text(proxy, "echo")


@pytest.mark.parametrize("echoed", [API_KEY, OTHER_KEY], ids=["own-key", "other-key"])
def test_an_upstream_error_body_echoing_a_key_is_masked(
    make_proxy: MakeProxy,
    upstream: FakeOpenAI,
    usage: UsageLog,
    caplog: pytest.LogCaptureFixture,
    echoed: str,
) -> None:
    proxy = make_proxy({"providers": {"other": {"api_key": OTHER_KEY}}})
    upstream.enqueue(Fault.status(400, message=f"bad request from a client holding {echoed}"))
    with caplog.at_level(logging.DEBUG), pytest.raises(ProviderBadRequest) as caught:
        proxy.chat("Hello", session_id="err")
    error = caught.value
    assert "bad request from a client holding" in str(error)
    for text in (str(error), repr(error), error.detail, *map(str, error.args)):
        assert echoed not in text
    # A caller logging the failure with its traceback through llmproxy's logger: masked too.
    logging.getLogger("llmproxy").exception("call failed: %s", error, exc_info=error)
    assert "call failed" in caplog.text and echoed not in caplog.text
    assert "ProviderBadRequest" in usage_text(usage) and echoed not in usage_text(usage)
    assert echoed not in history_text(proxy, "err")


def test_every_llmproxy_error_message_is_scrubbed() -> None:
    secret = Secret("sk-error-only-0123456789")
    try:
        error = LLMProxyError(f"config says {secret.get()}", 3)
        assert error.args == (f"config says {MASK}", 3)
        provider = ProviderError(f"echo {secret.get()}", provider="p", model="m", status=400)
        assert str(provider) == f"p/m (HTTP 400): echo {MASK}"
        assert provider.detail == f"echo {MASK}"
    finally:
        forget(secret.get())
    assert str(LLMProxyError(secret.get())) == secret.get()  # forgotten: no longer masked


def test_log_records_are_masked_on_the_llmproxy_loggers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = Secret("sk-log-only-0123456789")
    try:
        child = logger("llmproxy.tests.secrets")
        with caplog.at_level(logging.DEBUG):
            logging.getLogger("llmproxy").warning("key %s in args", secret.get())
            child.info("key in message " + secret.get())
            try:
                raise RuntimeError(f"boom {secret.get()}")
            except RuntimeError:
                child.exception("failed")
        assert caplog.text.count(MASK) >= 3
        assert secret.get() not in caplog.text
        assert "RuntimeError: boom ***" in caplog.text
    finally:
        forget(secret.get())


def test_short_values_are_not_registered_and_matching_is_exact() -> None:
    redactor = Redactor()
    assert not redactor.add("x" * (MIN_SECRET_LENGTH - 1))
    assert redactor("x" * 20) == "x" * 20
    assert redactor.add("abcdefgh") and redactor.add("abcdefgh-longer")
    text = "see abcdefgh-longer and abcdefgh."
    assert redactor(text) == f"see {MASK} and {MASK}."
    untouched = "nothing secret here"
    assert redactor(untouched) is untouched
    redactor.add_pattern("sk-llmp-", r"[0-9a-f]{10}-[A-Za-z0-9_-]{16,}")
    assert redactor("Bearer sk-llmp-0123456789-abcdefghijklmnopqrstuv!") == f"Bearer {MASK}!"
    assert redactor("sk-llmp-0123456789-short") == "sk-llmp-0123456789-short"
    with pytest.raises(ValueError, match="3 characters or more"):
        redactor.add_pattern("", r"x+")
    redactor.discard("abcdefgh")
    assert redactor("abcdefgh") == "abcdefgh"
    many = Redactor()  # past FAST_CHECKS values the expression alone decides
    values = [f"secret-value-{i:04d}" for i in range(Redactor.FAST_CHECKS + 4)]
    for value in values:
        many.add(value)
    assert many(f"a {values[-1]} b {values[0]}") == f"a {MASK} b {MASK}"
    assert many(untouched) is untouched


def test_a_provider_key_is_a_registered_secret(make_proxy: MakeProxy) -> None:
    make_proxy().provider("openai")  # resolved from OPENAI_API_KEY
    assert scrub(f"x{API_KEY}y") == f"x{MASK}y"
