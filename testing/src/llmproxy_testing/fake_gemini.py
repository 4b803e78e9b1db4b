r"""A fake Gemini upstream (the Gemini API's native REST surface) for tests.

``FakeGemini`` serves ``POST /{version}/models/{model}:generateContent`` (JSON) and
``POST /{version}/models/{model}:streamGenerateContent?alt=sse`` (server-sent events),
``POST /{version}/models/{model}:batchEmbedContents`` (deterministic vectors), and
``GET /{version}/models``, for any version (``v1``, ``v1beta``...), in the Gemini API's wire
shapes, on ``127.0.0.1``. Point the real ``google-genai`` client at it::

    with FakeGemini(api_key="AIza-test") as server:
        client = genai.Client(
            api_key="AIza-test",
            http_options=types.HttpOptions(base_url=server.base_url),
        )
        server.enqueue(Fault.status(429, retry_after=12))
        ...

Behaviour, as the real API does it:

* **API key** in the ``x-goog-api-key`` header or the ``key`` query parameter (when the server
  has one): none is 403 ``PERMISSION_DENIED``; a wrong one is 400 ``INVALID_ARGUMENT`` with an
  ``ErrorInfo`` detail of reason ``API_KEY_INVALID``.
* **Errors** are ``{"error": {"code", "message", "status", "details"}}``. A scripted 429 carries
  a ``google.rpc.RetryInfo`` detail whose ``retryDelay`` is ``Fault.retry_after`` (``"12s"``);
  ``Fault.headers`` adds headers (the real API sends no ``Retry-After``).
* **Replies**: ``Reply.text`` (default ``"Echo: "`` + the text of the last user content that has
  text), ``Reply.reasoning`` as thought parts (``"thought": true``, sent only when the request's
  ``thinkingConfig.includeThoughts`` is true, counted in ``thoughtsTokenCount`` either way) and
  ``Reply.tool_calls`` as ``functionCall`` parts (short form ``{"name", "arguments"}``; a string
  of arguments is parsed as JSON). ``finishReason`` is ``STOP``, ``MAX_TOKENS`` when cut, or
  ``Reply.finish_reason`` (a Gemini name such as ``SAFETY``).
* **Function responses**: a model turn with function calls must be followed by a turn with as
  many function responses (parallel calls are answered together), else 400 as the real API.
* **Thought signatures** (Gemini 3): the first ``functionCall`` part of an answer carries a
  ``thoughtSignature`` the server issued. With ``require_signatures`` (the default) a later
  request whose model content has function calls must send back, on its first ``functionCall``
  part, a signature this server issued or the documented ``skip_thought_signature_validator``
  placeholder; otherwise 400 as the real API answers. ``accept_skip=False`` refuses the
  placeholder too, so a test can tell that the issued signature itself came back.
* **Output cap**: ``generationConfig.maxOutputTokens`` = N cuts the reply after N words,
  thoughts first, then text; ``finishReason`` is then ``MAX_TOKENS``.
* **Usage** (``usageMetadata``, camelCase, zero counts left out as the API does):
  ``promptTokenCount = 3 + sum(words(content) + 3)`` over ``contents`` and the system
  instruction, where a content's words are those of its text parts and of its function
  responses' JSON (at least 1 per content), plus :func:`media_tokens` for each ``inlineData`` /
  ``fileData`` part by Google's documented counts (an image: 258 when both sides are at most
  384 px, else 258 per 768x768 tile; a PDF: 258 per page; audio: 32 per started second; a
  ``fileData`` part, whose bytes the fake cannot see: 258);
  ``candidatesTokenCount = max(1, words(text))``;
  ``thoughtsTokenCount = words(reasoning)``; ``totalTokenCount`` adds them and any
  ``toolUsePromptTokenCount``. ``Reply.usage`` overrides fields (``cachedContentTokenCount``,
  ``toolUsePromptTokenCount``...); the total is recomputed unless given.
* **Streams** (``alt=sse``): one event per word piece (thought pieces first, then text, then the
  function calls in one event); the last event also carries ``finishReason`` and
  ``usageMetadata``. ``Fault.drop_after(n)`` aborts the connection after n events; a non-streamed
  request with that fault is aborted before any response. ``Fault.malformed()`` sends a body (or
  an event) that is not JSON.

Scripted :class:`Fault` / :class:`Reply` items are consumed FIFO, one per authenticated
generate request. Only the standard library and ``llmproxy.media`` (to read image sizes, PDF
pages and WAV lengths) are used.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import itertools
import json
import math
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from llmproxy import media

from . import _schema
from ._embeddings import DEFAULT_DIMENSIONS, fake_vector
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

__all__ = [
    "DEFAULT_MODELS",
    "SKIP_SIGNATURE",
    "FakeGemini",
    "Fault",
    "RecordedRequest",
    "Reply",
    "ResponseWriter",
    "content_text",
    "media_tokens",
    "prompt_token_count",
]


#: Model ids ``GET /{version}/models`` lists.
DEFAULT_MODELS: tuple[str, ...] = ("gemini-3.8-flash", "gemini-3.5-flash", "gemini-3.5-flash-lite")

#: The placeholder signature Google documents for function calls the model did not produce.
SKIP_SIGNATURE = "skip_thought_signature_validator"

_PATH = re.compile(
    r"^/(v1[a-z0-9]*)/models/([^/:]+):(generateContent|streamGenerateContent|batchEmbedContents)$"
)
#: The most requests ``batchEmbedContents`` takes at once, as the Gemini API enforces.
MAX_EMBED_BATCH = 100
_MODELS_PATH = re.compile(r"^/(v1[a-z0-9]*)/models$")

# status -> (default message, Gemini status name)
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("Request contains an invalid argument.", "INVALID_ARGUMENT"),
    401: (
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
        "cookie or other valid authentication credential.",
        "UNAUTHENTICATED",
    ),
    403: ("The caller does not have permission.", "PERMISSION_DENIED"),
    404: ("Requested entity was not found.", "NOT_FOUND"),
    409: ("The request was aborted.", "ABORTED"),
    429: (
        "You exceeded your current quota, please check your plan and billing details.",
        "RESOURCE_EXHAUSTED",
    ),
    499: ("The operation was cancelled.", "CANCELLED"),
    500: ("An internal error has occurred. Please retry or report it.", "INTERNAL"),
    503: ("The model is overloaded. Please try again later.", "UNAVAILABLE"),
    504: ("The service is currently unavailable.", "DEADLINE_EXCEEDED"),
}
_TYPE = "type.googleapis.com/google.rpc."


def _words(text: str | None) -> int:
    return len(text.split()) if text else 0


def _field(obj: Mapping[str, Any], camel: str, snake: str) -> Any:
    """Read a field under its JSON (camelCase) or proto (snake_case) name, as the API accepts."""
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def content_text(content: Mapping[str, Any]) -> str:
    """Return the text of one ``Content`` as the fake counts it.

    Args:
        content: One element of ``contents`` (or the ``systemInstruction``).

    Returns:
        The texts of its non-thought text parts and the JSON of its function responses,
        joined with single spaces.

    """
    texts: list[str] = []
    for part in content.get("parts") or ():
        if not isinstance(part, Mapping):
            continue
        if isinstance(part.get("text"), str) and not part.get("thought"):
            texts.append(part["text"])
        response = _field(part, "functionResponse", "function_response")
        if isinstance(response, Mapping):
            texts.append(json.dumps(response.get("response"), sort_keys=True))
    return " ".join(texts)


def media_tokens(part: Mapping[str, Any]) -> int:
    """Count one part's media tokens as Google documents them (0 for a part without media).

    Args:
        part: One element of a content's ``parts``.

    Returns:
        For ``inlineData``: an image 258 when both sides are at most 384 px, else 258 per
        768x768 tile (258 when its size cannot be read); a PDF 258 per page (at least one);
        audio 32 per started second (by its WAV header; one second when unknown); other data
        258. For ``fileData``: 258.

    """
    if isinstance(_field(part, "fileData", "file_data"), Mapping):
        return 258
    inline = _field(part, "inlineData", "inline_data")
    if not isinstance(inline, Mapping):
        return 0
    mime = str(_field(inline, "mimeType", "mime_type") or "")
    try:
        # The API takes standard and URL-safe base64 (the Python SDK sends the latter).
        text = str(inline.get("data") or "").replace("-", "+").replace("_", "/")
        data = base64.b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        data = b""
    if mime.startswith("image/"):
        size = media.image_size(data[:65536])
        if size is None or (size[0] <= 384 and size[1] <= 384):
            return 258
        return 258 * math.ceil(size[0] / 768) * math.ceil(size[1] / 768)
    if mime == "application/pdf":
        return 258 * max(media.pdf_pages(data) or 0, 1)
    if mime.startswith("audio/"):
        seconds = media.wav_seconds(data) if data[:4] == b"RIFF" else None
        return 32 * max(math.ceil(seconds or 0), 1)
    return 258


def prompt_token_count(body: Mapping[str, Any]) -> int:
    """Compute ``usageMetadata.promptTokenCount`` for a request body.

    Args:
        body: The decoded request body.

    Returns:
        ``3 + sum(max(1, words(content)) + 3)`` over the contents and the system instruction,
        plus :func:`media_tokens` of every part.

    """
    contents = [c for c in body.get("contents") or () if isinstance(c, Mapping)]
    system = _field(body, "systemInstruction", "system_instruction")
    if isinstance(system, Mapping):
        contents.append(system)
    media_total = sum(
        media_tokens(p) for c in contents for p in c.get("parts") or () if isinstance(p, Mapping)
    )
    return 3 + sum(max(1, _words(content_text(c))) + 3 for c in contents) + media_total


def _format_duration(seconds: float) -> str:
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"{text or '0'}s"


def _default_text(body: Mapping[str, Any]) -> str:
    config = _field(body, "generationConfig", "generation_config") or {}
    schema = _field(config, "responseJsonSchema", "response_json_schema")
    if isinstance(schema, Mapping):
        return _schema.answer(schema)
    for content in reversed(body.get("contents") or ()):
        if not isinstance(content, Mapping) or content.get("role", "user") != "user":
            continue
        texts = [
            p["text"]
            for p in content.get("parts") or ()
            if isinstance(p, Mapping) and isinstance(p.get("text"), str)
        ]
        if texts:
            return "Echo: " + " ".join(texts)
    return "Echo: "


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclasses.dataclass(slots=True)
class _Answer:
    """A fully resolved answer: the parts to send, finish reason and usage."""

    thought_pieces: list[str]
    text_pieces: list[str]
    calls: list[dict[str, Any]]
    finish_reason: str
    usage: dict[str, Any]
    chunk_delay: float


class FakeGemini(FakeServer):
    """Fake Gemini API upstream: generateContent (JSON and SSE) and the models list.

    Attributes:
        reply: Default reply: ``None`` (echo the last user text), a fixed string, or a callable
            ``(request_body) -> str | Reply``.
        api_key: If set, every request must carry it (``x-goog-api-key`` or ``?key=``).
        models: Model ids listed by ``GET /{version}/models``.
        require_signatures: Refuse function-call history without a valid thought signature.
        accept_skip: Take the documented placeholder signature as valid (as the real API does).

    """

    def __init__(
        self,
        *,
        reply: str | ReplyFunction | None = None,
        api_key: str | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
        require_signatures: bool = True,
        accept_skip: bool = True,
        port: int = 0,
    ) -> None:
        super().__init__(port=port)
        self.reply = reply
        self.api_key = api_key
        self.models: tuple[str, ...] = tuple(models)
        self.require_signatures = require_signatures
        self.accept_skip = accept_skip
        self._ids = itertools.count(1)
        self._issued: set[str] = set()
        self._issued_lock = threading.Lock()

    @property
    def base_url(self) -> str:
        """The client base URL, ``"http://127.0.0.1:PORT"`` (the SDK adds the version)."""
        return self.url

    @property
    def issued_signatures(self) -> frozenset[str]:
        """The thought signatures (base64 text) this server has handed out."""
        with self._issued_lock:
            return frozenset(self._issued)

    # -- errors and routing -------------------------------------------------------------

    def send_error(self, response: ResponseWriter, status: int, message: str) -> None:
        """Send an error in the Gemini API's shape.

        Args:
            response: Writer for the response.
            status: HTTP status code.
            message: Error message.

        """
        self._send_gemini_error(response, status, message)

    @staticmethod
    def _status_name(status: int) -> str:
        known = _ERRORS.get(status)
        if known is not None:
            return known[1]
        return "INTERNAL" if status >= 500 else "FAILED_PRECONDITION"

    def _send_gemini_error(
        self,
        response: ResponseWriter,
        status: int,
        message: str,
        *,
        details: Sequence[Mapping[str, Any]] = (),
        headers: Mapping[str, str] | None = None,
        status_name: str | None = None,
    ) -> None:
        error: dict[str, Any] = {
            "code": status,
            "message": message,
            "status": status_name or self._status_name(status),
        }
        if details:
            error["details"] = list(details)
        response.send_json(status, {"error": error}, headers)

    def _check_key(self, request: RecordedRequest, response: ResponseWriter) -> bool:
        expected = self.api_key
        if expected is None:
            return True
        sent = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not sent:
            self._send_gemini_error(
                response,
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
            return False
        if sent != expected:
            self._send_gemini_error(
                response,
                400,
                "API key not valid. Please pass a valid API key.",
                details=[
                    {
                        "@type": _TYPE + "ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ],
            )
            return False
        return True

    async def dispatch(self, request: RecordedRequest, response: ResponseWriter) -> None:
        """Check the API key (when configured), then route by path pattern.

        Args:
            request: The recorded request.
            response: Writer for the response.

        """
        generate = _PATH.match(request.path)
        listing = _MODELS_PATH.match(request.path)
        if generate is None and listing is None:
            await super().dispatch(request, response)
            return
        if not self._check_key(request, response):
            return
        if listing is not None:
            if request.method != "GET":
                self.send_error(response, 405, f"Method {request.method} not allowed")
                return
            models = [
                {"name": f"models/{m}", "displayName": m, "supportedGenerationMethods": []}
                for m in self.models
            ]
            response.send_json(200, {"models": models})
            return
        assert generate is not None
        if request.method != "POST":
            self.send_error(response, 405, f"Method {request.method} not allowed")
            return
        model, method = generate.group(2), generate.group(3)
        if method == "batchEmbedContents":
            await self._embed(request, response, model)
            return
        streaming = method == "streamGenerateContent"
        if streaming and request.query.get("alt") != "sse":
            self.send_error(response, 400, "This fake streams only with alt=sse.")
            return
        await self._generate(request, response, model, streaming)

    # -- embeddings -----------------------------------------------------------------------

    async def _embed(self, request: RecordedRequest, response: ResponseWriter, model: str) -> None:
        """``batchEmbedContents``: :func:`~llmproxy_testing._embeddings.fake_vector` per request.

        Each request's text is its content's text parts joined; ``outputDimensionality`` sets
        the length (default 16); at most :data:`MAX_EMBED_BATCH` requests, each naming
        ``models/<model>``. No usage is reported (as the Gemini API reports none).
        """
        _item, answered = await self.take_scripted(
            response, streaming=False, malformed=b'{"embeddings": [{', send_fault=self._send_fault
        )
        if answered:
            return
        body = json_object(request)
        requests = body.get("requests") if body is not None else None
        if not isinstance(requests, list) or not requests:
            self.send_error(response, 400, "requests must be a non-empty list")
            return
        if len(requests) > MAX_EMBED_BATCH:
            self.send_error(
                response, 400, f"at most {MAX_EMBED_BATCH} requests can be in one batch"
            )
            return
        embeddings: list[dict[str, Any]] = []
        for index, item in enumerate(requests):
            if not isinstance(item, dict) or item.get("model") != f"models/{model}":
                self.send_error(response, 400, f"requests[{index}].model must be models/{model}")
                return
            parts = (item.get("content") or {}).get("parts") or []
            text = " ".join(p["text"] for p in parts if isinstance(p, dict) and "text" in p)
            if not text:
                self.send_error(response, 400, f"requests[{index}] has no text")
                return
            dimensions = item.get("outputDimensionality", DEFAULT_DIMENSIONS)
            embeddings.append({"values": fake_vector(text, int(dimensions))})
        response.send_json(200, {"embeddings": embeddings})

    # -- generate -------------------------------------------------------------------------

    async def _generate(
        self, request: RecordedRequest, response: ResponseWriter, model: str, streaming: bool
    ) -> None:
        body = json_object(request)
        item, answered = await self.take_scripted(
            response,
            streaming=streaming,
            malformed=b'{"candidates": [{"content": {',
            send_fault=self._send_fault,
        )
        if answered:
            return

        if body is None:
            self.send_error(response, 400, "Invalid JSON payload received.")
            return
        try:
            self._validate(body)
            answer = self._answer(body, item if isinstance(item, Reply) else None)
        except _BadRequest as exc:
            self.send_error(response, exc.status, exc.message)
            return

        response_id = f"fake-{next(self._ids):020d}"
        if not streaming:
            parts: list[dict[str, Any]] = []
            if answer.thought_pieces:
                parts.append({"text": "".join(answer.thought_pieces), "thought": True})
            if answer.text_pieces or not answer.calls:
                parts.append({"text": "".join(answer.text_pieces)})
            parts.extend(answer.calls)
            response.send_json(
                200, self._response_body(parts, answer, model, response_id, final=True)
            )
            return
        drop_after = stream_cut(item)
        malformed = isinstance(item, Fault) and item.kind == "malformed"
        await self._stream(response, answer, model, response_id, drop_after, malformed, item)

    def _send_fault(self, response: ResponseWriter, fault: Fault) -> None:
        status = fault.status_code
        message = fault.message or _ERRORS.get(status, (f"Error {status}.", ""))[0]
        details: list[dict[str, Any]] = []
        if status == 429:
            details.append(
                {
                    "@type": _TYPE + "QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": "generativelanguage.googleapis.com/"
                            "generate_content_paid_tier_input_token_count",
                            "quotaId": "GenerateContentPaidTierInputTokensPerModelPerMinute",
                        }
                    ],
                }
            )
        if fault.retry_after is not None:
            details.append(
                {"@type": _TYPE + "RetryInfo", "retryDelay": _format_duration(fault.retry_after)}
            )
        if fault.error_code is not None:
            details.append({"@type": _TYPE + "ErrorInfo", "reason": fault.error_code})
        self._send_gemini_error(
            response,
            status,
            message,
            details=details,
            headers=dict(fault.headers),
            status_name=fault.error_type,
        )

    def _validate(self, body: Mapping[str, Any]) -> None:
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise _BadRequest("* GenerateContentRequest.contents: contents is not specified")
        for index, content in enumerate(contents):
            if not isinstance(content, Mapping):
                raise _BadRequest(f"Invalid value at 'contents[{index}]'")
            role = content.get("role", "user")
            if role not in ("user", "model", "function"):
                raise _BadRequest(
                    f"Please use a valid role: user, model. (got {role!r} in contents[{index}])"
                )
            parts = content.get("parts")
            if not isinstance(parts, list) or not parts:
                raise _BadRequest(
                    f"* GenerateContentRequest.contents[{index}].parts: contents.parts must not "
                    "be empty."
                )
            if role == "model" and self.require_signatures:
                self._check_signature(index, parts)
        self._check_function_responses(contents)
        config = _field(body, "generationConfig", "generation_config") or {}
        limit = _field(config, "maxOutputTokens", "max_output_tokens")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise _BadRequest(
                "* GenerateContentRequest.generation_config.max_output_tokens: "
                "max_output_tokens must be positive."
            )

    @staticmethod
    def _check_function_responses(contents: Sequence[Mapping[str, Any]]) -> None:
        """A turn of function calls must be answered by as many function responses, next."""

        def count(content: Mapping[str, Any], camel: str, snake: str) -> int:
            return sum(
                1
                for p in content.get("parts") or ()
                if isinstance(p, Mapping) and isinstance(_field(p, camel, snake), Mapping)
            )

        for index, content in enumerate(contents[:-1]):
            calls = count(content, "functionCall", "function_call")
            if not calls:
                continue
            answers = count(contents[index + 1], "functionResponse", "function_response")
            if answers != calls:
                raise _BadRequest(
                    "Please ensure that the number of function response parts is equal to the"
                    " number of function call parts of the function call turn."
                )

    def _check_signature(self, index: int, parts: Sequence[Any]) -> None:
        for position, part in enumerate(parts):
            if not isinstance(part, Mapping):
                continue
            call = _field(part, "functionCall", "function_call")
            if not isinstance(call, Mapping):
                continue
            signature = _field(part, "thoughtSignature", "thought_signature")
            if not signature:
                raise _BadRequest(
                    "Function call is missing a thought_signature in functionCall parts. This "
                    "is required for tools to work correctly, and missing thought_signature may "
                    "lead to degraded model performance. Additional data, function call "
                    f"`default_api:{call.get('name')}` , position {position + 1}. Please refer "
                    "to https://ai.google.dev/gemini-api/docs/thought-signatures for more details."
                )
            skipped = signature == SKIP_SIGNATURE and self.accept_skip
            if not skipped and signature not in self.issued_signatures:
                raise _BadRequest(f"Corrupted thought signature (contents[{index}]).")
            return  # only the first function call of a step carries the signature

    def _resolve_reply(self, body: dict[str, Any], scripted: Reply | None) -> Reply:
        return resolve_reply(self.reply, body, scripted, _default_text)

    def _calls(self, raw: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        for entry in raw:
            function = entry.get("function")
            source = function if isinstance(function, Mapping) else entry
            arguments = source.get("arguments", source.get("args", {}))
            if isinstance(arguments, str):
                arguments = json.loads(arguments) if arguments.strip() else {}
            call: dict[str, Any] = {"name": source.get("name", ""), "args": arguments}
            if entry.get("id"):
                call["id"] = entry["id"]
            part: dict[str, Any] = {"functionCall": call}
            if not parts:
                signature = base64.b64encode(f"fake-signature-{next(self._ids)}".encode()).decode()
                with self._issued_lock:
                    self._issued.add(signature)
                part["thoughtSignature"] = signature
            parts.append(part)
        return parts

    def _answer(self, body: dict[str, Any], scripted: Reply | None) -> _Answer:
        config = _field(body, "generationConfig", "generation_config") or {}
        limit = _field(config, "maxOutputTokens", "max_output_tokens")
        thinking = _field(config, "thinkingConfig", "thinking_config") or {}
        include_thoughts = bool(_field(thinking, "includeThoughts", "include_thoughts"))
        reply = self._resolve_reply(body, scripted)
        thought_pieces = split_words(reply.reasoning) if reply.reasoning else []
        text_pieces = split_words(reply.text) if reply.text else []
        thought_words = _words(reply.reasoning)
        text_words = _words(reply.text)
        truncated = limit is not None and thought_words + text_words > limit
        if truncated:
            thought_pieces = thought_pieces[:limit]
            thought_words = min(thought_words, limit)
            text_words = limit - thought_words
            text_pieces = text_pieces[:text_words]
        calls = [] if truncated else self._calls(reply.tool_calls)
        if reply.finish_reason is not None:
            finish = reply.finish_reason
        else:
            finish = "MAX_TOKENS" if truncated else "STOP"
        prompt = prompt_token_count(body)
        candidates = max(1, text_words) if (text_words or not calls) else 1
        usage: dict[str, Any] = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": candidates,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
        }
        if thought_words:
            usage["thoughtsTokenCount"] = thought_words
        if reply.usage:
            usage.update(reply.usage)
        if not (reply.usage and "totalTokenCount" in reply.usage):
            usage["totalTokenCount"] = sum(
                int(usage.get(k) or 0)
                for k in (
                    "promptTokenCount",
                    "candidatesTokenCount",
                    "thoughtsTokenCount",
                    "toolUsePromptTokenCount",
                )
            )
        return _Answer(
            thought_pieces=thought_pieces if include_thoughts else [],
            text_pieces=text_pieces,
            calls=calls,
            finish_reason=finish,
            usage=usage,
            chunk_delay=reply.chunk_delay,
        )

    @staticmethod
    def _response_body(
        parts: list[dict[str, Any]],
        answer: _Answer,
        model: str,
        response_id: str,
        *,
        final: bool,
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        body: dict[str, Any] = {
            "candidates": [candidate],
            "modelVersion": model,
            "responseId": response_id,
        }
        if final:
            candidate["finishReason"] = answer.finish_reason
            body["usageMetadata"] = answer.usage
        return body

    async def _stream(
        self,
        response: ResponseWriter,
        answer: _Answer,
        model: str,
        response_id: str,
        drop_after: int | None,
        malformed: bool,
        item: Scripted | None = None,
    ) -> None:
        events: list[list[dict[str, Any]]] = [
            [{"text": piece, "thought": True}] for piece in answer.thought_pieces
        ]
        events += [[{"text": piece}] for piece in answer.text_pieces]
        if answer.calls:
            events.append(list(answer.calls))
        if not events:
            events.append([{"text": ""}])
        response.start_stream(
            200, {"content-type": "text/event-stream", "x-content-type-options": "nosniff"}
        )
        if malformed:
            response.write(b'data: {"candidates": [{"content": \r\n\r\n')
            response.end()
            return
        last = len(events) - 1
        pacer = Pacer(answer.chunk_delay)
        for index, parts in enumerate(events):
            if drop_after is not None and index >= drop_after:
                await wait_released(item, response)
                await response.abort()
                return
            await pacer.wait()
            body = self._response_body(parts, answer, model, response_id, final=index == last)
            data = json.dumps(body, separators=(",", ":")).encode()
            response.write(b"data: " + data + b"\r\n\r\n")
            await response.drain()
        if drop_after is not None:
            await wait_released(item, response)
            await response.abort()
            return
        response.end()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a fake Gemini upstream until interrupted: ``python -m llmproxy_testing.fake_gemini``.

    Prints the base URL first, so ``GEMINI_BASE_URL`` can be set from it::

        python -m llmproxy_testing.fake_gemini --port 8767 &
        GEMINI_BASE_URL=http://127.0.0.1:8767 GEMINI_API_KEY=local \
            llmproxy chat -m gemini/gemini-3.8-flash "Hello"
    """
    return serve_from_command_line(
        lambda port, reply: FakeGemini(port=port, reply=reply),
        "python -m llmproxy_testing.fake_gemini",
        argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())
