"""Serving on KServe: an InferenceService per pipeline, its readiness, and the traffic split."""
