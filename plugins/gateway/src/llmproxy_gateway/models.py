"""``GET /v1/models`` and ``GET /v1/models/{model}``, in OpenAI's shapes; OpenAI's 404 and 405.

The list: the default model, the configured aliases and every priced ``provider/model`` (price
patterns such as ``openai/gpt-5.4-mini*`` are listed without the ``*``). Any other
``provider/model`` name still works in a request (names pass through to the provider), so one
model is found when it is listed, names an installed provider, or is a bare name (the default
provider's); else 404 ``model_not_found``. Paths and methods the gateway does not serve are
answered in OpenAI's error shape too, so its SDKs raise ``NotFoundError`` with a message.
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


def _model(name: str) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": name.partition("/")[0] if "/" in name else "llmproxy",
    }


def known(gateway: Gateway, name: str) -> bool:
    """Whether a request naming ``name`` reaches a provider (see the module's note)."""
    if name in model_ids(gateway):
        return True
    provider, sep, model = name.partition("/")
    if not sep:
        return bool(name.strip())
    return bool(model) and provider in gateway.proxy.plugins.registry.providers


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
        data = [_model(name) for name in model_ids(gateway)]
        return JSONResponse({"object": "list", "data": data})

    return list_models


def retrieve_endpoint(gateway: Gateway) -> Callable[[Request], Awaitable[Response]]:
    """The ``/v1/models/{model}`` handler of one gateway."""

    async def retrieve_model(request: Request) -> Response:
        try:
            gateway.authenticate(request.scope)
        except HTTPError as exc:
            return error_response(exc)
        name: str = request.path_params["model"]
        if not known(gateway, name):
            return error_response(
                HTTPError(
                    404,
                    f"The model '{name}' does not exist: it is not listed and names no"
                    " installed provider (GET /v1/models lists the known ones)",
                    param="model",
                    code="model_not_found",
                )
            )
        return JSONResponse(_model(name))

    return retrieve_model


async def not_found(request: Request, exc: Exception) -> Response:
    """A 404 in OpenAI's shape (its message names the method and path, as OpenAI's does)."""
    return error_response(HTTPError(404, f"Invalid URL ({request.method} {request.url.path})"))


async def not_allowed(request: Request, exc: Exception) -> Response:
    """A 405 in OpenAI's shape."""
    return error_response(
        HTTPError(405, f"Invalid method for URL ({request.method} {request.url.path})")
    )
