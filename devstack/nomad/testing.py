"""pytest fixtures for the embedded nomad."""
