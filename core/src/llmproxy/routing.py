"""Several deployments behind one model name: a :class:`Router` picks one for each call.

A model alias may name several *deployments* (``provider/model`` names: one model on two
keys, two regions, two providers) and a *strategy* that picks among them::

    [models.smart]
    strategy = "weighted"                         # or "least-in-flight", "lowest-latency"
    deployments = [
        { model = "openai/gpt-5.4", weight = 3, rpm = 500, tpm = 200_000 },
        { model = "azure/gpt-5.4" },
    ]
    cooldown_seconds = 5          # the first cooldown of a failing deployment
    cooldown_backoff = 2          # each failure in a row multiplies it
    cooldown_max_seconds = 300    # and it never exceeds this

or in code: ``Proxy(routers={"smart": Router([Deployment("openai/gpt-5.4", weight=3),
Deployment("azure/gpt-5.4")])})``.

Strategies (:data:`STRATEGIES`), among the *healthy* deployments (not cooling down):

- ``weighted`` (default): at random, in proportion to ``weight`` (the random generator can be
  given, seeded, for tests).
- ``least-in-flight``: the one with the fewest attempts in flight in this process (ties at
  random by weight).
- ``lowest-latency``: the one with the lowest recent latency, an exponentially weighted moving
  average of its successful attempts' durations (a stream's: to its last chunk); a deployment
  with no measurement yet goes first, so that every one is measured.

Cooldown: an attempt that fails with a retryable error (429, 5xx, overloaded, timeout, dropped
connection) cools its deployment down for ``cooldown_seconds * cooldown_backoff ** (n - 1)``
seconds (``n`` failures in a row, at most ``cooldown_max_seconds``, at least the service's
``retry-after``); a success clears it. No call is sent to a deployment cooling down while
another is healthy; when every one is cooling down, the one whose cooldown ends first is used
(a call is never refused only because its deployments failed recently). Cooldowns, in-flight
counts and latencies are this process's.

Failover and the caller's retries: within one model turn a retryable failure moves the call
at once (no backoff sleep) to a deployment not yet tried in that turn; such a move is not a
retry, and does not use any of ``retry.max_attempts``. Once every deployment has failed in the
turn, the call retries as any call does: at most ``retry.max_attempts - 1`` more attempts with
the usual backoff, each sent to the router's pick at that moment. So one turn makes at most
``len(deployments) + retry.max_attempts - 1`` attempts, and each failure counts once. When
those are spent too, the alias's ``fallbacks`` are tried as for any model. Within one call the
deployment is kept across tool rounds (a conversation's thinking blocks go back to the model
that wrote them) unless it fails or cools down.

Per-deployment limits: ``rpm`` and ``tpm`` are budget policies (:class:`DeploymentLimit`)
counted in the configured ledger under ``deployment-rpm|model:provider/model`` and
``deployment-tpm|...``, so they hold across processes (and machines, on Redis). A deployment
at its limit is passed over for another with room; when every one is at its limit the call is
refused with :class:`~llmproxy.errors.RateLimited` (or :class:`~llmproxy.errors.BudgetExceeded`
for ``tpm``) as any limited call is.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs
from attrs import field, frozen

from llmproxy.budget.base import Claim
from llmproxy.budget.policy import CallScope, RequestsPerMinute, TokensPerMinute
from llmproxy.errors import (
    BudgetExceeded,
    ConfigError,
    ProviderError,
    RateLimited,
    UnsupportedContent,
)
from llmproxy.retry import next_delay

if TYPE_CHECKING:
    from llmproxy.config import RetryConfig

Strategy = Literal["weighted", "least-in-flight", "lowest-latency"]
STRATEGIES: tuple[Strategy, ...] = ("weighted", "least-in-flight", "lowest-latency")
"""The routing strategies, by their configuration name (``weighted`` is the default)."""

LATENCY_SMOOTHING = 0.3
"""How much of a new latency measurement enters a deployment's moving average."""


def _check_model(_i: object, _a: Any, value: str) -> None:
    if not isinstance(value, str) or not value.partition("/")[2] or not value.partition("/")[0]:
        raise ConfigError(
            f"deployment model must be 'provider/model' (such as 'openai/gpt-5.4'), got {value!r}",
            path="model",
        )


def _check_weight(_i: object, _a: Any, value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"weight must be a number above 0, got {value!r}", path="weight")


def _check_limit(_i: object, a: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(
            f"{a.name} must be a whole number of at least 1, got {value!r}", path=a.name
        )


@frozen
class Deployment:
    """One deployment behind an alias: a ``provider/model`` name, its weight and its limits.

    ``weight`` counts for the ``weighted`` strategy (and breaks ties of the others); ``rpm`` and
    ``tpm`` are the deployment's own requests and tokens per rolling minute, counted in the
    ledger (see :class:`DeploymentLimit`).

    >>> Deployment("openai/gpt-5.4", weight=3).weight
    3
    """

    model: str = field(validator=_check_model)
    weight: float = field(default=1, validator=_check_weight)
    rpm: int | None = field(default=None, validator=_check_limit)
    tpm: int | None = field(default=None, validator=_check_limit)


def _check_seconds(_i: object, a: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(f"{a.name} must be a number of seconds >= 0, got {value!r}", path=a.name)


def _check_backoff(_i: object, a: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1:
        raise ConfigError(f"{a.name} must be a number >= 1, got {value!r}", path=a.name)


@frozen
class Cooldown:
    """How long a deployment rests after retryable failures: exponential, capped, reset on success.

    >>> [Cooldown(seconds=5, backoff=2, max_seconds=30).length(n) for n in (1, 2, 3, 4)]
    [5.0, 10.0, 20.0, 30.0]
    """

    seconds: float = field(default=5.0, validator=_check_seconds)
    backoff: float = field(default=2.0, validator=_check_backoff)
    max_seconds: float = field(default=300.0, validator=_check_seconds)

    def length(self, failures: int, retry_after: float | None = None) -> float:
        """The cooldown after ``failures`` retryable failures in a row, at least ``retry_after``."""
        exponent = min(max(failures - 1, 0), 64)
        length = min(float(self.seconds) * float(self.backoff) ** exponent, float(self.max_seconds))
        if retry_after is not None:
            length = max(length, min(float(retry_after), float(self.max_seconds)))
        return length


@frozen
class DeploymentLimit:
    """A deployment's ``rpm`` or ``tpm``: a named budget policy that applies to its calls only.

    Counted in the configured ledger (shared by processes) under ``deployment-rpm`` or
    ``deployment-tpm`` and the scope ``model:provider/model``: calls to the deployment by any
    alias, or by its name directly, count against it.
    """

    model: str
    kind: Literal["rpm", "tpm"]
    limit: int

    @property
    def name(self) -> str:
        """The policy's name in the ledger: ``deployment-rpm`` or ``deployment-tpm``."""
        return f"deployment-{self.kind}"

    def claim(self, scope: CallScope) -> Claim | None:
        """The claim of a call to this deployment; None for a call to another model."""
        if scope.model != self.model:
            return None
        policy: RequestsPerMinute | TokensPerMinute
        if self.kind == "rpm":
            policy = RequestsPerMinute(limit=self.limit, scope="model", name=self.name)
        else:
            policy = TokensPerMinute(limit=self.limit, scope="model", name=self.name)
        return policy.claim(scope)


class DeploymentState:
    """What this process knows of one deployment: in flight, recent latency, cooldown."""

    __slots__ = ("cooling_until", "failures", "in_flight", "latency")

    def __init__(self) -> None:
        self.in_flight = 0
        self.latency: float | None = None
        self.failures = 0
        self.cooling_until = 0.0


@frozen
class DeploymentStatus:
    """A snapshot of one deployment for display: its terms and this process's state of it."""

    model: str
    weight: float
    in_flight: int
    latency: float | None
    failures: int
    cooldown_left: float


class Router:
    """Picks a deployment for each call to one alias, and learns from each attempt's outcome.

    ``strategy`` is one of :data:`STRATEGIES`; ``cooldown`` how long a failing deployment
    rests; ``rng`` the random generator of the weighted choice and of ties (give a seeded
    ``random.Random`` for reproducible picks); ``clock`` the monotonic clock cooldowns are
    counted by. Thread-safe: one Router serves every call of a Proxy.

    >>> router = Router([Deployment("a/m", weight=3), Deployment("b/m")], rng=random.Random(1))
    >>> router.choose().model in ("a/m", "b/m")
    True
    """

    def __init__(
        self,
        deployments: Sequence[Deployment],
        *,
        strategy: str = "weighted",
        cooldown: Cooldown | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        deployments = tuple(deployments)
        if not deployments or not all(isinstance(d, Deployment) for d in deployments):
            raise ConfigError(
                "a router needs at least one Deployment('provider/model', ...)",
                path="deployments",
            )
        models = [d.model for d in deployments]
        if len(set(models)) != len(models):
            raise ConfigError(
                f"deployments must name distinct models, got {models}: declare a provider per"
                " key or region ([providers.NAME]) and name each as NAME/model",
                path="deployments",
            )
        if strategy not in STRATEGIES:
            raise ConfigError(
                f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}",
                path="strategy",
            )
        self.deployments = deployments
        self.strategy: Strategy = strategy  # (checked above)
        self.cooldown = cooldown if cooldown is not None else Cooldown()
        self.rng = rng if rng is not None else random.Random()  # noqa: S311 -- not cryptography
        self.clock = clock
        self._state = {d.model: DeploymentState() for d in deployments}
        self._by_model = {d.model: d for d in deployments}
        self._lock = threading.Lock()

    # -- choosing --------------------------------------------------------------------------

    def __contains__(self, model: object) -> bool:
        return model in self._by_model

    def cooldown_left(self, model: str) -> float:
        """Seconds until ``model``'s cooldown ends (0 when it is healthy)."""
        return max(self._state[model].cooling_until - self.clock(), 0.0)

    def healthy(self, model: str) -> bool:
        """Whether ``model`` is not cooling down."""
        return self._state[model].cooling_until <= self.clock()

    def choose(self, exclude: Collection[str] = ()) -> Deployment | None:
        """The deployment for the next attempt among those not in ``exclude``; None if none.

        A healthy one by the strategy; when every candidate is cooling down, the one whose
        cooldown ends first.
        """
        with self._lock:
            now = self.clock()
            candidates = [d for d in self.deployments if d.model not in exclude]
            if not candidates:
                return None
            healthy = [d for d in candidates if self._state[d.model].cooling_until <= now]
            if not healthy:
                return min(candidates, key=lambda d: self._state[d.model].cooling_until)
            if len(healthy) == 1:
                return healthy[0]
            if self.strategy == "least-in-flight":
                fewest = min(self._state[d.model].in_flight for d in healthy)
                healthy = [d for d in healthy if self._state[d.model].in_flight == fewest]
            elif self.strategy == "lowest-latency":
                unmeasured = [d for d in healthy if self._state[d.model].latency is None]
                if unmeasured:
                    healthy = unmeasured
                else:
                    best = min(self._state[d.model].latency or 0.0 for d in healthy)
                    healthy = [d for d in healthy if self._state[d.model].latency == best]
            if len(healthy) == 1:
                return healthy[0]
            return self.rng.choices(healthy, weights=[d.weight for d in healthy])[0]

    # -- learning --------------------------------------------------------------------------

    def started(self, model: str) -> None:
        """An attempt to ``model`` started."""
        with self._lock:
            self._state[model].in_flight += 1

    def succeeded(self, model: str, latency: float) -> None:
        """An attempt to ``model`` succeeded in ``latency`` seconds: its cooldown is cleared."""
        with self._lock:
            state = self._state[model]
            state.in_flight = max(state.in_flight - 1, 0)
            state.failures = 0
            state.cooling_until = 0.0
            if state.latency is None:
                state.latency = latency
            else:
                state.latency += LATENCY_SMOOTHING * (latency - state.latency)

    def failed(self, model: str, error: BaseException | None) -> float:
        """An attempt to ``model`` ended without an answer; returns the cooldown it got (or 0).

        Only a retryable :class:`~llmproxy.errors.ProviderError` cools the deployment down;
        any other end (a refused request, a caller that stopped reading) only ends the attempt.
        """
        with self._lock:
            state = self._state[model]
            state.in_flight = max(state.in_flight - 1, 0)
            if not isinstance(error, ProviderError) or not error.retryable:
                return 0.0
            state.failures += 1
            length = self.cooldown.length(state.failures, error.retry_after)
            state.cooling_until = max(state.cooling_until, self.clock() + length)
            return length

    def status(self) -> list[DeploymentStatus]:
        """Each deployment's terms and this process's state of it, in declaration order."""
        now = self.clock()
        with self._lock:
            return [
                DeploymentStatus(
                    d.model,
                    d.weight,
                    (s := self._state[d.model]).in_flight,
                    s.latency,
                    s.failures,
                    max(s.cooling_until - now, 0.0),
                )
                for d in self.deployments
            ]

    def limits(self) -> list[DeploymentLimit]:
        """The budget policies of the deployments' ``rpm`` and ``tpm``."""
        out: list[DeploymentLimit] = []
        for d in self.deployments:
            if d.rpm is not None:
                out.append(DeploymentLimit(d.model, "rpm", d.rpm))
            if d.tpm is not None:
                out.append(DeploymentLimit(d.model, "tpm", d.tpm))
        return out

    def __repr__(self) -> str:
        models = ", ".join(f"{d.model}x{d.weight:g}" for d in self.deployments)
        return f"Router({self.strategy}: {models})"


class Route:
    """One call's way through an alias's router: which deployments it tried, what is next.

    Built per call by the Proxy; :class:`~llmproxy.call.Call` asks it where to go after a
    failure (:meth:`after_failure`) or a refused reservation (:meth:`after_limit`). See the
    module docstring for the rules.
    """

    __slots__ = (
        "alias",
        "attempt_started",
        "current",
        "done",
        "limited",
        "moving",
        "retries",
        "router",
        "tried",
        "unusable",
    )

    def __init__(self, alias: str, router: Router) -> None:
        self.alias = alias
        self.router = router
        self.current: str | None = None
        self.tried: set[str] = set()
        self.limited: set[str] = set()
        self.unusable: set[str] = set()
        self.retries = 0
        self.done = False
        self.moving: Literal["failover", "retry"] | None = None
        self.attempt_started: float | None = None

    def first(self) -> str | None:
        """The deployment to start with (None when every one is unusable)."""
        return self._pick(set())

    def _pick(self, exclude: set[str]) -> str | None:
        chosen = self.router.choose(exclude | self.unusable | self.limited)
        self.current = chosen.model if chosen is not None else None
        return self.current

    def unusable_now(self, model: str) -> str | None:
        """``model`` cannot be set up (no key, no plugin): the next deployment, or None."""
        self.unusable.add(model)
        return self._pick(self.tried)

    def on_deployment(self, model: str) -> bool:
        """Whether the call is aimed at one of this alias's deployments."""
        return model == self.current

    # -- attempts --------------------------------------------------------------------------

    def begin(self) -> None:
        """An attempt to the current deployment starts."""
        if self.current is not None and self.attempt_started is None:
            self.router.started(self.current)
            self.attempt_started = time.perf_counter()

    def end(self, error: BaseException | None, *, answered: bool) -> None:
        """The attempt ended: answered (a success), or not (``error``, or the caller left)."""
        started, self.attempt_started = self.attempt_started, None
        if started is None or self.current is None:
            return
        if answered:
            self.router.succeeded(self.current, time.perf_counter() - started)
            self.tried.clear()
            self.limited.clear()
            self.retries = 0
        else:
            self.router.failed(self.current, error)

    def after_failure(
        self, error: BaseException, elapsed: float, retry: RetryConfig
    ) -> float | None:
        """After a failed attempt: seconds to wait before the next deployment, or None.

        0 to fail over at once to a deployment not yet tried in this turn; a backoff delay when
        every one was tried and a retry of the caller's ``retry.max_attempts`` is left; None
        when the alias is spent (the call's fallbacks come next) or the error is not one to
        move on from.
        """
        if self.done or self.current is None:
            return None
        self.tried.add(self.current)
        unsupported = isinstance(error, UnsupportedContent)
        retryable = isinstance(error, ProviderError) and error.retryable
        past_deadline = retry.deadline is not None and elapsed >= retry.deadline
        if not (retryable or unsupported) or past_deadline:
            self.done = True
            return None
        if unsupported:
            self.unusable.add(self.current)
        passed = self.tried | self.unusable | self.limited
        if any(d.model not in passed for d in self.router.deployments):
            self.moving = "failover"
            return 0.0
        if unsupported:
            self.done = True
            return None
        delay = next_delay(error, self.retries + 1, elapsed, retry)
        if delay is None:
            self.done = True
            return None
        self.retries += 1
        self.moving = "retry"
        return delay

    def next(self) -> str | None:
        """The deployment to move to after :meth:`after_failure` gave a delay (now slept)."""
        moving, self.moving = self.moving, None
        if moving is None:
            return None
        chosen = self._pick(self.tried if moving == "failover" else set())
        if chosen is None:
            self.done = True
        return chosen

    def after_limit(self, error: BudgetExceeded | RateLimited) -> str | None:
        """A reservation for the current deployment was refused: another with room, or None.

        Only a refusal counted per deployment (a claim on ``model:provider/model``: the
        deployment's ``rpm``/``tpm``, a budget scoped by model) moves the call; a user's or a
        global budget would refuse any deployment.
        """
        current = self.current
        if self.done or current is None or f"model:{current}" not in error.scope.split(","):
            return None
        self.limited.add(current)
        chosen = self._pick(set())
        if chosen is None:
            self.limited.discard(current)
            self.current = current
        return chosen

    def recheck(self) -> str | None:
        """Before a new turn: a healthy deployment to move to when the current one cools down."""
        current = self.current
        if self.done or current is None or self.router.healthy(current):
            return None
        chosen = self._pick(self.tried)
        if chosen is None or chosen == current or not self.router.healthy(chosen):
            self.current = current
            return None
        return chosen


def router_from_table(name: str, table: Mapping[str, Any]) -> Router:
    """Build the :class:`Router` of one checked ``[models.NAME]`` table (:func:`model_table`)."""
    deployments = [Deployment(**entry) for entry in table["deployments"]]
    cooldown = Cooldown(
        table.get("cooldown_seconds", 5.0),
        table.get("cooldown_backoff", 2.0),
        table.get("cooldown_max_seconds", 300.0),
    )
    return Router(deployments, strategy=table.get("strategy", "weighted"), cooldown=cooldown)


_TABLE_KEYS = frozenset(
    ("deployments", "strategy", "cooldown_seconds", "cooldown_backoff", "cooldown_max_seconds")
)
_DEPLOYMENT_KEYS = frozenset(("model", "weight", "rpm", "tpm"))


def model_table(name: str, table: Any) -> dict[str, Any]:
    """Check one ``[models.NAME]`` table; a wrong key or value is a ConfigError naming its path.

    >>> model_table("smart", {"deployments": [{"model": "openai/gpt-5.4", "weight": 3}]})
    {'deployments': [{'model': 'openai/gpt-5.4', 'weight': 3}]}
    """
    where = f"models.{name}"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table, got {table!r}", path=where)
    unknown = set(table) - _TABLE_KEYS
    if unknown:
        raise ConfigError(
            f"{where} has unknown keys {sorted(unknown)}; known: {', '.join(sorted(_TABLE_KEYS))}",
            path=f"{where}.{sorted(unknown)[0]}",
        )
    entries = table.get("deployments")
    if not isinstance(entries, (list, tuple)) or not entries:
        raise ConfigError(
            f'{where}.deployments must be a non-empty list such as [{{ model = "openai/gpt-5.4"'
            f" }}], got {entries!r}",
            path=f"{where}.deployments",
        )
    checked: list[dict[str, Any]] = []
    for index, entry in enumerate(entries):
        path = f"{where}.deployments[{index}]"
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{path} must be a table with a model, got {entry!r}", path=path)
        unknown = set(entry) - _DEPLOYMENT_KEYS
        if unknown or "model" not in entry:
            raise ConfigError(
                f"{path} takes model (required), weight, rpm and tpm; got {sorted(entry)}",
                path=path,
            )
        try:
            Deployment(**entry)
        except ConfigError as exc:
            raise ConfigError(f"{path}.{exc.path}: {exc}", path=f"{path}.{exc.path}") from None
        checked.append(dict(entry))
    out = {**table, "deployments": checked}
    try:
        router_from_table(name, out)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc.path}: {exc}", path=f"{where}.{exc.path}") from None
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}", path=where) from None
    return out


__all__ = [
    "LATENCY_SMOOTHING",
    "STRATEGIES",
    "Cooldown",
    "Deployment",
    "DeploymentLimit",
    "DeploymentState",
    "DeploymentStatus",
    "Route",
    "Router",
    "Strategy",
    "model_table",
    "router_from_table",
]
