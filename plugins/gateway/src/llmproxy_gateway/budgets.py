"""Per-key budgets as Proxy policies.

Each key has its own limits (up to :data:`~llmproxy_gateway.keys.MAX_BUDGETS_PER_KEY`), given as
budget specs when the key is created. The Proxy's policy list is fixed when it is built, while
keys come and go, so the gateway adds one :class:`KeyBudgetSlot` per possible budget of a key:
slot ``i`` looks up the calling key's ``i``-th budget policy (an ``LLMBudget``, ``CostBudget`` or
``RequestsPerMinute`` with scope ``key``) and returns its claim, or None when the call has no key
or the key has fewer budgets. Each claim is counted under the key's own ledger entry
(``key-tokens-100000-month|key:<id>``), so keys never share a budget, and the ledger's atomic
reserve-then-settle applies to them as to every other budget.
"""

from __future__ import annotations

from llmproxy.budget.base import Claim
from llmproxy.budget.policy import BudgetPolicy, CallScope
from llmproxy_gateway.keys import MAX_BUDGETS_PER_KEY, KeyStore


class KeyBudgetSlot:
    """The ``index``-th budget of the calling key, if it has one."""

    __slots__ = ("_index", "_keys", "name")

    def __init__(self, keys: KeyStore, index: int) -> None:
        self._keys = keys
        self._index = index
        self.name = f"gateway-key-budget-{index}"

    def claim(self, scope: CallScope) -> Claim | None:
        """The key's claim for this slot, or None."""
        policies = self._keys.policies_for(scope.key)
        if len(policies) <= self._index:
            return None
        return policies[self._index].claim(scope)

    def __repr__(self) -> str:
        return f"KeyBudgetSlot({self._index})"


def key_policies(keys: KeyStore) -> list[BudgetPolicy]:
    """The slots to add to a Proxy (``Proxy(budgets=key_policies(keys))``)."""
    return [KeyBudgetSlot(keys, i) for i in range(MAX_BUDGETS_PER_KEY)]
