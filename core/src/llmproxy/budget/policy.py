"""Budget policies: what a call is counted against, under which key, over which window.

A policy turns a call's scope (model, provider, user, session, key, tags) into a
:class:`~llmproxy.budget.base.Claim`, or None when it does not apply. The ledger does the
counting; policies only name the limit.

Scopes: ``global``, ``user``, ``session``, ``model``, ``provider``, ``key`` (the caller's key
id, e.g. a gateway key), ``alias`` and ``tag:NAME`` (the call's ``tags[NAME]``); a list combines
them (``["user", "model"]``: one budget per user and model). Windows: ``total`` (all time), ``day``
or ``month`` (calendar, in the time zone ``tz``: a monthly budget resets on the 1st), or a
number of seconds (rolling).

``model`` is the ``provider/model`` a call was sent to: for an alias with several deployments
(see :mod:`llmproxy.routing`), the deployment actually used, so a ``model``-scoped budget is
one per deployment. ``alias`` rolls the deployments up: it is the alias the caller named (every
deployment of ``smart`` counts under ``alias:smart``), and for a call that named no alias with
deployments, its model (so an ``alias`` budget is one per name callers use).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from attrs import field, frozen

from llmproxy.budget.base import Claim, Period, Unit
from llmproxy.errors import ConfigError

SCOPES: frozenset[str] = frozenset(
    ("global", "user", "session", "model", "provider", "key", "alias")
)


@frozen
class CallScope:
    """Who and what a call is for: the values policies key their claims on.

    ``alias`` is the alias with deployments the caller named (None for any other call).
    """

    model: str
    provider: str
    user: str | None = None
    session_id: str | None = None
    key: str | None = None
    tags: Mapping[str, str] = attrs.Factory(dict)
    alias: str | None = None

    def value(self, scope: str) -> str:
        """Return the ledger key part for one scope (``user:alice``; ``user:-`` when no user)."""
        if scope == "global":
            return "global"
        raw: str | None
        if scope == "user":
            raw = self.user
        elif scope == "session":
            raw = self.session_id
        elif scope == "model":
            raw = self.model
        elif scope == "provider":
            raw = self.provider
        elif scope == "key":
            raw = self.key
        elif scope == "alias":
            raw = self.alias if self.alias is not None else self.model
        else:
            raw = self.tags.get(scope[4:])
        return f"{scope}:{raw if raw is not None else '-'}"


@runtime_checkable
class BudgetPolicy(Protocol):
    """A limit a call may be counted against."""

    @property
    def name(self) -> str:
        """The policy's name: its claims are counted under it in the ledger."""
        ...

    def claim(self, scope: CallScope) -> Claim | None:
        """Return the claim this call makes on the policy, or None when it does not apply."""
        ...


def _not_negative(_i: object, a: Any, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{a.name} must be a number, got {v!r}", path=a.name)
    if v < 0:
        raise ConfigError(f"{a.name} must not be negative, got {v}", path=a.name)


def _scope_parts(value: str | Sequence[str]) -> tuple[str, ...]:
    parts = (value,) if isinstance(value, str) else tuple(value)
    if not parts:
        raise ConfigError("scope must name at least one scope", path="scope")
    for part in parts:
        if not isinstance(part, str) or not (
            part in SCOPES or (part.startswith("tag:") and len(part) > 4)
        ):
            raise ConfigError(
                f"scope must be one of {', '.join(sorted(SCOPES))} or tag:NAME (or a list of"
                f" them); got {part!r}",
                path="scope",
            )
    return parts


def _scope(_i: object, _a: Any, v: str | Sequence[str]) -> None:
    _scope_parts(v)


def _window(_i: object, a: Any, v: str | float) -> None:
    if isinstance(v, str):
        if v not in ("total", "day", "month"):
            raise ConfigError(
                f"window must be 'total', 'day', 'month' or a number of seconds; got {v!r}",
                path="window",
            )
    elif isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
        raise ConfigError(f"window must be a positive number of seconds, got {v!r}", path="window")


def _tz(_i: object, _a: Any, v: str) -> None:
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"tz {v!r} is not a known IANA time zone (such as 'UTC' or 'Asia/Ho_Chi_Minh');"
            " on systems without zone data, pip install tzdata",
            path="tz",
        ) from None


def _scope_text(scope: str | Sequence[str]) -> str:
    return "+".join(_scope_parts(scope))


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _default_name(kind: str, limit: float, scope: str | Sequence[str], window: str | float) -> str:
    name = f"{kind}-{_num(limit)}-{_scope_text(scope)}"
    if window == "total":
        return name
    return f"{name}-{window}" if isinstance(window, str) else f"{name}-{_num(window)}s"


def _check_name(_i: object, _a: Any, v: str) -> None:
    if not isinstance(v, str):
        raise ConfigError(f"name must be a string, got {v!r}", path="name")


@frozen(kw_only=True)
class _Policy:
    """What every limit shares: a name, a scope and a window.

    Given a ``name``, the policy is shared: its claims are counted in the Proxy's configured
    ledger under that name, by every process using the ledger, across runs. Without one it is
    private to the Proxy holding it: counted in memory from zero, forgotten at exit; its name
    (derived from its terms) only labels it in errors and usage.
    """

    name: str = field(default="", validator=_check_name)
    scope: str | Sequence[str] = field(default="global", validator=_scope)
    window: str | float = field(default="total", validator=_window)
    tz: str = field(default="UTC", validator=_tz)
    # Whether a name was given (the name is filled in when not).
    _shared: bool = field(default=True, init=False, repr=False)
    # What claim() needs, worked out once: claims are made on every call.
    _terms: tuple[tuple[str, ...], float | None, Period | None] | None = field(
        default=None, init=False, repr=False, eq=False
    )
    # The last claim made, by scope value: a policy's claims repeat call after call, and the
    # same Claim object lets ledgers find what they worked out for it without comparing fields.
    _last: tuple[str, Claim] | None = field(default=None, init=False, repr=False, eq=False)

    _unit: ClassVar[Unit] = "tokens"

    def __attrs_post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "_shared", False)
            object.__setattr__(self, "name", self._derived_name())

    @property
    def shared(self) -> bool:
        """Whether the policy was given a name: its budget then lives in the configured ledger.

        >>> LLMBudget(max_tokens=1000).shared, LLMBudget(max_tokens=1000, name="team").shared
        (False, True)
        """
        return self._shared

    def _derived_name(self) -> str:
        raise NotImplementedError

    def _limit(self) -> float:
        raise NotImplementedError

    def claim(self, scope: CallScope) -> Claim:
        """Count the call under this policy's scope and window."""
        terms = self._terms
        if terms is None:
            window: float | None = None
            period: Period | None = None
            if self.window == "day":
                period = "day"
            elif self.window == "month":
                period = "month"
            elif not isinstance(self.window, str):
                window = float(self.window)
            terms = (_scope_parts(self.scope), window, period)
            object.__setattr__(self, "_terms", terms)
        parts, window, period = terms
        value = ",".join([scope.value(p) for p in parts])
        last = self._last
        if last is not None and last[0] == value:
            return last[1]
        claim = Claim(
            f"{self.name}|{value}",
            self.name,
            value,
            self._limit(),
            self._unit,
            window,
            period,
            self.tz,
            self._shared,
        )
        object.__setattr__(self, "_last", (value, claim))
        return claim


def _frozen_scope(value: str | Sequence[str]) -> str | tuple[str, ...]:
    return value if isinstance(value, str) else tuple(value)


@frozen(kw_only=True)
class LLMBudget(_Policy):
    """A token budget (the seed's ``LLMBudget(max_tokens=...)``): input plus output tokens.

    Without a ``name`` the budget is private to the Proxy holding it, like the seed's
    in-object budget: counted in that Proxy's memory, from zero in each run, forgotten at exit,
    never shared with another Proxy or process. Give it a ``name`` to keep it across runs and
    share it: it is then counted in the configured ledger (SQLite by default, Redis...) under
    that name, and every process using that ledger and name draws on the same budget. Budgets
    from configuration are always named. Without a name, ``name`` is derived from the limit,
    scope and window and only labels the budget in errors and usage.

    >>> LLMBudget(max_tokens=1000).name
    'tokens-1000-global'
    >>> LLMBudget(max_tokens=5_000_000, scope="user", window="month", tz="Asia/Ho_Chi_Minh").name
    'tokens-5000000-user-month'
    """

    max_tokens: int = field(validator=_not_negative)
    scope: str | Sequence[str] = field(default="global", validator=_scope, converter=_frozen_scope)

    def _derived_name(self) -> str:
        return _default_name("tokens", self.max_tokens, self.scope, self.window)

    def _limit(self) -> float:
        return self.max_tokens


@frozen(kw_only=True)
class CostBudget(_Policy):
    """A budget in USD, counted from the price table (see :mod:`llmproxy.pricing`).

    A call to a model with no price under a cost budget is refused with a ConfigError before
    any upstream call, never let through for free.

    >>> CostBudget(max_usd=50, scope="user", window="month").name
    'usd-50-user-month'
    """

    max_usd: float = field(validator=_not_negative)
    scope: str | Sequence[str] = field(default="global", validator=_scope, converter=_frozen_scope)
    _unit: ClassVar[Unit] = "usd"

    def _derived_name(self) -> str:
        return _default_name("usd", self.max_usd, self.scope, self.window)

    def _limit(self) -> float:
        return self.max_usd


@frozen(kw_only=True)
class RequestsPerMinute(_Policy):
    """At most ``limit`` requests (retries included) in any rolling 60 seconds, per scope."""

    limit: int = field(validator=_not_negative)
    scope: str | Sequence[str] = field(default="global", validator=_scope, converter=_frozen_scope)
    window: str | float = field(default=60.0, validator=_window)
    _unit: ClassVar[Unit] = "requests"

    def _derived_name(self) -> str:
        return f"rpm-{self.limit}-{_scope_text(self.scope)}"

    def _limit(self) -> float:
        return self.limit


@frozen(kw_only=True)
class TokensPerMinute(_Policy):
    """At most ``limit`` tokens (input plus output) in any rolling 60 seconds, per scope."""

    limit: int = field(validator=_not_negative)
    scope: str | Sequence[str] = field(default="global", validator=_scope, converter=_frozen_scope)
    window: str | float = field(default=60.0, validator=_window)

    def _derived_name(self) -> str:
        return f"tpm-{self.limit}-{_scope_text(self.scope)}"

    def _limit(self) -> float:
        return self.limit
