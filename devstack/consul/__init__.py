"""Embedded consul for development, demos and tests."""
