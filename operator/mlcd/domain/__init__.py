"""The pure core: spec and status models, checks, the gate, data checks and metrics.

Nothing here talks to Kubernetes, the network, the filesystem or other processes.
"""
