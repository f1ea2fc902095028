"""Where models are served: KServe's own model server locally, InferenceServices in a cluster."""
