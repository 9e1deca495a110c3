"""Failover between real ``reconciler run greeter`` processes on a real (embedded) Consul process.

What an operator relies on when a replica is stopped or dies: SIGTERM makes the leader release
its lock and exit 0, and a standby leads within about a second; a SIGKILLed leader keeps the lock
until Consul invalidates its session (its TTL), never earlier; whoever leads next converges new
input; and the JSON log lines carry the fields dashboards and searches use.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.greeter import IN, OUT
from tests.integration._procs import ConsulHTTP, Processes, Replica, terminate, wait_until

pytestmark = [pytest.mark.integration]

NAME = "greeter"
TTL = 10.0
LOCK_DELAY = 1.0
DRAIN_TIMEOUT = 5.0
RECONCILE_FIELDS = ("controller", "key", "reconcile_id", "event", "level")


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.close()


@pytest.fixture
def consul(procs: Processes) -> Iterator[ConsulHTTP]:
    client = ConsulHTTP(procs.start_consul())
    try:
        yield client
    finally:
        client.close()


def message(name: str, greeting: str) -> bytes:
    return f'{{"message":"{greeting}, {name}!"}}'.encode()


def converge(consul: ConsulHTTP, name: str, greeting: str, timeout: float = 10.0) -> None:
    consul.put(f"{IN}{name}", f'{{"greeting": "{greeting}"}}'.encode())
    wait_until(
        lambda: consul.raw(f"{OUT}{name}") == message(name, greeting),
        timeout,
        what=f"the output of {name}",
    )


def status(replica: Replica) -> float | None:
    return replica.metric("leader_election_master_status", name=NAME)


def start_pair(procs: Processes, consul: ConsulHTTP) -> tuple[Replica, Replica]:
    """Two replicas; returns (leader, standby) as the lock key names them."""
    replicas = {r.identity: r for r in (procs.start_replica("one"), procs.start_replica("two"))}
    holder = wait_until(lambda: consul.lock(NAME)[0], 20, what="a leader")
    assert holder is not None
    leader = replicas.pop(holder)
    (standby,) = replicas.values()
    wait_until(lambda: leader.ready() and standby.ready(), 15, what="both replicas ready")
    assert status(leader) == 1
    assert status(standby) == 0
    return leader, standby


def reconcile_lines(replica: Replica, key: str) -> list[dict[str, object]]:
    return [line for line in replica.lines() if line.get("key") == key]


def assert_structured_reconcile_log(replica: Replica, key: str) -> None:
    lines = reconcile_lines(replica, key)
    assert lines, f"{replica.identity} logged nothing for {key}:\n{replica.tail()}"
    for line in lines:
        missing = [f for f in RECONCILE_FIELDS if f not in line]
        assert not missing, f"log line without {missing}: {line}"
        assert line["controller"] == NAME
        assert len(str(line["reconcile_id"])) >= 8
    assert any(line["event"] == "wrote greeting" and line["level"] == "info" for line in lines)


@pytest.mark.timeout(60)
def test_sigterm_hands_over_at_once_and_sigkill_waits_for_the_session(
    procs: Processes, consul: ConsulHTTP
) -> None:
    first, second = start_pair(procs, consul)
    converge(consul, "ada", "hello")

    # (a) SIGTERM: the leader releases the lock (no lock-delay) and exits 0 after draining.
    sent = time.monotonic()
    first.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: consul.lock(NAME)[0] == second.identity, 5, what="the standby to lead")
    takeover = time.monotonic() - sent
    assert takeover < 1.5, f"standby took {takeover:.2f}s to take over after SIGTERM"
    assert first.proc.wait(timeout=DRAIN_TIMEOUT + 2) == 0
    stopped = [line for line in first.lines() if line.get("event") == "manager stopped"]
    assert stopped, first.tail()
    assert stopped[-1]["drained"] is True
    wait_until(lambda: status(second) == 1, 5, what="the new leader's status metric")
    converge(consul, "bob", "hi")

    # (b) SIGKILL: nothing is released, so nobody may lead before the session is invalidated.
    third = procs.start_replica("three")
    wait_until(third.ready, 15, what="the third replica ready")
    assert status(third) == 0
    _, dead_session = consul.lock(NAME)
    assert dead_session is not None
    second.proc.send_signal(signal.SIGKILL)
    assert second.proc.wait(timeout=5) == -signal.SIGKILL
    consul.put(f"{IN}carol", b'{"greeting": "hey"}')
    watched_until = time.monotonic() + 2.0
    while time.monotonic() < watched_until:
        assert consul.lock(NAME) == (second.identity, dead_session)
        assert status(third) == 0
        time.sleep(0.1)
    assert consul.raw(f"{OUT}carol") is None, "nobody leads, so nothing converges"

    # Waiting out the TTL (up to 2 x 10 s) is what the slow test does; expire it instead.
    consul.expire_session(dead_session)
    expired = time.monotonic()
    wait_until(lambda: consul.lock(NAME)[0] == third.identity, 5, what="the third to lead")
    assert time.monotonic() - expired < LOCK_DELAY + 1.5
    wait_until(
        lambda: consul.raw(f"{OUT}carol") == message("carol", "hey"), 5, what="carol converged"
    )
    assert status(third) == 1
    converge(consul, "dave", "yo")

    assert_structured_reconcile_log(first, "ada")
    assert_structured_reconcile_log(second, "bob")
    assert_structured_reconcile_log(third, "carol")
    assert not reconcile_lines(third, "ada"), "ada was done; the new leader changed nothing"
    assert terminate(third, DRAIN_TIMEOUT + 2) == 0


@pytest.mark.slow
@pytest.mark.timeout(45)
def test_sigkilled_leader_is_replaced_only_after_its_session_ttl(
    procs: Processes, consul: ConsulHTTP
) -> None:
    leader, standby = start_pair(procs, consul)
    converge(consul, "ada", "hello")
    _, session = consul.lock(NAME)
    leader.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    assert leader.proc.wait(timeout=5) == -signal.SIGKILL

    # Consul invalidates the session between TTL and 2 x TTL after its last renewal (the
    # embedded one at 2 x TTL; renewals come every TTL/2), then lock-delay holds the key.
    holder = wait_until(
        lambda: consul.lock(NAME)[0] != leader.identity and consul.lock(NAME)[0],
        2 * TTL + LOCK_DELAY + 3,
        every=0.1,
        what="the standby to lead",
    )
    took = time.monotonic() - killed
    assert holder == standby.identity
    assert consul.lock(NAME)[1] != session
    assert TTL <= took <= 2 * TTL + LOCK_DELAY + 1.5, f"took over {took:.1f}s after SIGKILL"
    wait_until(lambda: status(standby) == 1, 5, what="the standby's status metric")
    converge(consul, "bob", "hi", timeout=5)
    assert_structured_reconcile_log(standby, "bob")


@pytest.mark.timeout(30)
def test_sigterm_on_a_standby_exits_0_without_waiting_for_the_drain_timeout(
    procs: Processes, consul: ConsulHTTP
) -> None:
    leader, standby = start_pair(procs, consul)
    converge(consul, "ada", "hello")
    # The standby's warm sources saw the change too; it has nothing in flight.
    sent = time.monotonic()
    code = terminate(standby, DRAIN_TIMEOUT + 2)
    took = time.monotonic() - sent
    assert consul.lock(NAME)[0] == leader.identity
    assert (code, took < 2.0) == (0, True), f"exit {code} after {took:.1f}s"


@pytest.mark.timeout(30)
def test_every_stderr_line_is_json_and_leadership_changes_are_logged(
    procs: Processes, consul: ConsulHTTP
) -> None:
    # Records of plain stdlib loggers (leader election, sources) go through the same JSON
    # renderer as the structured ones; a formatter error would print a traceback and lose them.
    replica = procs.start_replica("solo")
    wait_until(lambda: consul.lock(NAME)[0] == "solo", 15, what="the replica to lead")
    wait_until(replica.ready, 10, what="the replica ready")
    converge(consul, "ada", "hello")
    assert terminate(replica, DRAIN_TIMEOUT + 2) == 0
    assert any(line.get("event") == "manager stopped" for line in replica.lines())
    not_json = [line for line in replica.raw_lines() if not line.startswith("{")]
    assert not not_json, f"non-JSON lines on stderr: {not_json[:5]}"
    events = {str(line.get("event")) for line in replica.lines()}
    assert "became leader" in events
    assert any("source" in line and line.get("level") == "info" for line in replica.lines())
