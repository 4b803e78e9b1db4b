"""What the plugin knows about OpenAI models: output limits and tokenizers (as of 2026-11).

Unknown models pass through untouched: their output limit is None (the call's own cap is sent)
and their input is estimated with an upper bound. Only the service refuses a name it does not know.
"""

from __future__ import annotations

#: The default model: current, with no announced shutdown date in the SDK's model list.
DEFAULT_MODEL = "gpt-5.4-mini"

# Longest matching prefix wins.
_OUTPUT_LIMITS: tuple[tuple[str, int], ...] = (
    ("gpt-6", 128_000),
    ("gpt-5", 128_000),
    ("gpt-4.1", 32_768),
    ("gpt-4o", 16_384),
    ("chatgpt-4o", 16_384),
    ("gpt-4-turbo", 4_096),
    ("gpt-4-32k", 8_192),
    ("gpt-4", 8_192),
    ("gpt-3.5-turbo", 4_096),
    ("o1", 100_000),
    ("o3", 100_000),
    ("o4", 100_000),
)
_BY_LENGTH = sorted(_OUTPUT_LIMITS, key=lambda item: -len(item[0]))

_CL100K_PREFIXES = (
    "gpt-4-",
    "gpt-3.5",
    "gpt-35",
    "text-embedding-",
)  # gpt-35-*: Azure deployment names
_O200K_PREFIXES = ("gpt-", "o1", "o3", "o4", "chatgpt-", "codex-")


def base_model(model: str) -> str:
    """Strip a fine-tune prefix: ``ft:gpt-4o-mini:org::id`` becomes ``gpt-4o-mini``."""
    if model.startswith("ft:"):
        return model[3:].split(":", 1)[0]
    return model


def output_limit(model: str) -> int | None:
    """Return the model's maximum output tokens, or None when unknown."""
    name = base_model(model)
    for prefix, limit in _BY_LENGTH:
        if name.startswith(prefix):
            return limit
    return None


def encoding_name(model: str) -> str | None:
    """Return the tokenizer of a model (``o200k_base``/``cl100k_base``), or None when unknown."""
    name = base_model(model)
    if name == "gpt-4" or (
        name.startswith(_CL100K_PREFIXES) and not name.startswith(("gpt-4o", "gpt-4."))
    ):
        return "cl100k_base"
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    return None


#: Standard (non-batch, under 270K context) prices in USD per 1M tokens:
#: (input, cached input, output, as of). Snapshots match their family through the ``*`` patterns.
PRICES: dict[str, tuple[float, float, float, str]] = {
    "gpt-5.5*": (5.00, 0.50, 30.00, "2026-06"),
    "gpt-5.4*": (2.50, 0.25, 15.00, "2026-06"),
    "gpt-5.4-mini*": (0.75, 0.075, 4.50, "2026-06"),
    "gpt-5.4-nano*": (0.20, 0.02, 1.25, "2026-06"),
    "gpt-5.2*": (1.75, 0.175, 14.00, "2026-04"),
    "gpt-5.1*": (1.25, 0.125, 10.00, "2026-04"),
    "gpt-5": (1.25, 0.125, 10.00, "2025-08"),
    "gpt-5-2025-08-07": (1.25, 0.125, 10.00, "2025-08"),
    "gpt-5-mini*": (0.25, 0.025, 2.00, "2025-08"),
    "gpt-5-nano*": (0.05, 0.005, 0.40, "2025-08"),
    "gpt-4.1*": (2.00, 0.50, 8.00, "2025-04"),
    "gpt-4.1-mini*": (0.40, 0.10, 1.60, "2025-04"),
    "gpt-4.1-nano*": (0.10, 0.025, 0.40, "2025-04"),
    "gpt-4o*": (2.50, 1.25, 10.00, "2024-11"),
    "gpt-4o-mini*": (0.15, 0.075, 0.60, "2024-07"),
    "text-embedding-3-small": (0.02, 0.02, 0.0, "2024-01"),
    "text-embedding-3-large": (0.13, 0.13, 0.0, "2024-01"),
    "text-embedding-ada-002": (0.10, 0.10, 0.0, "2022-12"),
}
