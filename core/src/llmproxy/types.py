"""The values that flow through a call: messages, requests, responses, usage, stream events.

All are frozen attrs classes; use :func:`attrs.evolve` for a changed copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs
from attrs import field, frozen

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


@frozen
class Message:
    """One chat message.

    ``reasoning`` holds a model's reasoning text where the provider returns it (never mixed into
    ``content``); ``tool_calls`` the calls an assistant message asks for; ``tool_call_id`` the
    call a ``tool`` message answers. ``interrupted`` marks an assistant message cut short by a
    broken or abandoned stream.

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


@frozen
class Usage:
    """Tokens a call used, by kind, and its cost in USD when the model is priced.

    ``cached_input_tokens`` and ``reasoning_tokens`` are parts of ``input_tokens`` and
    ``output_tokens`` respectively, as providers report them. ``estimated`` is true when the
    provider sent no usage (a broken stream) and the numbers were counted from what arrived.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float | None = None
    estimated: bool = False

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
    whose Python function the Proxy runs, and :class:`llmproxy.tools.HostedTool` tools the
    provider runs); ``tool_choice`` is ``auto``, ``none``, ``required`` or a tool name.
    ``timeout`` is the seconds this attempt may take in all: the call's overall deadline left
    when the attempt starts (connecting, sending and the whole answer; for a stream, the first
    chunk and the last). A provider stops the attempt when they run out and raises
    :class:`llmproxy.errors.ProviderTimeout`. None: only the provider's own connect and read
    timeouts apply. ``response_schema`` (None: free text) asks for JSON fitting a schema; each
    provider asks for it in its own way.
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
    dict), else None.
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
    chunk); the Proxy gathers them onto the streamed answer's message.
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
