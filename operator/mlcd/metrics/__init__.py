"""Metric providers (Prometheus) and the operator's own metrics."""
