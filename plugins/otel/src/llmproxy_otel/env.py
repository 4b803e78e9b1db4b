"""The environment variables the OpenTelemetry plugin reads.

==================================================  ===============================================
Variable                                            Meaning
==================================================  ===============================================
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``  ``true`` (also ``1``, ``yes``, ``on``,
                                                    ``span_only``, ``span_and_event``, any case):
                                                    record message content on the spans (the
                                                    system instructions, the input and output
                                                    messages, tool arguments and results). Unset
                                                    or anything else: never recorded (the
                                                    default). Read at each call.
==================================================  ===============================================

Everything else (where spans and metrics go, sampling, the service name) is the OpenTelemetry
SDK's own configuration (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME``...), read by
the SDK the application sets up, not by this plugin.
"""

from __future__ import annotations

from collections.abc import Mapping

CAPTURE_MESSAGE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
_ON = frozenset(("true", "1", "yes", "on", "span_only", "span_and_event"))


def capture_content(environ: Mapping[str, str]) -> bool:
    """Whether message content may be recorded (the convention's opt-in variable is set)."""
    return environ.get(CAPTURE_MESSAGE_CONTENT, "").strip().lower() in _ON


__all__ = ["CAPTURE_MESSAGE_CONTENT", "capture_content"]
