"""What the plugin knows about DeepSeek models: output limits and prices (as of 2026-11).

Unknown models pass through untouched: their output limit is None (the call's own cap is sent).
``deepseek-chat`` and ``deepseek-reasoner`` were retired in July 2026 and are not listed.
"""

from __future__ import annotations

from llmproxy.pricing import Price

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


#: Prices this plugin registers over the default table (genai-prices, see
#: :mod:`llmproxy.genai_table`), by exact model name; patterns go in :data:`PRICE_PATTERNS`.
#: None: genai-prices prices deepseek-flash, deepseek-v4-flash and deepseek-v4-pro with
#: DeepSeek's peak hours (01:00-04:00 and 06:00-10:00 UTC) and off-peak rates, applied at the
#: time of each call (weekends and Chinese holidays, off-peak all day, are billed at the peak
#: rate in those hours: above the bill, never below). This table used to hold the peak rates
#: for every hour.
PRICES: dict[str, Price] = {}

#: Declared patterns (``*`` any run of characters, ``{date}`` a snapshot date): none.
PRICE_PATTERNS: dict[str, Price] = {}
