"""``llmproxy prices [MODEL]``: the price a call would be charged, where it came from, its date.

With a model (``provider/model``, an alias, or a ``[models.NAME]`` alias routed over several
deployments, whose every deployment is shown): the rates a call to it is billed at now (per
million input, output, cache read and cache write tokens, and the tiers by context length),
the entry that matched, where that entry came from (the configuration, a plugin, or
genai-prices and its version) and its date, flagged when older than ``price_max_age_days``,
whether it varies with the hour of the call (DeepSeek's off-peak hours), and the changes
scheduled ahead (a plugin's ``Price(until=..., then=...)`` and genai-prices' dated prices).
Without one: every entry of the configuration and the plugins, the configured default model
and aliases, the routed aliases with their deployments, and the default table's version and
date. ``--json`` prints the same as JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from llmproxy.pricing import Priced, PriceTable, describe


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's arguments."""
    parser.add_argument(
        "model", nargs="?", help="provider/model or an alias (default: list the table)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


def _usd(value: float) -> str:
    return f"${value:,.6f}".rstrip("0").rstrip(".") if value else "$0"


def _rates(row: dict[str, Any]) -> str:
    hour = row.get("cache_write_1h", row["cache_write"])
    return (
        f"input {_usd(row['input'])}, output {_usd(row['output'])},"
        f" cache read {_usd(row['cache_read'])}, cache write {_usd(row['cache_write'])}"
        + ("" if hour == row["cache_write"] else f" (1h {_usd(hour)})")
    )


def _lines(full: str, row: dict[str, Any], max_age: int) -> list[str]:
    lines = [full, f"  price   {_rates(row)} per 1M tokens"]
    for tier in row["tiers"]:
        lines.append(f"  tier    above {tier['above']:,} input tokens: {_rates(tier)}")
    matched = "" if row["name"] == full else f" ({row['name']})"
    lines.append(f"  from    {row['origin']}{matched}")
    if row["as_of"]:
        age = f", {row['age_days']} days ago" if row["age_days"] is not None else ""
        stale = f"  STALE: older than {max_age} days (price_max_age_days)" if row["stale"] else ""
        lines.append(f"  as of   {row['as_of']}{age}{stale}")
    else:
        stale = "  STALE: no date" if row["stale"] else ""
        lines.append(f"  as of   unknown{stale}")
    if row["varies"]:
        lines.append("  varies  by the hour of the call (the price shown is now's)")
    for change in row["changes"]:
        when = dt.datetime.fromtimestamp(change["at"], dt.UTC)
        lines.append(f"  changes {when:%Y-%m-%d %H:%M} UTC: {_rates(change)} per 1M tokens")
    return lines


def _full_name(name: str, default_model: str, aliases: dict[str, str]) -> str:
    name = aliases.get(name, name)
    if "/" not in name:
        return f"{default_model.partition('/')[0]}/{name}"
    return name


def _routed(
    table: PriceTable,
    out: TextIO,
    alias: str,
    deployments: Sequence[str],
    when: float,
    max_age_days: int,
    as_json: bool,
) -> int:
    """Report each deployment of a routed alias; 1 when one of them has no price."""
    found = {d: table.lookup(*_split(d), at=when) for d in deployments}
    rows = {d: None if p is None else describe(p, when, max_age_days) for d, p in found.items()}
    if as_json:
        out.write(json.dumps({"model": alias, "deployments": rows}) + "\n")
    else:
        out.write(f"{alias}: routed over {len(rows)} deployments, each billed at its own price\n")
        for name, row in rows.items():
            if row is None:
                out.write(
                    f"{name}\n  no price: a call routed to it under a USD budget is refused;"
                    f' add prices."{name}" = {{input = ..., output = ...}} to [prices]\n'
                )
            else:
                out.write("\n".join(_lines(name, row, max_age_days)) + "\n")
    return 1 if None in rows.values() else 0


def _split(full: str) -> tuple[str, str]:
    provider, _, name = full.partition("/")
    return provider, name


def report(
    table: PriceTable,
    out: TextIO,
    *,
    model: str | None,
    default_model: str,
    aliases: dict[str, str],
    max_age_days: int,
    as_json: bool = False,
    now: float | None = None,
    routes: Mapping[str, Sequence[str]] | None = None,
) -> int:
    """Write the report; return 0, or 1 when ``model`` (or a deployment of it) has no price.

    ``routes`` maps each routed alias (``[models.NAME]``) to its deployments' names.
    """
    when = time.time() if now is None else now
    routes = routes or {}
    if model is not None:
        target = aliases.get(model, model)
        if target in routes:
            return _routed(table, out, target, routes[target], when, max_age_days, as_json)
        full = _full_name(model, default_model, aliases)
        provider, _, name = full.partition("/")
        priced = table.lookup(provider, name, at=when)
        if priced is None:
            if as_json:
                out.write(json.dumps({"model": full, "price": None}) + "\n")
            else:
                out.write(
                    f"{full}: no price. No exact name or declared pattern matches it in the"
                    " configuration, the plugins or genai-prices, so a call to it under a USD"
                    " budget is refused: add it to the configuration's [prices] table"
                    f' (prices."{full}" = {{input = ..., output = ...}}, USD per 1M tokens)\n'
                )
            return 1
        row = describe(priced, when, max_age_days)
        if as_json:
            out.write(json.dumps({"model": full, "price": row}) + "\n")
        else:
            out.write("\n".join(_lines(full, row, max_age_days)) + "\n")
        return 0
    rows: list[tuple[str, Priced | None]] = [(p.name, p) for p in table.entries(at=when)]
    shown = {name for name, _ in rows}
    wanted_names = [n for n in [default_model, *aliases] if aliases.get(n, n) not in routes]
    wanted_names += [d for deployments in routes.values() for d in deployments]
    for wanted in wanted_names:
        full = _full_name(wanted, default_model, aliases)
        if full not in shown:
            provider, _, name = full.partition("/")
            rows.append((full, table.lookup(provider, name, at=when)))
            shown.add(full)
    source = table.defaults
    default = getattr(source, "describe", None)
    summary = default() if callable(default) else "none"
    if as_json:
        out.write(
            json.dumps(
                {
                    "default_table": summary,
                    "routes": {alias: list(d) for alias, d in routes.items()},
                    "prices": {
                        name: None if p is None else describe(p, when, max_age_days)
                        for name, p in rows
                    },
                }
            )
            + "\n"
        )
        return 0
    for name, priced in rows:
        if priced is None:
            out.write(f"{name}\n  no price\n")
        else:
            out.write("\n".join(_lines(name, describe(priced, when, max_age_days), max_age_days)))
            out.write("\n")
    for alias, deployments in routes.items():
        out.write(f"{alias}\n  routed  over {', '.join(deployments)} (each priced above)\n")
    out.write(f"default table: {summary}; `llmproxy prices MODEL` looks a model up in it\n")
    return 0
