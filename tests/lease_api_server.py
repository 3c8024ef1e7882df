"""A strict fake Kubernetes API server for ``coordination.k8s.io/v1`` Leases, over real HTTP.

Why hand-written: no Kubernetes API server can run on the test machines, and
no library serves the coordination API without one (the client libraries'
own fakes replace the HTTP layer, so they would not test our client
configuration, timeouts, serialization or error mapping). This server speaks
the same HTTP and JSON as a real API server for the one resource the elector
uses, so the official ``kubernetes`` client runs unmodified against it,
configured through a kubeconfig like any cluster.

What it does like the real server (kube-apiserver 1.30 semantics):

* ``/apis/coordination.k8s.io/v1/namespaces/{ns}/leases[/{name}]`` with GET
  (one and list), POST, PUT, PATCH and DELETE (one and collection), plus the
  cluster-wide list ``/apis/coordination.k8s.io/v1/leases`` and the discovery
  documents (``/version``, ``/api``, ``/apis``, the group and the resource list).
* ``resourceVersion`` is one counter for the whole "cluster", bumped by every
  write (create, update, patch, delete); an update that changes nothing is not
  a write and keeps the version, as in the real registry.
* Optimistic concurrency: PUT needs ``metadata.resourceVersion`` (422 "must be
  specified for an update" without one: Leases do not allow unconditional
  updates) and a stale one is 409 Conflict; PATCH honours a
  ``metadata.resourceVersion`` (and ``uid``) in the patch as a precondition;
  DELETE honours ``preconditions`` in DeleteOptions. PUT never creates (404).
* POST: 409 AlreadyExists; ``generateName``; a ``resourceVersion`` in the body
  is an internal error (500) as in the storage layer; uid and
  creationTimestamp are set by the server and kept on update.
* Errors are ``Status`` objects (``kind: Status``, ``apiVersion: v1``,
  ``status: Failure``, ``reason``, ``details``, ``code``): BadRequest (400)
  for undecodable bodies, wrong apiVersion/kind, name or namespace not matching
  the URL; Invalid (422) with ``causes`` for what validation rejects:
  leaseDurationSeconds <= 0, leaseTransitions < 0, a name that is not a DNS
  subdomain, missing name, unsupported strategy, preferredHolder without
  strategy, immutable metadata changed by a patch.
* Decoding is Go-strict: ints must be JSON integers within int32, booleans
  are not numbers, and ``acquireTime``/``renewTime`` are ``MicroTime``:
  RFC 3339 with *exactly six* fractional digits (Go parses the layout
  ``2006-01-02T15:04:05.000000Z07:00`` strictly; a client that drops the
  fraction when the microseconds are zero is rejected, as a real server would).
* Unknown fields: a ``Warning`` header (fieldValidation=Warn, the default),
  400 with ``?fieldValidation=Strict``, silently dropped with ``Ignore``.
* PATCH: ``application/merge-patch+json`` (RFC 7386),
  ``application/strategic-merge-patch+json`` (maps merge; ``$patch:
  replace/delete``; ``finalizers`` merge as a set with
  ``$deleteFromPrimitiveList``; ``ownerReferences`` merge by ``uid``) and
  ``application/json-patch+json`` (RFC 6902, a failed ``test`` is 422).
* ``?dryRun=All`` validates without writing. Bearer-token authentication on
  every resource path (401 Unauthorized otherwise).

Where it differs from a real API server (and so what these tests cannot show):

* Leases only; no other resources, no watch (``?watch=true`` is 400), no
  ``limit``/``continue`` paging, no ``resourceVersion``/``resourceVersionMatch``
  semantics on reads (always the latest), no protobuf, no YAML bodies.
* No server-side apply (``application/apply-patch+yaml`` is 415), no field
  managers (``managedFields`` is dropped), no admission (no namespace
  lifecycle: every namespace exists), no RBAC or authorization (any holder of
  the token may do anything), no audit, no priority and fairness or 429s.
* Finalizers and owner references are stored but have no effect: DELETE
  removes the object at once (no graceful deletion, no garbage collector).
* Label selectors: equality (``=``, ``==``, ``!=``) and existence (``k``,
  ``!k``) only; field selectors: ``metadata.name`` and ``metadata.namespace``.
* Label keys and values and annotation sizes are not validated.
* Leases' coordinated-election fields (strategy, preferredHolder) are
  validated but no controller acts on them.
* Error messages follow the real wording for the cases above; others are
  close but not verbatim.
* Test switches a real server lacks: :meth:`LeaseApiServer.set_outage`
  (answer 503, or close the connection without an answer),
  :meth:`LeaseApiServer.set_latency`, and a request log.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import pytest

GROUP = "coordination.k8s.io"
VERSION = "v1"
GROUP_VERSION = f"{GROUP}/{VERSION}"
RESOURCE = "leases"
KIND = "Lease"
INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)
MICROTIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
GENERATE_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
SUPPORTED_STRATEGIES = ("OldestEmulationVersion",)
SPEC_FIELDS = {
    "holderIdentity": "string",
    "leaseDurationSeconds": "int32",
    "acquireTime": "microtime",
    "renewTime": "microtime",
    "leaseTransitions": "int32",
    "strategy": "string",
    "preferredHolder": "string",
}
METADATA_FIELDS = {
    "name": "string",
    "generateName": "string",
    "namespace": "string",
    "selfLink": "string",
    "uid": "string",
    "resourceVersion": "string",
    "generation": "int64",
    "creationTimestamp": "time",
    "deletionTimestamp": "time",
    "deletionGracePeriodSeconds": "int64",
    "labels": "stringmap",
    "annotations": "stringmap",
    "ownerReferences": "list",
    "finalizers": "stringlist",
    "managedFields": "list",
}
REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    415: "UnsupportedMediaType",
    422: "Invalid",
    500: "InternalError",
    503: "ServiceUnavailable",
}
OutageMode = Literal["503", "close"]


class ApiError(Exception):
    """An error answer: turned into a ``Status`` object by the handler."""

    def __init__(
        self, code: int, message: str, *, reason: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason or REASONS.get(code, "Unknown")
        self.message = message
        self.details = details


@dataclass(frozen=True)
class RequestRecord:
    """One request the server answered (or dropped, status 0), for assertions in tests."""

    method: str
    path: str
    query: str
    status: int
    content_type: str
    started: float
    duration: float


def failure_status(exc: ApiError) -> dict[str, Any]:
    status: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": exc.message,
        "reason": exc.reason,
        "code": exc.code,
    }
    if exc.details is not None:
        status["details"] = exc.details
    return status


def _details(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "group": GROUP, "kind": RESOURCE, **extra}


def not_found(name: str) -> ApiError:
    return ApiError(404, f'{RESOURCE}.{GROUP} "{name}" not found', details=_details(name))


def already_exists(name: str) -> ApiError:
    return ApiError(
        409, f'{RESOURCE}.{GROUP} "{name}" already exists', reason="AlreadyExists", details=_details(name)
    )


def conflict(name: str, why: str) -> ApiError:
    return ApiError(
        409, f'Operation cannot be fulfilled on {RESOURCE}.{GROUP} "{name}": {why}', details=_details(name)
    )


STALE = "the object has been modified; please apply your changes to the latest version and try again"


def invalid(name: str, causes: list[dict[str, str]]) -> ApiError:
    parts = [f"{c['field']}: {c['message']}" for c in causes]
    summary = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    return ApiError(
        422,
        f'{KIND}.{GROUP} "{name}" is invalid: {summary}',
        details={"name": name, "group": GROUP, "kind": KIND, "causes": causes},
    )


def _go_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


def cause_invalid(field: str, value: Any, detail: str) -> dict[str, str]:
    return {
        "reason": "FieldValueInvalid",
        "message": f"Invalid value: {_go_value(value)}: {detail}",
        "field": field,
    }


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# -- decoding: the JSON a client sent, checked like Go's decoder, into canonical form ----------


class _Decoder:
    def __init__(self, field_validation: str) -> None:
        self.field_validation = field_validation
        self.warnings: list[str] = []

    def unknown(self, path: str) -> None:
        if self.field_validation == "Strict":
            raise ApiError(400, f'strict decoding error: unknown field "{path}"')
        if self.field_validation != "Ignore":
            self.warnings.append(f'unknown field "{path}"')

    def typed(self, path: str, value: Any, kind: str) -> Any:
        def bad(go_type: str) -> ApiError:
            got = {dict: "object", list: "array", str: "string", bool: "bool"}.get(type(value), "number")
            return ApiError(
                400,
                f'{KIND} in version "{VERSION}" cannot be handled as a {KIND}: json: cannot unmarshal '
                f"{got} into Go struct field {path} of type {go_type}",
            )

        if kind == "string":
            if not isinstance(value, str):
                raise bad("string")
            return value
        if kind in ("int32", "int64"):
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise bad(kind)
            if kind == "int32" and not INT32_MIN <= value <= INT32_MAX:
                raise bad(kind)
            return value
        if kind == "microtime":
            if not isinstance(value, str):
                raise bad("v1.MicroTime")
            if not MICROTIME.match(value):
                raise ApiError(
                    400,
                    f'{KIND} in version "{VERSION}" cannot be handled as a {KIND}: parsing time '
                    f'"{value}" as "2006-01-02T15:04:05.000000Z07:00": cannot parse as RFC 3339 with '
                    "microseconds",
                )
            return _parse_time(value).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if kind == "time":
            if not isinstance(value, str) or not RFC3339.match(value):
                raise bad("v1.Time")
            return _parse_time(value).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if kind == "stringmap":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise bad("map[string]string")
            return dict(value)
        if kind == "stringlist":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise bad("[]string")
            return list(value)
        if kind == "list":
            if not isinstance(value, list):
                raise bad("[]object")
            return copy.deepcopy(value)
        raise AssertionError(kind)

    def lease(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, f"json: cannot unmarshal {type(body).__name__} into Go value of type struct")
        api_version = body.get("apiVersion")
        kind = body.get("kind")
        if api_version not in (None, "") and api_version != GROUP_VERSION:
            raise ApiError(
                400,
                f"the API version in the data ({api_version}) does not match the expected API version "
                f"({GROUP_VERSION})",
            )
        if kind not in (None, "") and kind != KIND:
            raise ApiError(400, f'no kind "{kind}" is registered for version "{GROUP_VERSION}"')
        for key in body:
            if key not in ("apiVersion", "kind", "metadata", "spec"):
                self.unknown(key)
        metadata: dict[str, Any] = {}
        raw_meta = body.get("metadata")
        if raw_meta is not None:
            if not isinstance(raw_meta, dict):
                raise self_bad("metadata", raw_meta)
            for key, value in raw_meta.items():
                if key not in METADATA_FIELDS:
                    self.unknown(f"metadata.{key}")
                elif value is not None:
                    metadata[key] = self.typed(f".metadata.{key}", value, METADATA_FIELDS[key])
        spec: dict[str, Any] = {}
        raw_spec = body.get("spec")
        if raw_spec is not None:
            if not isinstance(raw_spec, dict):
                raise self_bad("spec", raw_spec)
            for key, value in raw_spec.items():
                if key not in SPEC_FIELDS:
                    self.unknown(f"spec.{key}")
                elif value is not None:
                    spec[key] = self.typed(f"LeaseSpec.spec.{key}", value, SPEC_FIELDS[key])
        metadata.pop("managedFields", None)
        metadata.pop("selfLink", None)
        return {"apiVersion": GROUP_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}


def self_bad(field: str, value: Any) -> ApiError:
    return ApiError(
        400,
        f'{KIND} in version "{VERSION}" cannot be handled as a {KIND}: json: cannot unmarshal '
        f"{type(value).__name__} into Go struct field {KIND}.{field} of type object",
    )


def validate(lease: dict[str, Any]) -> None:
    """The checks of ValidateLease (422 Invalid), all collected as in the real server."""
    meta = lease["metadata"]
    spec = lease["spec"]
    name = meta.get("name", "")
    causes: list[dict[str, str]] = []
    if not name:
        causes.append(
            {
                "reason": "FieldValueRequired",
                "message": "Required value: name or generateName is required",
                "field": "metadata.name",
            }
        )
    else:
        if len(name) > 253:
            causes.append(cause_invalid("metadata.name", name, "must be no more than 253 characters"))
        if not DNS1123_SUBDOMAIN.match(name):
            causes.append(cause_invalid("metadata.name", name, DNS1123_SUBDOMAIN_MSG))
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and duration <= 0:
        causes.append(cause_invalid("spec.leaseDurationSeconds", duration, "must be greater than 0"))
    transitions = spec.get("leaseTransitions")
    if transitions is not None and transitions < 0:
        causes.append(
            cause_invalid("spec.leaseTransitions", transitions, "must be greater than or equal to 0")
        )
    strategy = spec.get("strategy")
    if strategy is not None and strategy not in SUPPORTED_STRATEGIES:
        supported = ", ".join(json.dumps(s) for s in SUPPORTED_STRATEGIES)
        causes.append(
            {
                "reason": "FieldValueNotSupported",
                "message": f"Unsupported value: {json.dumps(strategy)}: supported values: {supported}",
                "field": "spec.strategy",
            }
        )
    if spec.get("preferredHolder") and not strategy:
        causes.append(
            {
                "reason": "FieldValueForbidden",
                "message": "Forbidden: may only be specified if `strategy` is defined",
                "field": "spec.preferredHolder",
            }
        )
    if causes:
        raise invalid(name or meta.get("generateName", ""), causes)


# -- patches ------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    """Strategic merge patch for the fields a Lease has (see the module docstring)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    if directive not in (None, "merge"):
        raise ApiError(400, f"unknown patch type: {directive}")
    result = dict(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            current = result.get(field) or []
            result[field] = [item for item in current if item not in (value or [])]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value, (*path, key))
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list) and path == ("metadata",) and key == "finalizers":
            current = list(result.get(key) or [])
            result[key] = current + [item for item in value if item not in current]
        elif isinstance(value, list) and path == ("metadata",) and key == "ownerReferences":
            result[key] = _merge_by_key(list(result.get(key) or []), value, "uid")
        else:
            result[key] = copy.deepcopy(value)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_by_key(current: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    merged = [copy.deepcopy(item) for item in current]
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise ApiError(400, f"map: {item} does not contain declared merge key: {merge_key}")
        index = next((i for i, c in enumerate(merged) if c.get(merge_key) == item[merge_key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                merged.pop(index)
        elif index is None:
            merged.append(copy.deepcopy(item))
        else:
            merged[index] = strategic_merge_patch(merged[index], item)
    return merged


def json_patch(document: Any, operations: Any) -> Any:
    """RFC 6902. Malformed patches are 400; operations that cannot apply are 422 (as kube-apiserver)."""
    if not isinstance(operations, list):
        raise ApiError(400, "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(document)
    for op in operations:
        if (
            not isinstance(op, dict)
            or not isinstance(op.get("op"), str)
            or not isinstance(op.get("path"), str)
        ):
            raise ApiError(400, f"invalid JSON patch operation: {json.dumps(op)}")
        kind = op["op"]
        try:
            if kind == "add":
                doc = _pointer_add(doc, op["path"], copy.deepcopy(op["value"]))
            elif kind == "remove":
                doc, _ = _pointer_remove(doc, op["path"])
            elif kind == "replace":
                _pointer_get(doc, op["path"])
                doc, _ = _pointer_remove(doc, op["path"])
                doc = _pointer_add(doc, op["path"], copy.deepcopy(op["value"]))
            elif kind == "move":
                doc, value = _pointer_remove(doc, op["from"])
                doc = _pointer_add(doc, op["path"], value)
            elif kind == "copy":
                doc = _pointer_add(doc, op["path"], copy.deepcopy(_pointer_get(doc, op["from"])))
            elif kind == "test":
                if _pointer_get(doc, op["path"]) != op["value"]:
                    raise ApiError(422, f"testing value {op['path']} failed: test failed")
            else:
                raise ApiError(400, f"Unexpected kind: {kind}")
        except KeyError as exc:
            raise ApiError(400, f"invalid JSON patch operation {kind}: missing {exc}") from None
        except _PointerError as exc:
            raise ApiError(422, f"{kind} operation does not apply: {exc}") from None
    return doc


class _PointerError(Exception):
    pass


def _tokens(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise _PointerError(f"invalid pointer {pointer!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _index(container: list[Any], token: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise _PointerError(f"invalid array index {token!r}")
    index = int(token)
    if index > len(container) or (index == len(container) and not allow_end):
        raise _PointerError(f"array index {index} out of bounds")
    return index


def _walk(doc: Any, tokens: list[str]) -> Any:
    node = doc
    for token in tokens:
        if isinstance(node, dict):
            if token not in node:
                raise _PointerError(f"path member {token!r} does not exist")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, allow_end=False)]
        else:
            raise _PointerError(f"cannot descend into {token!r}")
    return node


def _pointer_get(doc: Any, pointer: str) -> Any:
    return _walk(doc, _tokens(pointer))


def _pointer_add(doc: Any, pointer: str, value: Any) -> Any:
    tokens = _tokens(pointer)
    if not tokens:
        return value
    parent = _walk(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, allow_end=True), value)
    else:
        raise _PointerError(f"cannot add to {pointer!r}")
    return doc


def _pointer_remove(doc: Any, pointer: str) -> tuple[Any, Any]:
    tokens = _tokens(pointer)
    if not tokens:
        raise _PointerError("cannot remove the whole document")
    parent = _walk(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise _PointerError(f"path member {last!r} does not exist")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, last, allow_end=False))
    raise _PointerError(f"cannot remove {pointer!r}")


# -- selectors ----------------------------------------------------------------------------------


def _label_requirement(raw: str) -> Any:
    if "!=" in raw:
        key, value = (s.strip() for s in raw.split("!=", 1))
        return lambda labels: labels.get(key) != value
    if "=" in raw:
        key, value = (s.strip() for s in re.split("==|=", raw, maxsplit=1))
        return lambda labels: labels.get(key) == value
    if raw.startswith("!"):
        key = raw[1:].strip()
        return lambda labels: key not in labels
    if re.fullmatch(r"[A-Za-z0-9./_-]+", raw):
        return lambda labels: raw in labels
    raise ApiError(400, f"unable to parse requirement: {raw!r} (this fake supports =, ==, !=, k, !k)")


def _label_matcher(selector: str) -> Any:
    requirements = [_label_requirement(raw) for raw in filter(None, (p.strip() for p in selector.split(",")))]
    return lambda labels: all(req(labels) for req in requirements)


def _field_matcher(selector: str) -> Any:
    requirements = []
    for raw in filter(None, (part.strip() for part in selector.split(","))):
        negate = "!=" in raw
        key, value = (s.strip() for s in re.split("!=|==|=", raw, maxsplit=1))
        if key not in ("metadata.name", "metadata.namespace"):
            raise ApiError(400, f'field label not supported: "{key}"')
        field = key.split(".", 1)[1]
        requirements.append(lambda meta, f=field, v=value, n=negate: (meta.get(f) == v) != n)
    return lambda meta: all(req(meta) for req in requirements)


# -- the server ---------------------------------------------------------------------------------


class LeaseApiServer:
    """The fake API server; start with ``with LeaseApiServer() as api:`` or :meth:`start`."""

    def __init__(self, *, token: str | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.token = token or secrets.token_hex(16)
        self._data_lock = threading.Lock()
        self._leases: dict[tuple[str, str], dict[str, Any]] = {}
        self._resource_version = 0
        self._outage: OutageMode | None = None
        self._latency = 0.0
        self._log: list[RequestRecord] = []
        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.api = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    # lifecycle

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LeaseApiServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="lease-api", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> LeaseApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path, *, namespace: str | None = None) -> Path:
        """A kubeconfig for this server: plain http, bearer token, optional context namespace."""
        context: dict[str, Any] = {"cluster": "fake", "user": "fake"}
        if namespace:
            context["namespace"] = namespace
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": context}],
            "current-context": "fake",
            "preferences": {},
        }
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")  # JSON is valid YAML
        return path

    # switches for tests

    def set_outage(self, mode: OutageMode | None) -> None:
        """``"503"``: answer every request 503; ``"close"``: drop the connection unanswered; None: heal."""
        self._outage = mode

    def set_latency(self, seconds: float) -> None:
        """Delay every answer by ``seconds`` (before it is processed)."""
        self._latency = seconds

    @property
    def requests(self) -> list[RequestRecord]:
        with self._data_lock:
            return list(self._log)

    def request_count(self, method: str | None = None, *, path_contains: str = "") -> int:
        return sum(
            1 for r in self.requests if (method is None or r.method == method) and path_contains in r.path
        )

    def clear_log(self) -> None:
        with self._data_lock:
            self._log.clear()

    # direct access for assertions

    @property
    def resource_version(self) -> int:
        with self._data_lock:
            return self._resource_version

    def lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._data_lock:
            found = self._leases.get((namespace, name))
            return copy.deepcopy(found) if found else None

    # request handling (called from handler threads)

    def _record(self, record: RequestRecord) -> None:
        with self._data_lock:
            self._log.append(record)

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: bytes
    ) -> tuple[int, Any, list[str]]:
        """Returns (status, JSON document or text, warnings); raises ApiError for failures."""
        if path in ("/healthz", "/livez", "/readyz"):
            return 200, "ok", []
        if path == "/version":
            return 200, self._version(), []
        if headers.get("Authorization", "") != f"Bearer {self.token}":
            raise ApiError(401, "Unauthorized")
        if path == "/api":
            return 200, self._api_versions(), []
        if path == "/apis":
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [self._group()]}, []
        if path == f"/apis/{GROUP}":
            return 200, {"kind": "APIGroup", "apiVersion": "v1", **self._group()}, []
        if path == f"/apis/{GROUP_VERSION}":
            return 200, self._resource_list(), []
        dry_run = self._dry_run(query)
        if path == f"/apis/{GROUP_VERSION}/{RESOURCE}":
            if method != "GET":
                raise ApiError(405, "the server does not allow this method on the requested resource")
            return 200, self._list(None, query), []
        match = re.fullmatch(
            rf"/apis/{re.escape(GROUP_VERSION)}/namespaces/([^/]+)/{RESOURCE}(?:/([^/]+))?", path
        )
        if not match:
            raise ApiError(404, "the server could not find the requested resource", details={})
        namespace, name = match.group(1), match.group(2)
        field_validation = (query.get("fieldValidation") or ["Warn"])[0]
        if field_validation not in ("Ignore", "Warn", "Strict"):
            raise ApiError(
                400, f"fieldValidation must be one of Ignore, Warn, Strict, got {field_validation}"
            )
        decoder = _Decoder(field_validation)
        if name is None:
            if method == "GET":
                return 200, self._list(namespace, query), []
            if method == "POST":
                _require_json(headers)
                created = self._create(namespace, decoder.lease(_json(body)), dry_run)
                return 201, created, decoder.warnings
            if method == "DELETE":
                return 200, self._delete_collection(namespace, query, dry_run), []
            raise ApiError(405, "the server does not allow this method on the requested resource")
        if method == "GET":
            with self._data_lock:
                found = self._leases.get((namespace, name))
                if found is None:
                    raise not_found(name)
                return 200, copy.deepcopy(found), []
        if method == "PUT":
            _require_json(headers)
            replaced = self._replace(namespace, name, decoder.lease(_json(body)), dry_run)
            return 200, replaced, decoder.warnings
        if method == "PATCH":
            content_type = headers.get("Content-Type", "").split(";")[0].strip()
            return 200, self._patch(namespace, name, content_type, body, decoder, dry_run), decoder.warnings
        if method == "DELETE":
            return 200, self._delete(namespace, name, body, dry_run), []
        raise ApiError(405, "the server does not allow this method on the requested resource")

    @staticmethod
    def _dry_run(query: dict[str, list[str]]) -> bool:
        values = query.get("dryRun", [])
        for value in values:
            if value != "All":
                raise ApiError(400, f'dryRun: Unsupported value: "{value}": supported values: "All"')
        return bool(values)

    def _bump(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    def _check_namespace(self, lease: dict[str, Any], namespace: str) -> None:
        given = lease["metadata"].get("namespace")
        if given and given != namespace:
            raise ApiError(
                400, "the namespace of the provided object does not match the namespace sent on the request"
            )
        lease["metadata"]["namespace"] = namespace

    def _create(self, namespace: str, lease: dict[str, Any], dry_run: bool) -> dict[str, Any]:
        meta = lease["metadata"]
        self._check_namespace(lease, namespace)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(
                secrets.choice(GENERATE_NAME_ALPHABET) for _ in range(5)
            )
        validate(lease)
        if meta.get("resourceVersion"):
            raise ApiError(
                500, "Internal error occurred: resourceVersion should not be set on objects to be created"
            )
        with self._data_lock:
            key = (namespace, meta["name"])
            if key in self._leases:
                raise already_exists(meta["name"])
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            meta.pop("deletionTimestamp", None)
            meta.pop("deletionGracePeriodSeconds", None)
            meta.pop("generation", None)
            if dry_run:
                meta["resourceVersion"] = ""
                return copy.deepcopy(lease)
            meta["resourceVersion"] = self._bump()
            self._leases[key] = lease
            return copy.deepcopy(lease)

    def _replace(self, namespace: str, name: str, lease: dict[str, Any], dry_run: bool) -> dict[str, Any]:
        meta = lease["metadata"]
        if meta.get("name") != name:
            raise ApiError(
                400,
                f"the name of the object ({meta.get('name', '')}) does not match "
                f"the name on the URL ({name})",
            )
        self._check_namespace(lease, namespace)
        with self._data_lock:
            current = self._leases.get((namespace, name))
            if current is None:
                raise not_found(name)
            return self._update(current, lease, dry_run)

    def _update(self, current: dict[str, Any], lease: dict[str, Any], dry_run: bool) -> dict[str, Any]:
        """The registry's Update with the data lock held: preconditions, validation, no-op check."""
        meta = lease["metadata"]
        old = current["metadata"]
        name = old["name"]
        uid = meta.get("uid")
        if uid and uid != old["uid"]:
            raise conflict(
                name, f"Precondition failed: UID in precondition: {uid}, UID in object meta: {old['uid']}"
            )
        version = meta.get("resourceVersion")
        if not version:
            raise invalid(
                name, [cause_invalid("metadata.resourceVersion", 0, "must be specified for an update")]
            )
        if not version.isdigit():
            raise ApiError(400, f"invalid resourceVersion {json.dumps(version)}: must be an unsigned integer")
        if version != old["resourceVersion"]:
            raise conflict(name, STALE)
        meta["uid"] = old["uid"]
        meta["creationTimestamp"] = old["creationTimestamp"]
        for key in ("deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
            meta.pop(key, None)
            if key in old:
                meta[key] = old[key]
        validate(lease)
        if lease == current:
            return copy.deepcopy(current)  # a no-op update is not a write
        if dry_run:
            return copy.deepcopy(lease)
        meta["resourceVersion"] = self._bump()
        self._leases[(old["namespace"], name)] = lease
        return copy.deepcopy(lease)

    def _patch(
        self, namespace: str, name: str, content_type: str, body: bytes, decoder: _Decoder, dry_run: bool
    ) -> dict[str, Any]:
        if content_type == "application/apply-patch+yaml":
            raise ApiError(415, "server-side apply is not supported by this fake API server")
        if content_type not in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/json-patch+json",
        ):
            raise ApiError(
                415,
                f"the body of the request was in an unknown format - accepted media types include: "
                f"application/json-patch+json, application/merge-patch+json, "
                f"application/apply-patch+yaml, application/strategic-merge-patch+json "
                f'(got "{content_type}")',
            )
        patch = _json(body)
        with self._data_lock:
            current = self._leases.get((namespace, name))
            if current is None:
                raise not_found(name)
            document = copy.deepcopy(current)
            if content_type == "application/merge-patch+json":
                if not isinstance(patch, dict):
                    raise ApiError(400, "merge patch must be a JSON object")
                patched = merge_patch(document, patch)
            elif content_type == "application/strategic-merge-patch+json":
                if not isinstance(patch, dict):
                    raise ApiError(400, "strategic merge patch must be a JSON object")
                patched = strategic_merge_patch(document, patch)
            else:
                patched = json_patch(document, patch)
            lease = decoder.lease(patched)
            meta = lease["metadata"]
            if meta.get("name") != name:
                raise invalid(
                    name, [cause_invalid("metadata.name", meta.get("name", ""), "field is immutable")]
                )
            self._check_namespace(lease, namespace)
            if not meta.get("resourceVersion"):
                meta["resourceVersion"] = current["metadata"]["resourceVersion"]
            return self._update(current, lease, dry_run)

    def _delete(self, namespace: str, name: str, body: bytes, dry_run: bool) -> dict[str, Any]:
        options = _json(body) if body.strip() else {}
        if not isinstance(options, dict):
            raise ApiError(400, "DeleteOptions must be a JSON object")
        preconditions = options.get("preconditions") or {}
        with self._data_lock:
            current = self._leases.get((namespace, name))
            if current is None:
                raise not_found(name)
            meta = current["metadata"]
            uid = preconditions.get("uid")
            if uid and uid != meta["uid"]:
                raise conflict(
                    name,
                    f"Precondition failed: UID in precondition: {uid}, UID in object meta: {meta['uid']}",
                )
            version = preconditions.get("resourceVersion")
            if version and version != meta["resourceVersion"]:
                raise conflict(
                    name,
                    f"Precondition failed: ResourceVersion in precondition: {version}, "
                    f"ResourceVersion in object meta: {meta['resourceVersion']}",
                )
            if not dry_run:
                del self._leases[(namespace, name)]
                self._bump()
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": _details(name, uid=meta["uid"]),
        }

    def _selected(
        self, namespace: str | None, query: dict[str, list[str]]
    ) -> list[tuple[tuple[str, str], dict[str, Any]]]:
        if query.get("watch", ["false"])[0] in ("true", "1"):
            raise ApiError(400, "watch is not supported by this fake API server")
        labels = _label_matcher((query.get("labelSelector") or [""])[0])
        fields = _field_matcher((query.get("fieldSelector") or [""])[0])
        return [
            (key, lease)
            for key, lease in sorted(self._leases.items())
            if (namespace is None or key[0] == namespace)
            and labels(lease["metadata"].get("labels", {}))
            and fields(lease["metadata"])
        ]

    def _list(self, namespace: str | None, query: dict[str, list[str]]) -> dict[str, Any]:
        with self._data_lock:
            items = [copy.deepcopy(lease) for _, lease in self._selected(namespace, query)]
            version = str(self._resource_version)
        for item in items:  # list items carry no apiVersion/kind, as from the real server
            item.pop("apiVersion", None)
            item.pop("kind", None)
        return {
            "kind": "LeaseList",
            "apiVersion": GROUP_VERSION,
            "metadata": {"resourceVersion": version},
            "items": items,
        }

    def _delete_collection(
        self, namespace: str, query: dict[str, list[str]], dry_run: bool
    ) -> dict[str, Any]:
        with self._data_lock:
            selected = self._selected(namespace, query)
            items = [copy.deepcopy(lease) for _, lease in selected]
            if not dry_run:
                for key, _ in selected:
                    del self._leases[key]
                    self._bump()
            version = str(self._resource_version)
        return {
            "kind": "LeaseList",
            "apiVersion": GROUP_VERSION,
            "metadata": {"resourceVersion": version},
            "items": items,
        }

    def _version(self) -> dict[str, Any]:
        return {
            "major": "1",
            "minor": "30",
            "gitVersion": "v1.30.0-lease-api-fake",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2024-04-17T00:00:00Z",
            "goVersion": "go1.22.2",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    def _api_versions(self) -> dict[str, Any]:
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}
            ],
        }

    @staticmethod
    def _group() -> dict[str, Any]:
        version = {"groupVersion": GROUP_VERSION, "version": VERSION}
        return {"name": GROUP, "versions": [version], "preferredVersion": version}

    @staticmethod
    def _resource_list() -> dict[str, Any]:
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": GROUP_VERSION,
            "resources": [
                {
                    "name": RESOURCE,
                    "singularName": "lease",
                    "namespaced": True,
                    "kind": KIND,
                    "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update"],
                }
            ],
        }


def _require_json(headers: Any) -> None:
    """POST and PUT bodies are JSON; like the real server, a missing Content-Type means JSON."""
    media = headers.get("Content-Type", "").split(";")[0].strip()
    if media not in ("", "application/json"):
        raise ApiError(
            415,
            "the body of the request was in an unknown format - accepted media types include: "
            f'application/json (this fake server accepts JSON only; got "{media}")',
        )


def _json(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except ValueError as exc:
        raise ApiError(400, f"couldn't get version/kind; json parse error: {exc}") from None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real server; the client pools connections
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    server_version = "lease-api-fake"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the request log is in .requests
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self, method: str) -> None:
        api: LeaseApiServer = self.server.api  # type: ignore[attr-defined]
        started = time.monotonic()
        parts = urlsplit(self.path)
        body = self._read_body()
        content_type = self.headers.get("Content-Type", "")
        if api._latency > 0:
            time.sleep(api._latency)
        outage = api._outage
        if outage == "close":
            self.close_connection = True
            api._record(
                RequestRecord(
                    method, parts.path, parts.query, 0, content_type, started, time.monotonic() - started
                )
            )
            return
        warnings: list[str] = []
        try:
            if outage == "503":
                raise ApiError(503, "the server is currently unable to handle the request", details={})
            status, document, warnings = api.handle(
                method, parts.path, parse_qs(parts.query), self.headers, body
            )
        except ApiError as exc:
            status, document = exc.code, failure_status(exc)
        except Exception as exc:  # a bug in the fake: answer like the real server's panic handler
            status, document = 500, failure_status(ApiError(500, f"Internal error occurred: {exc!r}"))
        if isinstance(document, str):
            payload, media = document.encode(), "text/plain; charset=utf-8"
        else:
            payload, media = json.dumps(document).encode(), "application/json"
        try:
            self.send_response(status)
            self.send_header("Content-Type", media)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Audit-Id", str(uuid.uuid4()))
            for warning in warnings:
                quoted = warning.replace("\\", "\\\\").replace('"', '\\"')
                self.send_header("Warning", f'299 - "{quoted}"')
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client gave up (timeout) before the answer
            self.close_connection = True
        api._record(
            RequestRecord(
                method, parts.path, parts.query, status, content_type, started, time.monotonic() - started
            )
        )


# -- pytest fixtures (import them into a test module by these names) -----------------------------


@pytest.fixture(name="lease_api")
def lease_api_fixture() -> Iterator[LeaseApiServer]:
    """A running fake API server, stopped after the test."""
    with LeaseApiServer() as server:
        yield server


@pytest.fixture(name="kubeconfig")
def kubeconfig_fixture(lease_api: LeaseApiServer, tmp_path: Path) -> Path:
    """A kubeconfig for ``lease_api`` (http, bearer token, context namespace ``scheduler-test``)."""
    return lease_api.write_kubeconfig(tmp_path / "kubeconfig", namespace="scheduler-test")
