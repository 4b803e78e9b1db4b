"""llmproxy-otel: OpenTelemetry traces and metrics of every llmproxy call.

Installed, it reports every call of every Proxy to the global OpenTelemetry providers once the
application configures an SDK; pass an :class:`OtelObserver` with providers of your own to a
Proxy instead (``Proxy(observers=[OtelObserver(tracer_provider=tp)])``). See the README.
"""

from llmproxy_otel.observer import (
    DURATION_BUCKETS,
    PROVIDER_NAMES,
    TOKEN_BUCKETS,
    OtelObserver,
)

__version__ = "0.1.0"

__all__ = ["DURATION_BUCKETS", "PROVIDER_NAMES", "TOKEN_BUCKETS", "OtelObserver", "__version__"]
