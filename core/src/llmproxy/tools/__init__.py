"""Tools the model may call: a name, a JSON-schema description and the Python function to run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
from attrs import frozen


@frozen
class Tool:
    """A function tool: what is sent to the model (name, description, JSON schema) and what runs.

    Plugins register tools through the ``register_tools`` hook.
    """

    name: str
    description: str
    parameters: Mapping[str, Any] = attrs.Factory(lambda: {"type": "object", "properties": {}})
    function: Callable[..., Any] | None = attrs.field(default=None, eq=False, repr=False)
