"""What the plugin knows about DeepSeek models: output limits and prices (as of 2026-11).

Unknown models pass through untouched: their output limit is None (the call's own cap is sent).
``deepseek-chat`` and ``deepseek-reasoner`` were retired in July 2026 and are not listed.
"""

from __future__ import annotations

#: The default model: DeepSeek's current Flash model (DeepSeek-V4.1-Flash behind this name).
DEFAULT_MODEL = "deepseek-flash"

#: DeepSeek documents a 384K maximum output (reasoning included) for its current models.
_MAX_OUTPUT = 393_216

# Longest matching prefix wins.
_OUTPUT_LIMITS: tuple[tuple[str, int], ...] = (
    ("deepseek-flash", _MAX_OUTPUT),
    ("deepseek-v4", _MAX_OUTPUT),
)
_BY_LENGTH = sorted(_OUTPUT_LIMITS, key=lambda item: -len(item[0]))


def output_limit(model: str) -> int | None:
    """Return the model's maximum output tokens, or None when unknown."""
    for prefix, limit in _BY_LENGTH:
        if model.startswith(prefix):
            return limit
    return None


#: USD per 1M tokens: (input on a cache miss, input on a cache hit, output, as of), from
#: DeepSeek's "Models & Pricing" page (api-docs.deepseek.com/quick_start/pricing) as checked on
#: 2026-11-15. DeepSeek bills peak and off-peak hours differently: off-peak is half price, peak
#: is 01:00-04:00 and 06:00-10:00 UTC on weekdays (Chinese public holidays are off-peak). A
#: price table holds one figure per kind, so these are the PEAK rates: a cost reported with them
#: is never below the bill. Override them in the ``[prices]`` configuration table for off-peak
#: work (deepseek-flash off-peak: 0.15 / 0.003 / 0.60; deepseek-v4-pro: 0.66 / 0.022 / 1.98).
#: The legacy name ``deepseek-v4-flash`` is served by the Flash model at the Flash price.
PRICES: dict[str, tuple[float, float, float, str]] = {
    "deepseek-flash": (0.30, 0.006, 1.20, "2026-11-15"),
    "deepseek-v4-flash": (0.30, 0.006, 1.20, "2026-11-15"),
    "deepseek-v4-pro": (1.32, 0.044, 3.96, "2026-11-15"),
}
