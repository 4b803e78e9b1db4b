"""Proxies for tests: memory stores and fast retries by default, all closed together.

A plugin's ``conftest.py`` turns a :class:`ProxyMaker` into its ``make_proxy`` fixture::

    @pytest.fixture
    async def make_proxy(environ):
        maker = ProxyMaker(environ)
        yield maker
        await maker.aclose()

:func:`ask` runs one call through any of the four faces (``chat``, ``achat``, ``stream``,
``astream``: :data:`MODES`) and returns what each face gives alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from llmproxy.proxy import Proxy

#: Retry settings that keep tests fast: millisecond backoffs, no jitter.
FAST_RETRY: Final = {"initial_backoff": 0.001, "max_backoff": 0.01, "jitter": 0.0}


class ProxyMaker:
    """Builds Proxies on ``environ`` with memory stores and :data:`FAST_RETRY`; closes them all.

    ``config`` is merged over ``{"retry": FAST_RETRY}``; ``history``, ``ledger`` and
    ``environ`` keyword arguments override the defaults, the rest go to :class:`Proxy`.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.made: list[Proxy] = []

    def __call__(self, config: Mapping[str, Any] | None = None, **kwargs: Any) -> Proxy:
        """A new Proxy, closed with the others."""
        cfg: dict[str, Any] = {"retry": dict(FAST_RETRY)}
        cfg.update(config or {})
        kwargs.setdefault("history", "memory://")
        kwargs.setdefault("ledger", "memory://")
        proxy = Proxy(cfg, environ=kwargs.pop("environ", self.environ), **kwargs)
        self.made.append(proxy)
        return proxy

    def close(self) -> None:
        """Close every Proxy made (sync code)."""
        for proxy in self.made:
            proxy.close()

    async def aclose(self) -> None:
        """Close every Proxy made, from the event loop their async clients ran on."""
        for proxy in self.made:
            await proxy.aclose()


MODES: Final = ("chat", "achat", "stream", "astream")
"""The Proxy's four faces, as :func:`ask` names them."""


async def ask(proxy: Proxy, mode: str, prompt: Any, **kwargs: Any) -> tuple[str, str | None, Any]:
    """Run one call in ``mode`` (one of :data:`MODES`); return its text, reasoning and usage.

    A stream's text and reasoning are joined from its events, and its usage is the last one an
    event carried (the final event's), so the four faces can be compared directly.
    """
    if mode == "chat":
        r = proxy.chat(prompt, **kwargs)
        return r.text, r.reasoning, r.usage
    if mode == "achat":
        r = await proxy.achat(prompt, **kwargs)
        return r.text, r.reasoning, r.usage
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    text: list[str] = []
    reasoning: list[str] = []
    usage = None
    if mode == "stream":
        with proxy.stream(prompt, **kwargs) as stream:
            for ev in stream:
                text.append(ev.text)
                reasoning.append(ev.reasoning)
                usage = ev.usage or usage
    else:
        async with proxy.astream(prompt, **kwargs) as astream:
            async for ev in astream:
                text.append(ev.text)
                reasoning.append(ev.reasoning)
                usage = ev.usage or usage
    return "".join(text), "".join(reasoning) or None, usage
