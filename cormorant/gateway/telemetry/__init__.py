"""Telemetry: Prometheus metrics, usage accounting, the per-request log line, tracing."""
