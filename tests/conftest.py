"""Shared pytest configuration: the real-component fixtures live in tests/testenv."""

pytest_plugins = ["testenv.fixtures"]
