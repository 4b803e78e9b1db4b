"""RoutedLedger: a Proxy's private budgets in its own memory, its named ones in the shared ledger.

Where a budget lives follows from its policy (see :mod:`llmproxy.budget.policy`):

- A policy created in code **without a name** (``LLMBudget(max_tokens=20)``) is private to the
  Proxy holding it, like the seed's in-object ``LLMBudget``: its claims
  (``Claim.shared`` False) are counted in this object's private
  :class:`~llmproxy.budget.memory.MemoryLedger`, start at zero in each run and are forgotten
  at exit. Two scripts, or two Proxies in one process, never share it by accident.
- A **named** policy (``LLMBudget(max_tokens=20, name="team")``), a budget from configuration
  and a gateway key's budget are counted in the shared ledger (the configured one: SQLite by
  default, Redis...), under their name, by every process using that ledger, across runs.

A call whose claims are all of one kind goes to that ledger alone, at no extra cost. A call
with both reserves in the private ledger first (no I/O, so a refusal there costs nothing), then
in the shared one with the output cap the private one granted; a refusal of the shared ledger
releases the private hold, and a lower shared grant lowers the private hold to it, so the call
holds the same cap everywhere. Its reservation is a :class:`RoutedReservation` carrying both
parts; settling it settles each in its ledger.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from attrs import frozen

from llmproxy.budget.base import Claim, ClaimUsage, Ledger, Rates, Reservation
from llmproxy.budget.memory import MemoryLedger


@frozen
class RoutedReservation(Reservation):
    """A reservation held in both ledgers: ``parts`` is (the private one, the shared one).

    ``claims`` and ``amounts`` are the private part's followed by the shared part's;
    ``output_tokens`` is the cap both granted; ``expires_at`` the earlier end.
    """

    parts: tuple[Reservation, Reservation]


def _split(claims: Sequence[Claim]) -> tuple[list[Claim], list[Claim]]:
    """The claims of unnamed policies, and those of named ones."""
    mine: list[Claim] = []
    theirs: list[Claim] = []
    for claim in claims:
        (theirs if claim.shared else mine).append(claim)
    return mine, theirs


class RoutedLedger:
    """A :class:`~llmproxy.budget.base.Ledger` routing each claim by :attr:`Claim.shared`.

    ``shared`` is the configured ledger, or a function opening it: it is then opened on the
    first claim of a named policy (a Proxy with only unnamed budgets never opens it).
    ``private`` is where claims of unnamed policies are counted; by default a new
    :class:`~llmproxy.budget.memory.MemoryLedger`, or ``shared`` itself when that is a
    MemoryLedger object (already private to the process that made it). See the module
    docstring for the rule and for calls that claim in both.
    """

    def __init__(
        self, shared: Ledger | Callable[[], Ledger], *, private: Ledger | None = None
    ) -> None:
        self._lock = threading.Lock()
        self._factory: Callable[[], Ledger] | None
        self._shared: Ledger | None
        if isinstance(shared, Ledger):
            self._shared, self._factory = shared, None
        elif callable(shared):
            self._shared, self._factory = None, shared
        else:
            raise TypeError(f"shared must be a ledger or a function returning one, got {shared!r}")
        if private is None:
            private = self._shared if isinstance(self._shared, MemoryLedger) else MemoryLedger()
        self._private: Ledger = private

    def __repr__(self) -> str:
        shared = "(not opened)" if self._shared is None else repr(self._shared)
        return f"<RoutedLedger shared={shared} private={self._private!r}>"

    @property
    def shared(self) -> Ledger:
        """The shared (configured) ledger, opened now if it was not yet."""
        found = self._shared
        if found is None:
            with self._lock:
                found = self._shared
                if found is None:
                    assert self._factory is not None
                    found = self._shared = self._factory()
        return found

    @property
    def private(self) -> Ledger:
        """The ledger counting the claims of unnamed policies."""
        return self._private

    @property
    def opened(self) -> bool:
        """Whether the shared ledger has been opened."""
        return self._shared is not None

    def now(self) -> float:
        """The shared ledger's clock (the private one counts by its own)."""
        return self.shared.now()

    # -- reserve -----------------------------------------------------------------------------

    def _route(self, claims: Sequence[Claim]) -> tuple[Ledger | None, list[Claim], list[Claim]]:
        """The one ledger for ``claims``, or None with the private and shared claims."""
        private = self._private
        if private is self._shared:
            return private, [], []
        mine, theirs = _split(claims)
        if not theirs:
            return private, [], []
        if not mine:
            return self.shared, [], []
        return None, mine, theirs

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
        """Hold room on every claim, each in its ledger, atomically or raise."""
        args: dict[str, Any] = {
            "input_tokens": input_tokens,
            "min_output_tokens": min_output_tokens,
            "lease": lease,
            "rates": rates,
        }
        one, mine, theirs = self._route(claims)
        if one is not None:
            return one.reserve(claims, max_output_tokens=max_output_tokens, **args)
        private, shared = self._private, self.shared
        first = private.reserve(mine, max_output_tokens=max_output_tokens, **args)
        try:
            second = shared.reserve(theirs, max_output_tokens=first.output_tokens, **args)
        except BaseException:
            private.settle(first, tokens=0, requests=0)
            raise
        if second.output_tokens < first.output_tokens:
            private.settle(first, tokens=0, requests=0)
            try:
                first = private.reserve(mine, max_output_tokens=second.output_tokens, **args)
            except BaseException:
                shared.settle(second, tokens=0, requests=0)
                raise
        return _joined(first, second)

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
        args: dict[str, Any] = {
            "input_tokens": input_tokens,
            "min_output_tokens": min_output_tokens,
            "lease": lease,
            "rates": rates,
        }
        one, mine, theirs = self._route(claims)
        if one is not None:
            return await one.areserve(claims, max_output_tokens=max_output_tokens, **args)
        private, shared = self._private, self.shared
        first = await private.areserve(mine, max_output_tokens=max_output_tokens, **args)
        try:
            second = await shared.areserve(theirs, max_output_tokens=first.output_tokens, **args)
        except BaseException:
            await private.asettle(first, tokens=0, requests=0)
            raise
        if second.output_tokens < first.output_tokens:
            await private.asettle(first, tokens=0, requests=0)
            try:
                first = await private.areserve(mine, max_output_tokens=second.output_tokens, **args)
            except BaseException:
                await shared.asettle(second, tokens=0, requests=0)
                raise
        return _joined(first, second)

    # -- settle ------------------------------------------------------------------------------

    def _owner(self, reservation: Reservation) -> Ledger:
        """The ledger a one-part reservation was made in."""
        claims = reservation.claims
        if claims and claims[0].shared and self._private is not self._shared:
            return self.shared
        return self._private

    def settle(
        self, reservation: Reservation, *, tokens: int, requests: int = 1, cost: float = 0.0
    ) -> None:
        """Record what was used in each ledger the reservation holds room in."""
        if isinstance(reservation, RoutedReservation):
            first, second = reservation.parts
            self._private.settle(first, tokens=tokens, requests=requests, cost=cost)
            self.shared.settle(second, tokens=tokens, requests=requests, cost=cost)
            return
        self._owner(reservation).settle(reservation, tokens=tokens, requests=requests, cost=cost)

    async def asettle(
        self, reservation: Reservation, *, tokens: int, requests: int = 1, cost: float = 0.0
    ) -> None:
        """Async :meth:`settle`."""
        if isinstance(reservation, RoutedReservation):
            first, second = reservation.parts
            await self._private.asettle(first, tokens=tokens, requests=requests, cost=cost)
            await self.shared.asettle(second, tokens=tokens, requests=requests, cost=cost)
            return
        owner = self._owner(reservation)
        await owner.asettle(reservation, tokens=tokens, requests=requests, cost=cost)

    # -- renew -------------------------------------------------------------------------------

    def renew(self, reservation: Reservation, *, lease: float) -> bool:
        """Keep a live call's hold in each ledger it is held in; False once none holds it."""
        if isinstance(reservation, RoutedReservation):
            first, second = reservation.parts
            kept = _renew(self._private, first, lease)
            return _renew(self.shared, second, lease) or kept
        return _renew(self._owner(reservation), reservation, lease)

    async def arenew(self, reservation: Reservation, *, lease: float) -> bool:
        """Async :meth:`renew`."""
        if isinstance(reservation, RoutedReservation):
            first, second = reservation.parts
            kept = await _arenew(self._private, first, lease)
            return await _arenew(self.shared, second, lease) or kept
        return await _arenew(self._owner(reservation), reservation, lease)

    # -- usage -------------------------------------------------------------------------------

    def usage(self, claims: Sequence[Claim]) -> list[ClaimUsage]:
        """Return the state of each claim, read in its ledger, in the order given."""
        one, mine, theirs = self._route(claims)
        if one is not None:
            return one.usage(claims)
        return _merged(claims, self._private.usage(mine), self.shared.usage(theirs))

    async def ausage(self, claims: Sequence[Claim]) -> list[ClaimUsage]:
        """Async :meth:`usage`."""
        one, mine, theirs = self._route(claims)
        if one is not None:
            return await one.ausage(claims)
        private = await self._private.ausage(mine)
        return _merged(claims, private, await self.shared.ausage(theirs))

    # -- one write with a history store (llmproxy.pipelining) --------------------------------

    def pipeline_key(self) -> str | None:
        """The shared ledger's server identity, when it can carry a settle in a store's write."""
        key = getattr(self.shared, "pipeline_key", None)
        return key() if callable(key) else None

    def queue_reserve(
        self,
        claims: Sequence[Claim],
        *,
        input_tokens: int,
        max_output_tokens: int,
        min_output_tokens: int = 1,
        lease: float = 600.0,
        rates: Rates | None = None,
        unless_exists: str | None = None,
    ) -> Any:
        """A reserve of claims all in the shared ledger, ready for a store's read; else None."""
        one, _, _ = self._route(claims)
        if one is None or one is not self._shared:
            return None
        queue = getattr(one, "queue_reserve", None)
        if not callable(queue):
            return None
        return queue(
            claims,
            input_tokens=input_tokens,
            max_output_tokens=max_output_tokens,
            min_output_tokens=min_output_tokens,
            lease=lease,
            rates=rates,
            unless_exists=unless_exists,
        )

    def queue_settle(
        self, reservation: Reservation, *, tokens: int, requests: int = 1, cost: float = 0.0
    ) -> Any:
        """The shared part's settle, ready for a store's write; None to settle the usual way.

        A private part is settled here and now (in memory); settling the whole reservation
        again afterwards is a no-op for it.
        """
        if isinstance(reservation, RoutedReservation):
            first, reservation = reservation.parts
            self._private.settle(first, tokens=tokens, requests=requests, cost=cost)
        elif self._owner(reservation) is not self._shared:
            return None
        queue = getattr(self.shared, "queue_settle", None)
        if not callable(queue):
            return None
        return queue(reservation, tokens=tokens, requests=requests, cost=cost)

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the shared ledger if it was opened, and the private one."""
        if self._shared is not None:
            self._shared.close()
        if self._private is not self._shared:
            self._private.close()

    async def aclose(self) -> None:
        """Close the shared ledger's async connections (inside their loop), then everything."""
        aclose = getattr(self._shared, "aclose", None)
        if aclose is not None:
            await aclose()
        self.close()


def _renew(ledger: Ledger, reservation: Reservation, lease: float) -> bool:
    """Renew in one ledger; a ledger that cannot renew keeps its hold for the lease."""
    renew = getattr(ledger, "renew", None)
    if renew is None:
        return True
    return bool(renew(reservation, lease=lease))


async def _arenew(ledger: Ledger, reservation: Reservation, lease: float) -> bool:
    """Async :func:`_renew` (a ledger without ``arenew`` is renewed by its sync ``renew``)."""
    arenew = getattr(ledger, "arenew", None)
    if arenew is None:
        return _renew(ledger, reservation, lease)
    return bool(await arenew(reservation, lease=lease))


def _joined(first: Reservation, second: Reservation) -> RoutedReservation:
    return RoutedReservation(
        f"{first.id}+{second.id}",
        first.claims + second.claims,
        first.amounts + second.amounts,
        second.output_tokens,
        first.input_tokens,
        min(first.expires_at, second.expires_at),
        (first, second),
    )


def _merged(
    claims: Sequence[Claim], private: list[ClaimUsage], shared: list[ClaimUsage]
) -> list[ClaimUsage]:
    """Put the two ledgers' answers back in the order of ``claims``."""
    mine, theirs = iter(private), iter(shared)
    return [next(theirs) if claim.shared else next(mine) for claim in claims]


def shared_ledger(ledger: Ledger) -> Ledger:
    """The ledger named budgets live in: ``ledger.shared`` for a RoutedLedger, else ``ledger``."""
    return ledger.shared if isinstance(ledger, RoutedLedger) else ledger


__all__ = ["RoutedLedger", "RoutedReservation", "shared_ledger"]
