"""Watch helpers: names, key mappings, descriptions, and the sources they build."""

from __future__ import annotations

import pytest

from reconciler import watches
from reconciler.controller import Dependencies
from reconciler.sources.health import ServiceHealthSource
from reconciler.sources.kv import KVSource
from reconciler.sources.periodic import PeriodicSource


def test_kv_prefix_maps_to_the_first_segment_after_the_prefix() -> None:
    watch = watches.kv("manticore/requests/data/")
    assert watch.name == "kv:manticore/requests/data/"
    assert list(watch.to_keys("manticore/requests/data/u1")) == ["u1"]
    assert list(watch.to_keys("manticore/requests/data/u1/extra")) == ["u1"]
    assert list(watch.to_keys("manticore/requests/data/")) == []
    assert watch.describe == "consul kv prefix manticore/requests/data/"
    source = watch.build(Dependencies(consul=object()))
    assert isinstance(source, KVSource)
    assert source.name == watch.name


def test_kv_single_key_maps_to_itself() -> None:
    watch = watches.kv("haproxy/domainName")
    assert list(watch.to_keys("haproxy/domainName")) == ["haproxy/domainName"]
    assert watch.describe == "consul kv key haproxy/domainName"


def test_service_health_needs_exactly_one_selector() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        watches.service_health()
    with pytest.raises(ValueError, match="exactly one"):
        watches.service_health("a", pattern="b")
    watch = watches.service_health(pattern=r"core-hmi-.*", passing_only=True)
    assert watch.describe == "consul service health /core-hmi-.*/ (passing only)"
    assert isinstance(watch.build(Dependencies(consul=object())), ServiceHealthSource)


def test_nomad_watch_requires_a_nomad_client() -> None:
    watch = watches.nomad("allocations", job_prefix="core-hmi-")
    assert watch.name == "nomad:allocations:core-hmi-"
    with pytest.raises(ValueError, match="needs"):
        watch.build(Dependencies(consul=object()))


def test_periodic_describes_its_keys() -> None:
    watch = watches.periodic(["capacity"], every=30)
    assert watch.describe == "every 30s: capacity"
    assert isinstance(watch.build(Dependencies(consul=None)), PeriodicSource)
