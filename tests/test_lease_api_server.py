"""The fake Lease API server keeps the real API server's contract (raw HTTP and the official client)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from scheduler.elector.kubernetes_lock import load_api_client
from tests.lease_api_server import (  # noqa: F401  (fixtures are used by name)
    LeaseApiServer,
    kubeconfig_fixture,
    lease_api_fixture,
)

NS = "team-a"
BASE = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
T0 = "2024-05-01T12:00:00.000000Z"


def lease(name: str = "lock", **spec: Any) -> dict[str, Any]:
    body_spec = {"holderIdentity": "a", "leaseDurationSeconds": 15, "renewTime": T0, "leaseTransitions": 0}
    body_spec.update(spec)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name},
        "spec": body_spec,
    }


@pytest.fixture
def http(lease_api: LeaseApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=lease_api.url, headers={"Authorization": f"Bearer {lease_api.token}"}, timeout=5
    ) as session:
        yield session


def assert_status(response: httpx.Response, code: int, reason: str) -> dict[str, Any]:
    assert response.status_code == code, response.text
    body: dict[str, Any] = response.json()
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["reason"] == reason
    assert body["code"] == code
    return body


def test_create_sets_server_fields_and_a_global_resource_version(
    http: httpx.Client, lease_api: LeaseApiServer
) -> None:
    first = http.post(BASE, json=lease("one"))
    assert first.status_code == 201
    meta = first.json()["metadata"]
    assert meta["namespace"] == NS and meta["uid"] and meta["creationTimestamp"].endswith("Z")
    other = http.post("/apis/coordination.k8s.io/v1/namespaces/team-b/leases", json=lease("two"))
    assert int(other.json()["metadata"]["resourceVersion"]) == int(meta["resourceVersion"]) + 1
    assert lease_api.resource_version == int(other.json()["metadata"]["resourceVersion"])

    got = http.get(f"{BASE}/one").json()
    assert got["spec"]["holderIdentity"] == "a" and got["kind"] == "Lease"
    listed = http.get(BASE).json()
    assert listed["kind"] == "LeaseList" and [i["metadata"]["name"] for i in listed["items"]] == ["one"]
    assert "kind" not in listed["items"][0]
    everywhere = http.get("/apis/coordination.k8s.io/v1/leases").json()
    assert len(everywhere["items"]) == 2
    assert everywhere["metadata"]["resourceVersion"] == str(lease_api.resource_version)


def test_create_conflicts_and_rejections(http: httpx.Client) -> None:
    assert http.post(BASE, json=lease()).status_code == 201
    body = assert_status(http.post(BASE, json=lease()), 409, "AlreadyExists")
    assert body["details"] == {"name": "lock", "group": "coordination.k8s.io", "kind": "leases"}
    assert body["message"] == 'leases.coordination.k8s.io "lock" already exists'

    with_version = lease("fresh")
    with_version["metadata"]["resourceVersion"] = "7"
    assert_status(http.post(BASE, json=with_version), 500, "InternalError")
    elsewhere = lease("x")
    elsewhere["metadata"]["namespace"] = "other"
    assert_status(http.post(BASE, json=elsewhere), 400, "BadRequest")
    generated = lease("")
    generated["metadata"] = {"generateName": "lock-"}
    name = http.post(BASE, json=generated).json()["metadata"]["name"]
    assert name.startswith("lock-") and len(name) == len("lock-") + 5
    assert_status(http.post(BASE, content=b"{not json"), 400, "BadRequest")
    assert_status(
        http.post(BASE, content=b"a: b", headers={"Content-Type": "application/yaml"}),
        415,
        "UnsupportedMediaType",
    )


def test_replace_needs_the_current_resource_version(http: httpx.Client) -> None:
    created = http.post(BASE, json=lease()).json()
    rv = created["metadata"]["resourceVersion"]

    body = lease(renewTime="2024-05-01T12:00:01.000000Z")
    body["metadata"]["resourceVersion"] = rv
    updated = http.put(f"{BASE}/lock", json=body)
    assert updated.status_code == 200
    assert int(updated.json()["metadata"]["resourceVersion"]) > int(rv)
    assert updated.json()["metadata"]["uid"] == created["metadata"]["uid"]
    assert updated.json()["metadata"]["creationTimestamp"] == created["metadata"]["creationTimestamp"]

    stale = assert_status(http.put(f"{BASE}/lock", json=body), 409, "Conflict")
    assert "the object has been modified" in stale["message"]
    missing_rv = assert_status(http.put(f"{BASE}/lock", json=lease()), 422, "Invalid")
    assert missing_rv["details"]["causes"][0]["field"] == "metadata.resourceVersion"
    absent = lease("absent")
    absent["metadata"]["resourceVersion"] = rv
    assert_status(http.put(f"{BASE}/absent", json=absent), 404, "NotFound")
    mismatch = assert_status(http.put(f"{BASE}/other", json=body), 400, "BadRequest")
    assert "does not match the name on the URL" in mismatch["message"]
    wrong_uid = lease()
    wrong_uid["metadata"].update(resourceVersion=updated.json()["metadata"]["resourceVersion"], uid="nope")
    assert (
        "Precondition failed: UID"
        in assert_status(http.put(f"{BASE}/lock", json=wrong_uid), 409, "Conflict")["message"]
    )


def test_an_update_that_changes_nothing_is_not_a_write(http: httpx.Client, lease_api: LeaseApiServer) -> None:
    created = http.post(BASE, json=lease()).json()
    before = lease_api.resource_version
    again = http.put(f"{BASE}/lock", json=created).json()
    assert again["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert lease_api.resource_version == before


@pytest.mark.parametrize(
    ("name", "spec", "field"),
    [
        ("lock", {"leaseDurationSeconds": 0}, "spec.leaseDurationSeconds"),
        ("lock", {"leaseDurationSeconds": -5}, "spec.leaseDurationSeconds"),
        ("lock", {"leaseTransitions": -1}, "spec.leaseTransitions"),
        ("Bad_Name", {}, "metadata.name"),
        ("-lock", {}, "metadata.name"),
        ("a" * 254, {}, "metadata.name"),
        ("lock", {"strategy": "Newest"}, "spec.strategy"),
        ("lock", {"preferredHolder": "b"}, "spec.preferredHolder"),
    ],
)
def test_invalid_specs_are_422_with_causes(
    http: httpx.Client, name: str, spec: dict[str, Any], field: str
) -> None:
    body = assert_status(http.post(BASE, json=lease(name, **spec)), 422, "Invalid")
    assert body["details"]["kind"] == "Lease"
    assert field in [cause["field"] for cause in body["details"]["causes"]]
    assert body["message"].startswith("Lease.coordination.k8s.io ")


def test_several_invalid_fields_are_reported_together(http: httpx.Client) -> None:
    body = assert_status(
        http.post(BASE, json=lease(leaseDurationSeconds=0, leaseTransitions=-1)), 422, "Invalid"
    )
    assert {c["field"] for c in body["details"]["causes"]} == {
        "spec.leaseDurationSeconds",
        "spec.leaseTransitions",
    }


@pytest.mark.parametrize(
    "change",
    [
        {"apiVersion": "v1"},
        {"kind": "ConfigMap"},
        {"spec": {"leaseDurationSeconds": "15"}},
        {"spec": {"leaseDurationSeconds": 2**31}},
        {"spec": {"leaseTransitions": True}},
        {"spec": {"renewTime": "2024-05-01T12:00:00Z"}},  # MicroTime needs six fractional digits
        {"spec": {"renewTime": "2024-05-01T12:00:00.123Z"}},
        {"spec": {"renewTime": "2024-05-01 12:00:00.000000"}},
        {"metadata": "lock"},
    ],
)
def test_undecodable_bodies_are_400(http: httpx.Client, change: dict[str, Any]) -> None:
    body = lease()
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    assert_status(http.post(BASE, json=body), 400, "BadRequest")


def test_microtime_is_normalised_to_utc(http: httpx.Client) -> None:
    created = http.post(BASE, json=lease(renewTime="2024-05-01T14:00:00.250000+02:00")).json()
    assert created["spec"]["renewTime"] == "2024-05-01T12:00:00.250000Z"


def test_unknown_fields_warn_by_default_and_fail_when_strict(http: httpx.Client) -> None:
    body = lease(surprise=1)
    warned = http.post(BASE, json=body)
    assert warned.status_code == 201
    assert 'unknown field \\"spec.surprise\\"' in warned.headers["Warning"]
    assert "surprise" not in warned.json()["spec"]
    strict = assert_status(
        http.post(f"{BASE}?fieldValidation=Strict", json=lease("other", surprise=1)), 400, "BadRequest"
    )
    assert 'unknown field "spec.surprise"' in strict["message"]


def test_patch_kinds(http: httpx.Client) -> None:
    rv0 = http.post(BASE, json=lease()).json()["metadata"]["resourceVersion"]
    merge = {"Content-Type": "application/merge-patch+json"}
    strategic = {"Content-Type": "application/strategic-merge-patch+json"}
    jsonpatch = {"Content-Type": "application/json-patch+json"}

    merged = http.patch(
        f"{BASE}/lock", json={"spec": {"holderIdentity": "b", "renewTime": None}}, headers=merge
    )
    assert merged.status_code == 200, merged.text
    assert merged.json()["spec"]["holderIdentity"] == "b" and "renewTime" not in merged.json()["spec"]
    rv1 = merged.json()["metadata"]["resourceVersion"]
    assert int(rv1) > int(rv0)

    meta = {"metadata": {"finalizers": ["x"], "labels": {"app": "s"}}}
    http.patch(f"{BASE}/lock", json=meta, headers=strategic).raise_for_status()
    grown = http.patch(f"{BASE}/lock", json={"metadata": {"finalizers": ["y"]}}, headers=strategic).json()
    assert grown["metadata"]["finalizers"] == ["x", "y"]  # merged as a set, not replaced
    shrunk = http.patch(
        f"{BASE}/lock", json={"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}, headers=strategic
    ).json()
    assert shrunk["metadata"]["finalizers"] == ["y"]
    replaced = http.patch(
        f"{BASE}/lock", json={"metadata": {"labels": {"$patch": "replace", "tier": "1"}}}, headers=strategic
    ).json()
    assert replaced["metadata"]["labels"] == {"tier": "1"}

    ops = [
        {"op": "test", "path": "/spec/holderIdentity", "value": "b"},
        {"op": "replace", "path": "/spec/holderIdentity", "value": "c"},
        {"op": "add", "path": "/spec/leaseTransitions", "value": 4},
    ]
    patched = http.patch(f"{BASE}/lock", json=ops, headers=jsonpatch).json()
    assert patched["spec"]["holderIdentity"] == "c" and patched["spec"]["leaseTransitions"] == 4
    failed = [{"op": "test", "path": "/spec/holderIdentity", "value": "zzz"}]
    assert_status(http.patch(f"{BASE}/lock", json=failed, headers=jsonpatch), 422, "Invalid")
    assert_status(http.patch(f"{BASE}/lock", json={"op": "add"}, headers=jsonpatch), 400, "BadRequest")

    stale = {"metadata": {"resourceVersion": rv1}, "spec": {"holderIdentity": "d"}}
    assert_status(http.patch(f"{BASE}/lock", json=stale, headers=merge), 409, "Conflict")
    current = http.get(f"{BASE}/lock").json()["metadata"]["resourceVersion"]
    fresh = {"metadata": {"resourceVersion": current}, "spec": {"holderIdentity": "d"}}
    assert http.patch(f"{BASE}/lock", json=fresh, headers=merge).json()["spec"]["holderIdentity"] == "d"

    invalid = {"spec": {"leaseDurationSeconds": 0}}
    assert_status(http.patch(f"{BASE}/lock", json=invalid, headers=merge), 422, "Invalid")
    rename = {"metadata": {"name": "other"}}
    assert_status(http.patch(f"{BASE}/lock", json=rename, headers=merge), 422, "Invalid")
    assert_status(http.patch(f"{BASE}/absent", json={}, headers=merge), 404, "NotFound")
    apply = {"Content-Type": "application/apply-patch+yaml"}
    assert_status(http.patch(f"{BASE}/lock", content=b"spec: {}", headers=apply), 415, "UnsupportedMediaType")


def test_delete_with_preconditions(http: httpx.Client, lease_api: LeaseApiServer) -> None:
    created = http.post(BASE, json=lease()).json()
    uid = created["metadata"]["uid"]
    wrong = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"resourceVersion": "999"}}
    assert_status(http.request("DELETE", f"{BASE}/lock", json=wrong), 409, "Conflict")
    before = lease_api.resource_version
    done = http.request("DELETE", f"{BASE}/lock", json={"preconditions": {"uid": uid}})
    assert done.status_code == 200
    assert done.json()["kind"] == "Status" and done.json()["status"] == "Success"
    assert done.json()["details"]["uid"] == uid
    assert lease_api.resource_version == before + 1
    assert_status(http.delete(f"{BASE}/lock"), 404, "NotFound")
    assert_status(http.get(f"{BASE}/lock"), 404, "NotFound")


def test_dry_run_writes_nothing(http: httpx.Client, lease_api: LeaseApiServer) -> None:
    before = lease_api.resource_version
    assert http.post(f"{BASE}?dryRun=All", json=lease()).status_code == 201
    assert lease_api.resource_version == before
    assert_status(http.get(f"{BASE}/lock"), 404, "NotFound")


def test_selectors(http: httpx.Client) -> None:
    for name, app in (("a1", "x"), ("a2", "y")):
        body = lease(name)
        body["metadata"]["labels"] = {"app": app}
        http.post(BASE, json=body).raise_for_status()
    assert [
        i["metadata"]["name"] for i in http.get(BASE, params={"labelSelector": "app=y"}).json()["items"]
    ] == ["a2"]
    assert len(http.get(BASE, params={"labelSelector": "app!=y"}).json()["items"]) == 1
    assert len(http.get(BASE, params={"fieldSelector": "metadata.name=a1"}).json()["items"]) == 1
    assert_status(http.get(BASE, params={"watch": "true"}), 400, "BadRequest")


def test_authentication_and_discovery(lease_api: LeaseApiServer, http: httpx.Client) -> None:
    anonymous = httpx.get(f"{lease_api.url}{BASE}")
    assert_status(anonymous, 401, "Unauthorized")
    assert httpx.get(f"{lease_api.url}/version").json()["major"] == "1"
    assert http.get("/api").json()["kind"] == "APIVersions"
    resources = http.get("/apis/coordination.k8s.io/v1").json()["resources"]
    assert resources[0]["name"] == "leases" and resources[0]["kind"] == "Lease"
    assert_status(http.get("/apis/apps/v1/deployments"), 404, "NotFound")
    assert_status(http.put(BASE, json=lease()), 405, "MethodNotAllowed")


def test_outage_latency_and_request_log(http: httpx.Client, lease_api: LeaseApiServer) -> None:
    lease_api.set_outage("503")
    assert_status(http.get(BASE), 503, "ServiceUnavailable")
    lease_api.set_outage("close")
    with pytest.raises(httpx.RemoteProtocolError):
        http.get(BASE)
    lease_api.set_outage(None)
    lease_api.set_latency(0.3)
    with pytest.raises(httpx.ReadTimeout):
        http.get(BASE, timeout=0.1)
    lease_api.set_latency(0)
    assert http.get(BASE).status_code == 200
    deadline = time.monotonic() + 2
    while lease_api.request_count(path_contains=BASE) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)  # the late answer is logged when its delay has passed
    statuses = [r.status for r in lease_api.requests if r.path == BASE]
    assert sorted(statuses) == [0, 200, 200, 503]  # dropped, late (client gone), normal, outage
    assert lease_api.request_count("GET", path_contains="/leases") == len(statuses)


def test_the_official_client_through_a_kubeconfig(kubeconfig: Path, lease_api: LeaseApiServer) -> None:
    api_client, namespace = load_api_client({"KUBECONFIG": str(kubeconfig)})
    assert namespace == "scheduler-test"
    api = k8s.CoordinationV1Api(api_client)
    try:
        body = k8s.V1Lease(
            metadata=k8s.V1ObjectMeta(name="lock"),
            spec=k8s.V1LeaseSpec(holder_identity="a", lease_duration_seconds=15, lease_transitions=0),
        )
        created = api.create_namespaced_lease(namespace, body)
        assert created.metadata.uid and created.spec.holder_identity == "a"
        with pytest.raises(ApiException) as exists:
            api.create_namespaced_lease(namespace, body)
        assert exists.value.status == 409

        created.spec.holder_identity = "b"
        replaced = api.replace_namespaced_lease("lock", namespace, created)
        assert replaced.spec.holder_identity == "b"
        with pytest.raises(ApiException) as stale:
            created.spec.holder_identity = "c"
            api.replace_namespaced_lease("lock", namespace, created)
        assert stale.value.status == 409

        patched = api.patch_namespaced_lease("lock", namespace, {"spec": {"leaseTransitions": 3}})
        assert patched.spec.lease_transitions == 3
        assert [i.metadata.name for i in api.list_namespaced_lease(namespace).items] == ["lock"]
        api.delete_namespaced_lease("lock", namespace)
        with pytest.raises(ApiException) as gone:
            api.read_namespaced_lease("lock", namespace)
        assert gone.value.status == 404
    finally:
        api_client.close()
    assert lease_api.request_count("PUT") == 2
