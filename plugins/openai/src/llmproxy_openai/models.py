"""What the plugin knows about OpenAI models: output limits and tokenizers (as of 2026-11).

Unknown models pass through untouched: their output limit is None (the call's own cap is sent)
and their input is estimated with an upper bound. Only the service refuses a name it does not know.
"""

from __future__ import annotations

from llmproxy.pricing import Price

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


#: Prices this plugin registers over the default table (genai-prices, see
#: :mod:`llmproxy.genai_table`), in USD per 1M tokens, by exact model name; patterns go in
#: :data:`PRICE_PATTERNS`. None: when compared on 2026-12-02, genai-prices priced every OpenAI
#: model this table used to hold (gpt-5.5, gpt-5.4 and its mini, nano and pro, 5.2, 5.1, 5,
#: 4.1, 4o and the embedding models, with their dated snapshots) at the same figures, with
#: gpt-5.4's and gpt-5.5's long-context tiers besides.
PRICES: dict[str, Price] = {}

#: Declared patterns (``*`` any run of characters, ``{date}`` a snapshot date): none.
PRICE_PATTERNS: dict[str, Price] = {}
