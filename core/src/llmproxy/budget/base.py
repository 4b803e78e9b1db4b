"""The ledger protocol: atomic reserve-then-settle accounting shared by every budget policy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

from attrs import frozen

Unit = Literal["tokens", "requests", "usd"]
Period = Literal["day", "month"]


@frozen(cache_hash=True)  # hashed by ledgers on every call (a claim is made once per scope)
class Claim:
    """One limit a call is counted against.

    ``key`` is the ledger key (the policy's name plus the scope value, e.g.
    ``team-a|user:alice``); ``policy`` and ``scope`` are for messages. ``unit`` is what is
    counted: ``tokens`` (input plus output), ``requests`` (attempts) or ``usd`` (cost, from the
    :class:`Rates` given to reserve and the real cost given to settle).

    The window: ``window`` is a rolling window in seconds; ``period`` a calendar period
    (``day`` resets at midnight, ``month`` on the 1st) in the IANA time zone ``tz``, counted by
    the ledger's own clock (:meth:`Ledger.now`); neither means an all-time total.

    ``shared`` is False for the claims of a policy created without a name: a
    :class:`~llmproxy.budget.routed.RoutedLedger` counts those in its private in-memory ledger
    (one per Proxy: they start at zero in each run) instead of the shared one. A ledger itself
    counts every claim it is given.
    """

    key: str
    policy: str
    scope: str
    limit: float
    unit: Unit = "tokens"
    window: float | None = None
    period: Period | None = None
    tz: str = "UTC"
    shared: bool = True


@frozen
class Rates:
    """How tokens turn into USD for ``usd`` claims: the price of one input and one output token.

    The input rate is the uncached price (a safe upper bound before the call); the real cost,
    cached tokens included, is given to settle.
    """

    input: float
    output: float


@frozen
class Reservation:
    """What a successful reserve holds until it is settled or released or its lease expires.

    ``output_tokens`` is the output cap granted: the most the call may produce and still fit
    every token claim. ``amounts`` is what was held per claim, in claim order.
    """

    id: str
    claims: tuple[Claim, ...]
    amounts: tuple[float, ...]
    output_tokens: int
    input_tokens: int
    expires_at: float


@frozen
class ClaimUsage:
    """The state of one claim: settled use (in its window), reserved in flight, and the limit."""

    claim: Claim
    used: float
    reserved: float
    resets_at: float | None = None

    @property
    def remaining(self) -> float:
        """What is left: limit minus used minus reserved, never negative."""
        return max(self.claim.limit - self.used - self.reserved, 0.0)


@runtime_checkable
class Ledger(Protocol):
    """Atomic accounting for budgets and rate limits. Every method has an async twin.

    :meth:`reserve` is all-or-none across its claims: it raises
    :class:`~llmproxy.errors.RateLimited` when a ``requests`` claim is full and
    :class:`~llmproxy.errors.BudgetExceeded` when a ``tokens`` claim cannot hold the input plus
    at least ``min_output_tokens``; otherwise it holds ``input_tokens`` plus the granted output
    cap (at most ``max_output_tokens``) on every token claim, one request on every request
    claim, and ``input_tokens * rates.input + cap * rates.output`` on every ``usd`` claim (the
    cap is lowered so that every usd claim fits too; a usd claim without ``rates`` is an
    InvalidRequest). :meth:`settle` replaces the hold with what was really used, exactly once.

    The contract every llmproxy ledger keeps (the contract suite in ``llmproxy_testing``
    checks it):

    - Reservation ids are unique; :meth:`settle` is idempotent per ``reservation.id`` (a
      repeat is a no-op, across processes and restarts for a shared ledger, for as long as
      the ledger remembers the id: its *settled grace*, 24 h by default).
    - Unknown is spent: a hold neither settled nor renewed by its ``expires_at`` is charged in
      full (its held amounts count as used, in the window or calendar period current at its
      expiry), never silently released, and its id is remembered as charged with the amounts.
      A later settle of that id replaces the charge exactly once (per claim, used grows by
      the real amount minus the charge, never below zero) and is then remembered as settled.
      So a crash can under-use a budget (a dead call's unused hold stays spent), never
      overspend it.
    - Holds of live calls are kept alive by :meth:`RenewableLedger.renew` (optional for
      third-party ledgers; every built-in ledger has it).
    """

    def reserve(
        self,
        claims: Sequence[Claim],
        *,
        input_tokens: int,
        max_output_tokens: int,
        min_output_tokens: int = 1,
        lease: float = 600.0,
        rates: Rates | None = None,
    ) -> Reservation:
        """Hold room on every claim atomically or raise; see the class docstring."""
        ...

    def settle(
        self, reservation: Reservation, *, tokens: int, requests: int = 1, cost: float = 0.0
    ) -> None:
        """Record ``tokens``, ``requests`` and ``cost`` (USD) really used and drop the hold."""
        ...

    def now(self) -> float:
        """The ledger's clock (Unix seconds) that windows and periods are counted by."""
        ...

    def usage(self, claims: Sequence[Claim]) -> list[ClaimUsage]:
        """Return the state of each claim."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...

    async def areserve(
        self,
        claims: Sequence[Claim],
        *,
        input_tokens: int,
        max_output_tokens: int,
        min_output_tokens: int = 1,
        lease: float = 600.0,
        rates: Rates | None = None,
    ) -> Reservation:
        """Async :meth:`reserve`."""
        ...

    async def asettle(
        self, reservation: Reservation, *, tokens: int, requests: int = 1, cost: float = 0.0
    ) -> None:
        """Async :meth:`settle`."""
        ...

    async def ausage(self, claims: Sequence[Claim]) -> list[ClaimUsage]:
        """Async :meth:`usage`."""
        ...


@runtime_checkable
class RenewableLedger(Protocol):
    """A ledger whose holds can be renewed while their call runs (an optional capability).

    The Proxy renews the hold of every call in flight every third of its lease (see
    :mod:`llmproxy.budget.renewal`), so that no lease length can make a live call lose its
    hold; a hold whose owner died is no longer renewed, expires and is charged in full.
    """

    def renew(self, reservation: Reservation, *, lease: float) -> bool:
        """Push the hold's expiry to ``now + lease`` (never earlier than it was).

        Returns False when the hold no longer exists: settled, or expired and charged. One
        round trip or transaction.
        """
        ...

    async def arenew(self, reservation: Reservation, *, lease: float) -> bool:
        """Async :meth:`renew`."""
        ...


@runtime_checkable
class ListableLedger(Protocol):
    """A ledger that can list every budget it holds (an optional capability).

    A ledger that has it keeps each claim's terms (policy, scope, limit, unit, window) when the
    claim is first reserved, so that ``llmproxy usage`` can show budgets named in code or by
    gateway keys, which the configuration does not know.
    """

    def budgets(self) -> list[ClaimUsage]:
        """Return the state of every claim ever reserved here whose terms are known.

        Sorted by ledger key; the terms are the latest a process reserved the key under.
        """
        ...

    async def abudgets(self) -> list[ClaimUsage]:
        """Async :meth:`budgets`."""
        ...


class InlineAsync:
    """Async twins that run a ledger's sync methods inline.

    For ledgers whose calls take microseconds (memory, SQLite): handing them to a thread
    would cost more than it saves. The sync methods here only type the mixin; the ledger's
    own definitions take their place.
    """

    def reserve(
        self,
        claims: Sequence[Claim],
        *,
        input_tokens: int,
        max_output_tokens: int,
        min_output_tokens: int = 1,
        lease: float = 600.0,
        rates: Rates | None = None,
    ) -> Reservation:
        """The ledger's own reserve."""
        raise NotImplementedError

    def settle(
        self, reservation: Reservation, *, tokens: int, requests: int = 1, cost: float = 0.0
    ) -> None:
        """The ledger's own settle."""
        raise NotImplementedError

    def usage(self, claims: Sequence[Claim]) -> list[ClaimUsage]:
        """The ledger's own usage."""
        raise NotImplementedError

    def renew(self, reservation: Reservation, *, lease: float) -> bool:
        """The ledger's own renew."""
        raise NotImplementedError

    async def arenew(self, reservation: Reservation, *, lease: float) -> bool:
        """Async :meth:`renew` (runs inline)."""
        return self.renew(reservation, lease=lease)

    async def areserve(
        self,
        claims: Sequence[Claim],
        *,
        input_tokens: int,
        max_output_tokens: int,
        min_output_tokens: int = 1,
        lease: float = 600.0,
        rates: Rates | None = None,
    ) -> Reservation:
        """Async :meth:`reserve` (runs inline)."""
        return self.reserve(
            claims,
            input_tokens=input_tokens,
            max_output_tokens=max_output_tokens,
            min_output_tokens=min_output_tokens,
            lease=lease,
            rates=rates,
        )

    async def asettle(
        self, reservation: Reservation, *, tokens: int, requests: int = 1, cost: float = 0.0
    ) -> None:
        """Async :meth:`settle` (runs inline)."""
        self.settle(reservation, tokens=tokens, requests=requests, cost=cost)

    async def ausage(self, claims: Sequence[Claim]) -> list[ClaimUsage]:
        """Async :meth:`usage` (runs inline)."""
        return self.usage(claims)
