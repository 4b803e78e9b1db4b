r"""A fake DeepSeek upstream: OpenAI-compatible chat completions with DeepSeek's own behaviour.

``FakeDeepSeek`` is a :class:`~llmproxy_testing.fake_openai.FakeOpenAI` that also serves the
root paths DeepSeek uses (``POST /chat/completions``, ``GET /models``; the ``/v1`` paths keep
working) and behaves like DeepSeek where it differs from OpenAI::

    with FakeDeepSeek(api_key="sk-test") as server:
        client = OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        ...

* **Thinking mode is on by default.** Every answer carries ``reasoning_content`` (in the
  message, and as deltas before the answer's deltas when streaming): the scripted
  ``Reply.reasoning``, else the server's default (``reasoning=``, ``"Thinking it over."`` unless
  set). A request with ``"thinking": {"type": "disabled"}`` (what
  ``extra_body={"thinking": {"type": "disabled"}}`` sends) gets no reasoning at all.
* **Reasoning must come back after tool calls.** In thinking mode, a request whose history
  holds an assistant message with ``tool_calls`` but no ``reasoning_content`` key is refused with
  400 and DeepSeek's message (an empty string counts as sent).
* **The output cap is ``max_tokens``**, reasoning included (``max_completion_tokens`` is ignored,
  as an unknown parameter would be).
* **Usage** has ``prompt_cache_hit_tokens`` and ``prompt_cache_miss_tokens`` (hit + miss =
  prompt), ``prompt_tokens_details.cached_tokens`` (= hit) and
  ``completion_tokens_details.reasoning_tokens``. Hits are 0 unless ``prefix_cache=True``: then
  the leading messages a request shares with an earlier request count as cache hits (their
  tokens, by the fake's counting rule), or a ``Reply(usage={"prompt_cache_hit_tokens": n})``
  scripts them.

Token counting, streaming pieces and the Fault/Reply queue are FakeOpenAI's (see its module).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeAlias

from ._http import Fault, RecordedRequest, Reply, ResponseWriter, serve_from_command_line
from .fake_openai import (
    FakeOpenAI,
    ReplyFunction,
    _BadRequest,
    _Completion,
    _merge_usage,
    count_tokens,
    message_text,
)

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_REASONING",
    "REASONING_REQUIRED_MESSAGE",
    "FakeDeepSeek",
    "Fault",
    "RecordedRequest",
    "Reply",
    "ResponseWriter",
    "thinking_enabled",
]

#: The model ids ``GET /models`` lists (DeepSeek's current names, as of 2026-11).
DEFAULT_MODELS: tuple[str, ...] = ("deepseek-flash", "deepseek-v4-pro")

#: The reasoning sent in thinking mode when neither the Reply nor the server sets one.
DEFAULT_REASONING = "Thinking it over."

#: DeepSeek's 400 message when reasoning is not passed back after a tool call.
REASONING_REQUIRED_MESSAGE = (
    "The `reasoning_content` in the thinking mode must be passed back to the API."
)

ReasoningFunction: TypeAlias = Callable[[dict[str, Any]], str]


def thinking_enabled(body: Mapping[str, Any]) -> bool:
    """Tell whether a request runs in thinking mode (DeepSeek's default).

    Args:
        body: The decoded request body.

    Returns:
        False only when ``thinking.type`` is ``"disabled"``.

    """
    thinking = body.get("thinking")
    return not (isinstance(thinking, Mapping) and thinking.get("type") == "disabled")


def _prefix_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    return sum(count_tokens(message_text(m)) + 3 for m in messages)


class FakeDeepSeek(FakeOpenAI):
    """Fake DeepSeek upstream: FakeOpenAI with thinking mode, cache usage and DeepSeek's checks.

    Attributes:
        reasoning: Reasoning sent in thinking mode when the Reply has none: a string, or a
            callable receiving the decoded request body.
        prefix_cache: Count leading messages shared with an earlier request as cache hits.

    """

    #: DeepSeek has no Responses API.
    responses_api: ClassVar[bool] = False

    def __init__(
        self,
        *,
        reply: str | ReplyFunction | None = None,
        reasoning: str | ReasoningFunction = DEFAULT_REASONING,
        api_key: str | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
        prefix_cache: bool = False,
        port: int = 0,
    ) -> None:
        super().__init__(reply=reply, api_key=api_key, models=models, port=port)
        self.reasoning = reasoning
        self.prefix_cache = prefix_cache
        self._seen: list[list[str]] = []
        self._seen_lock = threading.Lock()
        self.add_route("POST", "/chat/completions", self._chat_completions)
        self.add_route("GET", "/models", self._list_models)

    @property
    def base_url(self) -> str:
        """The client base URL, ``"http://127.0.0.1:PORT"`` (DeepSeek's API has no ``/v1``)."""
        return self.url

    # -- DeepSeek's differences ------------------------------------------------------------

    @staticmethod
    def _limit(body: Mapping[str, Any]) -> int | None:
        value = body.get("max_tokens")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _BadRequest(
                "Invalid type for 'max_tokens': expected an integer.", "max_tokens", None
            )
        if value < 1:
            raise _BadRequest(
                "Invalid max_tokens value, the valid range of max_tokens is [1, 393216];"
                f" got {value}",
                "max_tokens",
                "invalid_request_error",
            )
        return value

    def _resolve_reply(self, body: dict[str, Any], scripted: Reply | None) -> Reply:
        resolved = super()._resolve_reply(body, scripted)
        if not thinking_enabled(body):
            return dataclasses.replace(resolved, reasoning=None)
        if resolved.reasoning is not None:
            return resolved
        default = self.reasoning
        reasoning = default if isinstance(default, str) else default(body)
        return dataclasses.replace(resolved, reasoning=reasoning)

    @staticmethod
    def _check_reasoning_passed_back(body: Mapping[str, Any]) -> None:
        if not thinking_enabled(body):
            return
        for message in body.get("messages") or ():
            if (
                isinstance(message, Mapping)
                and message.get("role") == "assistant"
                and message.get("tool_calls")
                and not isinstance(message.get("reasoning_content"), str)
            ):
                raise _BadRequest(REASONING_REQUIRED_MESSAGE, None, "invalid_request_error")

    def _cache_hits(self, messages: Sequence[Mapping[str, Any]]) -> int:
        keys = [json.dumps(m, sort_keys=True) for m in messages]
        with self._seen_lock:
            best = 0
            for earlier in self._seen:
                shared = 0
                for mine, theirs in zip(keys[:-1], earlier, strict=False):
                    if mine != theirs:
                        break
                    shared += 1
                best = max(best, shared)
            self._seen.append(keys)
        return _prefix_tokens(messages[:best])

    def _complete(self, body: dict[str, Any], scripted: Reply | None) -> _Completion:
        self._check_reasoning_passed_back(body)
        overrides = scripted.usage if scripted is not None else None
        if scripted is not None and overrides:
            scripted = dataclasses.replace(scripted, usage=None)
        completion = super()._complete(body, scripted)
        base = completion.usage
        prompt = int(base["prompt_tokens"])
        hit = self._cache_hits(body["messages"]) if self.prefix_cache else 0
        reasoning_tokens = int(base["completion_tokens_details"]["reasoning_tokens"])
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": base["completion_tokens"],
            "total_tokens": base["total_tokens"],
            "prompt_tokens_details": {"cached_tokens": hit},
            "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "prompt_cache_hit_tokens": hit,
            "prompt_cache_miss_tokens": prompt - hit,
        }
        if overrides:
            _merge_usage(usage, overrides)
            if "prompt_cache_hit_tokens" in overrides:
                hit = int(usage["prompt_cache_hit_tokens"])
                usage["prompt_tokens_details"]["cached_tokens"] = hit
                if "prompt_cache_miss_tokens" not in overrides:
                    usage["prompt_cache_miss_tokens"] = int(usage["prompt_tokens"]) - hit
        completion.usage = usage
        return completion


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a fake DeepSeek upstream until interrupted.

    Run it as ``python -m llmproxy_testing.fake_deepseek``.

    Prints the base URL first, so ``DEEPSEEK_BASE_URL`` can be set from it::

        python -m llmproxy_testing.fake_deepseek --port 8766 &
        DEEPSEEK_BASE_URL=http://127.0.0.1:8766 DEEPSEEK_API_KEY=sk-local \
            llmproxy chat -m deepseek/deepseek-flash "Hello"
    """
    return serve_from_command_line(
        lambda port, reply: FakeDeepSeek(port=port, reply=reply),
        "python -m llmproxy_testing.fake_deepseek",
        argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())
