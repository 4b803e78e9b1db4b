"""What the plugin knows about Claude models: output limits and prices (as of 2026-06).

Unknown models pass through untouched: their output limit is :data:`FALLBACK_OUTPUT_LIMIT`
(the Messages API requires ``max_tokens`` on every request, so something must be sent).
"""

from __future__ import annotations

from llmproxy.pricing import Price

#: The default model.
DEFAULT_MODEL = "claude-sonnet-4-6"

#: ``max_tokens`` sent for a model this table does not know, when the call sets no cap: 4096,
#: which every Claude model since Claude 3 accepts.
FALLBACK_OUTPUT_LIMIT = 4096

# Longest matching prefix wins. Thinking counts toward these limits.
_OUTPUT_LIMITS: tuple[tuple[str, int], ...] = (
    ("claude-opus-4-6", 128_000),
    ("claude-opus-4-5", 64_000),
    ("claude-opus-4-1", 32_000),
    ("claude-opus-4", 32_000),
    ("claude-sonnet-4", 64_000),
    ("claude-haiku-4-5", 64_000),
    ("claude-3-5-haiku", 8_192),
    ("claude-3-haiku", 4_096),
)
_BY_LENGTH = sorted(_OUTPUT_LIMITS, key=lambda item: -len(item[0]))


def output_limit(model: str) -> int | None:
    """Return the model's maximum output tokens (thinking included), or None when unknown."""
    for prefix, limit in _BY_LENGTH:
        if model.startswith(prefix):
            return limit
    return None


#: Prices this plugin registers over the default table (genai-prices, see
#: :mod:`llmproxy.genai_table`), by exact model name: none. genai-prices prices every Claude
#: model this table used to hold (compared on 2026-12-02), with cache writes and long-context
#: tiers, which this table could not express.
PRICES: dict[str, Price] = {}

#: Declared patterns (``*`` any run of characters, ``{date}`` a snapshot date). genai-prices
#: declares Claude Sonnet 4's snapshots by the prefix ``claude-sonnet-4-2025``, which llmproxy
#: does not read as a declaration (a prefix is no name); this pattern says what it means:
#: ``claude-sonnet-4-20250514`` and later dated snapshots, at genai-prices' Sonnet 4 figures:
#: cache writes at the 5-minute rate (1.25x input, what this plugin's breakpoints cost) and
#: writes a caller asks to keep for an hour at the 1-hour rate (2x input).
PRICE_PATTERNS: dict[str, Price] = {
    "claude-sonnet-4-{date}": Price(
        3.00, 15.00, 0.30, "2026-11-03", cache_write=3.75, cache_write_1h=6.00
    ),
}
