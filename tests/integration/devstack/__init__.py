"""Integration tests of the devstack launchers: HAProxy, the ELB endpoint, `devstack up`."""
