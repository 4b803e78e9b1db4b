"""The provider protocol: what the Proxy calls for each attempt of a request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Protocol, runtime_checkable

from llmproxy.types import ChatRequest, Chunk, Completion, Message


@runtime_checkable
class Provider(Protocol):
    """One LLM service. Implementations map their errors onto :mod:`llmproxy.errors`.

    A provider makes exactly one upstream attempt per call (the Proxy owns retries, so every
    attempt is seen and budgeted) and must send ``request.max_output_tokens`` upstream as the
    service's output limit.
    """

    name: str

    def chat(self, request: ChatRequest) -> Completion:
        """Make one non-streamed attempt."""
        ...

    async def achat(self, request: ChatRequest) -> Completion:
        """Async :meth:`chat`."""
        ...

    def stream(self, request: ChatRequest) -> Iterator[Chunk]:
        """Make one streamed attempt; the last chunk carries usage when the service sends it.

        The iterator is closed early when the caller abandons the stream; it must then close
        the connection.
        """
        ...

    def astream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        """Async :meth:`stream`."""
        ...

    def count_tokens(self, messages: Sequence[Message], model: str) -> int:
        """Estimate the input tokens of ``messages``; never less than the service will count.

        Should not raise: if it does, the Proxy logs it and uses the byte count, an upper bound.
        """
        ...

    def count_text_tokens(self, text: str, model: str) -> int:
        """Count the tokens of a piece of output text (used when a stream ends without usage)."""
        ...

    def max_output_tokens(self, model: str) -> int | None:
        """Return the model's own output limit, or None when unknown (new models pass through)."""
        ...

    def close(self) -> None:
        """Release sync connections."""
        ...

    async def aclose(self) -> None:
        """Release all connections, async ones included (called from the event loop they use)."""
        ...
