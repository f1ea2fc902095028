"""mlcd: continuous training and delivery of ML models, as one Kubernetes resource."""

__version__ = "0.1.0"
