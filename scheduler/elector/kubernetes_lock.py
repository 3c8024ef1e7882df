"""The ``kubernetes`` lock: a ``coordination.k8s.io/v1`` Lease through the official client.

Optimistic concurrency is the API server's: a replace carries the
``resourceVersion`` we last read or wrote, and a stale one is answered with
409 Conflict. Create answers 409 AlreadyExists when another replica was first.

Why the client is configured by hand rather than with ``load_kube_config()``:
that function mutates the process-wide default configuration, and its retry
policy (urllib3's default of 3 retries, each with its own timeout) could keep
a renewal busy well past the renew deadline. Here each lock owns an
``ApiClient`` with retries off, and every call passes ``_request_timeout``.

``leaseDurationSeconds`` is an integer in the API; the elector's duration is
rounded *up* (client-go truncates), so a standby never waits less than the
leader assumes.

``acquireTime``/``renewTime`` are ``MicroTime``, which the API server parses
with the fixed layout ``2006-01-02T15:04:05.000000Z07:00``: exactly six
fractional digits. The client serializes datetimes with ``isoformat()``,
which drops the fraction when the microseconds happen to be zero, and such a
renewal would be rejected (400) once in a million; :class:`_MicroTime`
always writes the six digits.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from scheduler.elector.record import LeaderElectionRecord, LockConflict, LockError, utc
from scheduler.safetext import first_line

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_KUBECONFIG = "~/.kube/config"


def in_cluster(environ: Mapping[str, str]) -> bool:
    """Running in a pod: the kubelet sets ``KUBERNETES_SERVICE_HOST`` in every container."""
    return bool(environ.get("KUBERNETES_SERVICE_HOST"))


def kubeconfig_path(environ: Mapping[str, str]) -> str:
    """``KUBECONFIG`` (may list several files, as kubectl allows), else ``~/.kube/config``."""
    return environ.get("KUBECONFIG") or os.path.expanduser(DEFAULT_KUBECONFIG)


def load_api_client(environ: Mapping[str, str]) -> tuple[k8s.ApiClient, str | None]:
    """An ``ApiClient`` for this process and the namespace its kubeconfig context names, if any.

    In a cluster: the service account's token and CA. Outside: the kubeconfig.
    """
    configuration = k8s.Configuration()
    context_namespace: str | None = None
    try:
        if in_cluster(environ):
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            path = kubeconfig_path(environ)
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=path, client_configuration=configuration, persist_config=False
            )
            _, active = k8s_config.list_kube_config_contexts(config_file=path)  # type: ignore[no-untyped-call]
            context_namespace = (active or {}).get("context", {}).get("namespace")
    except (ConfigException, OSError, TypeError, ValueError, yaml.YAMLError) as exc:
        # YAMLError: a kubeconfig that is not YAML was a traceback from `scheduler leader` and the worker.
        where = (
            "in-cluster service account" if in_cluster(environ) else f"kubeconfig {kubeconfig_path(environ)}"
        )
        reason = " ".join(str(exc).split())  # a YAML error's several lines, as one
        raise LockError(f"cannot configure the Kubernetes client from the {where}: {reason}") from exc
    # The elector retries on its own schedule; a retry inside the client would
    # stretch a renewal past its deadline.
    configuration.retries = False
    return k8s.ApiClient(configuration), context_namespace


def resolve_namespace(
    configured: str | None,
    *,
    context_namespace: str | None = None,
    service_account_file: Path = SERVICE_ACCOUNT_NAMESPACE,
) -> str:
    """``election.namespace`` (``POD_NAMESPACE``), else the service account's, else the
    kubeconfig context's, else ``default``."""
    if configured:
        return configured
    try:
        from_file = service_account_file.read_text(encoding="utf-8").strip()
    except OSError:
        from_file = ""
    return from_file or context_namespace or "default"


class KubernetesLeaseLock:
    """One Lease; keeps the last object it read or wrote so a replace preserves labels,
    annotations and owner references set by others (as client-go's LeaseLock does)."""

    backend = "kubernetes"

    def __init__(
        self,
        api_client: k8s.ApiClient,
        namespace: str,
        name: str,
        *,
        owns_client: bool = False,
    ) -> None:
        self._api_client = api_client
        self._api = k8s.CoordinationV1Api(api_client)
        self._namespace = namespace
        self._name = name
        self._owns_client = owns_client
        self._last: Any = None  # the V1Lease last seen

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def name(self) -> str:
        return self._name

    def describe(self) -> str:
        return f"kubernetes lease {self._namespace}/{self._name}"

    def close(self) -> None:
        if self._owns_client:
            self._api_client.close()  # type: ignore[no-untyped-call]

    def get(self, *, timeout: float) -> tuple[LeaderElectionRecord, str] | None:
        try:
            lease = self._api.read_namespaced_lease(self._name, self._namespace, _request_timeout=timeout)
        except ApiException as exc:
            if exc.status == 404:
                self._last = None
                return None
            raise LockError(self._explain("read", exc)) from exc
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise LockError(self._explain("read", exc)) from exc
        self._last = lease
        return _record(lease.spec), _version(lease)

    def create(self, record: LeaderElectionRecord, *, timeout: float) -> str:
        body = k8s.V1Lease(
            api_version="coordination.k8s.io/v1",
            kind="Lease",
            metadata=k8s.V1ObjectMeta(name=self._name, namespace=self._namespace),
            spec=_spec(record),
        )
        try:
            lease = self._api.create_namespaced_lease(self._namespace, body, _request_timeout=timeout)
        except ApiException as exc:
            if exc.status == 409:
                raise LockConflict(f"{self.describe()} already exists") from exc
            raise LockError(self._explain("create", exc)) from exc
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise LockError(self._explain("create", exc)) from exc
        self._last = lease
        return _version(lease)

    def update(self, record: LeaderElectionRecord, version: str, *, timeout: float) -> str:
        last = self._last
        if last is not None and _version(last) == version:
            metadata = last.metadata
        else:
            metadata = k8s.V1ObjectMeta(name=self._name, namespace=self._namespace, resource_version=version)
        body = k8s.V1Lease(
            api_version="coordination.k8s.io/v1", kind="Lease", metadata=metadata, spec=_spec(record)
        )
        try:
            lease = self._api.replace_namespaced_lease(
                self._name, self._namespace, body, _request_timeout=timeout
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                raise LockConflict(self._explain("replace", exc)) from exc
            raise LockError(self._explain("replace", exc)) from exc
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise LockError(self._explain("replace", exc)) from exc
        self._last = lease
        return _version(lease)

    def _explain(self, action: str, exc: Exception) -> str:
        host = self._api_client.configuration.host
        if isinstance(exc, ApiException):
            reason = _status_message(exc)
            return f"cannot {action} {self.describe()} at {host}: HTTP {exc.status} {reason}"
        return f"cannot {action} {self.describe()} at {host}: {first_line(exc)}"


class _MicroTime(datetime):
    """A datetime whose ``isoformat()`` always has six fractional digits (see the module docstring)."""

    def isoformat(self, sep: str = "T", timespec: str = "microseconds") -> str:
        return super().isoformat(sep, "microseconds")


def _micro(value: datetime | None) -> datetime | None:
    value = utc(value)
    if value is None:
        return None
    return _MicroTime(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        tzinfo=UTC,
    )


def _version(lease: Any) -> str:
    metadata = lease.metadata
    if metadata is None or not metadata.resource_version:
        raise LockError("the API server returned a Lease without metadata.resourceVersion")
    return str(metadata.resource_version)


def _spec(record: LeaderElectionRecord) -> k8s.V1LeaseSpec:
    return k8s.V1LeaseSpec(
        holder_identity=record.holder_identity,
        lease_duration_seconds=max(1, math.ceil(record.lease_duration_seconds)),
        acquire_time=_micro(record.acquire_time),
        renew_time=_micro(record.renew_time),
        lease_transitions=record.leader_transitions,
    )


def _record(spec: Any) -> LeaderElectionRecord:
    if spec is None:
        return LeaderElectionRecord("", 0.0, None, None, 0)
    return LeaderElectionRecord(
        holder_identity=spec.holder_identity or "",
        # Absent means 0, as in client-go: the lease is expired as soon as it is seen.
        lease_duration_seconds=float(spec.lease_duration_seconds or 0),
        acquire_time=utc(spec.acquire_time),
        renew_time=utc(spec.renew_time),
        leader_transitions=int(spec.lease_transitions or 0),
    )


def _status_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "")
        if isinstance(body, dict) and body.get("message"):
            return f"{body.get('reason', '')}: {body['message']}".strip(": ")
    except (TypeError, ValueError):
        pass
    return str(exc.reason or "")
