"""The DeepSeek provider: DeepSeek's OpenAI-compatible API through the official ``openai`` SDK.

It is the OpenAI provider (raw responses, the SDK's retries off, errors mapped onto the core
tree) with DeepSeek's differences:

- The output cap goes out as ``max_tokens`` (DeepSeek's field; it covers reasoning too).
- Thinking mode is DeepSeek's default: ``reasoning_content`` (in messages and in stream deltas)
  becomes ``Message.reasoning`` / ``Chunk.reasoning``, never part of the answer. Turn thinking
  off per call with ``extra_body={"thinking": {"type": "disabled"}}``.
- After an assistant turn with tool calls DeepSeek requires that turn's ``reasoning_content``
  on every later request (else 400), so assistant messages that carry tool calls are sent with
  their stored ``Message.reasoning`` (an empty string when none was kept, e.g. a turn answered
  by another provider). Reasoning of other turns is not sent: DeepSeek ignores it.
- Tools: function tools go out in Chat Completions' form (as OpenAI's); hosted tools (file
  search, code interpreter) are a ConfigError naming the provider, since only OpenAI's
  Responses API runs them.
- Structured output (``schema=``): DeepSeek has no schema mode, so it is asked for JSON mode
  (``response_format: {"type": "json_object"}``) with the schema in the system message; the
  Proxy validates the answer.
- Usage: ``prompt_cache_hit_tokens`` become ``cached_input_tokens`` (billed at the cache-hit
  price) and ``completion_tokens_details.reasoning_tokens`` become ``reasoning_tokens``.
- Content: DeepSeek takes text only. A message whose parts are all text is sent as its text; an
  image, document or audio part is an :class:`~llmproxy.errors.UnsupportedContent` naming the
  provider and the part (``messages[1].parts[2]``), raised before anything is sent, so a call
  with fallbacks moves on to a model that takes it.
- Token estimates: no DeepSeek tokenizer is bundled (nothing may be downloaded at run time), so
  input is bounded by UTF-8 bytes. DeepSeek's tokenizer is byte-level BPE, which never makes
  more tokens than bytes, so the bound is never below DeepSeek's count; budgets reserve from it
  and the settle step corrects it with the real usage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import attrs

from llmproxy import env as envvars
from llmproxy.errors import MissingCredentials, UnsupportedContent
from llmproxy.registry import ProviderSettings
from llmproxy.secret import Secret
from llmproxy.structured import schema_instructions
from llmproxy.tokens import (
    PER_MESSAGE_OVERHEAD,
    InputMargin,
    messages_upper_bound,
    text_upper_bound,
)
from llmproxy.types import ChatRequest, Message, ResponseSchema, Text
from llmproxy_deepseek import env, models
from llmproxy_openai.provider import OpenAIProvider, message_to_wire


def refuse_parts(m: Message, where: str = "message", provider: str = "deepseek") -> None:
    """Raise :class:`UnsupportedContent` for the first part of ``m`` that is not text.

    ``where`` names the message (``messages[1]``); the error names the part under it.
    """
    for index, part in enumerate(m.parts):
        if not isinstance(part, Text):
            path = f"{where}.parts[{index}]"
            raise UnsupportedContent(
                f"{path} is an {type(part).__name__.lower()}, and DeepSeek takes text only;"
                " send it to a model that takes it (a fallback such as openai/gpt-4o-mini)",
                provider=provider,
                part=path,
            )


def deepseek_message(m: Message, where: str = "message") -> dict[str, Any]:
    """Return DeepSeek's wire form of a message: OpenAI's, plus reasoning where DeepSeek needs it.

    A message with parts goes out as its text (DeepSeek takes text only); a non-text part is
    an :class:`UnsupportedContent` (see :func:`refuse_parts`).

    >>> from llmproxy.types import ToolCall
    >>> deepseek_message(Message("assistant", tool_calls=(ToolCall("c1", "f"),), reasoning="r"))[
    ...     "reasoning_content"]
    'r'
    """
    if m.parts:
        refuse_parts(m, where)
        m = attrs.evolve(m, parts=())
    out = message_to_wire(m)
    if m.role == "assistant" and m.tool_calls:
        out["reasoning_content"] = m.reasoning or ""
    return out


INPUT_MARGIN = InputMargin(per_message=2, overall=8, tools=160, ratio=0.0)
"""What DeepSeek can bill beyond :func:`count_messages`'s byte bound.

The bound counts every UTF-8 byte as a token (DeepSeek's byte-level BPE never makes more) and 4
tokens per message plus 3 per request; DeepSeek's chat template wraps a message in 1 or 2
markers and a tool call in up to 6 (so 2 more per message and tool definition), and begins the
request and primes the reply with a few more (8). Tool definitions go into a system prompt with
instructions on the tool-call format, about a hundred tokens in DeepSeek's published template:
160 when tools are offered. No ratio: the byte bound does not depend on the tokenizer."""


def count_messages(messages: Sequence[Message]) -> int:
    """Return an upper bound on the input tokens DeepSeek counts for ``messages``.

    The core's byte bound, plus what this provider sends beyond it: the reasoning passed back
    on tool-call turns and the ids that tie tool results to their calls. Parts count as their
    text: DeepSeek is never sent anything else (:func:`refuse_parts`).
    """
    total = messages_upper_bound([attrs.evolve(m, parts=()) if m.parts else m for m in messages])
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            total += PER_MESSAGE_OVERHEAD + text_upper_bound(m.reasoning or "")
            total += sum(text_upper_bound(c.id) for c in m.tool_calls)
        if m.tool_call_id:
            total += text_upper_bound(m.tool_call_id)
    return total


class DeepSeekProvider(OpenAIProvider):
    """Chat completions against DeepSeek (or a DeepSeek-compatible endpoint).

    >>> DeepSeekProvider(api_key="sk-...")  # doctest: +SKIP
    DeepSeekProvider(name='deepseek', base_url='https://api.deepseek.com')
    """

    output_limit_param: ClassVar[str] = "max_tokens"
    #: DeepSeek has no Responses API: hosted tools are a ConfigError naming the provider.
    responses_api: ClassVar[bool] = False
    #: DeepSeek has no embeddings model: ``proxy.embed`` raises UnsupportedContent naming it.
    embeddings: ClassVar[bool] = False
    embeddings_hint: ClassVar[str | None] = (
        "openai/text-embedding-3-small or gemini/gemini-embedding-001"
    )

    def __init__(
        self,
        *,
        api_key: str | Secret,
        base_url: str | None = None,
        timeout: float | None = None,
        connect_timeout: float | None = None,
        name: str = "deepseek",
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            api_key=api_key,
            base_url=base_url or env.DEFAULT_BASE_URL,
            timeout=timeout,
            connect_timeout=connect_timeout,
            name=name,
            default_headers=default_headers,
        )

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> DeepSeekProvider:
        """Build the provider from configuration, else from the environment (see ``env.py``).

        The common ``timeout`` key is the read timeout (else ``LLMPROXY_DEEPSEEK_TIMEOUT``,
        default 60); the ``connect_timeout`` option the connect one (else
        ``LLMPROXY_DEEPSEEK_CONNECT_TIMEOUT``, default 10). Requests keep to their deadline as
        the OpenAI provider's do.
        """
        environ = settings.environ
        key = settings.api_key.get() if settings.api_key else env.api_key(environ)
        if not key:
            raise MissingCredentials(settings.name, env.KEY_VARIABLES)
        return cls(
            api_key=key,
            base_url=settings.base_url or env.base_url(environ),
            timeout=settings.timeout or env.timeout(environ),
            connect_timeout=envvars.seconds_option(
                settings.options, "connect_timeout", settings.name
            )
            or env.connect_timeout(environ),
            name=settings.name,
        )

    def params(self, request: ChatRequest) -> dict[str, Any]:
        """Chat Completions' arguments, as OpenAI's, after refusing any part DeepSeek cannot take.

        The refusal (:class:`UnsupportedContent`) names this provider and the part's index
        path; nothing has been sent. DeepSeek documents no switch for parallel tool calls (the
        model may make several calls in one turn): an OpenAI client's ``parallel_tool_calls``
        is dropped, not sent.
        """
        for index, m in enumerate(request.messages):
            if m.parts:
                refuse_parts(m, f"messages[{index}]", self.name)
        params = super().params(request)
        params.pop("parallel_tool_calls", None)
        return params

    def wire_message(self, m: Message, where: str = "message") -> dict[str, Any]:
        """Return DeepSeek's wire form of a message (see :func:`deepseek_message`)."""
        return deepseek_message(m, where)

    def ask_for_json(self, params: dict[str, Any], schema: ResponseSchema) -> None:
        """Ask for JSON that fits ``schema``: JSON mode, with the schema in the instructions.

        DeepSeek has no schema mode, so ``response_format`` is ``{"type": "json_object"}`` and
        the schema goes into the system message (:func:`llmproxy.structured.schema_instructions`,
        appended to the first system message, or a system message of its own at the start).
        The Proxy validates the answer against the schema.
        """
        params["response_format"] = {"type": "json_object"}
        instructions = schema_instructions(schema)
        messages = list(params["messages"])
        first = messages[0] if messages else None
        if (
            first is not None
            and first.get("role") == "system"
            and isinstance(first.get("content"), str)
        ):
            messages[0] = {**first, "content": f"{first['content']}\n\n{instructions}"}
        else:
            messages.insert(0, {"role": "system", "content": instructions})
        params["messages"] = messages

    def count_tokens(self, messages: Sequence[Message], model: str) -> int:
        """Return an upper bound on the input tokens (see :func:`count_messages`)."""
        return count_messages(messages)

    def count_text_tokens(self, text: str, model: str) -> int:
        """Return an upper bound on the tokens of output text: its UTF-8 byte count."""
        return text_upper_bound(text)

    def input_margin(self, model: str) -> InputMargin:
        """How far the byte bound can fall short of DeepSeek's bill (:data:`INPUT_MARGIN`)."""
        return INPUT_MARGIN

    def max_output_tokens(self, model: str) -> int | None:
        """Return the model's own output limit, None when unknown."""
        return models.output_limit(model)
