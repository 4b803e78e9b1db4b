"""Lazy re-exports: a package's public names imported from their module on first use.

A plugin package re-exports its provider and service classes, whose modules import a
provider SDK. Importing the package (which discovery does, to reach its registration module)
must not import the SDK, so those names are looked up on first access (PEP 562)::

    from typing import TYPE_CHECKING

    from llmproxy.lazy import lazy_exports

    if TYPE_CHECKING:  # what type checkers and editors see
        from llmproxy_myprovider.provider import MyProvider

    __getattr__, __dir__ = lazy_exports(__name__, {"MyProvider": "llmproxy_myprovider.provider"})
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return a module ``__getattr__`` and ``__dir__`` for ``package``'s lazy names.

    ``exports`` maps each public name to the module defining it. A name is imported on first
    access and then kept in the package's namespace, so later lookups cost nothing.
    """
    table = dict(exports)

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(table))

    return __getattr__, __dir__
