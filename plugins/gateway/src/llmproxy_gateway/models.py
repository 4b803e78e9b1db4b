"""``GET /v1/models``: the models this gateway knows by name, in OpenAI's list shape.

The default model, the configured aliases and every priced ``provider/model`` (price patterns
such as ``openai/gpt-5.4-mini*`` are listed without the ``*``). Any other ``provider/model``
name still works in a request: names pass through to the provider.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llmproxy_gateway.errors import HTTPError

if TYPE_CHECKING:
    from llmproxy_gateway.app import Gateway


def model_ids(gateway: Gateway) -> list[str]:
    """The model ids to list, default first, without duplicates."""
    config = gateway.proxy.config
    names = [config.default_model, *config.aliases]
    names += [n.rstrip("*") for n in gateway.proxy.prices.names()]
    seen: set[str] = set()
    out: list[str] = []
    for name in names:
        if name and name not in seen:
            seen.add(name)
            out.append(name)
    return out


def error_response(error: HTTPError) -> Response:
    """A Starlette response for an :class:`HTTPError`."""
    return Response(error.body(), error.status, error.headers, media_type="application/json")


def endpoint(gateway: Gateway) -> Callable[[Request], Awaitable[Response]]:
    """The ``/v1/models`` handler of one gateway."""

    async def list_models(request: Request) -> Response:
        try:
            gateway.authenticate(request.scope)
        except HTTPError as exc:
            return error_response(exc)
        data: list[dict[str, Any]] = [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": name.partition("/")[0] if "/" in name else "llmproxy",
            }
            for name in model_ids(gateway)
        ]
        return JSONResponse({"object": "list", "data": data})

    return list_models
