"""One exception tree for everything llmproxy raises.

Every error says what happened, to which thing, and what to do. API keys never appear in a
message: provider errors are passed through :func:`llmproxy.secret.redact` before they are built,
and every message (and a provider error's ``detail``) is passed through
:func:`llmproxy.secret.scrub`, which masks every secret the process knows (provider keys, gateway
keys), whatever echoed it.

``LLMProxyError``
    ``ConfigError`` (``MissingCredentials``), ``InvalidRequest`` (``UnsupportedContent``),
    ``SchemaError``, ``PluginError``, ``BudgetExceeded``, ``RateLimited``, ``StoreError``,
    ``ProviderError`` (``ProviderAuthError``, ``ProviderBadRequest``, ``ProviderRateLimited``,
    ``ProviderUnavailable``, ``ProviderTimeout``, ``ProviderConnectionError``,
    ``ProviderResponseError``, ``StreamInterrupted``).
"""

from __future__ import annotations

from collections.abc import Sequence

from llmproxy.secret import scrub


class LLMProxyError(Exception):
    """Base class of every error llmproxy raises on purpose.

    Its text arguments are scrubbed of the process's secrets (:func:`llmproxy.secret.scrub`).
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(scrub(a) if isinstance(a, str) else a for a in args))


class ConfigError(LLMProxyError, ValueError):
    """A configuration value is missing, unknown or of the wrong type.

    ``path`` names the offending key (``$.retry.max_attempts``) when there is one.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class MissingCredentials(ConfigError):
    """A provider has no API key; ``variables`` names the variables that would supply one."""

    def __init__(self, provider: str, variables: Sequence[str]) -> None:
        names = " or ".join(variables)
        super().__init__(f"no API key for provider '{provider}': set {names}")
        self.provider = provider
        self.variables = tuple(variables)


class InvalidRequest(LLMProxyError, ValueError):
    """A call's arguments are wrong; ``field`` names the argument to fix.

    Raised before any upstream call or budget reservation.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SchemaError(LLMProxyError, ValueError):
    """A structured answer (``schema=``) is not JSON or does not fit the schema.

    ``raw`` is the answer's text as the model sent it and ``errors`` the list of what failed,
    each with the path to it (``$.age: expected integer, got str 'ten'``). The round's usage is
    counted against the budgets before this is raised; ``schema_retries=N`` sends the errors
    back to the model up to N times first.
    """

    def __init__(self, message: str, *, raw: str, errors: Sequence[str]) -> None:
        super().__init__(message)
        self.raw = raw
        self.errors = list(errors)


class UnsupportedContent(InvalidRequest):
    """A provider cannot take a content part of the request (an image sent to a text-only model).

    ``provider`` names the provider, ``part`` the part's index path (``messages[1].parts[2]``).
    Raised before anything is sent; a call with fallbacks moves on to its next model, which
    may take the part.
    """

    def __init__(self, message: str, *, provider: str, part: str) -> None:
        super().__init__(f"{provider}: {message}", field=part)
        self.provider = provider
        self.part = part


class PluginError(LLMProxyError):
    """A plugin failed to load or registered something invalid; ``plugin`` names it."""

    def __init__(self, message: str, *, plugin: str | None = None) -> None:
        super().__init__(message)
        self.plugin = plugin


class BudgetExceeded(LLMProxyError):
    """A budget has no room left for the call; raised before any upstream call.

    ``policy`` is the budget's name, ``scope`` the key it was counted under (``user:alice``),
    ``limit``, ``used`` (settled), ``reserved`` (held by calls in flight), ``remaining`` and
    ``requested`` (what this call needed at the least), in the budget's unit.
    """

    def __init__(
        self,
        *,
        policy: str,
        scope: str,
        limit: float,
        used: float,
        reserved: float,
        requested: float,
        unit: str = "tokens",
        resets_at: float | None = None,
    ) -> None:
        remaining = max(limit - used - reserved, 0)
        message = (
            f"budget '{policy}' ({scope}) has {remaining:g} {unit} left of {limit:g}"
            f" ({used:g} used, {reserved:g} reserved by calls in flight);"
            f" this call needs at least {requested:g}"
        )
        super().__init__(message)
        self.policy = policy
        self.scope = scope
        self.limit = limit
        self.used = used
        self.reserved = reserved
        self.remaining = remaining
        self.requested = requested
        self.unit = unit
        self.resets_at = resets_at


class RateLimited(LLMProxyError):
    """A rate limit of ours is reached; ``retry_after`` says in how many seconds a slot frees."""

    def __init__(
        self, *, policy: str, scope: str, limit: float, window: float, retry_after: float
    ) -> None:
        super().__init__(
            f"rate limit '{policy}' ({scope}) allows {limit:g} requests per {window:g}s;"
            f" retry after {retry_after:.2f}s"
        )
        self.policy = policy
        self.scope = scope
        self.limit = limit
        self.window = window
        self.retry_after = retry_after


class ToolLoopError(LLMProxyError):
    """The model kept asking for tools past ``max_tool_rounds``; ``rounds`` is that limit.

    Every round's usage was settled against the budgets before this is raised.
    """

    def __init__(self, message: str, *, rounds: int) -> None:
        super().__init__(message)
        self.rounds = rounds


class StoreError(LLMProxyError):
    """A history store or ledger could not be reached or answered wrongly."""


class ProviderError(LLMProxyError):
    """An upstream LLM service failed.

    ``provider`` and ``model`` name the call, ``status`` is the HTTP status when there was one,
    ``retry_after`` the seconds the service asked us to wait, and ``retryable`` whether trying
    again (or another model) may succeed.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        model: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        where = f"{provider}/{model}" if model else provider
        status_part = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"{where}{status_part}: {message}")
        self.provider = provider
        self.model = model
        self.status = status
        self.retry_after = retry_after
        self.detail = scrub(message)
        if retryable is not None:
            self.retryable = retryable


class ProviderAuthError(ProviderError):
    """The service refused the credentials (401/403): check the API key."""


class ProviderBadRequest(ProviderError):
    """The service rejected the request (400/404/422): not retried, not a fallback trigger."""


class ProviderRateLimited(ProviderError):
    """The service answered 429; ``retry_after`` carries its hint."""

    retryable = True


class ProviderUnavailable(ProviderError):
    """The service failed on its side (5xx)."""

    retryable = True


class ProviderTimeout(ProviderError):
    """The service did not answer in time."""

    retryable = True


class ProviderConnectionError(ProviderError):
    """The service could not be reached."""

    retryable = True


class ProviderResponseError(ProviderError):
    """The service answered with something that is not a valid response (malformed JSON)."""

    retryable = True


class StreamInterrupted(ProviderError):
    """A stream broke after part of the answer had arrived.

    What arrived was delivered, written to history marked interrupted, and counted against the
    budget; the call is not retried because the caller has already seen part of the answer.
    """

    retryable = False
