"""The entry point llmproxy loads: one observer on the global OpenTelemetry providers.

It follows no call until the application configures an OpenTelemetry SDK (a tracer or a meter
provider): until then :meth:`~llmproxy_otel.OtelObserver.start_call` declines every call and
the calls cost nothing more.
"""

from __future__ import annotations

import llmproxy
from llmproxy.registry import RegisterObserver


@llmproxy.hookimpl
def register_observers(register: RegisterObserver) -> None:
    """Register the observer that reports to the global tracer and meter providers."""
    from llmproxy_otel.observer import OtelObserver

    register(OtelObserver())
