"""Tools the model may call.

:class:`Tool` is a function tool: its name, description and JSON schema are sent to the model,
and its Python function (sync or async) runs locally in the Proxy's tool-call loop.
:class:`HostedTool` is a tool the provider runs itself (OpenAI's file search, code interpreter).
:class:`ClientTool` (or a plain dict in OpenAI's function-tool shape) is a definition only: the
caller runs it, so its calls are handed back on the response, as they are with
``run_tools=False``.

>>> @tool
... def get_weather(location: str, unit: str = "celsius") -> str:
...     '''Get today's weather.
...
...     Args:
...         location: The place to get the weather for.
...         unit: celsius or fahrenheit.
...     '''
...     return f"Sunny in {location}"
>>> get_weather.parameters["required"]
['location']
>>> get_weather.run('{"location": "Hanoi"}').output
'Sunny in Hanoi'
"""

from __future__ import annotations

from llmproxy.tools.base import ClientTool, HostedTool, Tool, ToolResult, tool
from llmproxy.tools.schema import schema_from_function, validate

__all__ = [
    "ClientTool",
    "HostedTool",
    "Tool",
    "ToolResult",
    "schema_from_function",
    "tool",
    "validate",
]
