"""What providers do with ``ChatRequest.tools`` and ``tool_choice``: shared checks, no wire format.

Each provider turns the offered tools into its own wire format; these helpers sort them into
function tools and hosted tools and read ``tool_choice`` the same way everywhere:

>>> from llmproxy.tools import HostedTool, Tool
>>> functions, hosted = split_tools([Tool("lookup"), HostedTool("file_search")])
>>> [t.name for t in functions], [t.type for t in hosted]
(['lookup'], ['file_search'])
>>> read_tool_choice("lookup", functions, hosted)
ToolChoice(kind='function', name='lookup')
>>> read_tool_choice("file_search", functions, hosted)
ToolChoice(kind='hosted', name='file_search')
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

from attrs import frozen

from llmproxy.errors import ConfigError, InvalidRequest
from llmproxy.tools.base import HostedTool, Tool

__all__ = [
    "MODES",
    "ToolChoice",
    "check_function_tools",
    "read_tool_choice",
    "refuse_hosted",
    "split_tools",
]

#: The ``tool_choice`` values that are modes rather than tool names.
MODES: frozenset[str] = frozenset({"auto", "none", "required"})


@frozen
class ToolChoice:
    """A request's ``tool_choice``, read.

    ``kind`` is ``auto``, ``none`` or ``required`` (any tool must be called), ``function`` (the
    function tool ``name`` must be called) or ``hosted`` (the hosted tool of type ``name``).
    """

    kind: Literal["auto", "none", "required", "function", "hosted"]
    name: str | None = None


def split_tools(tools: Iterable[Any]) -> tuple[list[Tool], list[HostedTool]]:
    """Sort a request's tools into function tools and hosted tools.

    Raises :class:`~llmproxy.errors.InvalidRequest` (field ``tools[i]``) for anything else.
    """
    functions: list[Tool] = []
    hosted: list[HostedTool] = []
    for index, item in enumerate(tools):
        if isinstance(item, Tool):
            functions.append(item)
        elif isinstance(item, HostedTool):
            hosted.append(item)
        else:
            raise InvalidRequest(
                f"tools[{index}] must be a llmproxy.tools.Tool or HostedTool,"
                f" got {type(item).__name__}",
                field=f"tools[{index}]",
            )
    return functions, hosted


def read_tool_choice(
    choice: str | None, functions: Sequence[Tool], hosted: Sequence[HostedTool] = ()
) -> ToolChoice | None:
    """Read ``tool_choice``: a mode, the name of an offered function tool, or a hosted type.

    None stays None (the service's default, ``auto``). A name that no offered tool has is an
    :class:`~llmproxy.errors.InvalidRequest` (field ``tool_choice``).
    """
    if choice is None:
        return None
    if choice in MODES:
        return ToolChoice(choice)  # type: ignore[arg-type]
    if any(t.name == choice for t in functions):
        return ToolChoice("function", choice)
    if any(t.type == choice for t in hosted):
        return ToolChoice("hosted", choice)
    offered = [t.name for t in functions] + [t.type for t in hosted]
    raise InvalidRequest(
        f"tool_choice {choice!r} is not 'auto', 'none', 'required' or the name of an offered"
        f" tool (offered: {', '.join(offered) or 'none'})",
        field="tool_choice",
    )


def refuse_hosted(hosted: Sequence[HostedTool], provider: str, hint: str = "") -> None:
    """Raise :class:`~llmproxy.errors.ConfigError` for hosted tools sent to a provider without them.

    The message names the provider and the hosted tool types; ``hint`` says what to do instead.
    """
    if not hosted:
        return
    types = ", ".join(sorted({t.type for t in hosted}))
    message = f"provider '{provider}' cannot run hosted tools ({types})"
    raise ConfigError(f"{message}: {hint}" if hint else message, path="tools")


def check_function_tools(tools: Sequence[Any], provider: str) -> None:
    """Check a service config's ``tools`` for a provider that runs function tools only.

    Each must be a :class:`~llmproxy.tools.Tool`, a function (made a tool by the Proxy) or the
    name of a tool a plugin registers; a :class:`~llmproxy.tools.HostedTool` or anything else
    is a :class:`~llmproxy.errors.ConfigError` naming ``tools[i]`` (and the provider).
    """
    if isinstance(tools, (str, bytes)) or not isinstance(tools, Sequence):
        raise ConfigError("tools must be a list", path="tools")
    for index, item in enumerate(tools):
        if isinstance(item, HostedTool):
            raise ConfigError(
                f"provider '{provider}' cannot run hosted tools ({item.type}): only OpenAI's"
                " Responses API runs them; offer function tools here",
                path=f"tools[{index}]",
            )
        if not (isinstance(item, (Tool, str)) or callable(item)):
            raise ConfigError(
                f"tools[{index}] must be a Tool, a function or a registered tool's name;"
                f" got {type(item).__name__}",
                path=f"tools[{index}]",
            )
