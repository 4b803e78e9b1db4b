"""What the plugin knows about Gemini models: output limits, thinking, prices (as of 2026-11).

Unknown models pass through untouched: their output limit is None (the call's own cap is sent).
"""

from __future__ import annotations

import datetime

from llmproxy.pricing import Price

#: The default model: the newest Flash model on the Gemini API's price page (2026-10).
DEFAULT_MODEL = "gemini-3.8-flash"

# Longest matching prefix wins. Thinking counts toward these limits.
_OUTPUT_LIMITS: tuple[tuple[str, int], ...] = (
    ("gemini-3", 65_536),
    ("gemini-2.5", 65_536),
    ("gemini-2.0", 8_192),
)
_BY_LENGTH = sorted(_OUTPUT_LIMITS, key=lambda item: -len(item[0]))

#: Models without thinking: no thinking configuration is sent to them.
_NO_THINKING = ("gemini-1.", "gemini-2.0")


def _base(model: str) -> str:
    return model.removeprefix("models/")


def output_limit(model: str) -> int | None:
    """Return the model's maximum output tokens (thinking included), or None when unknown."""
    name = _base(model)
    for prefix, limit in _BY_LENGTH:
        if name.startswith(prefix):
            return limit
    return None


def thinks(model: str) -> bool:
    """Tell whether a model thinks (every Gemini from 2.5 on; unknown names are assumed to)."""
    return not _base(model).startswith(_NO_THINKING)


#: Prices this plugin registers over the default table (genai-prices, see
#: :mod:`llmproxy.genai_table`), by exact model name. genai-prices prices the Gemini models
#: this table used to hold (compared on 2026-12-02), with cached input and Pro's prompt-length
#: tiers. One is kept here: gemini-3.8-flash is on an introductory price through 2026-12-31,
#: and from 2027-01-01 the Gemini API's price page (ai.google.dev/gemini-api/docs/pricing, as
#: transcribed on 2026-10-07) lists 1.50 input, 0.15 cached and 7.50 output, a change
#: genai-prices did not model. The page does not say in which time zone 2027-01-01 starts, so
#: the new price applies from the first moment of that day anywhere (UTC+14, 10:00 UTC on
#: 2026-12-31): a call is priced above its bill for at most a day, never below it.
PRICES: dict[str, Price] = {
    "gemini-3.8-flash": Price(
        0.75,
        3.75,
        0.075,
        "2026-10-07",
        until=datetime.datetime.fromisoformat("2026-12-31T10:00:00+00:00").timestamp(),
        then=Price(1.50, 7.50, 0.15, "2026-10-07"),
    ),
}

#: Declared patterns (``*`` any run of characters, ``{date}`` a snapshot date): none.
PRICE_PATTERNS: dict[str, Price] = {}
