r"""A fake OpenAI-compatible upstream (chat completions, responses, models) for tests.

``FakeOpenAI`` serves ``POST /v1/chat/completions`` and ``POST /v1/responses``
(JSON and SSE streaming) and ``GET /v1/models`` in OpenAI's wire shapes on
``127.0.0.1``. Point a real client at :attr:`FakeOpenAI.base_url`::

    with FakeOpenAI(api_key="sk-test") as server:
        client = OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        server.enqueue(Fault.status(429, retry_after=0.05))
        ...

Default reply: ``"Echo: " + <text of the last user message>``; configurable
with ``reply=`` (a string, or a callable receiving the decoded request body
and returning a string or a :class:`Reply`).

Token counting rule (deterministic, so tests can predict usage):

* ``count_tokens(text) = max(1, len(text.split()))`` (whitespace-split words).
* ``prompt_tokens = 3 + sum(count_tokens(message_text(m)) + 3 for m in messages)``
  where ``message_text`` is the string content, or the ``text`` parts of a
  list content joined with spaces, or ``""`` (so an empty message counts 1),
  plus what its image, file and audio parts bill: an image ``85 + 170 * tiles``
  (OpenAI's tile formula with gpt-4o's numbers; detail low: 85; a size the fake
  cannot read: 1445), a file 1 token per 4 bytes (a ``file_id``: 1000), audio 10
  per second of WAV, else 1 per 100 bytes (see :mod:`llmproxy_testing._media`).
* ``completion_tokens = max(1, words(reasoning) + words(content))`` counted
  after truncation; tool calls add nothing.
  ``completion_tokens_details.reasoning_tokens = words(reasoning)``;
  ``prompt_tokens_details.cached_tokens = 0``;
  ``total_tokens = prompt_tokens + completion_tokens``.
* ``max_completion_tokens`` (or, if absent, legacy ``max_tokens``) = N: if the
  reply has more than N words (reasoning words first, then content words), it
  is cut to its first N words and ``finish_reason`` is ``"length"``; otherwise
  ``"stop"`` (``"tool_calls"`` when the reply has tool calls).

Streaming splits text into pieces with ``re.findall(r"\s*\S+|\s+", text)``
(each word with its leading whitespace), one SSE chunk per piece, so the
concatenated deltas reproduce the text exactly. A tool call's first delta
carries its id, name and first argument piece; the other pieces follow, one
delta each.

Tools, as the real API checks them: ``tools`` entries must be ``{"type":
"function", "function": {"name": ...}}`` (a hosted type such as
``file_search`` is 400: Chat Completions runs no hosted tools);
``tool_choice`` needs ``tools``; a ``tool`` message must answer a call of an
earlier assistant message, and every call of an assistant message must be
answered by the ``tool`` messages right after it.

The Responses API (``POST /v1/responses``, see :mod:`llmproxy_testing._responses`)
answers the same scripted replies as Responses API output items: function
calls from ``Reply.tool_calls``, hosted tool outputs from
``Reply.hosted_outputs`` and annotations from ``Reply.citations``.

Scripted :class:`Fault` / :class:`Reply` items (see :meth:`FakeServer.enqueue`)
are consumed FIFO, one per authenticated request to chat completions or
responses.

Fault tests: :meth:`FakeServer.hold` holds chat requests (all, or those a predicate picks)
until :meth:`FakeServer.release` (a hung upstream, a request in flight while its client is
killed); :attr:`FakeOpenAI.billed_tokens` sums the usage of every chat completion the fake
produced, delivered or not: what the upstream billed, to compare with a budget.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import ssl
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from . import _responses, _schema
from ._embeddings import DEFAULT_DIMENSIONS, fake_vector, to_base64
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
from ._media import content_media_tokens

__all__ = [
    "DEFAULT_MODELS",
    "FakeOpenAI",
    "Fault",
    "RecordedRequest",
    "Reply",
    "ReplyFunction",
    "ResponseWriter",
    "count_tokens",
    "mask_api_key",
    "message_text",
    "prompt_tokens",
    "split_words",
]


DEFAULT_MODELS: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "o4-mini")

_WORD_RE = re.compile(r"\s*\S+|\s+")
_MODEL_CREATED = 1_700_000_000
_FINGERPRINT = "fp_fake"
_KEYS_URL = "https://platform.openai.com/account/api-keys"
_NO_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password "
    "field (with blank username) if you're accessing the API from your browser and are "
    "prompted for a username and password. You can obtain an API key from "
    f"{_KEYS_URL}."
)
_BAD_JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)"
)
# status -> (default message, error type, error code)
_ERROR_DEFAULTS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to access this resource.", "invalid_request_error", None),
    404: (
        "The model does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    ),
    408: ("Request timed out.", "timeout", None),
    409: ("Conflict.", "invalid_request_error", None),
    422: ("Unprocessable entity.", "invalid_request_error", None),
    429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    502: ("Bad gateway.", "server_error", None),
    503: (
        "The engine is currently overloaded, please try again later.",
        "server_error",
        None,
    ),
    504: ("Gateway timeout.", "server_error", None),
}


# --------------------------------------------------------------------------- helpers


def split_words(text: str) -> list[str]:
    """Split text into streaming pieces: each word with its leading whitespace.

    Args:
        text: Any text.

    Returns:
        Pieces whose concatenation is exactly ``text`` (trailing whitespace
        forms a last piece of its own).

    """
    return _WORD_RE.findall(text)


def _word_count(text: str | None) -> int:
    return len(text.split()) if text else 0


def count_tokens(text: str | None) -> int:
    """Count "tokens" the way the fake does: whitespace-split words, at least 1.

    Args:
        text: Text to count (``None`` counts as empty).

    Returns:
        ``max(1, len(text.split()))``.

    """
    return max(1, _word_count(text))


def message_text(message: Mapping[str, Any]) -> str:
    """Return the text of a chat message as the fake sees it.

    Args:
        message: One element of the request's ``messages``.

    Returns:
        The string content; for list content the ``text`` of its text parts
        joined with single spaces; otherwise ``""``.

    """
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        ]
        return " ".join(texts)
    return ""


def prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Compute ``usage.prompt_tokens`` for a request's messages.

    Args:
        messages: The request's ``messages``.

    Returns:
        ``3 + sum(count_tokens(message_text(m)) + 3 for m in messages)``, plus the
        image, file and audio parts' tokens (see the module's rule).

    """
    return 3 + sum(
        count_tokens(message_text(m)) + 3 + content_media_tokens(m.get("content")) for m in messages
    )


def mask_api_key(key: str) -> str:
    """Mask an API key like the 401 error message does.

    Args:
        key: The key the client sent.

    Returns:
        The first 4 characters, ``"****"`` and the last 4 characters; keys of
        8 characters or fewer become just ``"****"``.

    """
    if len(key) <= 8:
        return "****"
    return f"{key[:4]}****{key[-4:]}"


def _format_seconds(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def _default_text(body: Mapping[str, Any]) -> str:
    schema = _schema.openai_schema(body)
    if schema is None:
        schema = _schema.json_mode_schema(body)
    if schema is not None:
        return _schema.answer(schema)
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, Mapping) and message.get("role") == "user":
                return "Echo: " + message_text(message)
    return "Echo: "


def _merge_usage(usage: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        current = usage.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict):
            current.update(value)
        else:
            usage[key] = value
    if "total_tokens" not in overrides:
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return usage


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None, code: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclasses.dataclass(slots=True)
class _Completion:
    """A fully resolved answer to one chat request."""

    reasoning_pieces: list[str]
    content_pieces: list[str]
    content: str | None
    reasoning: str | None
    tool_calls: list[dict[str, Any]]
    finish_reason: str
    usage: dict[str, Any]
    chunk_delay: float


# --------------------------------------------------------------------------- server


class FakeOpenAI(FakeServer):
    """Fake OpenAI upstream: chat completions and responses (JSON and SSE), the models list.

    Attributes:
        reply: Default reply: ``None`` (echo the last user message), a fixed
            string, or a callable ``(request_body) -> str | Reply`` (the body
            of a chat completion or of a response, whichever was asked).
        api_key: If set, every request must carry ``Authorization: Bearer
            <api_key>``; otherwise it gets OpenAI's 401 error.
        models: Model ids listed by ``GET /v1/models``.
        min_output_tokens: The smallest ``max_output_tokens`` the Responses
            API accepts (OpenAI's is 16; tests of tiny caps lower it).
        stream_usage: ``False`` ignores a chat stream's
            ``stream_options.include_usage``: no usage chunk is sent, as some
            OpenAI-compatible servers do (the client must count what arrived).

    ``port`` picks the port (0: any free one); ``tls``, a server ``ssl.SSLContext``, serves
    HTTPS.

    """

    #: Whether ``POST /v1/responses`` is served (OpenAI-compatible services may lack it).
    responses_api: ClassVar[bool] = True
    #: Whether ``POST /v1/embeddings`` is served.
    embeddings_api: ClassVar[bool] = True

    def __init__(
        self,
        *,
        reply: str | ReplyFunction | None = None,
        api_key: str | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
        min_output_tokens: int = _responses.MIN_OUTPUT_TOKENS,
        stream_usage: bool = True,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(port=port, tls=tls)
        self.reply = reply
        self.stream_usage = stream_usage
        self.api_key = api_key
        self.models: tuple[str, ...] = tuple(models)
        self.min_output_tokens = min_output_tokens
        self._ids = itertools.count(1)
        self._billed_tokens = 0
        self._billed_answers = 0
        self.add_route("POST", "/v1/chat/completions", self._chat_completions)
        self.add_route("GET", "/v1/models", self._list_models)
        if self.embeddings_api:
            self.add_route("POST", "/v1/embeddings", self._embeddings)
        if self.responses_api:
            self.add_route("POST", "/v1/responses", self._responses)

    @property
    def base_url(self) -> str:
        """The client base URL, ``"http://127.0.0.1:PORT/v1"``."""
        return f"{self.url}/v1"

    # -- billing -------------------------------------------------------------------

    @property
    def billed_tokens(self) -> int:
        """Tokens this upstream billed: ``total_tokens`` of every chat completion it produced.

        A completion is billed when the fake produces it (after any :meth:`hold`), whether or
        not its client is still connected to read it, as a real upstream bills a request
        whose client went away; error answers and scripted faults other than streamed ones
        are not billed. :meth:`clear` resets it.
        """
        with self._data_lock:
            return self._billed_tokens

    @property
    def billed_answers(self) -> int:
        """Chat completions this upstream produced (and billed), see :attr:`billed_tokens`."""
        with self._data_lock:
            return self._billed_answers

    def _bill(self, usage: Mapping[str, Any]) -> None:
        with self._data_lock:
            self._billed_tokens += int(usage.get("total_tokens") or 0)
            self._billed_answers += 1

    def clear(self) -> None:
        """Forget recorded requests and scripted items, and reset the billed totals."""
        super().clear()
        with self._data_lock:
            self._billed_tokens = 0
            self._billed_answers = 0

    # -- errors and auth ---------------------------------------------------------

    def _request_id(self) -> str:
        return f"req_{next(self._ids):032x}"

    def send_error(self, response: ResponseWriter, status: int, message: str) -> None:
        """Send an error in OpenAI's shape (type from the status, ``code`` null).

        Used for routing errors such as unknown paths (404) and wrong methods (405).

        Args:
            response: Writer for the response.
            status: HTTP status code.
            message: Error message.

        """
        _, error_type, _ = self._error_defaults(status)
        self._send_openai_error(response, status, message, error_type, None)

    @staticmethod
    def _error_defaults(status: int) -> tuple[str, str, str | None]:
        defaults = _ERROR_DEFAULTS.get(status)
        if defaults is not None:
            return defaults
        error_type = "server_error" if status >= 500 else "invalid_request_error"
        return f"Error {status}.", error_type, None

    def _send_openai_error(
        self,
        response: ResponseWriter,
        status: int,
        message: str,
        error_type: str,
        code: str | None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        all_headers = {"x-request-id": self._request_id()}
        if headers:
            all_headers.update(headers)
        body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
        response.send_json(status, body, all_headers)

    async def dispatch(self, request: RecordedRequest, response: ResponseWriter) -> None:
        """Check the bearer key (when configured), then route the request.

        Args:
            request: The recorded request.
            response: Writer for the response.

        """
        expected = self.api_key
        if expected is not None:
            auth = request.headers.get("authorization", "")
            scheme, _, sent = auth.partition(" ")
            sent = sent.strip()
            if scheme.lower() != "bearer" or not sent:
                self._send_openai_error(
                    response, 401, _NO_KEY_MESSAGE, "invalid_request_error", None
                )
                return
            if sent != expected:
                message = (
                    f"Incorrect API key provided: {mask_api_key(sent)}. "
                    f"You can find your API key at {_KEYS_URL}."
                )
                self._send_openai_error(
                    response, 401, message, "invalid_request_error", "invalid_api_key"
                )
                return
        await super().dispatch(request, response)

    # -- endpoints ---------------------------------------------------------------------

    async def _list_models(self, request: RecordedRequest, response: ResponseWriter) -> None:
        data = [
            {"id": model, "object": "model", "created": _MODEL_CREATED, "owned_by": "openai"}
            for model in self.models
        ]
        response.send_json(
            200, {"object": "list", "data": data}, {"x-request-id": self._request_id()}
        )

    async def _embeddings(self, request: RecordedRequest, response: ResponseWriter) -> None:
        """``POST /v1/embeddings``: :func:`~llmproxy_testing._embeddings.fake_vector` per input.

        ``input`` is a string or a list of 1 to 2048 non-empty strings; ``dimensions`` sets the
        vectors' length (default 16); ``encoding_format`` ``float`` (default) or ``base64``.
        ``prompt_tokens`` = the sum of :func:`count_tokens` of the inputs. Scripted faults are
        consumed as for chat.
        """
        _item, answered = await self.take_scripted(
            response,
            streaming=False,
            malformed=b'{"object": "list", "data": [{',
            send_fault=self._send_fault_status,
            headers={"x-request-id": self._request_id()},
        )
        if answered:
            return
        body = json_object(request)
        if body is None:
            self._send_openai_error(response, 400, _BAD_JSON_MESSAGE, "invalid_request_error", None)
            return
        given = body.get("input")
        texts: list[Any] = (
            [given] if isinstance(given, str) else given if isinstance(given, list) else []
        )
        dimensions = body.get("dimensions", DEFAULT_DIMENSIONS)
        encoding = body.get("encoding_format", "float")
        problem = None
        if not isinstance(body.get("model"), str):
            problem = ("you must provide a model parameter", "model")
        elif not 1 <= len(texts) <= 2048 or not all(isinstance(t, str) and t for t in texts):
            problem = ("'input' must be a non-empty string or 1 to 2048 of them", "input")
        elif isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
            problem = ("'dimensions' must be a positive integer", "dimensions")
        elif encoding not in ("float", "base64"):
            problem = ("'encoding_format' must be 'float' or 'base64'", "encoding_format")
        if problem is not None:
            self._send_openai_error(
                response, 400, problem[0], "invalid_request_error", None, problem[1]
            )
            return
        tokens = sum(count_tokens(t) for t in texts)
        data: list[dict[str, Any]] = []
        for index, text in enumerate(texts):
            vector = fake_vector(text, dimensions)
            data.append(
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": to_base64(vector) if encoding == "base64" else vector,
                }
            )
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        await self.gate(request, lambda: self._bill(usage))
        response.send_json(
            200,
            {"object": "list", "data": data, "model": body["model"], "usage": usage},
            {"x-request-id": self._request_id()},
        )

    async def _chat_completions(self, request: RecordedRequest, response: ResponseWriter) -> None:
        body = json_object(request)
        stream = body is not None and body.get("stream") is True
        item, answered = await self.take_scripted(
            response,
            streaming=stream,
            malformed=b'{"id": "chatcmpl-malformed", "object": "chat.completion", "choices": [{',
            send_fault=self._send_fault_status,
            headers={"x-request-id": self._request_id()},
        )
        if answered:
            return

        if body is None:
            self._send_openai_error(response, 400, _BAD_JSON_MESSAGE, "invalid_request_error", None)
            return
        try:
            model = self._validate(body)
            self._check_tools(body)
            self._check_response_format(body)
            completion = self._complete(body, item if isinstance(item, Reply) else None)
            if isinstance(item, Reply) and item.model is not None:
                model = item.model  # the upstream's resolved name, as OpenAI reports it
        except _BadRequest as exc:
            self._send_openai_error(
                response, 400, exc.message, "invalid_request_error", exc.code, exc.param
            )
            return

        await self.gate(request, lambda: self._bill(completion.usage))
        completion_id = f"chatcmpl-fake{next(self._ids):025d}"
        created = int(time.time())
        if not stream:
            response.send_json(
                200,
                self._completion_body(completion_id, created, model, completion),
                {"x-request-id": self._request_id()},
            )
            return

        options = body.get("stream_options")
        include_usage = (
            self.stream_usage and isinstance(options, dict) and options.get("include_usage") is True
        )
        drop_after = stream_cut(item)
        malformed = isinstance(item, Fault) and item.kind == "malformed"
        await self._stream(
            response,
            completion_id,
            created,
            model,
            completion,
            include_usage=include_usage,
            drop_after=drop_after,
            malformed=malformed,
            item=item,
        )

    async def _responses(self, request: RecordedRequest, response: ResponseWriter) -> None:
        body = json_object(request)
        stream = body is not None and body.get("stream") is True
        item, answered = await self.take_scripted(
            response,
            streaming=stream,
            malformed=b'{"id": "resp_malformed", "object": "response", "output": [{',
            send_fault=self._send_fault_status,
            headers={"x-request-id": self._request_id()},
        )
        if answered:
            return

        if body is None:
            self._send_openai_error(response, 400, _BAD_JSON_MESSAGE, "invalid_request_error", None)
            return
        try:
            model, limit = _responses.check_request(body, self.min_output_tokens)
            reply = self._resolve_responses_reply(body, item if isinstance(item, Reply) else None)
            answer = _responses.build_answer(
                body,
                text=reply.text,
                reasoning=reply.reasoning,
                tool_calls=reply.tool_calls,
                hosted_outputs=reply.hosted_outputs,
                citations=reply.citations,
                usage=reply.usage,
                chunk_delay=reply.chunk_delay,
                limit=limit,
                next_number=lambda: next(self._ids),
            )
        except _responses.ResponsesBadRequest as exc:
            self._send_openai_error(
                response, 400, exc.message, "invalid_request_error", exc.code, exc.param
            )
            return
        final = _responses.response_object(
            body,
            f"resp_fake{next(self._ids):025d}",
            int(time.time()),
            model,
            status=answer.status,
            output=answer.output,
            usage=answer.usage,
            incomplete_reason=answer.incomplete_reason,
        )
        headers = {"x-request-id": self._request_id()}
        if not stream:
            response.send_json(200, final, headers)
            return
        drop_after = stream_cut(item)
        malformed = isinstance(item, Fault) and item.kind == "malformed"
        response.start_stream(
            200, {"content-type": "text/event-stream", "cache-control": "no-cache", **headers}
        )
        deltas = 0
        pacer = Pacer(answer.chunk_delay)
        for sequence, (event, is_delta) in enumerate(_responses.stream_events(answer, final)):
            if is_delta:
                if drop_after is not None and deltas >= drop_after:
                    await wait_released(item, response)
                    await response.abort()
                    return
                deltas += 1
                await pacer.wait()
            data = json.dumps({**event, "sequence_number": sequence}, separators=(",", ":"))
            response.write(f"event: {event['type']}\ndata: {data}\n\n".encode())
            await response.drain()
            if malformed and sequence == 1:
                response.write(b'event: response.output_text.delta\ndata: {"type": "resp\n\n')
                response.end()
                return
        if drop_after is not None:
            await wait_released(item, response)
            await response.abort()
            return
        response.end()

    def _resolve_responses_reply(self, body: dict[str, Any], scripted: Reply | None) -> Reply:
        return resolve_reply(self.reply, body, scripted, _responses.default_text)

    # -- chat internals ----------------------------------------------------------------

    def _send_fault_status(self, response: ResponseWriter, fault: Fault) -> None:
        status = fault.status_code
        default_message, error_type, code = self._error_defaults(status)
        message = fault.message
        if message is None:
            message = default_message
            if status == 429 and fault.retry_after is not None:
                message += f" Please try again in {round(fault.retry_after * 1000)}ms."
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["retry-after"] = _format_seconds(fault.retry_after)
            headers["retry-after-ms"] = _format_seconds(fault.retry_after * 1000)
        headers.update(fault.headers)
        self._send_openai_error(
            response,
            status,
            message,
            fault.error_type if fault.error_type is not None else error_type,
            fault.error_code if fault.error_code is not None else code,
            headers=headers,
        )

    @staticmethod
    def _validate(body: Mapping[str, Any]) -> str:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequest(
                "Missing required parameter: 'model'.", "model", "missing_required_parameter"
            )
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest(
                "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
            )
        if not all(isinstance(m, dict) for m in messages):
            raise _BadRequest(
                "Invalid type for 'messages': expected an array of objects.",
                "messages",
                "invalid_type",
            )
        return model

    @staticmethod
    def _check_tools(body: Mapping[str, Any]) -> None:
        """Refuse tools, tool_choice and tool messages the way Chat Completions does."""
        tools = body.get("tools")
        if tools is not None:
            if not isinstance(tools, list):
                raise _BadRequest(
                    "Invalid type for 'tools': expected an array of objects.",
                    "tools",
                    "invalid_type",
                )
            for index, tool in enumerate(tools):
                kind = tool.get("type") if isinstance(tool, Mapping) else None
                if kind != "function":
                    raise _BadRequest(
                        f"Invalid value: '{kind}'. Supported values are: 'function' and 'custom'.",
                        f"tools[{index}].type",
                        "invalid_value",
                    )
                function = tool.get("function")
                if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
                    raise _BadRequest(
                        f"Missing required parameter: 'tools[{index}].function.name'.",
                        f"tools[{index}].function.name",
                        "missing_required_parameter",
                    )
        if body.get("tool_choice") is not None and not tools:
            raise _BadRequest(
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools'"
                " are specified.",
                "tool_choice",
                None,
            )
        pending: list[str] = []
        for index, message in enumerate(body.get("messages") or ()):
            role = message.get("role")
            if role == "tool":
                call_id = message.get("tool_call_id")
                if call_id not in pending:
                    raise _BadRequest(
                        "Invalid parameter: messages with role 'tool' must be a response to a"
                        " preceeding message with 'tool_calls'.",
                        f"messages.[{index}].role",
                        None,
                    )
                pending.remove(call_id)
                continue
            if pending:
                raise _BadRequest(
                    "An assistant message with 'tool_calls' must be followed by tool messages"
                    " responding to each 'tool_call_id'. The following tool_call_ids did not"
                    f" have response messages: {', '.join(pending)}",
                    "messages",
                    None,
                )
            if role == "assistant":
                pending = [
                    str(c.get("id"))
                    for c in message.get("tool_calls") or ()
                    if isinstance(c, Mapping)
                ]
        if pending:
            raise _BadRequest(
                "An assistant message with 'tool_calls' must be followed by tool messages"
                " responding to each 'tool_call_id'. The following tool_call_ids did not have"
                f" response messages: {', '.join(pending)}",
                "messages",
                None,
            )

    def _resolve_reply(self, body: dict[str, Any], scripted: Reply | None) -> Reply:
        return resolve_reply(self.reply, body, scripted, _default_text)

    @staticmethod
    def _check_response_format(body: Mapping[str, Any]) -> None:
        """Refuse a strict json_schema that strict mode cannot take, as OpenAI does."""
        fmt = body.get("response_format")
        if not isinstance(fmt, Mapping) or fmt.get("type") != "json_schema":
            return
        spec = fmt.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
            raise _BadRequest(
                "Missing required parameter: 'response_format.json_schema.name'.",
                "response_format.json_schema.name",
                "missing_required_parameter",
            )
        if spec.get("strict") is True:
            problem = _schema.strict_problem(spec.get("schema"))
            if problem:
                raise _BadRequest(
                    f"Invalid schema for response_format '{spec['name']}': {problem}",
                    "response_format",
                    "invalid_json_schema",
                )

    @staticmethod
    def _limit(body: Mapping[str, Any]) -> int | None:
        for name in ("max_completion_tokens", "max_tokens"):
            value = body.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise _BadRequest(
                    f"Invalid type for '{name}': expected an integer.", name, "invalid_type"
                )
            if value < 1:
                raise _BadRequest(
                    f"Invalid '{name}': integer below minimum value. Expected a value >= 1, "
                    f"but got {value} instead.",
                    name,
                    "integer_below_min_value",
                )
            return value
        return None

    def _tool_calls(self, raw: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = []
        for entry in raw:
            function = entry.get("function")
            if isinstance(function, Mapping):
                name = function.get("name", "")
                arguments = function.get("arguments", "")
            else:
                name = entry.get("name", "")
                arguments = entry.get("arguments", "")
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments)
            call_id = entry.get("id") or f"call_fake{next(self._ids):020d}"
            calls.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            )
        return calls

    def _complete(self, body: dict[str, Any], scripted: Reply | None) -> _Completion:
        limit = self._limit(body)
        reply = self._resolve_reply(body, scripted)
        reasoning_pieces = split_words(reply.reasoning) if reply.reasoning else []
        content_pieces = split_words(reply.text) if reply.text else []
        reasoning_words = _word_count(reply.reasoning)
        content_words = _word_count(reply.text)
        truncated = limit is not None and reasoning_words + content_words > limit
        if truncated and limit is not None:
            reasoning_pieces = reasoning_pieces[:limit]
            reasoning_words = min(reasoning_words, limit)
            content_words = limit - reasoning_words
            content_pieces = content_pieces[:content_words]
        tool_calls = self._tool_calls(reply.tool_calls)
        if reply.text is None and tool_calls:
            content: str | None = None
        else:
            content = "".join(content_pieces)
        reasoning = "".join(reasoning_pieces) if reply.reasoning is not None else None
        if reply.finish_reason is not None:
            finish_reason = reply.finish_reason
        elif truncated:
            finish_reason = "length"
        elif tool_calls:
            finish_reason = "tool_calls"
        else:
            finish_reason = "stop"
        prompt = prompt_tokens(body["messages"])
        completion = max(1, reasoning_words + content_words)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning_words,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        if reply.usage:
            _merge_usage(usage, reply.usage)
        return _Completion(
            reasoning_pieces=reasoning_pieces,
            content_pieces=content_pieces,
            content=content,
            reasoning=reasoning,
            tool_calls=tool_calls,
            finish_reason=finish_reason,
            usage=usage,
            chunk_delay=reply.chunk_delay,
        )

    @staticmethod
    def _completion_body(
        completion_id: str, created: int, model: str, completion: _Completion
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": completion.content,
            "refusal": None,
            "annotations": [],
        }
        if completion.reasoning is not None:
            message["reasoning_content"] = completion.reasoning
        if completion.tool_calls:
            message["tool_calls"] = completion.tool_calls
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": completion.finish_reason,
                }
            ],
            "usage": completion.usage,
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
        }

    async def _stream(
        self,
        response: ResponseWriter,
        completion_id: str,
        created: int,
        model: str,
        completion: _Completion,
        *,
        include_usage: bool,
        drop_after: int | None,
        malformed: bool,
        item: Scripted | None = None,
    ) -> None:
        def event(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
            chunk: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": _FINGERPRINT,
                "choices": choices,
            }
            if include_usage:
                chunk["usage"] = usage
            data = json.dumps(chunk, separators=(",", ":"))
            return b"data: " + data.encode() + b"\n\n"

        def delta(fields: dict[str, Any], finish_reason: str | None = None) -> bytes:
            return event(
                [{"index": 0, "delta": fields, "logprobs": None, "finish_reason": finish_reason}]
            )

        deltas: list[dict[str, Any]] = [
            {"reasoning_content": p} for p in completion.reasoning_pieces
        ]
        deltas += [{"content": p} for p in completion.content_pieces]
        for i, call in enumerate(completion.tool_calls):
            pieces = split_words(call["function"]["arguments"]) or [""]
            first = {**call, "function": {**call["function"], "arguments": pieces[0]}}
            deltas.append({"tool_calls": [{"index": i, **first}]})
            deltas += [
                {"tool_calls": [{"index": i, "function": {"arguments": piece}}]}
                for piece in pieces[1:]
            ]

        response.start_stream(
            200,
            {
                "content-type": "text/event-stream",
                "cache-control": "no-cache",
                "x-request-id": self._request_id(),
            },
        )
        pacer = Pacer(completion.chunk_delay)
        response.write(delta({"role": "assistant", "content": "", "refusal": None}))
        if malformed:
            response.write(b'data: {"id": "' + completion_id.encode() + b'", "choices": [{\n\n')
            response.write(b"data: [DONE]\n\n")
            response.end()
            return
        for index, fields in enumerate(deltas):
            if drop_after is not None and index >= drop_after:
                break
            await pacer.wait()
            response.write(delta(fields))
            await response.drain()
        if drop_after is not None:
            await wait_released(item, response)
            await response.abort()
            return
        await pacer.wait()
        response.write(delta({}, completion.finish_reason))
        if include_usage:
            response.write(event([], completion.usage))
        response.write(b"data: [DONE]\n\n")
        response.end()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a fake OpenAI upstream until interrupted: ``python -m llmproxy_testing.fake_openai``.

    Prints the base URL first, so ``OPENAI_BASE_URL`` can be set from it, e.g. to try
    ``llmproxy chat`` with no network or key::

        python -m llmproxy_testing.fake_openai --port 8765 &
        OPENAI_BASE_URL=http://127.0.0.1:8765/v1 OPENAI_API_KEY=sk-local llmproxy chat "Hello"
    """
    return serve_from_command_line(
        lambda port, reply: FakeOpenAI(port=port, reply=reply),
        "python -m llmproxy_testing.fake_openai",
        argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())
