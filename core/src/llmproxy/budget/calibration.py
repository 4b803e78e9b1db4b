"""What each model bills for input compared with the provider's count, learned per process.

A provider's input count can be low by more than its declared
:class:`~llmproxy.tokens.InputMargin` (a new model's tokenizer, a chat template the count does
not know). Every call that arrives with the service's usage is compared with the count it was
reserved from, and :class:`Calibration` learns two things per (provider, model):

- a **ratio**: the part of the billed input the margin's fixed part does not explain, divided
  by the count. Learned only from requests of at least :data:`MIN_RATIO_COUNT` counted tokens,
  where a constant overhead cannot pass for a ratio. A reservation scales the count by the
  larger of it and the margin's own ``1 + ratio``.
- an **offset**: what the bill still exceeds the reservation by with that ratio (a template
  that adds a fixed preamble, seen on small requests), added to every reservation; at most
  :data:`MAX_OFFSET`.

Each keeps the largest value seen, decaying towards nothing with a half-life (an hour by
default), so one odd call does not inflate reservations forever (a refused call teaches
nothing, so only time can lower them). Each Proxy keeps its own table
(``Proxy.calibration``), in memory: two Proxies pointed at different services under one
provider name do not teach each other, and a new process starts from the declared margins and
learns again from its first calls.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Final

from llmproxy.tokens import InputMargin

MAX_RATIO: Final = 4.0
"""The largest ratio learned: a UTF-8 character is at most 4 bytes, so a count that is off by
more is a bug in the count, not a tokenizer difference (and an upstream reporting nonsense must
not make every later call unaffordable)."""

MAX_OFFSET: Final = 4096
"""The largest offset learned, in tokens: more than any chat template's fixed preamble."""

MIN_RATIO_COUNT: Final = 200
"""The smallest count (tokens) a ratio is learned from."""

HALF_LIFE: Final = 3600.0
"""Seconds in which a learned excess (ratio above 1, offset above 0) halves when no call shows
it again."""

MAX_MODELS: Final = 4096
"""The most (provider, model) pairs remembered; the one learned longest ago is dropped first."""


class _Learned:
    """One model's learned ratio and offset, each with when it was last raised."""

    __slots__ = ("offset", "offset_at", "ratio", "ratio_at")

    def __init__(self, now: float) -> None:
        self.ratio = 1.0
        self.ratio_at = now
        self.offset = 0.0
        self.offset_at = now


class Calibration:
    """Per-(provider, model) corrections of input counts, learned from billed usage.

    Thread-safe. ``clock`` (seconds, monotonic) is injectable for tests.

    >>> now = [0.0]
    >>> table = Calibration(clock=lambda: now[0])
    >>> exact = InputMargin(per_message=0, overall=0, tools=0, ratio=0.0)
    >>> table.observe("p", "m", exact, billed=1100, counted=1000, messages=1)
    >>> table.reserve("p", "m", exact, 1000, messages=1)
    1100
    >>> now[0] = HALF_LIFE
    >>> table.reserve("p", "m", exact, 1000, messages=1)
    1050
    >>> table.reserve("p", "other", exact, 1000, messages=1)
    1000
    """

    def __init__(
        self,
        *,
        half_life: float = HALF_LIFE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (math.isfinite(half_life) and half_life > 0):
            raise ValueError(f"half_life must be a positive number of seconds, got {half_life!r}")
        self._half_life = half_life
        self._clock = clock
        self._lock = threading.Lock()
        self._learned: dict[tuple[str, str], _Learned] = {}

    def _decay(self, excess: float, since: float, now: float) -> float:
        return excess * math.pow(0.5, max(0.0, now - since) / self._half_life)

    def _current(self, key: tuple[str, str], now: float) -> tuple[float, float]:
        found = self._learned.get(key)
        if found is None:
            return 1.0, 0.0
        ratio = 1.0 + self._decay(found.ratio - 1.0, found.ratio_at, now)
        return ratio, self._decay(found.offset, found.offset_at, now)

    def learned(self, provider: str, model: str) -> tuple[float, int]:
        """The model's current ratio (1.0 when none) and offset (whole tokens, 0 when none)."""
        with self._lock:
            ratio, offset = self._current((provider, model), self._clock())
        return ratio, math.ceil(offset - 1e-9)

    def reserve(
        self,
        provider: str,
        model: str,
        margin: InputMargin,
        count: int,
        messages: int,
        tools: int = 0,
    ) -> int:
        """The input tokens to reserve for a request ``model`` counted as ``count``.

        ``margin.reserve`` with the learned ratio, plus the learned offset.
        """
        ratio, offset = self.learned(provider, model)
        return margin.reserve(count, messages, tools, ratio) + offset

    def observe(
        self,
        provider: str,
        model: str,
        margin: InputMargin,
        *,
        billed: int,
        counted: int,
        messages: int,
        tools: int = 0,
    ) -> None:
        """Learn from one call: ``billed`` input tokens for a request counted as ``counted``.

        ``messages`` and ``tools`` are the request's numbers of messages and tool definitions
        (for the margin's fixed part). A count of 0 teaches nothing.
        """
        if counted <= 0:
            return
        key = (provider, model)
        with self._lock:
            now = self._clock()
            ratio, offset = self._current(key, now)
            new_ratio = ratio
            if counted >= MIN_RATIO_COUNT:
                observed = (billed - margin.absolute(messages, tools)) / counted
                new_ratio = max(ratio, min(MAX_RATIO, observed))
            short = billed - margin.reserve(counted, messages, tools, new_ratio)
            new_offset = max(offset, min(float(MAX_OFFSET), float(short)))
            if new_ratio <= ratio and new_offset <= offset:
                return
            learned = self._learned.pop(key, None) or _Learned(now)
            if new_ratio > ratio:
                learned.ratio, learned.ratio_at = new_ratio, now
            if new_offset > offset:
                learned.offset, learned.offset_at = new_offset, now
            self._learned[key] = learned
            while len(self._learned) > MAX_MODELS:
                del self._learned[next(iter(self._learned))]

    def clear(self) -> None:
        """Forget everything learned."""
        with self._lock:
            self._learned.clear()


__all__ = [
    "HALF_LIFE",
    "MAX_MODELS",
    "MAX_OFFSET",
    "MAX_RATIO",
    "MIN_RATIO_COUNT",
    "Calibration",
]
