"""Leader election on a Kubernetes Lease: the official client against the fake API server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from scheduler.elector import KubernetesLeaseLock, LeaderElectionRecord, LockConflict, LockError
from scheduler.elector.kubernetes_lock import load_api_client
from tests.lease_api_server import (  # noqa: F401  (fixtures are used by name)
    LeaseApiServer,
    kubeconfig_fixture,
    lease_api_fixture,
)
from tests.test_elector import (
    LEASE,
    RETRY,
    SLACK,
    Cluster,
    check_graceful_handover,
    check_outage_steps_down,
    check_takeover_after_kill,
    contention_rounds,
    wait_until,
)

NAMESPACE = "scheduler-test"
NAME = "virtflow-scheduler"


def new_lock(kubeconfig: Path) -> KubernetesLeaseLock:
    api_client, namespace = load_api_client({"KUBECONFIG": str(kubeconfig)})
    assert namespace == NAMESPACE
    return KubernetesLeaseLock(api_client, NAMESPACE, NAME, owns_client=True)


@pytest.fixture
def cluster(kubeconfig: Path) -> Iterator[Cluster]:
    candidates = Cluster(lambda: new_lock(kubeconfig))
    yield candidates
    candidates.close()


def test_lock_conflicts_and_errors(kubeconfig: Path, lease_api: LeaseApiServer) -> None:
    lock = new_lock(kubeconfig)
    rival = new_lock(kubeconfig)
    try:
        assert lock.get(timeout=1) is None
        now = datetime.now(UTC).replace(microsecond=0)  # the zero-microsecond MicroTime case
        record = LeaderElectionRecord("a", 1.2, now, now, 0)
        version = lock.create(record, timeout=1)
        with pytest.raises(LockConflict):
            rival.create(record, timeout=1)
        stored = lease_api.lease(NAMESPACE, NAME)
        assert stored is not None
        assert stored["spec"]["leaseDurationSeconds"] == 2  # rounded up, never down
        assert stored["spec"]["renewTime"].endswith(".000000Z")

        found = rival.get(timeout=1)
        assert found is not None and found[1] == version and found[0].holder_identity == "a"
        renewed = LeaderElectionRecord("a", 1.2, now, datetime.now(UTC), 0)
        newer = lock.update(renewed, version, timeout=1)
        assert int(newer) > int(version)
        with pytest.raises(LockConflict):
            rival.update(LeaderElectionRecord("b", 1.0, now, now, 1), version, timeout=1)

        # Labels someone else put on the Lease survive our replace.
        httpx.patch(
            f"{lease_api.url}/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{NAME}",
            json={"metadata": {"labels": {"team": "infra"}}},
            headers={
                "Authorization": f"Bearer {lease_api.token}",
                "Content-Type": "application/merge-patch+json",
            },
        ).raise_for_status()
        found = lock.get(timeout=1)
        assert found is not None
        lock.update(LeaderElectionRecord("a", 1.2, now, datetime.now(UTC), 0), found[1], timeout=1)
        stored = lease_api.lease(NAMESPACE, NAME)
        assert stored is not None and stored["metadata"]["labels"] == {"team": "infra"}

        lease_api.set_outage("503")
        with pytest.raises(LockError) as unavailable:
            lock.get(timeout=1)
        assert not isinstance(unavailable.value, LockConflict) and "503" in str(unavailable.value)
        lease_api.set_outage(None)
        lease_api.set_latency(1.0)
        began = time.monotonic()
        with pytest.raises(LockError):
            lock.get(timeout=0.2)
        assert time.monotonic() - began < 0.5, "the request timeout was not honoured"
    finally:
        lease_api.set_latency(0)
        lock.close()
        rival.close()


def test_exactly_one_leader_over_rounds_of_contention(cluster: Cluster, lease_api: LeaseApiServer) -> None:
    contention_rounds(cluster, graceful=8, kills=2)
    cluster.assert_one_leader_at_a_time()
    assert cluster.samples > 1000
    assert len(cluster.terms) >= 11
    stored = lease_api.lease(NAMESPACE, NAME)
    assert stored is not None
    assert stored["spec"]["leaseTransitions"] == max(t.epoch for t in cluster.terms)
    assert lease_api.request_count("POST") >= 1  # the three first candidates raced to create


def test_takeover_after_the_leader_is_killed(cluster: Cluster) -> None:
    check_takeover_after_kill(cluster)


def test_release_on_stop_hands_over_within_a_retry_period(
    cluster: Cluster, lease_api: LeaseApiServer
) -> None:
    check_graceful_handover(cluster)


@pytest.mark.parametrize("mode", ["503", "close", "hung"])
def test_api_outage_makes_the_leader_step_down(
    cluster: Cluster, lease_api: LeaseApiServer, mode: str
) -> None:
    def down() -> None:
        if mode == "hung":
            lease_api.set_latency(10 * LEASE)
        else:
            lease_api.set_outage(mode)  # type: ignore[arg-type]

    def up() -> None:
        lease_api.set_outage(None)
        lease_api.set_latency(0)

    check_outage_steps_down(cluster, down, up)


def test_a_deleted_lease_deposes_the_leader_and_epochs_keep_growing(
    cluster: Cluster, lease_api: LeaseApiServer
) -> None:
    cluster.add()
    cluster.add()
    leader = cluster.wait_for_leader(LEASE + SLACK)
    time.sleep(2 * RETRY)
    epoch = leader.epoch
    assert epoch is not None
    httpx.delete(
        f"{lease_api.url}/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{NAME}",
        headers={"Authorization": f"Bearer {lease_api.token}"},
    ).raise_for_status()
    # The leader notices at its next renewal and steps down; as the only replica that knows
    # its own lease is gone, it may recreate it at once, with the next epoch.
    wait_until(lambda: len(cluster.terms) >= 2, RETRY + SLACK, "a new term after the deletion")
    assert cluster.terms[0].epoch == epoch and cluster.terms[1].epoch == epoch + 1
    stored = lease_api.lease(NAMESPACE, NAME)
    assert stored is not None and stored["spec"]["leaseTransitions"] == epoch + 1
    cluster.assert_one_leader_at_a_time()
