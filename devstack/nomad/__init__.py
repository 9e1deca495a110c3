"""Embedded nomad for development, demos and tests."""
