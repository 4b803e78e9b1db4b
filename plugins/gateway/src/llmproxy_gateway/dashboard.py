"""``/dashboard``: spend, tokens, budgets, limit hits and recent calls, for the admin only.

The page is one server-rendered HTML document with a small vanilla script that polls
``/dashboard/data`` (JSON) every second and draws inline SVG charts: no build step, nothing
fetched from elsewhere. ``/dashboard/sessions/{id}`` renders a session's history from the
Proxy's history store. The admin opens it with ``Authorization: Bearer <admin key>`` or through
the login form, which sets an HttpOnly, SameSite=Strict cookie naming a server-side session
(the key itself is never put in a cookie; sessions are kept, hashed, in the key store's file, so
every worker process knows them).

Guessing the admin key is throttled per client address: each login (form or ``Authorization``
header on a dashboard route) counts as an attempt, a successful one forgets them, and beyond
``LLMPROXY_GATEWAY_LOGIN_ATTEMPTS`` in ``LLMPROXY_GATEWAY_LOGIN_WINDOW`` seconds the answer is a
429 with Retry-After, whatever the key. The count is kept in the key store's file, so every
worker shares it.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

import anyio
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from llmproxy.pricing import describe
from llmproxy_gateway.app import bearer

if TYPE_CHECKING:
    from llmproxy_gateway.app import Gateway

COOKIE = "llmproxy_admin"
SESSION_SECONDS = 12 * 3600
WINDOWS = (900, 3600, 6 * 3600, 86400, 7 * 86400)
DEFAULT_WINDOW = 3600


def _asset(name: str) -> str:
    return files("llmproxy_gateway").joinpath("static", name).read_text(encoding="utf-8")


def is_admin(gateway: Gateway, request: Request) -> bool:
    """Whether the request carries the admin key or a live login cookie.

    A key in an ``Authorization`` header is a login attempt: :class:`Throttled` when the
    client's address has used up its attempts.
    """
    token = bearer(request.headers.get("authorization"))
    if token is not None:
        return _try_key(gateway, request, token)
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return False
    return gateway.keys.session_active(cookie)


class Throttled(Exception):
    """Too many failed dashboard logins from one address; ``wait`` seconds until the next."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"too many dashboard logins; retry in {wait:.0f} s")
        self.wait = wait

    @property
    def message(self) -> str:
        """What the 429 says."""
        return (
            "Too many failed dashboard logins from your address: try again in"
            f" {math.ceil(self.wait)} s."
        )

    @property
    def headers(self) -> dict[str, str]:
        """Retry-After, in whole seconds (rounded up)."""
        return {"retry-after": str(max(1, math.ceil(self.wait))), "cache-control": "no-store"}


def _address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _try_key(gateway: Gateway, request: Request, key: str) -> bool:
    """Whether ``key`` opens the dashboard, counted against the client's login attempts."""
    address = _address(request)
    wait = gateway.login_wait(address)
    if wait > 0:
        raise Throttled(wait)
    if not gateway.is_admin(key):
        return False
    gateway.keys.login_succeeded(address)
    return True


def _login_page(
    message: str = "", status: int = 401, headers: dict[str, str] | None = None
) -> HTMLResponse:
    note = f'<p class="error">{html.escape(message)}</p>' if message else ""
    page = _asset("login.html").replace("{{message}}", note)
    return HTMLResponse(page, status, headers=headers)


def choose_bucket(gateway: Gateway, window: float) -> float:
    """About 60 buckets per window, at least the log's resolution."""
    return gateway.usage.bucket_size(max(window / 60, 10.0))


def budgets(gateway: Gateway) -> list[dict[str, Any]]:
    """Used / reserved / limit / resets-at of every budget: global ones and each key's."""
    scopes: list[tuple[str | None, str | None]] = [(None, None)]
    scopes += [(k.id, k.user) for k in gateway.keys.all() if k.active]
    rows: dict[str, dict[str, Any]] = {}
    for key, user in scopes:
        for usage in gateway.proxy.usage(key=key, user=user):
            claim = usage.claim
            if claim.key in rows:
                continue
            rows[claim.key] = {
                "id": claim.key,
                "policy": claim.policy,
                "scope": claim.scope,
                "unit": claim.unit,
                "limit": claim.limit,
                "used": usage.used,
                "reserved": usage.reserved,
                "remaining": usage.remaining,
                "resets_at": usage.resets_at,
            }
    return sorted(rows.values(), key=lambda r: (r["scope"], r["policy"]))


def prices(gateway: Gateway, models: list[str], now: float) -> list[dict[str, Any]]:
    """The price of each model called in the window: rates, origin, date, and a stale flag.

    A price older than ``price_max_age_days`` (or undated) is ``stale``; an unpriced model has
    ``price`` None.
    """
    proxy = gateway.proxy
    rows = []
    for model in models:
        provider, _, name = model.partition("/")
        priced = proxy.prices.lookup(provider, name, at=now) if name else None
        rows.append(
            {
                "model": model,
                "price": None
                if priced is None
                else describe(priced, now, proxy.config.price_max_age_days),
            }
        )
    return rows


def data(gateway: Gateway, window: float) -> dict[str, Any]:
    """Everything the page shows, for the last ``window`` seconds (runs in a worker thread)."""
    now = time.time()
    since = now - window
    bucket = choose_bucket(gateway, window)
    log = gateway.usage
    by: dict[str, Any] = {}
    # "model" is the deployment that answered; "alias" its alias's rollup (llmproxy.routing)
    for dim in ("model", "alias", "user", "key"):
        by[dim] = {
            "totals": [t.to_json() for t in log.totals(dim, since=since)],
            "series": [
                {"start": p.start, **p.totals.to_json()}
                for p in log.series(dim, since=since, bucket=bucket)
            ],
        }
    recent = []
    for r in log.recent(50):
        row = r.to_json()
        row["session_url"] = (
            f"/dashboard/sessions/{quote(r.session_id, safe='')}" if r.session_id else None
        )
        recent.append(row)
    try:
        budget_rows: list[dict[str, Any]] = budgets(gateway)
        budget_error = None
    except Exception as exc:  # a ledger outage must not take the page down
        budget_rows, budget_error = [], str(exc)
    return {
        "now": now,
        "window": window,
        "bucket": bucket,
        "since": (since // bucket) * bucket,
        "summary": log.summary(since=since).to_json(),
        "by": by,
        "limits": [
            {"kind": h.kind, "policy": h.policy, "hits": h.hits, "last": h.last}
            for h in log.limit_hits(since=since)
        ],
        "budgets": budget_rows,
        "budget_error": budget_error,
        "prices": prices(gateway, [t["group"] for t in by["model"]["totals"]], now),
        "recent": recent,
        "keys": {k.id: k.to_json() for k in gateway.keys.all()},
        "log": log.describe(),
    }


def _session_page(session_id: str, records: list[Any]) -> str:
    rows = []
    for r in records:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at))
        mark = " (interrupted)" if r.message.interrupted else ""
        model = f"{r.provider}/{r.model}" if r.model else ""
        rows.append(
            "<tr>"
            f'<td class="when">{html.escape(when)}</td>'
            f'<td class="role">{html.escape(r.role)}{mark}</td>'
            f"<td>{html.escape(model)}</td>"
            f'<td class="num">{r.input_tokens or ""}</td>'
            f'<td class="num">{r.output_tokens or ""}</td>'
            f'<td class="content"><pre>{html.escape(r.content)}</pre></td>'
            "</tr>"
        )
    body = "\n".join(rows) or '<tr><td colspan="6">No messages stored for this session.</td></tr>'
    return (
        _asset("session.html")
        .replace("{{session}}", html.escape(session_id))
        .replace("{{count}}", str(len(records)))
        .replace("{{rows}}", body)
    )


def routes(gateway: Gateway) -> list[Route]:
    """The dashboard's routes for one gateway."""

    def guard(
        handler: Callable[[Request], Awaitable[Response]], *, page: bool
    ) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            try:
                admin = is_admin(gateway, request)
            except Throttled as exc:
                if page:
                    return _login_page(exc.message, 429, exc.headers)
                return JSONResponse(
                    {
                        "error": {
                            "message": exc.message,
                            "type": "requests",
                            "param": None,
                            "code": "too_many_login_attempts",
                        }
                    },
                    429,
                    headers=exc.headers,
                )
            if admin:
                return await handler(request)
            if page:
                return _login_page()
            return JSONResponse(
                {
                    "error": {
                        "message": "the dashboard needs the admin key",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                },
                401,
            )

        return guarded

    async def page(_request: Request) -> Response:
        return HTMLResponse(
            _asset("dashboard.html").replace("{{script}}", _asset("dashboard.js")),
            headers={"cache-control": "no-store"},
        )

    async def data_endpoint(request: Request) -> Response:
        try:
            window = float(request.query_params.get("window", DEFAULT_WINDOW))
        except ValueError:
            window = DEFAULT_WINDOW
        window = min(max(window, 60.0), 31 * 86400.0)
        result = await anyio.to_thread.run_sync(data, gateway, window)
        return JSONResponse(result, headers={"cache-control": "no-store"})

    async def session(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        records = await anyio.to_thread.run_sync(gateway.proxy.history.load, session_id, None)
        return HTMLResponse(_session_page(session_id, records))

    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        key = (form.get("key") or [""])[0].strip()
        try:
            admin = _try_key(gateway, request, key)
        except Throttled as exc:
            return _login_page(exc.message, 429, exc.headers)
        if not admin:
            return _login_page("That is not an admin key.")
        token = gateway.keys.start_session(SESSION_SECONDS)
        response = RedirectResponse("/dashboard", 303)
        response.set_cookie(
            COOKIE,
            token,
            max_age=SESSION_SECONDS,
            path="/dashboard",
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(request: Request) -> Response:
        cookie = request.cookies.get(COOKIE)
        if cookie:
            gateway.keys.end_session(cookie)
        response = RedirectResponse("/dashboard", 303)
        response.delete_cookie(COOKIE, path="/dashboard")
        return response

    return [
        Route("/dashboard", guard(page, page=True), methods=["GET"]),
        Route("/dashboard/", guard(page, page=True), methods=["GET"]),
        Route("/dashboard/data", guard(data_endpoint, page=False), methods=["GET"]),
        Route("/dashboard/sessions/{session_id:path}", guard(session, page=True), methods=["GET"]),
        Route("/dashboard/login", login, methods=["POST"]),
        Route("/dashboard/logout", logout, methods=["POST"]),
    ]
