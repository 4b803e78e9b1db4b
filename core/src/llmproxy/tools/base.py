"""Function tools (run locally by the Proxy) and hosted tools (run by the provider)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import json
import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, overload

import attrs
from attrs import field, frozen

from llmproxy.errors import ConfigError, InvalidRequest
from llmproxy.secret import scrub
from llmproxy.tools.schema import (
    callable_doc,
    callable_name,
    callable_source,
    parse_docstring,
    schema_from_function,
    validate,
)

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _check_name(_i: object, _a: object, value: str) -> None:
    if not value or len(value) > 64 or not set(value) <= _NAME_CHARS:
        raise ConfigError(
            f"tool name {value!r} must be 1-64 letters, digits, '_' or '-'", path="tools.name"
        )


@frozen
class ToolResult:
    """The outcome of one tool call: the text sent back to the model, and whether it failed."""

    call_id: str
    name: str
    output: str
    error: bool = False


@frozen
class Tool:
    """A function tool: what the model sees (name, description, JSON schema) and what runs.

    Build one with :func:`tool` / :meth:`from_function` (schema from type hints and the
    docstring) or directly with a ``parameters`` schema. Arguments from the model are checked
    against the schema before the function runs; a failure, an exception or a timeout becomes
    an error output sent back to the model instead of breaking the loop.
    """

    name: str = field(validator=_check_name)
    description: str = ""
    parameters: Mapping[str, Any] = attrs.Factory(
        lambda: {"type": "object", "properties": {}, "additionalProperties": False}
    )
    function: Callable[..., Any] | None = field(default=None, eq=False, repr=False)
    timeout: float | None = 60.0
    strict: bool = False

    @classmethod
    def from_function(
        cls,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        timeout: float | None = 60.0,
        strict: bool = False,
    ) -> Tool:
        """Make a tool of ``function``; the schema comes from its hints unless ``parameters``.

        ``function`` is a function, a method, a :func:`functools.partial` or a callable object,
        sync or async. A hint with no JSON schema is a ConfigError (path ``tools.parameters``):
        pass ``parameters`` then.
        """
        if not callable(function):
            raise ConfigError(f"tool function must be callable, got {function!r}", path="tools")
        if parameters is None:
            try:
                derived_description, schema = schema_from_function(function)
            except (TypeError, NameError) as exc:
                raise ConfigError(
                    f"tool {name or callable_name(function)!r}: {exc}", path="tools.parameters"
                ) from None
        else:
            derived_description, schema = (
                parse_docstring(callable_doc(function))[0],
                dict(parameters),
            )
        return cls(
            name or callable_name(function),
            description if description is not None else derived_description,
            schema,
            function,
            timeout,
            strict,
        )

    @property
    def is_async(self) -> bool:
        """Whether the function is a coroutine function (or a callable object's ``__call__`` is)."""
        function = self.function
        if function is None:
            return False
        return inspect.iscoroutinefunction(callable_source(function))

    def check(self, call_id: str, arguments: str) -> dict[str, Any] | ToolResult:
        """Parse and validate the model's arguments; a ToolResult (an error output) on failure."""
        if self.function is None:
            return ToolResult(
                call_id, self.name, f"tool {self.name!r} has no function to run", True
            )
        try:
            args = json.loads(arguments or "{}")
        except ValueError as exc:
            return ToolResult(call_id, self.name, f"arguments are not valid JSON: {exc}", True)
        if not isinstance(args, dict):
            return ToolResult(call_id, self.name, "arguments must be a JSON object", True)
        problem = validate(args, self.parameters)
        if problem is not None:
            return ToolResult(call_id, self.name, f"invalid arguments: {problem}", True)
        return args

    def _result(self, call_id: str, value: Any) -> ToolResult:
        if isinstance(value, str):
            return ToolResult(call_id, self.name, value)
        try:
            return ToolResult(
                call_id, self.name, json.dumps(value, ensure_ascii=False, default=str)
            )
        except (TypeError, ValueError):
            return ToolResult(call_id, self.name, str(value))

    def _failure(self, call_id: str, exc: BaseException) -> ToolResult:
        if isinstance(exc, TimeoutError):
            return ToolResult(call_id, self.name, f"tool timed out after {self.timeout}s", True)
        # The exception's text may quote a key (a failed request's URL, a config dump).
        text = scrub(f"tool failed: {type(exc).__name__}: {exc}")
        return ToolResult(call_id, self.name, text, True)

    def run(self, arguments: str, call_id: str = "") -> ToolResult:
        """Run the tool from synchronous code.

        An async function runs in a fresh event loop: in this thread, or in a worker thread when
        this thread already runs a loop (sync code called from async code).
        """
        args = self.check(call_id, arguments)
        if isinstance(args, ToolResult):
            return args
        assert self.function is not None
        try:
            if self.is_async:
                return self._result(call_id, _run_coroutine(lambda: self._call_async(args)))
            if self.timeout is None:
                return self._result(call_id, self.function(**args))
            return self._result(call_id, _run_with_timeout(self.function, args, self.timeout))
        except Exception as exc:
            return self._failure(call_id, exc)

    async def arun(self, arguments: str, call_id: str = "") -> ToolResult:
        """Run the tool from async code (a sync function runs in a worker thread)."""
        args = self.check(call_id, arguments)
        if isinstance(args, ToolResult):
            return args
        assert self.function is not None
        try:
            if self.is_async:
                return self._result(call_id, await self._call_async(args))
            running = asyncio.wrap_future(_start(self.function, args))
            return self._result(call_id, await asyncio.wait_for(running, self.timeout))
        except Exception as exc:
            return self._failure(call_id, exc)

    async def _call_async(self, args: dict[str, Any]) -> Any:
        assert self.function is not None
        return await asyncio.wait_for(self.function(**args), self.timeout)

    def wire(self) -> dict[str, Any]:
        """The tool as OpenAI-style function JSON: type, name, description, parameters."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": dict(self.parameters),
            "strict": self.strict,
        }


def _run_coroutine(make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run the coroutine ``make()`` returns to completion from synchronous code.

    ``asyncio.run`` refuses to start inside a running loop, so when this thread runs one the
    coroutine gets its own loop in a worker thread (and is made there, so it is always awaited).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def _start(function: Callable[..., Any], args: dict[str, Any]) -> concurrent.futures.Future[Any]:
    """Run a sync tool in a daemon thread of its own; its future has the result.

    Python cannot stop a thread: a tool that overruns its timeout keeps running in the
    background. In a daemon thread of its own it holds up nothing else: neither ``asyncio.run``
    (which waits for its loop's default executor) nor the interpreter's exit (which joins
    executor threads) waits for it.
    """
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def work() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = function(**args)
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)

    # In the caller's context (contextvars), as asyncio.to_thread runs a function: a tracer's
    # current span reaches the tool and the calls it makes.
    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(work,), name="llmproxy-tool", daemon=True).start()
    return future


def _run_with_timeout(function: Callable[..., Any], args: dict[str, Any], timeout: float) -> Any:
    """Run a sync function in a worker thread and stop waiting after ``timeout`` seconds.

    The loop goes on with a timeout error for the model; the function, if it overruns, finishes
    in the background (see :func:`_start`).
    """
    try:
        return _start(function, args).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise TimeoutError from None


@frozen
class ClientTool(Tool):
    """A function tool the caller runs: only its definition goes to the model.

    ``ClientTool("get_weather", "Weather of a city.", {"type": "object", ...})`` is offered
    exactly as a :class:`Tool` of the same name, description and schema is (each provider's
    function-tool form), but it has no Python function: when the model calls it the Proxy
    runs no tool round and hands the calls back on the response (``message.tool_calls``,
    ``finish_reason == "tool_calls"``). A call that offers any tool without a function, or is
    made with ``run_tools=False``, hands back every call the model asks for: the caller runs
    them and calls again with ``Message("tool", output, tool_call_id=...)`` answers.
    A ``function`` is a :class:`~llmproxy.errors.ConfigError` (use :class:`Tool` for that).
    """

    def __attrs_post_init__(self) -> None:
        if self.function is not None:
            raise ConfigError(
                f"client tool {self.name!r} runs in the caller and takes no function: use"
                " llmproxy.tools.Tool (or @tool) for a tool the Proxy runs",
                path="tools.function",
            )

    @classmethod
    def from_openai(cls, spec: Mapping[str, Any], where: str = "tools") -> ClientTool:
        """Read a tool definition in OpenAI's shape.

        Chat Completions' ``{"type": "function", "function": {"name", "description",
        "parameters", "strict"}}`` or the Responses API's flat ``{"type": "function", "name",
        ...}``. A definition of another shape is an :class:`~llmproxy.errors.InvalidRequest`
        whose field starts with ``where`` (``tools[2].function.name``).
        """
        if not isinstance(spec, Mapping) or spec.get("type") != "function":
            raise InvalidRequest(
                f'{where} must be a function tool: {{"type": "function", "function": {{"name":'
                ' ..., "description": ..., "parameters": {...}}}',
                field=f"{where}.type",
            )
        nested = spec.get("function")
        body: Mapping[str, Any] = nested if isinstance(nested, Mapping) else spec
        prefix = f"{where}.function" if isinstance(nested, Mapping) else where
        name = body.get("name")
        if not isinstance(name, str):
            raise InvalidRequest(f"{prefix}.name must be a string", field=f"{prefix}.name")
        description = body.get("description")
        if description is None:
            description = ""
        if not isinstance(description, str):
            raise InvalidRequest(
                f"{prefix}.description must be a string", field=f"{prefix}.description"
            )
        parameters = body.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        if not isinstance(parameters, Mapping):
            raise InvalidRequest(
                f"{prefix}.parameters must be a JSON schema object", field=f"{prefix}.parameters"
            )
        strict = body.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise InvalidRequest(f"{prefix}.strict must be a boolean", field=f"{prefix}.strict")
        try:
            return cls(name, description, dict(parameters), strict=bool(strict))
        except ConfigError as exc:
            raise InvalidRequest(f"{prefix}.name: {exc}", field=f"{prefix}.name") from None


@frozen
class HostedTool:
    """A tool the provider runs itself: file search, code interpreter, web search.

    ``HostedTool("file_search", {"vector_store_ids": [...]})`` or
    ``HostedTool("code_interpreter", {"container": {"type": "auto"}})``. ``config`` is sent as
    the tool's other fields; its outputs come back on the message's ``hosted_outputs`` and
    its citations on ``citations``.
    """

    type: str
    config: Mapping[str, Any] = attrs.Factory(dict)

    def wire(self) -> dict[str, Any]:
        """The tool as the provider's JSON: ``{"type": ..., **config}``."""
        return {"type": self.type, **self.config}


@overload
def tool(function: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    timeout: float | None = 60.0,
    strict: bool = False,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    function: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    timeout: float | None = 60.0,
    strict: bool = False,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a function (sync or async) a :class:`Tool`: ``@tool`` or ``@tool(name=...)``."""

    def make(fn: Callable[..., Any]) -> Tool:
        return Tool.from_function(
            fn,
            name=name,
            description=description,
            parameters=parameters,
            timeout=timeout,
            strict=strict,
        )

    return make(function) if function is not None else make
