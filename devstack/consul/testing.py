"""pytest fixtures for the embedded consul."""
