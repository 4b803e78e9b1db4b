"""A fake Anthropic upstream (the Messages API) for tests.

``FakeAnthropic`` serves ``POST /v1/messages`` (JSON, or server-sent events with ``"stream":
true``) and ``POST /v1/messages/count_tokens`` in the Messages API's wire shapes, on
``127.0.0.1``. Point the real ``anthropic`` client at it::

    with FakeAnthropic(api_key="sk-ant-test") as server:
        client = anthropic.Anthropic(api_key="sk-ant-test", base_url=server.base_url)
        server.enqueue(Fault.status(529, retry_after=3))
        ...

Behaviour, as the real API does it:

* **API key** in the ``x-api-key`` header or as ``Authorization: Bearer`` (how the SDK sends
  it from 2.x on): a missing or wrong one is 401
  ``authentication_error``.
* **Errors** are ``{"type": "error", "error": {"type", "message"}}`` with the API's type names
  (``invalid_request_error``, ``rate_limit_error``, ``overloaded_error`` for 529...);
  ``Fault.retry_after`` sends ``retry-after``. A ``Fault.status`` first in the script also
  fails a ``count_tokens`` request (replies are left for ``/v1/messages``).
* **Requests** must carry ``model``, ``max_tokens`` (a positive int) and non-empty
  ``messages`` whose roles alternate between ``user`` and ``assistant`` starting with ``user``;
  an assistant turn with ``tool_use`` blocks must be followed by a user turn with a
  ``tool_result`` for each, and every message but a final assistant one must have content,
  with no empty text block, else 400 as the real API answers. An assistant turn with
  ``tool_use`` whose request enables ``thinking`` must start with a ``thinking`` block whose
  ``signature`` this server issued (``issued_signatures``), else 400. ``thinking`` needs a
  ``budget_tokens`` of at least 1024 and below ``max_tokens``, else 400. A ``file`` source
  (a Files API ``file_id``) needs ``anthropic-beta: files-api-2025-04-14``, else 400.
* **Replies**: ``Reply.text`` (default ``"Echo: "`` + the text of the last user turn; with
  ``output_config.format`` an answer fitting the schema), ``Reply.reasoning`` as a ``thinking``
  block with a signature (only when the request enables ``thinking``) and ``Reply.tool_calls``
  as ``tool_use`` blocks (short form ``{"name", "arguments"}``). ``stop_reason`` is
  ``end_turn``, ``tool_use``, ``max_tokens`` when cut (``max_tokens`` = N cuts after N words,
  thinking first), or ``Reply.finish_reason``.
* **Usage**: ``input_tokens = 3 + sum(words + 3)`` over the system prompt and the messages
  (text, tool inputs' and results' JSON), plus 1600 per image and 3000 per document page
  block; ``output_tokens = max(1, words of text and thinking)``, and with ``thinking``
  enabled ``output_tokens_details.thinking_tokens`` (the words of thinking).
  ``Reply.usage`` overrides fields (``cache_read_input_tokens``...); ``cache_creation`` splits
  ``cache_creation_input_tokens`` by time to live (all ``ephemeral_5m_input_tokens`` unless
  ``Reply.usage`` gives it).
* **Streams**: ``message_start`` (with the input and cache usage), a ``ping``, then per
  block ``content_block_start``, one
  ``content_block_delta`` per word piece (``thinking_delta`` then ``signature_delta``,
  ``text_delta``, ``input_json_delta``) and ``content_block_stop``, then ``message_delta`` with
  the stop reason and output usage (``output_tokens`` and ``output_tokens_details``), then
  ``message_stop``. ``Fault.drop_after(n)`` aborts after
  n delta events; ``Fault.malformed()`` sends an event that is not JSON;
  :meth:`FakeAnthropic.fail_stream` sends an ``error`` event (``overloaded_error``) after n
  delta events, in a stream that began with status 200.

Only the standard library is used.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from . import _schema
from ._http import (
    FakeServer,
    Fault,
    Pacer,
    RecordedRequest,
    Reply,
    ReplyFunction,
    ResponseWriter,
    Scripted,
    json_object,
    resolve_reply,
    serve_from_command_line,
    stream_cut,
    wait_released,
)
from .fake_openai import split_words

__all__ = ["FakeAnthropic", "Fault", "RecordedRequest", "Reply", "input_token_count"]

_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your rate limit."),
    500: ("api_error", "Internal server error."),
    529: ("overloaded_error", "Overloaded"),
}
#: The beta a request with a Files API ``file`` source must name in ``anthropic-beta``.
FILES_BETA = "files-api-2025-04-14"
#: Tokens the fake bills for an image block and for each page of a document block.
IMAGE_TOKENS = 1600
PAGE_TOKENS = 3000


class _BadRequest(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _has_file_source(value: Any) -> bool:
    """Whether a request's content (nested tool results too) has a ``file`` source."""
    if isinstance(value, Mapping):
        source = value.get("source")
        if isinstance(source, Mapping) and source.get("type") == "file":
            return True
        return any(_has_file_source(v) for v in (value.get("content"), value.get("messages")))
    if isinstance(value, list):
        return any(_has_file_source(v) for v in value)
    return False


def _words(text: str | None) -> int:
    return len(text.split()) if text else 0


def _block_text(block: Any) -> str:
    if isinstance(block, str):
        return block
    if not isinstance(block, Mapping):
        return ""
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "tool_use":
        return json.dumps(block.get("input"), sort_keys=True)
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            return " ".join(_block_text(b) for b in content)
        return str(content or "")
    return ""


def _blocks(content: Any) -> list[Any]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content) if isinstance(content, list) else []


def input_token_count(body: Mapping[str, Any]) -> int:
    """Count a request's input tokens as the fake bills them (see the module's docstring)."""
    total = 3
    system = body.get("system")
    if system:
        total += max(1, _words(" ".join(_block_text(b) for b in _blocks(system)))) + 3
    for message in body.get("messages") or ():
        if not isinstance(message, Mapping):
            continue
        blocks = _blocks(message.get("content"))
        total += max(1, _words(" ".join(_block_text(b) for b in blocks))) + 3
        for block in blocks:
            if isinstance(block, Mapping) and block.get("type") == "image":
                total += IMAGE_TOKENS
            elif isinstance(block, Mapping) and block.get("type") == "document":
                total += PAGE_TOKENS
    return total


def _default_text(body: Mapping[str, Any]) -> str:
    fmt = (body.get("output_config") or {}).get("format")
    if isinstance(fmt, Mapping) and isinstance(fmt.get("schema"), Mapping):
        return _schema.answer(fmt["schema"])
    for message in reversed(body.get("messages") or ()):
        if isinstance(message, Mapping) and message.get("role") == "user":
            texts = [
                b["text"]
                for b in _blocks(message.get("content"))
                if isinstance(b, Mapping) and b.get("type") == "text"
            ]
            if texts:
                return "Echo: " + " ".join(texts)
    return "Echo: "


class FakeAnthropic(FakeServer):
    """The fake Messages API (see the module's docstring)."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        port: int = 0,
        reply: str | ReplyFunction | None = None,
    ) -> None:
        super().__init__(port=port)
        self.api_key = api_key
        self.reply = reply
        self._ids = itertools.count(1)
        self._issued: set[str] = set()
        self._issued_lock = threading.Lock()
        self._stream_errors: deque[tuple[int, str, str]] = deque()

    @property
    def base_url(self) -> str:
        """The URL to give the SDK as ``base_url`` (the SDK adds ``/v1/messages``)."""
        return self.url

    @property
    def issued_signatures(self) -> frozenset[str]:
        """The thinking signatures this server has issued."""
        with self._issued_lock:
            return frozenset(self._issued)

    def _issue(self) -> str:
        signature = f"fake-signature-{next(self._ids)}"
        with self._issued_lock:
            self._issued.add(signature)
        return signature

    def fail_stream(
        self, after: int, *, error_type: str = "overloaded_error", message: str = "Overloaded"
    ) -> None:
        """Make the next streamed answer send an ``error`` event after ``after`` deltas.

        The HTTP status is 200 (the stream had begun), as when the real API is overloaded
        mid-stream: ``event: error`` with ``{"type": "error", "error": {"type", "message"}}``,
        then the connection ends without ``message_stop``.
        """
        if after < 0:
            raise ValueError("after must be >= 0")
        with self._issued_lock:
            self._stream_errors.append((after, error_type, message))

    def _take_status_fault(self) -> Fault | None:
        with self._data_lock:
            first = self._script[0] if self._script else None
            if isinstance(first, Fault) and first.kind == "status":
                self._script.popleft()
                return first
        return None

    def _next_stream_error(self) -> tuple[int, str, str] | None:
        with self._issued_lock:
            return self._stream_errors.popleft() if self._stream_errors else None

    def send_error(self, response: ResponseWriter, status: int, message: str) -> None:
        """Answer with the Messages API's error body."""
        kind = _ERRORS.get(status, ("api_error", ""))[0]
        self._error(response, status, kind, message)

    @staticmethod
    def _error(
        response: ResponseWriter,
        status: int,
        kind: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        body = {"type": "error", "error": {"type": kind, "message": message}}
        response.send_json(status, body, headers=dict(headers or {}))

    def _send_fault(self, response: ResponseWriter, fault: Fault) -> None:
        status = fault.status_code
        kind, default = _ERRORS.get(status, ("api_error", f"Error {status}."))
        headers = dict(fault.headers)
        if fault.retry_after is not None:
            headers["retry-after"] = f"{fault.retry_after:g}"
        self._error(response, status, fault.error_type or kind, fault.message or default, headers)

    async def dispatch(self, request: RecordedRequest, response: ResponseWriter) -> None:
        """Route ``/v1/messages`` and ``/v1/messages/count_tokens``."""
        if request.path not in ("/v1/messages", "/v1/messages/count_tokens"):
            await super().dispatch(request, response)
            return
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        key = request.headers.get("x-api-key") or bearer
        if self.api_key is not None and key != self.api_key:
            self._error(response, 401, "authentication_error", "invalid x-api-key")
            return
        if request.method != "POST":
            self.send_error(response, 405, f"Method {request.method} not allowed")
            return
        body = json_object(request)
        if request.path.endswith("/count_tokens"):
            fault = self._take_status_fault()
            if fault is not None:  # a count fails as scripted; replies are left for messages
                self._send_fault(response, fault)
                return
            if body is None:
                self.send_error(response, 400, "invalid JSON")
                return
            try:
                self._check_betas(body, request.headers.get("anthropic-beta", ""))
            except _BadRequest as exc:
                self.send_error(response, 400, exc.message)
                return
            response.send_json(200, {"input_tokens": input_token_count(body)})
            return
        streaming = bool(body.get("stream")) if body is not None else False
        item, answered = await self.take_scripted(
            response,
            streaming=streaming,
            malformed=b'{"type": "message", "content": [',
            send_fault=self._send_fault,
        )
        if answered:
            return
        if body is None:
            self.send_error(response, 400, "invalid JSON")
            return
        try:
            self._validate(body)
            self._check_betas(body, request.headers.get("anthropic-beta", ""))
            message = self._answer(body, item if isinstance(item, Reply) else None)
        except _BadRequest as exc:
            self.send_error(response, 400, exc.message)
            return
        if not streaming:
            response.send_json(200, message)
            return
        delay = item.chunk_delay if isinstance(item, Reply) else 0.0
        await self._stream(response, message, stream_cut(item), item, delay)

    # -- validation -----------------------------------------------------------------------

    @staticmethod
    def _check_betas(body: Mapping[str, Any], header: str) -> None:
        """A ``file`` source needs the Files API beta in ``anthropic-beta``, as the API says."""
        betas = {b.strip() for b in header.split(",")}
        if FILES_BETA not in betas and _has_file_source([body.get("system"), body["messages"]]):
            raise _BadRequest(
                "File sources are a beta feature: add the header"
                f" `anthropic-beta: {FILES_BETA}` to use them."
            )

    def _validate(self, body: Mapping[str, Any]) -> None:
        if not isinstance(body.get("model"), str):
            raise _BadRequest("model: Field required")
        limit = body.get("max_tokens")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise _BadRequest("max_tokens: Field required (a positive integer)")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("messages: at least one message is required")
        thinking = (body.get("thinking") or {}).get("type") == "enabled"
        if thinking:
            budget = body["thinking"].get("budget_tokens")
            if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1024:
                raise _BadRequest("thinking.enabled.budget_tokens: Input should be >= 1024")
            if budget >= limit:
                raise _BadRequest(
                    "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult"
                    " our documentation at https://docs.claude.com/en/docs/build-with-claude/"
                    "extended-thinking#max-tokens-and-context-window-size"
                )
        for index, message in enumerate(messages):
            if not isinstance(message, Mapping):
                raise _BadRequest(f"messages.{index}: Input should be an object")
            expected = "user" if index % 2 == 0 else "assistant"
            if message.get("role") != expected:
                raise _BadRequest(
                    f"messages.{index}.role: roles must alternate between user and assistant,"
                    " starting with user"
                )
            blocks = _blocks(message.get("content"))
            last_assistant = index == len(messages) - 1 and message.get("role") == "assistant"
            if not blocks and not last_assistant:
                raise _BadRequest(
                    f"messages.{index}: all messages must have non-empty content except for"
                    " the optional final assistant message"
                )
            for number, block in enumerate(blocks):
                if (
                    isinstance(block, Mapping)
                    and block.get("type") == "text"
                    and not block.get("text")
                ):
                    raise _BadRequest(
                        f"messages.{index}.content.{number}.text: text content blocks must be"
                        " non-empty"
                    )
            uses = [b for b in blocks if isinstance(b, Mapping) and b.get("type") == "tool_use"]
            if not uses:
                continue
            if thinking:
                first = blocks[0] if blocks else {}
                if not (
                    isinstance(first, Mapping)
                    and first.get("type") in ("thinking", "redacted_thinking")
                    and first.get("signature", "") in self.issued_signatures | {""}
                    and (first.get("type") == "redacted_thinking" or first.get("signature"))
                ):
                    raise _BadRequest(
                        f"messages.{index}.content.0.type: Expected `thinking` or"
                        " `redacted_thinking`, but found another type. When `thinking` is"
                        " enabled, a final `assistant` message must start with a thinking block."
                    )
            following = messages[index + 1] if index + 1 < len(messages) else None
            results = {
                b.get("tool_use_id")
                for b in _blocks(following.get("content") if following else None)
                if isinstance(b, Mapping) and b.get("type") == "tool_result"
            }
            missing = [u.get("id") for u in uses if u.get("id") not in results]
            if missing:
                raise _BadRequest(
                    f"messages.{index + 1}: `tool_use` ids were found without `tool_result`"
                    f" blocks immediately after: {', '.join(map(str, missing))}"
                )

    # -- answers --------------------------------------------------------------------------

    def _answer(self, body: dict[str, Any], scripted: Reply | None) -> dict[str, Any]:
        reply = resolve_reply(self.reply, body, scripted, _default_text)
        limit = int(body["max_tokens"])
        thinking = (body.get("thinking") or {}).get("type") == "enabled"
        thought = split_words(reply.reasoning) if (reply.reasoning and thinking) else []
        text = split_words(reply.text) if reply.text else []
        truncated = len(thought) + len(text) > limit
        thought = thought[:limit]
        text = text[: max(limit - len(thought), 0)]
        content: list[dict[str, Any]] = []
        if thought:
            content.append(
                {"type": "thinking", "thinking": "".join(thought), "signature": self._issue()}
            )
        if text or not reply.tool_calls:
            content.append({"type": "text", "text": "".join(text)})
        if not truncated:
            for entry in reply.tool_calls:
                function = entry.get("function")
                source = function if isinstance(function, Mapping) else entry
                arguments = source.get("arguments", {})
                if isinstance(arguments, str):
                    arguments = json.loads(arguments) if arguments.strip() else {}
                content.append(
                    {
                        "type": "tool_use",
                        "id": entry.get("id") or f"toolu_{next(self._ids):024d}",
                        "name": source.get("name", ""),
                        "input": arguments,
                    }
                )
        if reply.finish_reason is not None:
            stop = reply.finish_reason
        elif truncated:
            stop = "max_tokens"
        elif any(b["type"] == "tool_use" for b in content):
            stop = "tool_use"
        else:
            stop = "end_turn"
        usage: dict[str, Any] = {
            "input_tokens": input_token_count(body),
            "output_tokens": max(1, len(thought) + len(text)),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        if thinking:
            usage["output_tokens_details"] = {"thinking_tokens": len(thought)}
        if reply.usage:
            usage.update(reply.usage)
        usage.setdefault(  # as the real API: the writes by time to live (5-minute by default)
            "cache_creation",
            {
                "ephemeral_5m_input_tokens": usage["cache_creation_input_tokens"],
                "ephemeral_1h_input_tokens": 0,
            },
        )
        return {
            "id": f"msg_{next(self._ids):024d}",
            "type": "message",
            "role": "assistant",
            "model": reply.model or body["model"],
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }

    async def _stream(
        self,
        response: ResponseWriter,
        message: dict[str, Any],
        drop_after: int | None,
        item: Scripted | None,
        chunk_delay: float,
    ) -> None:
        response.start_stream(200, {"content-type": "text/event-stream"})
        if isinstance(item, Fault) and item.kind == "malformed":
            response.write(b'event: message_start\ndata: {"type": "message_start", \n\n')
            response.end()
            return
        start = dict(message, content=[], stop_reason=None)
        # The output so far: its details come with ``message_delta``.
        usage = {k: v for k, v in message["usage"].items() if k != "output_tokens_details"}
        start["usage"] = usage | {"output_tokens": 1}
        events: list[tuple[str, dict[str, Any], bool]] = [
            ("message_start", {"type": "message_start", "message": start}, False),
            ("ping", {"type": "ping"}, False),
        ]
        for index, block in enumerate(message["content"]):
            kind = block["type"]
            empty: dict[str, Any]
            deltas: list[dict[str, Any]] = []
            if kind == "text":
                empty = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": p} for p in split_words(block["text"])]
            elif kind == "thinking":
                empty = {"type": "thinking", "thinking": "", "signature": ""}
                deltas = [
                    {"type": "thinking_delta", "thinking": p}
                    for p in split_words(block["thinking"])
                ]
                deltas.append({"type": "signature_delta", "signature": block["signature"]})
            else:
                empty = dict(block, input={})
                raw = json.dumps(block["input"])
                half = len(raw) // 2
                deltas = [
                    {"type": "input_json_delta", "partial_json": piece}
                    for piece in (raw[:half], raw[half:])
                ]
            events.append(
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": empty},
                    False,
                )
            )
            events += [
                (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": d},
                    True,
                )
                for d in deltas
            ]
            events.append(
                ("content_block_stop", {"type": "content_block_stop", "index": index}, False)
            )
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                    "usage": {
                        key: value
                        for key, value in message["usage"].items()
                        if key in ("output_tokens", "output_tokens_details")
                    },
                },
                False,
            )
        )
        events.append(("message_stop", {"type": "message_stop"}, False))
        pacer = Pacer(chunk_delay)
        sent = 0
        failure = self._next_stream_error()
        for name, data, is_delta in events:
            if failure is not None and is_delta and sent >= failure[0]:
                error = {"type": "error", "error": {"type": failure[1], "message": failure[2]}}
                payload = json.dumps(error, separators=(",", ":"))
                response.write(f"event: error\ndata: {payload}\n\n".encode())
                response.end()
                return
            if is_delta:
                if drop_after is not None and sent >= drop_after:
                    await wait_released(item, response)
                    await response.abort()
                    return
                sent += 1
                await pacer.wait()
            payload = json.dumps(data, separators=(",", ":"))
            response.write(f"event: {name}\ndata: {payload}\n\n".encode())
            await response.drain()
        if drop_after is not None:
            await wait_released(item, response)
            await response.abort()
            return
        response.end()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a fake Anthropic upstream: ``python -m llmproxy_testing.fake_anthropic``."""
    return serve_from_command_line(
        lambda port, reply: FakeAnthropic(port=port, reply=reply),
        "python -m llmproxy_testing.fake_anthropic",
        argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())
