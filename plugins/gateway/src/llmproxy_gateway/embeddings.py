"""``POST /v1/embeddings`` in OpenAI's shapes: the request parsed, the answer rendered.

The request's ``input`` (a string or a list of strings; token arrays are refused: the gateway
counts and routes text), ``model``, ``dimensions``, ``encoding_format`` (``float`` or
``base64``: little-endian float32 bytes, base64, as OpenAI sends them) and ``user`` (the end
user, a ``tag:end_user`` budget scope as for chat) become :meth:`llmproxy.Proxy.aembed`'s
arguments; its :class:`~llmproxy.types.Embeddings` becomes OpenAI's list of embeddings.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

from attrs import frozen

from llmproxy.types import Embeddings
from llmproxy_gateway.errors import bad_request
from llmproxy_gateway.wire import BodyLimits, load_json

#: OpenAI's limit on the inputs of one request.
MAX_INPUTS = 2048


@frozen
class EmbeddingsCall:
    """A parsed embeddings request: the texts, how to answer, and the Proxy's keywords."""

    texts: list[str]
    encoding_format: str
    kwargs: dict[str, Any]


def parse_embeddings(body: bytes, limits: BodyLimits | None = None) -> EmbeddingsCall:
    """Parse a ``POST /v1/embeddings`` body; raise a 400 :class:`HTTPError` naming the field."""
    data = load_json(body, limits if limits is not None else BodyLimits())
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("Missing required parameter: 'model'.", "model")
    raw = data.get("input")
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list) and raw:
        if any(isinstance(item, (int, list)) for item in raw):
            raise bad_request(
                "'input' holds token ids: this gateway embeds text only; send strings", "input"
            )
        if not all(isinstance(item, str) for item in raw):
            raise bad_request("'input' must be a string or a list of strings", "input")
        texts = list(raw)
    else:
        raise bad_request("'input' must be a non-empty string or a list of strings", "input")
    if len(texts) > MAX_INPUTS:
        raise bad_request(f"'input' has {len(texts)} items, more than {MAX_INPUTS}", "input")
    for index, text in enumerate(texts):
        if not text.strip():
            raise bad_request(f"'input[{index}]' is empty: every input needs text", "input")
    encoding = data.get("encoding_format")
    if encoding is None:
        encoding = "float"
    if encoding not in ("float", "base64"):
        raise bad_request("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    kwargs: dict[str, Any] = {"model": model}
    dimensions = data.get("dimensions")
    if dimensions is not None:
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
            raise bad_request(
                f"'dimensions' must be an integer >= 1, got {dimensions!r}", "dimensions"
            )
        kwargs["dimensions"] = dimensions
    end_user = data.get("user")
    if end_user is not None and not isinstance(end_user, str):
        raise bad_request("'user' must be a string", "user")
    if end_user:
        kwargs["tags"] = {"end_user": end_user}
    return EmbeddingsCall(texts, encoding, kwargs)


def embeddings_body(result: Embeddings, encoding_format: str) -> bytes:
    """OpenAI's answer: ``{"object": "list", "data": [...], "model", "usage"}`` as JSON bytes."""
    data = []
    for index, vector in enumerate(result.vectors):
        embedding: Any = list(vector)
        if encoding_format == "base64":
            packed = struct.pack(f"<{len(vector)}f", *vector)
            embedding = base64.b64encode(packed).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = result.usage.input_tokens
    answer = {
        "object": "list",
        "data": data,
        "model": result.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return json.dumps(answer, separators=(",", ":")).encode()


__all__ = ["MAX_INPUTS", "EmbeddingsCall", "embeddings_body", "parse_embeddings"]
