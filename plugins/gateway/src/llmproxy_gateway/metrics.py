"""Prometheus metrics of the gateway: ``GET /metrics``, fed by every call's one event.

:class:`GatewayMetrics` is an observer of the gateway's Proxy (each call's
:class:`~llmproxy.types.CallEvent`) and counts, by model, provider and gateway key (the key's
name, else its id; never the secret):

- ``llmproxy_requests_total`` (and ``outcome``: ``ok``, ``error``, ``interrupted``, or
  ``rejected`` for requests the gateway refused before calling the Proxy: no key, a bad
  body, a model the key may not use);
- ``llmproxy_tokens_total`` (``kind``: ``input``, ``output``, ``cached``, ``cache_write``,
  ``reasoning``; cached (prompt-cache reads) and cache-write tokens are parts of input,
  reasoning tokens a part of output) and ``llmproxy_spend_usd_total``;
- ``llmproxy_request_duration_seconds`` and ``llmproxy_time_to_first_token_seconds``
  (histograms by model and provider; the latter for streams only);
- ``llmproxy_rate_limited_total`` and ``llmproxy_budget_exceeded_total`` (the Proxy's own
  limits refusing a call), ``llmproxy_upstream_errors_total`` (``kind``: the provider error's
  class, ``ProviderTimeout``...; every failed upstream attempt once, those retried or failed
  over from included: :attr:`~llmproxy.types.CallEvent.attempt_errors`, under the model and
  provider the attempt went to), ``llmproxy_cache_hits_total`` (calls the response cache
  answered: no upstream request, no tokens).

``llmproxy_budget_used`` and ``llmproxy_budget_limit`` (by ``budget``, the ledger entry, and
``unit``) are read from the ledger at each scrape by :class:`BudgetCollector`, as the dashboard
reads them: no worker holds a copy that could go stale.

With several workers (``llmproxy serve --workers N``) each worker writes its counts to files in
a directory ``llmproxy serve`` owns (:func:`private_dir`, named by ``PROMETHEUS_MULTIPROC_DIR``,
prometheus-client's multiprocess mode), and any worker answers a scrape with the sum of all of
them: one consistent view, whichever worker the scraper reaches.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmproxy.errors import BudgetExceeded, ProviderError, RateLimited
from llmproxy.secret import logger as secret_logger
from llmproxy.types import CallEvent

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from starlette.requests import Request
    from starlette.responses import Response

    from llmproxy_gateway.app import Gateway

log = secret_logger("llmproxy.gateway.metrics")

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's variable naming the multiprocess mode's directory."""

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The text exposition format's content type."""

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0)
"""Request duration buckets, in seconds (LLM calls take from tenths of seconds to minutes)."""

TTFT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
"""Time-to-first-token buckets, in seconds."""

MAX_MODELS = 500
"""Distinct (model, provider, key) label sets one process counts under their own model name;
calls of further models count under the model ``other`` (a client naming made-up models must
not grow the label set without bound)."""

OTHER_MODEL = "other"

_DIR_PREFIX = "llmproxy-gateway-metrics-"

_counted: ContextVar[BaseException | None] = ContextVar("llmproxy_metrics_counted", default=None)
"""The error of the last call event observed in this context (each request has its own)."""

BudgetRows = Callable[[], list[dict[str, Any]]]
"""What :class:`BudgetCollector` reads: rows with ``id``, ``unit``, ``used`` and ``limit``
(:func:`llmproxy_gateway.dashboard.budgets`)."""


class BudgetCollector:
    """A custom collector: every budget's used amount and limit, read at scrape time.

    ``rows`` is called at each scrape; a ledger that cannot be read leaves the two gauges
    empty (and is logged) rather than failing the scrape, so the counters still arrive.
    """

    def __init__(self, rows: BudgetRows) -> None:
        self.rows = rows

    def collect(self) -> Iterator[Metric]:
        """The ``llmproxy_budget_used`` and ``llmproxy_budget_limit`` gauges."""
        from prometheus_client.core import GaugeMetricFamily

        used = GaugeMetricFamily(
            "llmproxy_budget_used",
            "What a budget has used in its current window (settled), in its unit.",
            labels=["budget", "unit"],
        )
        limit = GaugeMetricFamily(
            "llmproxy_budget_limit",
            "A budget's limit per window, in its unit.",
            labels=["budget", "unit"],
        )
        try:
            rows = self.rows()
        except Exception:
            log.exception("could not read the budgets for /metrics")
            rows = []
        for row in rows:
            labels = [str(row["id"]), str(row["unit"])]
            used.add_metric(labels, float(row["used"]))
            limit.add_metric(labels, float(row["limit"]))
        yield used
        yield limit

    def describe(self) -> list[Metric]:
        """Nothing: the registry need not call :meth:`collect` (the ledger) to register it."""
        return []


class _Series:
    """The metric children of one (model, provider, key): looked up once, then reused."""

    __slots__ = (
        "cache_hits",
        "cache_write",
        "cached",
        "duration",
        "input",
        "key",
        "model",
        "output",
        "provider",
        "reasoning",
        "requests",
        "spend",
        "ttft",
    )

    def __init__(self, metrics: GatewayMetrics, model: str, provider: str, key: str) -> None:
        self.model, self.provider, self.key = model, provider, key
        self.requests: dict[str, Any] = {}
        tokens = metrics.tokens
        self.input = tokens.labels(model, provider, key, "input")
        self.output = tokens.labels(model, provider, key, "output")
        self.cached = tokens.labels(model, provider, key, "cached")
        self.cache_write = tokens.labels(model, provider, key, "cache_write")
        self.reasoning = tokens.labels(model, provider, key, "reasoning")
        self.spend = metrics.spend.labels(model, provider, key)
        self.cache_hits = metrics.cache_hits.labels(model, provider, key)
        self.duration = metrics.duration.labels(model, provider)
        self.ttft = metrics.ttft.labels(model, provider)


class GatewayMetrics:
    """The gateway's Prometheus metrics; call :meth:`observe` with each call's event.

    ``key_label`` turns the event's key id into its label (the key's name, else the id).
    ``budgets`` gives the rows the budget gauges show at each scrape (none: no gauges).
    The mode is the process's: with ``PROMETHEUS_MULTIPROC_DIR`` set (as ``llmproxy serve
    --workers N`` sets it, before prometheus-client is imported: it reads the variable then),
    counts go to that directory's files and a scrape sums every process's; without, they stay
    in this object's own registry.
    """

    def __init__(
        self,
        *,
        key_label: Callable[[str], str] = str,
        budgets: BudgetRows | None = None,
    ) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.directory = os.environ.get(MULTIPROC_DIR, "").strip() or None
        self.key_label = key_label
        own = None if self.directory else CollectorRegistry(auto_describe=False)
        series = ["model", "provider", "key"]
        self.requests = Counter(
            "llmproxy_requests",
            "Calls through the gateway, by outcome (ok, error, interrupted, rejected).",
            [*series, "outcome"],
            registry=own,
        )
        self.tokens = Counter(
            "llmproxy_tokens",
            "Tokens used, by kind (input, output, cached: part of input, cache_write: part of"
            " input, reasoning: part of output).",
            [*series, "kind"],
            registry=own,
        )
        self.spend = Counter(
            "llmproxy_spend_usd", "Spend in US dollars, of priced models.", series, registry=own
        )
        self.duration = Histogram(
            "llmproxy_request_duration_seconds",
            "Seconds from a call's start to its end (streams: to their last chunk).",
            ["model", "provider"],
            buckets=DURATION_BUCKETS,
            registry=own,
        )
        self.ttft = Histogram(
            "llmproxy_time_to_first_token_seconds",
            "Seconds from a streamed call's start to its first chunk of text.",
            ["model", "provider"],
            buckets=TTFT_BUCKETS,
            registry=own,
        )
        self.rate_limited = Counter(
            "llmproxy_rate_limited",
            "Calls refused by a rate limit of the gateway's (its RPM and TPM policies).",
            series,
            registry=own,
        )
        self.budget_exceeded = Counter(
            "llmproxy_budget_exceeded",
            "Calls refused because a budget had no room left.",
            series,
            registry=own,
        )
        self.cache_hits = Counter(
            "llmproxy_cache_hits",
            "Calls answered from the response cache (no upstream request, no tokens spent).",
            series,
            registry=own,
        )
        self.upstream_errors = Counter(
            "llmproxy_upstream_errors",
            "Failed upstream attempts (retried, failed over from, or ending the call) by the"
            " provider error's class (ProviderTimeout, ProviderUnavailable...).",
            ["model", "provider", "kind"],
            registry=own,
        )
        self._series: dict[tuple[str, str, str | None], _Series] = {}
        self._overflow: dict[tuple[str, str, str | None], _Series] = {}
        self._keys: dict[str | None, str] = {None: ""}
        if own is None:
            from prometheus_client import multiprocess

            self.registry = CollectorRegistry(auto_describe=False)
            multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
                self.registry, path=self.directory
            )
        else:
            self.registry = own
        if budgets is not None:
            self.registry.register(BudgetCollector(budgets))

    def _key(self, key: str | None) -> str:
        label = self._keys.get(key)
        if label is None:
            label = self._keys[key] = self.key_label(key) if key is not None else ""
        return label

    def observe(self, event: CallEvent) -> None:
        """Count one call's event (a Proxy observer: ``Proxy(observers=[metrics.observe])``)."""
        index = (event.model, event.provider, event.key)
        series = self._series.get(index)
        if series is None:
            series = self._new_series(*index)
        outcome = event.outcome
        counter = series.requests.get(outcome)
        if counter is None:
            counter = series.requests[outcome] = self.requests.labels(
                series.model, series.provider, series.key, outcome
            )
        counter.inc()
        usage = event.usage
        if usage.input_tokens:
            series.input.inc(usage.input_tokens)
        if usage.output_tokens:
            series.output.inc(usage.output_tokens)
        if usage.cached_input_tokens:
            series.cached.inc(usage.cached_input_tokens)
        if usage.cache_write_tokens:
            series.cache_write.inc(usage.cache_write_tokens)
        if usage.reasoning_tokens:
            series.reasoning.inc(usage.reasoning_tokens)
        if usage.cost:
            series.spend.inc(usage.cost)
        if event.cache_hit:
            series.cache_hits.inc()
        series.duration.observe(event.latency)
        if event.ttft is not None:
            series.ttft.observe(event.ttft)
        for failed in event.attempt_errors:
            self._count_attempt_error(event, series, failed)
        error = event.error
        if error is not None:
            _counted.set(error)
            self._count_error(series, error)

    def _new_series(self, model: str, provider: str, key: str | None) -> _Series:
        label = self._key(key)
        if len(self._series) < MAX_MODELS:
            own = self._series[(model, provider, key)] = _Series(self, model, provider, label)
            return own
        # Past the bound: one shared series per provider and key, not cached per model.
        overflow = (OTHER_MODEL, provider, key)
        series = self._overflow.get(overflow)
        if series is None:
            if not self._overflow:
                log.warning(
                    "more than %d models seen: further ones count as model %r in /metrics",
                    MAX_MODELS,
                    OTHER_MODEL,
                )
            series = self._overflow[overflow] = _Series(self, OTHER_MODEL, provider, label)
        return series

    def _count_error(self, series: _Series, error: BaseException) -> None:
        labels = (series.model, series.provider, series.key)
        if isinstance(error, RateLimited):
            self.rate_limited.labels(*labels).inc()
        elif isinstance(error, BudgetExceeded):
            self.budget_exceeded.labels(*labels).inc()
        elif isinstance(error, ProviderError):
            self.upstream_errors.labels(series.model, series.provider, type(error).__name__).inc()

    def _count_attempt_error(self, event: CallEvent, series: _Series, error: BaseException) -> None:
        """Count an attempt's error that did not end the call, where its attempt went."""
        if not isinstance(error, ProviderError):
            return
        index = (error.model or event.model, error.provider, event.key)
        if index != (event.model, event.provider, event.key):  # a fallback, another deployment
            series = self._series.get(index) or self._new_series(*index)
        self.upstream_errors.labels(series.model, series.provider, type(error).__name__).inc()

    def counted(self, error: BaseException) -> bool:
        """Whether ``error`` ended a call this context observed (so it is counted already).

        A request's handler asks before :meth:`rejected`: an error raised before the Proxy
        started a call (a bad body, an unknown model) produced no event.
        """
        return _counted.get() is error

    def rejected(self, key: str | None) -> None:
        """Count a request the gateway refused before calling the Proxy.

        It has no model label: the name the client sent is not trusted to keep the label set
        small.
        """
        self.requests.labels("", "", self._key(key), "rejected").inc()

    def render(self) -> bytes:
        """The text exposition of every metric (all workers' sums in multiprocess mode)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def endpoint(gateway: Gateway, *, open_: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """``GET /metrics``: the text exposition, for the admin key unless ``open_``.

    The key is checked as the dashboard checks it (the admin key, or an admin gateway key, as
    ``Authorization: Bearer ...``; failed attempts count against the client address's login
    throttle). ``open_`` (no key asked) is for the separate metrics port only, when the
    operator sets ``LLMPROXY_GATEWAY_METRICS_AUTH=none``. The check and the rendering (which
    reads the other workers' files and the ledger) run in a worker thread.
    """
    import anyio
    from starlette.responses import PlainTextResponse
    from starlette.responses import Response as PlainResponse

    from llmproxy_gateway.dashboard import Throttled, is_admin

    def answer(request: Request) -> Response:
        if not open_:
            try:
                admin = is_admin(gateway, request)
            except Throttled as exc:
                return PlainTextResponse(exc.message, 429, headers=exc.headers)
            if not admin:
                return PlainTextResponse(
                    "/metrics needs the admin key: send it as Authorization: Bearer <key>",
                    401,
                    headers={"www-authenticate": "Bearer"},
                )
        return PlainResponse(
            gateway.metrics.render(),
            headers={"content-type": CONTENT_TYPE, "cache-control": "no-store"},
        )

    async def metrics(request: Request) -> Response:
        return await anyio.to_thread.run_sync(answer, request)

    return metrics


def preload() -> None:
    """Import prometheus-client (multiprocess mode included) in a process about to fork workers.

    Call after :func:`private_dir`: the mode is fixed at import.
    """
    import prometheus_client.multiprocess  # noqa: F401


def private_dir(environ: MutableMapping[str, str]) -> Path:
    """Make this process's empty multiprocess directory and name it in ``environ``.

    Left-over directories of earlier gateways whose process is gone (killed before they could
    clean up) are removed first. Call before anything imports prometheus-client: it reads the
    variable once, at import. :func:`remove_private_dir` removes it at exit.
    """
    base = Path(tempfile.gettempdir())
    for old in base.glob(_DIR_PREFIX + "*"):
        pid = old.name.removeprefix(_DIR_PREFIX).partition("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-"))
    environ[MULTIPROC_DIR] = str(path)
    return path


def remove_private_dir(path: Path) -> None:
    """Remove the directory :func:`private_dir` made (at the gateway's exit)."""
    shutil.rmtree(path, ignore_errors=True)


def mark_dead(pid: int, path: Path) -> None:
    """Tell prometheus-client that worker ``pid`` exited.

    Its live gauges are dropped; its counts stay, so totals never go down.
    """
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
