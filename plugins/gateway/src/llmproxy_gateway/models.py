"""``GET /v1/models`` and ``GET /v1/models/{model}``, in OpenAI's shapes; OpenAI's 404 and 405.

The list, per calling key: the default model, the configured aliases and the aliases with
several deployments (``[models.NAME]``, see :mod:`llmproxy.routing`), owned by ``llmproxy``, and
the ``provider/model`` names the configuration (alias targets, fallbacks, ``[prices]``) or
the price table prices by name (genai-prices' current models included; patterns are not
listed) knows, of providers whose plugin is installed and configured with a key; all filtered
by the key's model allow-list (:meth:`~llmproxy_gateway.keys.KeyRecord.may_use`). Any other
``provider/model`` name still works in a request (names pass through to the provider), so one
model is found when it is listed, names an installed provider, or is a bare name (the default
provider's), and the key may use it; else 404 ``model_not_found``. A request naming a model
outside its key's allow-list is refused by :func:`check_model` (403 ``model_not_allowed``).
Paths and methods the gateway does not serve are answered in OpenAI's error shape too, so its
SDKs raise ``NotFoundError`` with a message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llmproxy.config import ProxyConfig
from llmproxy.pricing import is_pattern
from llmproxy.registry import ProviderSettings
from llmproxy_gateway.errors import HTTPError

if TYPE_CHECKING:
    from llmproxy import Proxy
    from llmproxy_gateway.app import Gateway
    from llmproxy_gateway.keys import KeyRecord


def names_of(config: ProxyConfig, model: str) -> tuple[str, ...]:
    """The names a request's ``model`` goes by, for matching a key's allow-list.

    The name as sent, an alias's target, and the ``provider/model`` a bare name resolves to
    (the default model's provider), as the Proxy resolves it.

    >>> cfg = ProxyConfig(default_model="openai/gpt-5.4-mini", aliases={"fast": "gpt-4o-mini"})
    >>> names_of(cfg, "fast")
    ('fast', 'gpt-4o-mini', 'openai/gpt-4o-mini')
    """
    names = [model]
    if model in config.models:  # an alias with deployments: allowed by its own name
        return (model,)
    target = config.aliases.get(model, model)
    if target != model:
        names.append(target)
    if "/" not in target:
        names.append(f"{config.default_model.partition('/')[0]}/{target}")
    return tuple(names)


def check_model(gateway: Gateway, key: KeyRecord, model: str | None) -> None:
    """Raise a 403 ``model_not_allowed`` naming ``model`` when ``key`` may not use it.

    ``model`` None is the default model. Every route that takes a model calls this before the
    Proxy; a key without an allow-list passes at once.
    """
    if not key.models:
        return
    config = gateway.proxy.config
    name = model or config.default_model
    if key.may_use(*names_of(config, name)):
        return
    raise HTTPError(
        403,
        f"The model '{name}' is not one this API key may use (it may use:"
        f" {', '.join(key.models)}; GET /v1/models lists them)",
        param="model",
        code="model_not_allowed",
    )


def configured_providers(proxy: Proxy) -> set[str]:
    """The providers whose plugin is installed and that have a key (configuration or env)."""
    out: set[str] = set()
    for name, entry in proxy.plugins.registry.providers.items():
        table = proxy.config.providers.get(name, {})
        key = table.get("api_key")
        if isinstance(key, str) and key:
            out.add(name)
            continue
        if entry.complete(ProviderSettings(name, environ=proxy.environ)).api_key is not None:
            out.add(name)
    return out


def model_ids(gateway: Gateway, key: KeyRecord | None = None) -> list[str]:
    """The model ids to list (for ``key``: those it may use), default first, no duplicates."""
    proxy = gateway.proxy
    config = proxy.config
    known = [*config.aliases.values()]
    for model, chain in config.fallbacks.items():
        known += [model, *chain]
    providers = configured_providers(proxy)
    known += [n for n in config.prices if not is_pattern(n)]
    known += [n for provider in sorted(providers) for n in proxy.prices.models(provider)]
    names = [config.default_model, *config.aliases, *proxy.routers]
    names += [n for n in known if n.partition("/")[0] in providers and n.partition("/")[2]]
    seen: set[str] = set()
    out: list[str] = []
    for name in names:
        if not name or name in seen:
            continue
        seen.add(name)
        if key is None or key.may_use(*names_of(config, name)):
            out.append(name)
    return out


def _model(name: str, aliases: Any = ()) -> dict[str, Any]:
    owner = "llmproxy" if name in aliases or "/" not in name else name.partition("/")[0]
    return {"id": name, "object": "model", "created": 0, "owned_by": owner}


def known(gateway: Gateway, name: str, key: KeyRecord | None = None) -> bool:
    """Whether a request naming ``name`` reaches a provider (and ``key`` may use it)."""
    if key is not None and not key.may_use(*names_of(gateway.proxy.config, name)):
        return False
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
            key = gateway.authenticate(request.scope)
        except HTTPError as exc:
            return error_response(exc)
        aliases = {*gateway.proxy.config.aliases, *gateway.proxy.routers}
        data = [_model(name, aliases) for name in model_ids(gateway, key)]
        return JSONResponse({"object": "list", "data": data})

    return list_models


def retrieve_endpoint(gateway: Gateway) -> Callable[[Request], Awaitable[Response]]:
    """The ``/v1/models/{model}`` handler of one gateway."""

    async def retrieve_model(request: Request) -> Response:
        try:
            key = gateway.authenticate(request.scope)
        except HTTPError as exc:
            return error_response(exc)
        name: str = request.path_params["model"]
        if not known(gateway, name, key):
            return error_response(
                HTTPError(
                    404,
                    f"The model '{name}' does not exist or this API key may not use it: it is"
                    " not listed and names no installed provider, or is outside the key's"
                    " models (GET /v1/models lists the ones it may use)",
                    param="model",
                    code="model_not_found",
                )
            )
        aliases = {*gateway.proxy.config.aliases, *gateway.proxy.routers}
        return JSONResponse(_model(name, aliases))

    return retrieve_model


async def not_found(request: Request, exc: Exception) -> Response:
    """A 404 in OpenAI's shape (its message names the method and path, as OpenAI's does)."""
    return error_response(HTTPError(404, f"Invalid URL ({request.method} {request.url.path})"))


async def not_allowed(request: Request, exc: Exception) -> Response:
    """A 405 in OpenAI's shape."""
    return error_response(
        HTTPError(405, f"Invalid method for URL ({request.method} {request.url.path})")
    )
