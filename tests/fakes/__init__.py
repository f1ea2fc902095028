"""Fakes of what cannot run here, each named as such: the Kubeflow Pipelines API."""
