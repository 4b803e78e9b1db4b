"""Budgets: policies name the limits, ledgers count atomically (reserve, then settle)."""
