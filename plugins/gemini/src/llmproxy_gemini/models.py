"""What the plugin knows about Gemini models: output limits, thinking, prices (as of 2026-11).

Unknown models pass through untouched: their output limit is None (the call's own cap is sent).
"""

from __future__ import annotations

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


#: Standard-tier (paid, non-batch) prices in USD per 1M tokens: (input, cached input or None,
#: output including thinking, as of). Input and output are from the Gemini API's price page
#: (ai.google.dev/gemini-api/docs/pricing) as transcribed on 2026-10-07, except 2.5 Flash's
#: output and 2.5 Flash-Lite's input, which that transcript left out and come from a 2026 copy
#: of the same page (morphllm.com). Cached-input prices were not in the transcript either: the
#: 3.8 and 3.5 Flash ones (10% of input) are from secondary sources quoting the page (LiteLLM's
#: model map, 2026-09; guides of 2026-06); the others are left unset, so cached tokens are
#: billed at the input price (an upper bound).
#: gemini-3.8-flash is on an introductory price through 2026-12-31; from 2027-01-01 the page
#: lists 1.50 input, 0.15 cached and 7.50 output (:data:`PRICE_CHANGES`). Pro models are priced
#: by prompt length (<= or > 200k tokens), which one figure cannot express, so they are left
#: unpriced.
PRICES: dict[str, tuple[float, float | None, float, str]] = {
    "gemini-3.8-flash*": (0.75, 0.075, 3.75, "2026-10-07"),
    "gemini-3.5-flash*": (1.50, 0.15, 9.00, "2026-10-07"),
    "gemini-3.5-flash-lite*": (0.30, None, 2.50, "2026-10-07"),
    "gemini-2.5-flash*": (0.30, None, 2.50, "2026-10-07"),
    "gemini-2.5-flash-lite*": (0.10, None, 0.40, "2026-10-07"),
}

#: Prices announced to change: (when, in UTC, the new one applies; the new (input, cached,
#: output, as of)). The page does not say in which time zone 2027-01-01 starts, so the new price
#: applies from the first moment of that day anywhere (UTC+14, 10:00 UTC on 2026-12-31): a call
#: is priced above its bill for at most a day, never below it.
PRICE_CHANGES: dict[str, tuple[str, tuple[float, float | None, float, str]]] = {
    "gemini-3.8-flash*": ("2026-12-31T10:00:00+00:00", (1.50, 0.15, 7.50, "2026-10-07")),
}
