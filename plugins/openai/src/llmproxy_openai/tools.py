"""The seed library's tool classes: OpenAIFileSearch, OpenAICodeInterpreter, OpenAIFunctionCall.

The seed configured Assistants API tools this way; OpenAI has shut the Assistants API down, so
they now become Responses API tools (file search and code interpreter, run by OpenAI) and
function tools whose Python function the Proxy runs in its tool-call loop::

    config = OpenAILLMConfig(
        api_key="sk-...",
        vector_store_ids=["vs_..."],          # what the seed's assistant had attached
        tools=[
            OpenAIFileSearch(enable=True),
            OpenAICodeInterpreter(enable=False),
            OpenAIFunctionCall(
                enable=True,
                name="get_weather_today",
                description="Get today's weather",
                parameters={"type": "object", "properties": {...}, "required": [...]},
                instance_function=get_weather_today_assistant_func,
            ),
        ],
    )

A tool with ``enable=False`` is not sent. :func:`core_tools` turns a list of them into
:class:`llmproxy.tools.Tool` / :class:`llmproxy.tools.HostedTool` values and checks them first:
an enabled file search without vector stores, or a function call without a callable
``instance_function``, is a :class:`~llmproxy.errors.ConfigError` naming the field
(``tools[0].vector_store_ids``), before any upstream call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from llmproxy.errors import ConfigError
from llmproxy.tools import HostedTool, Tool
from llmproxy_openai.responses import check_hosted

__all__ = [
    "OpenAICodeInterpreter",
    "OpenAIFileSearch",
    "OpenAIFunctionCall",
    "OpenAITool",
    "core_tools",
]


@attrs.define
class OpenAIFileSearch:
    """OpenAI's hosted file search over vector stores (Responses API ``file_search``).

    ``vector_store_ids`` are the stores to search (when None: the config's
    ``vector_store_ids``); ``max_num_results`` caps the results (1-50); ``filters`` and
    ``ranking_options`` are passed on as OpenAI documents them.
    """

    enable: bool = True
    vector_store_ids: list[str] | None = None
    max_num_results: int | None = None
    filters: Mapping[str, Any] | None = None
    ranking_options: Mapping[str, Any] | None = None

    def to_tool(
        self, vector_store_ids: Sequence[str] | None = None, *, index: int = 0
    ) -> HostedTool:
        """Return the hosted tool; ``vector_store_ids`` is the fallback when none are set here."""
        stores = self.vector_store_ids if self.vector_store_ids is not None else vector_store_ids
        if isinstance(stores, str):
            stores = [stores]
        if not stores:
            raise ConfigError(
                "OpenAIFileSearch is enabled but has no vector stores to search: give it"
                " vector_store_ids=[...] (or OpenAILLMConfig(vector_store_ids=[...]))",
                path=f"tools[{index}].vector_store_ids",
            )
        if self.max_num_results is not None and not 1 <= self.max_num_results <= 50:
            raise ConfigError(
                f"max_num_results must be between 1 and 50, got {self.max_num_results}",
                path=f"tools[{index}].max_num_results",
            )
        config: dict[str, Any] = {"vector_store_ids": list(stores)}
        if self.max_num_results is not None:
            config["max_num_results"] = self.max_num_results
        if self.filters is not None:
            config["filters"] = dict(self.filters)
        if self.ranking_options is not None:
            config["ranking_options"] = dict(self.ranking_options)
        return HostedTool("file_search", config)


@attrs.define
class OpenAICodeInterpreter:
    """OpenAI's hosted code interpreter (Responses API ``code_interpreter``).

    ``container`` is ``"auto"`` (a new container, with ``file_ids`` in it when given), a
    container id (``"cntr_..."``) or OpenAI's container object as a dict.
    """

    enable: bool = True
    container: str | Mapping[str, Any] = "auto"
    file_ids: list[str] | None = None

    def to_tool(self, *, index: int = 0) -> HostedTool:
        """Return the hosted tool."""
        container: Any
        if isinstance(self.container, Mapping):
            container = dict(self.container)
        elif self.container == "auto":
            container = {"type": "auto"}
            if self.file_ids:
                container["file_ids"] = list(self.file_ids)
        elif isinstance(self.container, str) and self.container:
            container = self.container
        else:
            raise ConfigError(
                f"container must be 'auto', a container id or a dict, got {self.container!r}",
                path=f"tools[{index}].container",
            )
        return HostedTool("code_interpreter", {"container": container})


@attrs.define
class OpenAIFunctionCall:
    """A function the model may call; ``instance_function`` (sync or async) runs locally.

    ``parameters`` is the JSON schema of its arguments; when None it is derived from the
    function's type hints and docstring (as :meth:`llmproxy.tools.Tool.from_function` does).
    ``name`` defaults to the function's name; arguments from the model are checked against the
    schema before the function runs. ``timeout`` bounds one run (seconds, None: no bound).
    """

    enable: bool = True
    name: str | None = None
    description: str | None = None
    parameters: Mapping[str, Any] | None = None
    instance_function: Callable[..., Any] | None = attrs.field(default=None, repr=False)
    strict: bool = False
    timeout: float | None = 60.0

    def to_tool(self, *, index: int = 0) -> Tool:
        """Return the function tool."""
        function = self.instance_function
        if not callable(function):
            raise ConfigError(
                f"OpenAIFunctionCall {self.name or ''!r} needs a callable instance_function,"
                f" got {function!r}",
                path=f"tools[{index}].instance_function",
            )
        try:
            return Tool.from_function(
                function,
                name=self.name or None,
                description=self.description,
                parameters=self.parameters,
                timeout=self.timeout,
                strict=self.strict,
            )
        except ConfigError as exc:
            field = {"tools.name": "name", "tools.parameters": "parameters"}.get(
                exc.path or "", "instance_function"
            )
            raise ConfigError(str(exc), path=f"tools[{index}].{field}") from None


#: What ``OpenAILLMConfig(tools=[...])`` takes: the seed's classes, or core tools as they are.
OpenAITool = OpenAIFileSearch | OpenAICodeInterpreter | OpenAIFunctionCall | Tool | HostedTool


def core_tools(
    tools: Sequence[Any], *, vector_store_ids: Sequence[str] | None = None
) -> tuple[Tool | HostedTool, ...]:
    """Turn the enabled tools of a config into core tools, checking each (see the module).

    ``vector_store_ids`` is what file searches without their own stores search.
    """
    out: list[Tool | HostedTool] = []
    names: dict[str, int] = {}
    for index, item in enumerate(tools):
        converted: Tool | HostedTool
        if isinstance(item, Tool):
            converted = item
        elif isinstance(item, HostedTool):
            try:
                check_hosted([item])
            except ConfigError as exc:
                path = (exc.path or "").replace("tools[0]", f"tools[{index}]", 1)
                raise ConfigError(str(exc), path=path) from None
            converted = item
        elif not isinstance(item, (OpenAIFileSearch, OpenAICodeInterpreter, OpenAIFunctionCall)):
            raise ConfigError(
                f"tools[{index}] must be OpenAIFileSearch, OpenAICodeInterpreter,"
                f" OpenAIFunctionCall, a Tool or a HostedTool; got {type(item).__name__}",
                path=f"tools[{index}]",
            )
        elif not item.enable:
            continue
        elif isinstance(item, OpenAIFileSearch):
            converted = item.to_tool(vector_store_ids, index=index)
        else:
            converted = item.to_tool(index=index)
        if isinstance(converted, Tool):
            if converted.name in names:
                raise ConfigError(
                    f"tools[{index}] and tools[{names[converted.name]}] are both named"
                    f" {converted.name!r}; function names must be unique",
                    path=f"tools[{index}].name",
                )
            names[converted.name] = index
        out.append(converted)
    return tuple(out)
