"""What the plugin knows about Claude models: output limits and prices (as of 2026-06).

Unknown models pass through untouched: their output limit is :data:`FALLBACK_OUTPUT_LIMIT`
(the Messages API requires ``max_tokens`` on every request, so something must be sent).
"""

from __future__ import annotations

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


#: Standard prices in USD per 1M tokens: (input, cache read, output, as of). From Anthropic's
#: pricing page (docs.anthropic.com/en/docs/about-claude/pricing) and copies of it dated
#: 2026-03 and 2026-06. Cache writes (1.25x input for 5 minutes, 2x for an hour) have no field
#: in the core's Price: they are counted as input tokens and billed at the input price, which
#: is below their bill (see the README).
PRICES: dict[str, tuple[float, float | None, float, str]] = {
    "claude-opus-4-6*": (5.00, 0.50, 25.00, "2026-03-21"),
    "claude-opus-4-5*": (5.00, 0.50, 25.00, "2026-03-21"),
    "claude-opus-4-1*": (15.00, 1.50, 75.00, "2026-03-21"),
    "claude-opus-4-2*": (15.00, 1.50, 75.00, "2026-03-21"),
    "claude-sonnet-4-6*": (3.00, 0.30, 15.00, "2026-03-21"),
    "claude-sonnet-4-5*": (3.00, 0.30, 15.00, "2026-03-21"),
    "claude-sonnet-4-2*": (3.00, 0.30, 15.00, "2026-03-21"),
    "claude-haiku-4-5*": (1.00, 0.10, 5.00, "2026-03-21"),
    "claude-3-haiku*": (0.25, 0.03, 1.25, "2026-03-21"),
}
