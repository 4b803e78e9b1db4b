"""The values that flow through a call: messages, requests, responses, usage, stream events.

All are frozen attrs classes; use :func:`attrs.evolve` for a changed copy.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
from attrs import field, frozen

from llmproxy import media
from llmproxy.errors import InvalidRequest

Role = Literal["system", "user", "assistant", "tool"]
ROLES: frozenset[str] = frozenset(("system", "user", "assistant", "tool"))


def _check_role(_instance: object, _attribute: object, value: str) -> None:
    if value not in ROLES:
        raise InvalidRequest(
            f"message role must be one of system, user, assistant, tool; got {value!r}",
            field="role",
        )


def _check_content(_instance: object, _attribute: object, value: object) -> None:
    if not isinstance(value, str):
        raise InvalidRequest(
            f"message content must be a string, got {type(value).__name__}", field="content"
        )


@frozen
class ToolCall:
    """A tool call the model asked for: ``arguments`` is the JSON text the model produced."""

    id: str
    name: str
    arguments: str = "{}"


@frozen
class Citation:
    """A source an answer cites: a file (file search) or a URL, and where in the text it is cited.

    ``start``/``end`` are character offsets into the answer when the provider gives them.
    """

    type: str
    text: str | None = None
    file_id: str | None = None
    filename: str | None = None
    url: str | None = None
    start: int | None = None
    end: int | None = None


@frozen
class HostedOutput:
    """What a hosted tool (run by the provider: file search, code interpreter) produced.

    ``type`` is the provider's item type (``file_search_call``, ``code_interpreter_call``);
    ``data`` holds its fields as the provider sent them (queries, results, code, logs, files).
    """

    type: str
    id: str | None = None
    status: str | None = None
    data: Mapping[str, Any] = attrs.Factory(dict)


MAX_PART_BYTES = 20 * 1024 * 1024
"""The largest binary part (image, document, audio) a message may carry, in bytes (20 MiB).

Larger files go to the provider's file API first and are sent as a ``Document(file_id=...)``.
"""


def _check_bytes(what: str, data: bytes) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidRequest(f"{what} data must be bytes, got {type(data).__name__}", field="data")
    if len(data) > MAX_PART_BYTES:
        raise InvalidRequest(
            f"{what} is {len(data):,} bytes, more than a part may carry ({MAX_PART_BYTES:,});"
            " upload it to the provider's file API and send Document(file_id=...)",
            field="data",
        )
    if not data:
        raise InvalidRequest(f"{what} data is empty", field="data")


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidRequest(
            f"cannot read the {what} at {str(path)!r}: {exc}", field="path"
        ) from None


@frozen
class Text:
    """Text among a message's parts."""

    text: str = field(validator=lambda _i, _a, v: _check_content(None, None, v))


@frozen
class Image:
    """An image, by URL (``https:`` or ``data:``) or as bytes with its media type.

    ``detail`` is OpenAI's ``low``/``high``/``auto``; ``width``/``height`` are read from the
    bytes' header when not given (budgets bound an image's tokens by its size).

    >>> Image.from_bytes(PNG_1x1).media_type  # doctest: +SKIP
    'image/png'
    """

    url: str | None = None
    data: bytes | None = None
    media_type: str | None = None
    detail: Literal["auto", "low", "high"] | None = None
    width: int | None = None
    height: int | None = None

    def __attrs_post_init__(self) -> None:
        if (self.url is None) == (self.data is None):
            raise InvalidRequest("an Image needs exactly one of url= or data=", field="url")
        if self.detail not in (None, "auto", "low", "high"):
            raise InvalidRequest(
                f"detail must be auto, low or high, got {self.detail!r}", field="detail"
            )
        if self.url is not None:
            if not isinstance(self.url, str) or not self.url.startswith(
                ("https://", "http://", "data:image/")
            ):
                raise InvalidRequest(
                    f"an image URL must be https://, http:// or data:image/...; got {self.url!r}",
                    field="url",
                )
            return
        assert self.data is not None
        _check_bytes("an image", self.data)
        found = media.sniff(bytes(self.data[:64]))
        kind = self.media_type or found
        if kind not in media.IMAGE_TYPES:
            raise InvalidRequest(
                f"image data is {found or 'not a known image format'}"
                f"{f' (given as {self.media_type})' if self.media_type else ''}: send PNG, JPEG,"
                " GIF or WebP",
                field="media_type",
            )
        object.__setattr__(self, "media_type", kind)
        if self.width is None or self.height is None:
            size = media.image_size(bytes(self.data[:65536]))
            if size is not None:
                object.__setattr__(self, "width", size[0])
                object.__setattr__(self, "height", size[1])

    @classmethod
    def from_path(
        cls, path: str | Path, *, detail: Literal["auto", "low", "high"] | None = None
    ) -> Image:
        """Read an image file; its media type comes from its bytes, not its name."""
        return cls(data=_read(path, "image"), detail=detail)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        media_type: str | None = None,
        *,
        detail: Literal["auto", "low", "high"] | None = None,
    ) -> Image:
        """An image from bytes (the media type is read from them when not given)."""
        return cls(data=data, media_type=media_type, detail=detail)

    @classmethod
    def from_url(cls, url: str, *, detail: Literal["auto", "low", "high"] | None = None) -> Image:
        """An image the provider fetches itself (or a ``data:`` URL)."""
        return cls(url=url, detail=detail)

    def data_url(self) -> str:
        """The image as a URL: its own, or a ``data:`` URL of its bytes."""
        if self.url is not None:
            return self.url
        assert self.data is not None
        return f"data:{self.media_type};base64,{base64.b64encode(self.data).decode()}"


@frozen
class Document:
    """A document (a PDF) as bytes, or a file the provider already holds (``file_id``).

    ``pages`` is counted from the bytes when not given (budgets bound a document by its pages).
    """

    data: bytes | None = None
    file_id: str | None = None
    media_type: str = "application/pdf"
    filename: str | None = None
    pages: int | None = None

    def __attrs_post_init__(self) -> None:
        if (self.file_id is None) == (self.data is None):
            raise InvalidRequest("a Document needs exactly one of data= or file_id=", field="data")
        if self.file_id is not None:
            if not isinstance(self.file_id, str) or not self.file_id:
                raise InvalidRequest("file_id must be a non-empty string", field="file_id")
            return
        assert self.data is not None
        _check_bytes("a document", self.data)
        found = media.sniff(bytes(self.data[:16]))
        if self.media_type == "application/pdf" and found != "application/pdf":
            raise InvalidRequest(
                f"document data is {found or 'not a PDF'}: send a PDF (or set media_type)",
                field="media_type",
            )
        if self.pages is None:
            object.__setattr__(self, "pages", media.pdf_pages(bytes(self.data)))

    @classmethod
    def from_path(cls, path: str | Path) -> Document:
        """Read a PDF file (its name is kept as the filename)."""
        return cls(data=_read(path, "document"), filename=Path(path).name)

    def data_url(self) -> str:
        """The document's bytes as a ``data:`` URL (only for a document with data)."""
        assert self.data is not None
        return f"data:{self.media_type};base64,{base64.b64encode(self.data).decode()}"


@frozen
class Audio:
    """Recorded audio as bytes with its format (``wav``, ``mp3``...).

    ``seconds`` is read from a WAV header when not given (budgets bound audio by its length).
    """

    data: bytes
    format: str | None = None
    seconds: float | None = None

    def __attrs_post_init__(self) -> None:
        _check_bytes("audio", self.data)
        found = media.sniff(bytes(self.data[:16]))
        fmt = self.format or (media.audio_format(found) if found else None)
        if fmt not in media.AUDIO_FORMATS:
            raise InvalidRequest(
                f"audio format {fmt or 'unknown'!s}: name one of"
                f" {', '.join(sorted(media.AUDIO_FORMATS))} (format=)",
                field="format",
            )
        object.__setattr__(self, "format", fmt)
        if self.seconds is None and fmt == "wav":
            object.__setattr__(self, "seconds", media.wav_seconds(bytes(self.data)))

    @classmethod
    def from_path(cls, path: str | Path) -> Audio:
        """Read an audio file; its format comes from its bytes."""
        return cls(_read(path, "audio"))

    def base64(self) -> str:
        """The audio's bytes in base64."""
        return base64.b64encode(self.data).decode()


Part = Text | Image | Document | Audio
"""What a message may carry besides (or instead of) plain text."""

PART_TYPES: tuple[type, ...] = (Text, Image, Document, Audio)


def _check_parts(_instance: object, _attribute: object, value: tuple[Part, ...]) -> None:
    for index, part in enumerate(value):
        if not isinstance(part, PART_TYPES):
            raise InvalidRequest(
                f"parts[{index}] must be a Text, Image, Document or Audio, got"
                f" {type(part).__name__}",
                field=f"parts[{index}]",
            )


def _as_parts(value: object) -> tuple[Part, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidRequest(
            f"parts must be a list of Text, Image, Document or Audio; got {type(value).__name__}",
            field="parts",
        )
    return tuple(value)


def text_of(parts: Sequence[Part]) -> str:
    """The text of a message's parts, the Text parts joined with blank lines."""
    return "\n\n".join(p.text for p in parts if isinstance(p, Text))


@frozen
class Message:
    """One chat message.

    ``reasoning`` holds a model's reasoning text where the provider returns it (never mixed into
    ``content``); ``tool_calls`` the calls an assistant message asks for; ``tool_call_id`` the
    call a ``tool`` message answers. ``interrupted`` marks an assistant message cut short by a
    broken or abandoned stream. ``parts`` holds a message's content parts in order (text,
    images, documents, audio) when it has more than text; ``content`` then holds their text
    (:func:`text_of`), so code that reads text keeps working. Build one with
    :meth:`with_parts`.

    >>> m = Message("user", "Hello")
    >>> m.role, m.content, m.interrupted
    ('user', 'Hello', False)
    """

    role: Role = field(validator=_check_role)
    content: str = field(default="", validator=_check_content)
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    reasoning: str | None = None
    interrupted: bool = False
    citations: tuple[Citation, ...] = ()
    hosted_outputs: tuple[HostedOutput, ...] = ()
    parts: tuple[Part, ...] = field(default=(), converter=_as_parts, validator=_check_parts)
    state: Mapping[str, Any] = attrs.Factory(dict)

    @classmethod
    def with_parts(cls, role: Role, parts: Sequence[Part | str], **fields: Any) -> Message:
        """A message of ``parts`` (strings become :class:`Text`), its text in ``content``.

        >>> Message.with_parts("user", ["What is this?"]).content
        'What is this?'
        """
        made = tuple(Text(p) if isinstance(p, str) else p for p in parts)
        return cls(role, text_of(made), parts=made, **fields)


@frozen
class Usage:
    """Tokens a call used, by kind, and its cost in USD when the model is priced.

    ``cached_input_tokens`` and ``reasoning_tokens`` are parts of ``input_tokens`` and
    ``output_tokens`` respectively, as providers report them. ``estimated`` is true when the
    provider sent no usage (a broken stream) and the numbers were counted from what arrived.
    ``cache_write_tokens`` (input written to the provider's prompt cache, billed at the cache
    write price) is a part of ``input_tokens`` too, apart from ``cached_input_tokens``.
    ``cache_write_1h_tokens`` is the part of ``cache_write_tokens`` written for an hour
    (Anthropic's ``ttl: "1h"``), billed at the price's 1-hour write rate.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float | None = None
    estimated: bool = False
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        cost = (
            None
            if self.cost is None and other.cost is None
            else (self.cost or 0) + (other.cost or 0)
        )
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            cost,
            self.estimated or other.estimated,
            self.cache_write_tokens + other.cache_write_tokens,
            self.cache_write_1h_tokens + other.cache_write_1h_tokens,
        )


@frozen
class ResponseSchema:
    """The JSON a call asked its answer to be (``proxy.chat(..., schema=...)``).

    ``name`` names it to providers that take a name (OpenAI), ``schema`` is the JSON schema of
    the answer (an object), and ``strict`` asks for the provider's strict mode where it has one
    (OpenAI's; the provider rewrites the schema as strict mode needs, see
    :func:`llmproxy.structured.strict_json_schema`).
    """

    name: str
    schema: Mapping[str, Any]
    strict: bool = True


@frozen
class ChatRequest:
    """What a provider is asked to do: the full message list and the resolved settings.

    ``model`` is the provider's own model name (``gpt-5.4-mini``), ``provider`` the registered
    provider name (``openai``). ``max_output_tokens`` is the cap the budget allows; providers
    must send it upstream. ``extra`` carries provider-specific parameters through untouched.
    ``tools`` are the tools offered to the model (:class:`llmproxy.tools.Tool` function tools,
    whose Python function the Proxy runs, or not when the caller runs them, such as
    :class:`llmproxy.tools.ClientTool`, and :class:`llmproxy.tools.HostedTool` tools the
    provider runs); ``tool_choice`` is ``auto``, ``none``, ``required`` or a tool name.
    ``timeout`` is the seconds this attempt may take in all: the call's overall deadline left
    when the attempt starts (connecting, sending and the whole answer; for a stream, the first
    chunk and the last). A provider stops the attempt when they run out and raises
    :class:`llmproxy.errors.ProviderTimeout`. None: only the provider's own connect and read
    timeouts apply. ``response_schema`` (None: free text) asks for JSON fitting a schema; each
    provider asks for it in its own way. ``headers`` are HTTP headers to send with this
    attempt's upstream request (a W3C ``traceparent`` a call observer adds); providers pass
    them to their SDK as extra headers.
    """

    messages: tuple[Message, ...]
    model: str
    provider: str
    max_output_tokens: int | None = None
    temperature: float | None = None
    extra: Mapping[str, Any] = attrs.Factory(dict)
    session_id: str | None = None
    user: str | None = None
    tools: tuple[Any, ...] = ()
    tool_choice: str | None = None
    timeout: float | None = None
    response_schema: ResponseSchema | None = None
    headers: Mapping[str, str] = attrs.Factory(dict)


@frozen
class ChatResponse:
    """The answer to a call.

    ``text`` is the answer, ``message`` the assistant message as stored in history, ``usage`` the
    tokens used (all attempts), ``model`` the model that answered (after fallbacks),
    ``provider`` its provider, ``finish_reason`` why it stopped (``stop``, ``length``,
    ``tool_calls``...), ``latency`` the seconds from the call to its end. ``steps`` holds the
    tool rounds the Proxy ran (each assistant message with its calls, then the tool outputs).
    ``max_output_tokens`` is the output limit sent upstream for the last round, and
    ``budget_capped`` whether a budget's remaining room lowered it below what the call asked
    for (``max_output_tokens=``, the configured default, or the model's own limit): with
    ``finish_reason == "length"`` the answer was cut short by the budget
    (:attr:`cut_short_by_budget`). ``parsed`` is the answer parsed and validated when the call
    asked for a ``schema`` (an instance of the class asked for, or a dict for a JSON-schema
    dict), else None. ``cache_hit`` is True when the reply came from the response cache
    (:mod:`llmproxy.cache`): ``usage`` is then zero, as nothing was spent.
    """

    text: str
    message: Message
    usage: Usage
    model: str
    provider: str
    finish_reason: str | None = None
    latency: float = 0.0
    session_id: str | None = None
    id: str | None = None
    steps: tuple[Message, ...] = ()
    max_output_tokens: int | None = None
    budget_capped: bool = False
    parsed: Any = None
    cache_hit: bool = False

    @property
    def cut_short_by_budget(self) -> bool:
        """Whether the answer stopped at an output limit that a budget's room imposed."""
        return self.budget_capped and self.finish_reason == "length"

    @property
    def reasoning(self) -> str | None:
        """The model's reasoning text, when the provider returned it."""
        return self.message.reasoning

    def __str__(self) -> str:
        return self.text


@frozen
class StreamEvent:
    """One piece of a streamed answer.

    ``text`` is a delta of the answer and ``reasoning`` a delta of reasoning text. The last event
    has ``done=True`` and carries ``usage``, ``finish_reason`` and the whole ``response``.
    """

    text: str = ""
    reasoning: str = ""
    done: bool = False
    usage: Usage | None = None
    finish_reason: str | None = None
    response: ChatResponse | None = None


@frozen
class Completion:
    """What a provider returns for one non-streamed attempt (the Proxy builds the ChatResponse)."""

    message: Message
    usage: Usage | None
    model: str
    finish_reason: str | None = None
    id: str | None = None


@frozen
class Chunk:
    """What a provider yields while streaming: deltas, then usage and finish reason when known.

    ``tool_calls``, ``citations`` and ``hosted_outputs`` arrive whole (usually on the last
    chunk); the Proxy gathers them onto the streamed answer's message. ``state`` is provider
    state for the answer's :attr:`Message.state` (keyed by provider, JSON values, such as
    Gemini's thought signatures); the chunks' states are merged onto the message.
    """

    text: str = ""
    reasoning: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None
    model: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    id: str | None = None
    citations: tuple[Citation, ...] = ()
    hosted_outputs: tuple[HostedOutput, ...] = ()
    state: Mapping[str, Any] | None = None


@frozen
class CallEvent:
    """The one observer event of a call, sent to ``on_response`` or ``on_error`` hooks.

    ``outcome`` is ``ok``, ``error`` or ``interrupted``; ``error`` the exception on failure.
    """

    model: str
    provider: str
    usage: Usage
    latency: float
    session_id: str | None
    user: str | None
    outcome: str = "ok"
    error: BaseException | None = None
    attempts: int = 1
    streamed: bool = False
    started_at: float = 0.0
    key: str | None = None
    tags: Mapping[str, str] = attrs.Factory(dict)
    operation: str = "chat"
    """What the call did: ``chat`` or ``embed``."""
    cache_hit: bool = False
    """The reply came from the response cache (no upstream attempt, no tokens spent)."""
    alias: str | None = None
    """The alias the caller named when a deployment was chosen for it (see
    :mod:`llmproxy.routing`); ``model`` and ``provider`` are then the deployment actually used."""
    ttft: float | None = None
    """Seconds from the call's start to its first streamed chunk of text (None for whole calls,
    and for streams that delivered no text)."""
    attempt_errors: tuple[BaseException, ...] = ()
    """The errors of the call's upstream attempts that failed before the one that ended it, in
    order: each attempt that was retried, or moved on from to a fallback model or another
    deployment of an alias. The error that ended the call is ``error`` and is not repeated here
    (nor the one a :class:`~llmproxy.errors.StreamInterrupted` ``error`` wraps). A
    :class:`~llmproxy.errors.ProviderError` among them names the ``provider`` and ``model`` its
    attempt was sent to, which may differ from the event's after a failover."""


@frozen
class EmbedRequest:
    """What an embedding provider is asked: one batch of texts for one model.

    ``model`` is the provider's own model name; ``dimensions`` (None: the model's own) asks
    for shorter vectors where the model can give them; ``extra`` carries provider-specific
    parameters through untouched (Gemini's ``task_type``); ``timeout`` is the seconds the
    attempt may take in all (the call's deadline left), and ``headers`` the HTTP headers to send
    with it, as for :class:`ChatRequest`.
    """

    texts: tuple[str, ...]
    model: str
    provider: str
    dimensions: int | None = None
    extra: Mapping[str, Any] = attrs.Factory(dict)
    user: str | None = None
    timeout: float | None = None
    headers: Mapping[str, str] = attrs.Factory(dict)


@frozen
class EmbeddingResult:
    """A provider's answer to one :class:`EmbedRequest`: a vector per text, in order.

    ``usage`` None: the service reported none (the Proxy counts the input instead).
    """

    vectors: tuple[tuple[float, ...], ...]
    usage: Usage | None = None
    model: str | None = None


@frozen
class Embeddings:
    """The caller's answer to :meth:`llmproxy.Proxy.embed`: a vector per input, in input order.

    ``usage`` is the whole call's (every batch; input tokens only, priced when the model is);
    ``model`` the model that answered (after fallbacks) and ``provider`` its provider.
    """

    vectors: tuple[tuple[float, ...], ...]
    usage: Usage
    model: str
    provider: str
    latency: float = 0.0

    def __len__(self) -> int:
        return len(self.vectors)
