"""The async fast path: requests sent straight on aiohttp, with the SDK client's own settings.

The SDK's ``post`` builds every request anew: request options as a pydantic model, headers
merged and validated, the URL parsed three times, an httpx request, then the aiohttp transport's
translation of it into an aiohttp request. That is about half a millisecond of CPU per call
(over a millisecond on an idle process), all before the first byte leaves, and it sits on the
time to the first token of every call the gateway forwards.

:class:`DirectSession` does the fixed part once per event loop. The URL base, the default headers
(user agent, the SDK's platform headers, organization, project, the provider's
``default_headers``) and the auth header are read from the async SDK client itself, so they are
what the SDK would send. Each call then costs one JSON encode and one aiohttp request. The
request options ``create`` accepts (``extra_headers``, ``extra_query``, ``extra_body``,
``timeout``) are applied as the SDK applies them. A request the fast path cannot reproduce
exactly goes through the SDK's ``post`` instead: a body that needs the SDK's JSON encoder, or a
query value that is not a plain string, number or boolean. :meth:`DirectSession.prepare`
returns None for those.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

import aiohttp
import httpx2
import openai

#: The SDK's own connection limit (``openai.DEFAULT_CONNECTION_LIMITS``) and keep-alive expiry.
MAX_CONNECTIONS: Final = 1000
KEEPALIVE_SECONDS: Final = 5.0
#: Request options the fast path applies (``security`` is the SDK's bearer-auth marker).
_OPTIONS: Final = frozenset(("security", "headers", "params", "extra_json", "timeout"))
_SCALARS: Final = (str, int, float)


def client_timeout(timeout: float | httpx2.Timeout | None) -> aiohttp.ClientTimeout:
    """The aiohttp timeouts for the SDK's: connect, read (between two chunks) and pool wait.

    As the SDK's aiohttp transport maps them; a float sets all three, None none, and there is
    no limit on a whole response, which a long stream may well exceed.
    """
    if timeout is None:
        return aiohttp.ClientTimeout(total=None)
    if isinstance(timeout, httpx2.Timeout):
        return aiohttp.ClientTimeout(
            total=None,
            sock_connect=timeout.connect,
            sock_read=timeout.read,
            connect=timeout.pool,
        )
    seconds = float(timeout)
    return aiohttp.ClientTimeout(
        total=None, sock_connect=seconds, sock_read=seconds, connect=seconds
    )


def _read_timeout(timeout: float | httpx2.Timeout | None) -> str | None:
    """The SDK's ``X-Stainless-Read-Timeout`` value: the read timeout as given."""
    if isinstance(timeout, httpx2.Timeout):
        return None if timeout.read is None else str(timeout.read)
    return None if timeout is None else str(timeout)


def _with_read_timeout(headers: Mapping[str, str], read: str | None) -> dict[str, str]:
    out = dict(headers)
    if read is not None:
        out["X-Stainless-Read-Timeout"] = read
    return out


class Prepared(NamedTuple):
    """One POST ready to send: URL, encoded body, headers and timeouts."""

    url: str
    data: bytes
    headers: dict[str, str]
    timeouts: aiohttp.ClientTimeout


class DirectSession:
    """One event loop's aiohttp session and what every request of one provider shares.

    ``client`` is the provider's async SDK client of the same loop: the base URL, default
    headers, auth header and default query are read from it once, here.
    """

    __slots__ = (
        "_base",
        "_common",
        "_headers",
        "_query",
        "_read",
        "_timeout",
        "proxy",
        "qs",
        "session",
    )

    def __init__(self, client: openai.AsyncOpenAI, timeout: float | httpx2.Timeout) -> None:
        base = str(client.base_url)
        self._base = base if base.endswith("/") else base + "/"
        headers = {k: v for k, v in client.default_headers.items() if isinstance(v, str)}
        headers.update(client.auth_headers)
        # What the SDK adds per request: its own retries are off (the Proxy retries), so 0.
        headers["X-Stainless-Retry-Count"] = "0"
        self._common = headers
        self._read = _read_timeout(timeout)
        self._headers = _with_read_timeout(headers, self._read)
        self._query: dict[str, object] = dict(client.default_query)
        self._timeout = client_timeout(timeout)
        self.qs = client.qs
        # Certificates as the SDK's transport loads them (certifi, SSL_CERT_FILE/DIR), and only
        # for an https base: loading them costs tens of milliseconds.
        ssl: Any = httpx2.create_ssl_context() if self._base.startswith("https:") else True
        connector = aiohttp.TCPConnector(
            limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_SECONDS, ssl=ssl
        )
        # Not trust_env: aiohttp would then look up ~/.netrc and the proxy variables on a
        # worker thread for every request, two thread hops per call. The proxy is read here.
        self.session = aiohttp.ClientSession(connector=connector)
        self.proxy = env_proxy(self._base)

    def prepare(
        self, path: str, body: Mapping[str, Any], options: Mapping[str, Any]
    ) -> Prepared | None:
        """One POST ready to send, or None when only the SDK's ``post`` can send it.

        ``options`` are the SDK request options ``split_params`` made: extra headers (an
        ``openai.Omit`` value removes a header), query parameters, ``extra_json`` (merged over
        the body, an ``Omit`` value removing a field) and a per-request timeout.
        """
        if not _OPTIONS.issuperset(options):
            return None
        extra = options.get("extra_json")
        if extra is not None:
            if not isinstance(extra, Mapping):
                return None
            body = {**body, **extra}
            body = {k: v for k, v in body.items() if not isinstance(v, openai.Omit)}
        try:
            data = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError):
            return None  # the SDK's encoder knows more types
        url = self._base + path.lstrip("/")
        query = self._query
        params = options.get("params")
        if params:
            query = {**query, **params}
        if query:
            flat: dict[str, str | int | float] = {}
            for name, value in query.items():
                if isinstance(value, _SCALARS):
                    flat[name] = value
                elif not isinstance(value, openai.Omit):
                    return None  # lists and nested values: the SDK's array and nesting rules
            url += ("&" if "?" in url else "?") + self.qs.stringify(flat)
        timeout = self._timeout
        read = self._read
        if "timeout" in options:
            given = options["timeout"]
            if given is not None and not isinstance(given, (int, float, httpx2.Timeout)):
                return None
            timeout = client_timeout(given)
            read = _read_timeout(given)
        headers = self._headers
        custom = options.get("headers")
        if custom or read != self._read:
            # As the SDK: the caller's headers win, an Omit removes one, and the read-timeout
            # header is the call's own unless the caller set (or removed) it.
            headers = _with_read_timeout(self._common, read)
            for name, value in (custom or {}).items():
                if not isinstance(value, (str, openai.Omit)):
                    return None  # the SDK decides what other values mean
                lower = name.lower()
                for known in [k for k in headers if k.lower() == lower]:
                    del headers[known]
                if isinstance(value, str):
                    headers[name] = value
        return Prepared(url, data.encode(), headers, timeout)

    async def post(self, request: Prepared) -> aiohttp.ClientResponse:
        """Send one POST; the response's status line and headers have arrived."""
        return await self.session.post(
            request.url,
            data=request.data,
            headers=request.headers,
            timeout=request.timeouts,
            proxy=self.proxy,
        )

    async def aclose(self) -> None:
        """Close the session and its connections."""
        await self.session.close()


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url``, or None.

    ``HTTPS_PROXY``/``HTTP_PROXY`` by the URL's scheme, else ``ALL_PROXY``; ``NO_PROXY`` lists
    hosts that bypass them. The SDK's httpx clients read the same variables.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None or urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all") or None


def error_message(status: int, content: bytes) -> str:
    """An error response's message: OpenAI's ``error.message``, else the body's text."""
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    found = message_in(data)
    if found is not None:
        return found
    text = content.decode("utf-8", "replace").strip()
    return f"Error code: {status} - {text}" if text else f"Error code: {status}"


def message_in(body: object) -> str | None:
    """``error.message`` (or a top-level ``message``) of a parsed error body, if it has one."""
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return str(error["message"])
    return None
