"""Nomad contract tests: the fixtures come from ``devstack.nomad.testing`` (a pytest plugin)."""
