"""Budget policies: what a call is counted against, and under which key.

A policy turns a call's scope (model, provider, user, session) into a
:class:`~llmproxy.budget.base.Claim`, or None when it does not apply. The ledger does the
counting; policies only name the limit.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

from attrs import field, frozen

from llmproxy.budget.base import Claim
from llmproxy.errors import ConfigError

Scope = Literal["global", "user", "session", "model", "provider"]
SCOPES: frozenset[str] = frozenset(("global", "user", "session", "model", "provider"))


@frozen
class CallScope:
    """Who and what a call is for: the values policies key their claims on."""

    model: str
    provider: str
    user: str | None = None
    session_id: str | None = None

    def value(self, scope: str) -> str:
        """Return the ledger key part for ``scope`` (``user:alice``; ``user:-`` when no user)."""
        if scope == "global":
            return "global"
        raw: str | None
        if scope == "user":
            raw = self.user
        elif scope == "session":
            raw = self.session_id
        elif scope == "model":
            raw = self.model
        else:
            raw = self.provider
        return f"{scope}:{raw if raw is not None else '-'}"


@runtime_checkable
class BudgetPolicy(Protocol):
    """A limit a call may be counted against."""

    @property
    def name(self) -> str:
        """The policy's name (read-only, so frozen policy classes satisfy the protocol)."""
        ...

    def claim(self, scope: CallScope) -> Claim | None:
        """Return the claim this call makes on the policy, or None when it does not apply."""
        ...


def _not_negative(_i: object, a: Any, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{a.name} must be a number, got {v!r}", path=a.name)
    if v < 0:
        raise ConfigError(f"{a.name} must not be negative, got {v}", path=a.name)


def _scope(_i: object, a: Any, v: str) -> None:
    if v not in SCOPES:
        raise ConfigError(
            f"{a.name} must be one of {', '.join(sorted(SCOPES))}; got {v!r}", path=a.name
        )


@frozen
class LLMBudget:
    """A token budget (the seed's ``LLMBudget(max_tokens=...)``), all-time, per scope.

    Input plus output tokens of every call in the scope count against ``max_tokens``. Processes
    that give the same ``name`` on a shared ledger share one budget; the default name is
    derived from the limit and scope.

    >>> LLMBudget(max_tokens=1000).name
    'tokens-1000-global'
    """

    max_tokens: int = field(validator=_not_negative)
    name: str = field(default="")
    scope: str = field(default="global", validator=_scope)

    def __attrs_post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", f"tokens-{self.max_tokens}-{self.scope}")

    def claim(self, scope: CallScope) -> Claim:
        """Count the call under this budget's scope."""
        value = scope.value(self.scope)
        return Claim(f"{self.name}|{value}", self.name, value, self.max_tokens, "tokens", None)


@frozen
class RequestsPerMinute:
    """At most ``limit`` requests (retries included) in any rolling 60 seconds, per scope."""

    limit: int = field(validator=_not_negative)
    name: str = field(default="")
    scope: str = field(default="global", validator=_scope)

    def __attrs_post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", f"rpm-{self.limit}-{self.scope}")

    def claim(self, scope: CallScope) -> Claim:
        """Count the call under this limit's scope."""
        value = scope.value(self.scope)
        return Claim(f"{self.name}|{value}", self.name, value, self.limit, "requests", 60.0)
