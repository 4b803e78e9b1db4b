"""An in-memory OpenTelemetry SDK, and Proxies reporting to it over a fake upstream."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llmproxy import Proxy
from llmproxy_otel import OtelObserver
from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_testing.proxies import ProxyMaker

API_KEY = "sk-otel-test-0123456789abcdef"


class Telemetry:
    """Spans and metrics recorded by an in-memory SDK."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def observer(self, **kwargs: Any) -> OtelObserver:
        return OtelObserver(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **kwargs
        )

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        found = [s for s in self.spans() if s.name == name]
        assert len(found) == 1, [s.name for s in self.spans()]
        return found[0]

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        return [
            s
            for s in self.spans()
            if s.parent is not None and s.parent.span_id == parent.context.span_id
        ]

    def points(self, metric: str) -> list[HistogramDataPoint]:
        data = self.reader.get_metrics_data()
        out: list[HistogramDataPoint] = []
        if data is None:
            return out
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for m in scope.metrics:
                    if m.name == metric:
                        out.extend(
                            p for p in m.data.data_points if isinstance(p, HistogramDataPoint)
                        )
        return out


def attributes(span: ReadableSpan) -> Mapping[str, Any]:
    assert span.attributes is not None
    return span.attributes


@pytest.fixture
def telemetry() -> Telemetry:
    return Telemetry()


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=API_KEY) as server:
        yield server


@pytest.fixture
def env(upstream: FakeOpenAI, tmp_path: Path) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": upstream.base_url,
        "LLMPROXY_DATA_DIR": str(tmp_path / "data"),
    }


@pytest.fixture
def make_proxy(env: dict[str, str], telemetry: Telemetry) -> Iterator[Callable[..., Proxy]]:
    maker = ProxyMaker(env)

    def make(config: Mapping[str, Any] | None = None, **kwargs: Any) -> Proxy:
        kwargs.setdefault("observers", [telemetry.observer()])
        return maker(config, **kwargs)

    yield make
    maker.close()
