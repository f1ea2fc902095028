"""The operator: kopf handlers, the only place kopf is imported."""
