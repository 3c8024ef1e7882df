"""Deployment artefacts: the Helm chart, the kustomize manifests and the image.

No cluster and no container engine are needed: the chart and manifests are
rendered with the real helm and kubectl and every object is checked against
the Kubernetes API schemas (kubernetes-validate), so a manifest that an API
server would refuse fails here first. The properties operators rely on are
asserted directly: RBAC limited to the election Lease, hardened containers,
a config.yaml the worker accepts, a strategy that switches without a rollout,
and values.schema.json refusing bad values at install time. The image's
install steps are replayed in a clean virtualenv, so that they are checked
without a container engine.

helm and kubectl are taken from $HELM_BIN / $KUBECTL_BIN, else .tools/bin,
else PATH; when missing, scripts/install-k8s-tools.sh installs them once.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy_tools import (
    CHART_DIR,
    DOCKERFILE,
    DOCKERIGNORE,
    INSTALL_SCRIPT,
    K8S_DIR,
    K8S_VERSION,
    LOCAL_TOOLS,
    REPO_ROOT,
    by_kind,
    dockerignore_excludes,
    dockerignore_patterns,
    env_map,
    find_tool,
    ident,
    is_hook,
    load_docs,
    one,
    parse_dockerfile,
    pod_specs,
    run,
    shell_words,
)

pytestmark = pytest.mark.deploy

RELEASE = "vs"
NAMESPACE = "virtflow"
CONFIG_PATH = "/etc/virtflow-scheduler/config.yaml"
ELECTION_GROUP = "coordination.k8s.io"


# ------------------------------------------------------------------ tools


@dataclass(frozen=True)
class Tools:
    helm: Path
    kubectl: Path


@pytest.fixture(scope="session")
def tools() -> Tools:
    """helm and kubectl, installed once per session when absent.

    In CI a failed install is a failure, not a skip: a green run that checked
    no manifest would hide broken deployment files.
    """
    helm, kubectl = find_tool("helm"), find_tool("kubectl")
    if helm is None or kubectl is None:
        result = run(["bash", INSTALL_SCRIPT, LOCAL_TOOLS], timeout=300)
        helm, kubectl = find_tool("helm"), find_tool("kubectl")
        if result.returncode != 0 or helm is None or kubectl is None:
            message = (
                f"cannot install helm/kubectl with {INSTALL_SCRIPT.name}: {result.stderr.strip()[-2000:]}"
            )
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(message)
            pytest.skip(message)
    return Tools(helm=helm, kubectl=kubectl)


API_TOKEN = "admin-token-0123456789abcdef"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
# What every install must give (the chart has no default passwords), unless existingSecret is set.
SECRETS: tuple[str, ...] = (
    "--set", "secrets.amqpUrl=amqp://virtflow:from-test@rabbitmq:5672/%2F",
    "--set", "secrets.databaseUrl=postgresql://virtflow:from-test@postgresql:5432/virtflow",
    "--set-json", f'secrets.apiTokens={{"{API_TOKEN}":"admin"}}',
    "--set", f"secrets.webhookSecret={WEBHOOK_SECRET}",
)  # fmt: skip


@functools.cache
def _helm_template(helm: Path, args: tuple[str, ...], bare: bool = False) -> subprocess.CompletedProcess[str]:
    """``helm template`` with ``args``; the required secrets come first unless ``bare`` or existingSecret."""
    given = () if bare or any(a.startswith("existingSecret=") for a in args) else SECRETS
    return run([helm, "template", RELEASE, CHART_DIR, "--namespace", NAMESPACE, *given, *args])


def render(tools: Tools, *args: str) -> list[dict[str, Any]]:
    """The chart's objects (hooks included) for ``args``, which must render."""
    result = _helm_template(tools.helm, tuple(args))
    assert result.returncode == 0, f"helm template {' '.join(args)} failed:\n{result.stderr}"
    return load_docs(result.stdout)


@functools.cache
def _kustomize(kubectl: Path, path: Path) -> subprocess.CompletedProcess[str]:
    return run([kubectl, "kustomize", path])


def kustomize(tools: Tools, path: Path) -> list[dict[str, Any]]:
    result = _kustomize(tools.kubectl, path)
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return load_docs(result.stdout)


def schema_errors(objs: list[dict[str, Any]]) -> list[str]:
    """Every object checked against the Kubernetes OpenAPI schemas (strict: no unknown fields)."""
    errors = []
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{ident(obj)}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{ident(obj)}: no schema for {obj.get('apiVersion')} {obj.get('kind')}")
    return errors


def config_of(objs: list[dict[str, Any]]) -> dict[str, Any]:
    """config.yaml of the (single) ConfigMap, parsed."""
    data = one(objs, "ConfigMap")["data"]
    assert set(data) == {"config.yaml"}, f"ConfigMap keys: {sorted(data)}"
    parsed = yaml.safe_load(data["config.yaml"])
    assert isinstance(parsed, dict), "config.yaml is not a mapping"
    return parsed


def worker_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, [c["name"] for c in containers]
    return dict(containers[0])


# ------------------------------------------------------------------ chart variants

VARIANTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "existing-secret": ("--set", "existingSecret=scheduler-credentials"),
    "service-monitor": (
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "serviceMonitor.labels.release=prom",
    ),
    "quorum-queue": ("--set", "config.amqp.queue_type=quorum"),
    "single-replica": ("--set", "replicaCount=1"),
    "strategy-best-fit": ("--set", "strategy=best_fit"),
    "minimal": (
        "--set",
        "migrations.enabled=false",
        "--set",
        "podDisruptionBudget.enabled=false",
        "--set",
        "serviceAccount.create=false",
        "--set",
        "serviceAccount.name=custom-sa",
    ),
    "everything-set": (
        "--set",
        "fullnameOverride=scheduler",
        "--set",
        f"image.digest=sha256:{'a' * 64}",
        "--set",
        "imagePullSecrets[0].name=registry",
        "--set-string",
        "extraEnv[0].name=EXTRA,extraEnv[0].value=1",
        "--set",
        "nodeSelector.pool=system",
        "--set",
        "tolerations[0].key=dedicated,tolerations[0].operator=Exists,tolerations[0].effect=NoSchedule",
        "--set",
        "topologySpreadConstraints[0].maxSkew=1",
        "--set",
        "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
        "--set",
        "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
        "--set",
        "priorityClassName=high",
        "--set",
        "podAnnotations.team=infra",
        "--set",
        "podDisruptionBudget.maxUnavailable=50%",
        "--set",
        "secrets.webhookUrl=https://hooks.example/a",
        "--set",
        # Two secrets while rotating (helm --set needs the comma escaped).
        f"secrets.webhookSecret={WEBHOOK_SECRET}\\,whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24=",
        "--set",
        "config.election.lease_name=scheduler-lease",
        "--set",
        "config.http.port=9000",
        "--set",
        "service.type=NodePort",
    ),
}


def test_helm_lint(tools: Tools) -> None:
    """`helm lint --strict` on the defaults and on the widest variant."""
    for args in ((), VARIANTS["everything-set"]):
        result = run([tools.helm, "lint", "--strict", CHART_DIR, *SECRETS, *args])
        assert result.returncode == 0, f"helm lint {' '.join(args)}:\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rendered_objects_pass_kubernetes_schemas(tools: Tools, variant: str) -> None:
    """Every object an API server would receive is schema-valid and namespaced to the release."""
    objs = render(tools, *VARIANTS[variant])
    native = [o for o in objs if o["kind"] != "ServiceMonitor"]
    assert not schema_errors(native), "\n".join(schema_errors(native))
    for obj in objs:
        assert obj["metadata"].get("namespace") == NAMESPACE, f"{ident(obj)} not in the release namespace"
    kinds = {o["kind"] for o in objs}
    assert {"ConfigMap", "Deployment", "Service", "Role", "RoleBinding"} <= kinds
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Namespace"}, kinds


def test_default_deployment_contract(tools: Tools) -> None:
    """The Deployment's fixed contract: 3 replicas, downward API, config mount, secrets, probes."""
    objs = render(tools)
    deploy = one(objs, "Deployment")
    spec = deploy["spec"]["template"]["spec"]
    container = worker_container(objs)
    env = env_map(container)

    assert deploy["spec"]["replicas"] == 3
    assert container.get("args") == ["worker"], "the image's ENTRYPOINT is `scheduler`; the pod runs `worker`"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    for name in ("AMQP_URL", "DATABASE_URL"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == f"{RELEASE}-virtflow-scheduler" and not ref.get("optional"), ref
    for name in ("WEBHOOK_URL", "WEBHOOK_SECRET"):
        assert env[name]["valueFrom"]["secretKeyRef"]["optional"] is True
    tokens = env["HTTP_TOKENS"]["valueFrom"]["secretKeyRef"]
    assert tokens["name"] == f"{RELEASE}-virtflow-scheduler" and not tokens.get("optional"), tokens
    # Live strategy switching: the strategy comes from the mounted file only.
    assert "SCHEDULING_STRATEGY" not in env, "an env strategy would shadow the watched config.yaml"
    assert env["SCHEDULER_CONFIG"]["value"] == CONFIG_PATH

    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    config_mount = next(
        m for m in mounts.values() if CONFIG_PATH.startswith(m["mountPath"].rstrip("/") + "/")
    )
    assert "subPath" not in config_mount, "subPath mounts never see ConfigMap updates"
    assert config_mount.get("readOnly") is True
    assert volumes[config_mount["name"]]["configMap"]["name"] == one(objs, "ConfigMap")["metadata"]["name"]
    assert "emptyDir" in volumes[mounts["tmp"]["name"]] and mounts["tmp"]["mountPath"] == "/tmp"

    port = {p["name"]: p["containerPort"] for p in container["ports"]}
    http = config_of(objs)["http"]
    assert port == {"http": http["port"], "metrics": http["metrics_port"]}
    # Probes on the metrics port: it needs no token and serves no API route.
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]

    annotations = deploy["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])
    assert spec["serviceAccountName"] == one(objs, "ServiceAccount")["metadata"]["name"]
    assert spec["automountServiceAccountToken"] is True, "the Lease API needs the token"

    service = one(objs, "Service")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {"http", "metrics"} and all(p["targetPort"] == name for name, p in ports.items())
    assert service["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()

    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1


def test_migration_job_is_a_pre_install_and_pre_upgrade_hook(tools: Tools) -> None:
    """`scheduler db upgrade` runs before pods start, with a Secret that exists by then."""
    objs = render(tools)
    job = one(objs, "Job", hook=True)
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["db", "upgrade"]
    secret_name = env_map(container)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"]
    hook_secret = one(objs, "Secret", hook=True)
    # Non-hook objects do not exist yet when a pre-install hook runs.
    assert hook_secret["metadata"]["name"] == secret_name
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        annotations["helm.sh/hook-weight"]
    )
    assert set(hook_secret["stringData"]) == {"DATABASE_URL"}

    no_migrations = render(tools, "--set", "migrations.enabled=false")
    assert not [o for o in no_migrations if is_hook(o)]


def test_existing_secret_replaces_the_chart_secret(tools: Tools) -> None:
    objs = render(tools, *VARIANTS["existing-secret"])
    assert not by_kind(objs, "Secret"), "no Secret may be created when existingSecret is set"
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for _, spec in pod_specs(objs)
        for c in spec["containers"]
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs == {"scheduler-credentials"}


def test_service_monitor_shape(tools: Tools) -> None:
    """A CRD, so no API schema here: check that it would actually scrape the Service."""
    objs = render(tools, *VARIANTS["service-monitor"])
    monitor = one(objs, "ServiceMonitor")
    service = one(objs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert not by_kind(render(tools), "ServiceMonitor"), "off by default (needs the operator's CRDs)"


def test_variants_change_what_they_should(tools: Tools) -> None:
    default = render(tools)
    quorum = render(tools, *VARIANTS["quorum-queue"])
    assert config_of(quorum)["amqp"]["queue_type"] == "quorum"
    single = render(tools, *VARIANTS["single-replica"])
    assert one(single, "Deployment")["spec"]["replicas"] == 1

    wide = render(tools, *VARIANTS["everything-set"])
    deploy = one(wide, "Deployment")
    container = worker_container(wide)
    assert deploy["metadata"]["name"] == "scheduler"
    assert container["image"] == f"virtflow-scheduler@sha256:{'a' * 64}"
    assert container["ports"][0]["containerPort"] == 9000
    assert env_map(container)["EXTRA"]["value"] == "1"
    assert set(one(wide, "Secret")["stringData"]) == {
        "AMQP_URL",
        "DATABASE_URL",
        "WEBHOOK_URL",
        "WEBHOOK_SECRET",
        "HTTP_TOKENS",
    }
    assert json.loads(one(wide, "Secret")["stringData"]["HTTP_TOKENS"]) == {API_TOKEN: "admin"}
    assert one(wide, "PodDisruptionBudget")["spec"]["maxUnavailable"] == "50%"
    names = {n for rule in one(wide, "Role")["rules"] for n in rule.get("resourceNames", [])}
    assert names == {"scheduler-lease"}, "the Role must follow election.lease_name"
    assert config_of(wide)["election"]["lease_name"] == "scheduler-lease"
    assert config_of(default)["election"]["lease_name"] == "virtflow-scheduler"


def test_strategy_change_is_live_and_other_changes_roll_the_pods(tools: Tools) -> None:
    """A new strategy only rewrites config.yaml (watched by the workers); other keys change the checksum."""

    def checksum(objs: list[dict[str, Any]]) -> str:
        return str(one(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    default = render(tools)
    best_fit = render(tools, *VARIANTS["strategy-best-fit"])
    quorum = render(tools, *VARIANTS["quorum-queue"])
    assert config_of(default)["strategy"] == "least_loaded"
    assert config_of(best_fit)["strategy"] == "best_fit"
    assert checksum(best_fit) == checksum(default), "a strategy change must not roll the pods"
    assert checksum(quorum) != checksum(default), "other config changes must roll the pods"
    rest = {k: v for k, v in config_of(best_fit).items() if k != "strategy"}
    assert rest == {k: v for k, v in config_of(default).items() if k != "strategy"}


# ------------------------------------------------------------------ values.schema.json

REFUSED: list[tuple[tuple[str, ...], str]] = [
    (("--set", "strategy=fastest"), "strategy"),
    (("--set", "replicaCount=-1"), "replicaCount"),
    (("--set", "replicaCount=0"), "replicaCount"),
    (("--set", "replicaCount=two"), "replicaCount"),
    (("--set", "config.amqp.queue_type=stream"), "queue_type"),
    (("--set", "config.amqp.prefetch=0"), "prefetch"),
    (("--set", "config.amqp.exchnage=x"), "exchnage"),
    (("--set", "config.logging.level=verbose"), "level"),
    (("--set", "config.http.port=70000"), "port"),
    (("--set", "config.election.backend=zookeeper"), "backend"),
    (("--set", "config.election.renew_deadline=20"), "renew_deadline"),
    (("--set", "image.pullPolicy=Sometimes"), "pullPolicy"),
    (("--set", "podSecurityContext.runAsUser=0"), "runAsUser"),
    (("--set", "secrets.amqpUrl=http://rabbit"), "amqpUrl"),
    (("--set", "secrets.databaseUrl=mysql://db/x"), "databaseUrl"),
    (("--set", "secrets.databaseUrl="), "databaseUrl"),
    (("--set", "extraEnv[0].name=SCHEDULING_STRATEGY,extraEnv[0].value=cpu"), "SCHEDULING_STRATEGY"),
    (("--set", "podDisruptionBudget.maxUnavailable=0"), "maxUnavailable"),
    (("--set", "replicas=3"), "replicas"),
    (("--set", "extraEnv[0].name=RETRIES,extraEnv[0].value=3"), "value"),
    (("--set", "secrets.amqpUrl=amqp://guest:guest@rabbitmq:5672/%2F"), "amqpUrl"),
    (("--set", "secrets.amqpUrl=amqps://guest@rabbitmq/%2F"), "amqpUrl"),
    (("--set", "secrets.webhookSecret=s3cr3t"), "webhookSecret"),
    (("--set-json", 'secrets.apiTokens={"short":"admin"}'), "invalid propertyName"),
    (("--set-json", f'secrets.apiTokens={{"{API_TOKEN}":"root"}}'), "apiTokens"),
    (("--set", "config.http.metrics_port=8080"), "metrics_port"),
    (("--set", "networkPolicy.egress.database.ports={}"), "ports"),
    # Values the worker refuses at start (scheduler/config.py): each rendered a
    # chart whose every pod crash-looped on its config.yaml.
    (("--set", "config.amqp.heartbeat=0"), "heartbeat"),
    (("--set", "config.worker.reconnect_max_backoff=7200"), "reconnect_max_backoff"),
    (("--set-json", "config.random_seed=9223372036854775808"), "random_seed"),
    (("--set", "config.retry.initial_backoff=100,config.retry.max_backoff=10"), "config.retry.max_backoff"),
    (("--set", "config.nodes.suspicious_after=30,config.nodes.offline_after=20"), "nodes.offline_after"),
    (("--set-json", 'config.strategy_weights={"cpu":0,"memory":0,"disk":0}'), "strategy_weights"),
    # Every pod a leader at once: two consumers on the queue, found with two workers (black-box).
    (("--set", "config.election.backend=none"), "config.election.backend=none"),
    # The kubelet probes the pod IP: a loopback metrics port fails every probe.
    (("--set", "config.http.metrics_host=127.0.0.1"), "config.http.metrics_host"),
    (("--set", "config.http.metrics_host=localhost"), "config.http.metrics_host"),
    # Object names the API server refuses (a Service name is a DNS-1035 label).
    (("--set", "fullnameOverride=Virtflow_Scheduler"), "fullnameOverride"),
    (("--set", "fullnameOverride=1scheduler"), "fullnameOverride"),
    (("--set", "nameOverride=sched.uler"), "nameOverride"),
    (("--set", "config.http.rate_limit=lots"), "rate_limit"),
    (("--set", "config.http.rate_limit=5 per fortnight"), "rate_limit"),
    (("--set", "config.webhooks.allow={bad pattern}"), "allow"),
    (("--set", "config.webhooks.allow={ftp://hooks.example.com/*}"), "allow"),
]


@pytest.mark.parametrize(("args", "named"), REFUSED, ids=[" ".join(a[1:]) for a, _ in REFUSED])
def test_bad_values_are_refused_naming_the_value(tools: Tools, args: tuple[str, ...], named: str) -> None:
    result = _helm_template(tools.helm, args)
    assert result.returncode != 0, f"helm template accepted {args}"
    assert named in result.stderr, f"error does not name {named!r}:\n{result.stderr}"


def test_guest_credentials_only_for_a_dev_install(tools: Tools) -> None:
    guest = ("--set", "secrets.amqpUrl=amqp://guest:guest@rabbitmq:5672/%2F")
    assert _helm_template(tools.helm, guest).returncode != 0
    objs = render(tools, *guest, "--set", "dev=true")
    assert one(objs, "Secret")["stringData"]["AMQP_URL"].startswith("amqp://guest:")
    # A user whose name merely starts with "guest" is not the guest user.
    assert render(tools, "--set", "secrets.amqpUrl=amqp://guesthouse:pw@rabbitmq:5672/%2F")


# ------------------------------------------------------------------ no default passwords


def test_no_default_passwords_rendering_fails_naming_what_is_missing(tools: Tools) -> None:
    result = _helm_template(tools.helm, (), bare=True)
    assert result.returncode != 0, "the chart rendered without any credentials"
    for named in ("no default passwords", "secrets.amqpUrl", "secrets.databaseUrl", "secrets.apiTokens",
                  "secrets.webhookSecret", "existingSecret"):  # fmt: skip
        assert named in result.stderr, f"{named!r} not in:\n{result.stderr}"
    assert "change-me" not in (CHART_DIR / "values.yaml").read_text()
    guide = (REPO_ROOT / "docs" / "deploy.md").read_text()
    quoted = next(line for line in guide.splitlines() if "no default passwords" in line and "Error" in line)
    assert quoted.strip() in result.stderr, "docs/deploy.md quotes a different refusal"

    partial = _helm_template(tools.helm, SECRETS[:4], bare=True)  # URLs only
    assert partial.returncode != 0
    assert "secrets.apiTokens" in partial.stderr and "secrets.amqpUrl" not in partial.stderr

    unsigned = _helm_template(
        tools.helm, (*SECRETS[:6], "--set", "config.webhooks.allow_unsigned=true"), bare=True
    )
    assert unsigned.returncode == 0, unsigned.stderr
    assert "WEBHOOK_SECRET" not in one(load_docs(unsigned.stdout), "Secret")["stringData"]
    assert render(tools, "--set", "existingSecret=managed-elsewhere")  # nothing needed in values


# ------------------------------------------------------------------ NetworkPolicy


def _ports(rule: dict[str, Any]) -> set[Any]:
    return {p["port"] for p in rule.get("ports", [])}


def test_network_policy_limits_who_talks_to_whom(tools: Tools) -> None:
    objs = render(tools)
    policy = one(objs, "NetworkPolicy")
    deploy = one(objs, "Deployment")
    spec = policy["spec"]
    assert (
        spec["podSelector"]["matchLabels"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    )
    assert spec["policyTypes"] == ["Ingress", "Egress"]

    ingress = {frozenset(_ports(r)): r["from"] for r in spec["ingress"]}
    assert set(ingress) == {frozenset({"http"}), frozenset({"metrics"})}, "only the two named ports are open"
    [api_peer] = ingress[frozenset({"http"})]
    assert api_peer == {"podSelector": {"matchLabels": {"virtflow-scheduler/client": "true"}}}
    [metrics_peer] = ingress[frozenset({"metrics"})]
    assert metrics_peer == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    container_ports = {p["name"] for p in worker_container(objs)["ports"]}
    assert {"http", "metrics"} <= container_ports

    egress_ports = [_ports(r) for r in spec["egress"]]
    for needed in ({5672}, {5432}, {443}, {6443}, {53}):
        assert any(needed <= ports for ports in egress_ports), f"no egress to port {needed}"
    assert all(rule.get("ports") for rule in spec["egress"]), "every egress rule is limited to its ports"
    assert not by_kind(render(tools, "--set", "networkPolicy.enabled=false"), "NetworkPolicy")


def test_network_policy_values_widen_each_rule(tools: Tools) -> None:
    objs = render(
        tools,
        "--set-json", 'networkPolicy.api.clientNamespaceLabels={"team":"provisioning"}',
        "--set-json", 'networkPolicy.api.extraFrom=[{"ipBlock":{"cidr":"10.20.0.0/16"}}]',
        "--set-json", 'networkPolicy.metrics.extraFrom=[{"podSelector":{"matchLabels":{"app":"vmagent"}}}]',
        "--set-json", 'networkPolicy.egress.database.to=[{"ipBlock":{"cidr":"10.9.0.5/32"}}]',
        "--set-json", "networkPolicy.egress.webhooks.ports=[443,8443]",
        "--set-json", 'networkPolicy.egress.extra=[{"ports":[{"port":9000,"protocol":"TCP"}]}]',
    )  # fmt: skip
    assert not schema_errors(objs), "\n".join(schema_errors(objs))
    spec = one(objs, "NetworkPolicy")["spec"]
    ingress = {frozenset(_ports(r)): r["from"] for r in spec["ingress"]}
    api = ingress[frozenset({"http"})]
    assert api[0]["namespaceSelector"] == {"matchLabels": {"team": "provisioning"}}
    assert {"ipBlock": {"cidr": "10.20.0.0/16"}} in api
    assert {"podSelector": {"matchLabels": {"app": "vmagent"}}} in ingress[frozenset({"metrics"})]
    database = next(r for r in spec["egress"] if _ports(r) == {5432})
    assert database["to"] == [{"ipBlock": {"cidr": "10.9.0.5/32"}}]
    assert any(_ports(r) == {443, 8443} for r in spec["egress"])
    assert any(_ports(r) == {9000} for r in spec["egress"])


def test_schema_strategies_are_the_registered_ones() -> None:
    """values.schema.json's enum and the worker's registry must not drift apart."""
    from scheduler.strategies.registry import STRATEGY_NAMES

    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert schema["properties"]["strategy"]["enum"] == list(STRATEGY_NAMES)


def _bounds(field: Any) -> dict[str, Any]:
    return {
        key: getattr(meta, key)
        for meta in field.metadata
        for key in ("ge", "gt", "le", "lt")
        if getattr(meta, key, None) is not None
    }


def test_schema_bounds_are_at_least_the_workers() -> None:
    """Every numeric bound of scheduler/config.py is in values.schema.json, as strict or stricter.

    Why: a value the schema lets through and the worker refuses renders a
    chart whose every pod crash-loops (``amqp.heartbeat: 0`` did, and
    ``worker.reconnect_max_backoff`` had no maximum).
    """
    from pydantic import BaseModel

    from scheduler.config import Settings

    schema = json.loads((CHART_DIR / "values.schema.json").read_text())["properties"]["config"]
    gaps: list[str] = []

    def walk(model: type[BaseModel], node: dict[str, Any], path: str) -> None:
        for name, field in model.model_fields.items():
            sub = node.get("properties", {}).get(name)
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                if sub is not None:
                    walk(field.annotation, sub, f"{path}{name}.")
                continue
            bounds = _bounds(field)
            if not bounds or sub is None:
                continue
            low = sub.get("minimum", sub.get("exclusiveMinimum"))
            high = sub.get("maximum", sub.get("exclusiveMaximum"))
            if "ge" in bounds and (low is None or low < bounds["ge"]):
                gaps.append(f"{path}{name}: schema minimum {low}, worker >= {bounds['ge']}")
            inclusive = "minimum" in sub
            if "gt" in bounds and (low is None or low < bounds["gt"] or (low == bounds["gt"] and inclusive)):
                gaps.append(f"{path}{name}: schema minimum {low}, worker > {bounds['gt']}")
            if "le" in bounds and (high is None or high > bounds["le"]):
                gaps.append(f"{path}{name}: schema maximum {high}, worker <= {bounds['le']}")

    walk(Settings, schema, "")
    assert not gaps, "\n".join(gaps)


RATE_LIMITS = [
    "20/second;600/minute", "10 per 2 hours", "1/Day", "3 / 5 minutes | 4/hour", " 7/minute ",
    "2/ 3 days,1/month", "20 PER second",
    "lots", "20/sec", "5 per fortnight", "20/second;", "1/secondss", "/second", "20",
]  # fmt: skip


@pytest.mark.parametrize("limit", RATE_LIMITS)
def test_schema_rate_limit_pattern_is_the_workers(limit: str) -> None:
    """``config.http.rate_limit`` in the schema accepts exactly what the worker parses (limits notation).

    Why: ``--set config.http.rate_limit=lots`` rendered, and every pod refused it at start.
    """
    from scheduler.config import ConfigError, load_settings

    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    pattern = schema["properties"]["config"]["properties"]["http"]["properties"]["rate_limit"]["pattern"]
    try:
        load_settings(http={"rate_limit": limit})
        accepted = True
    except ConfigError:
        accepted = False
    assert bool(re.match(pattern, limit)) == accepted


ALLOW_PATTERNS = [
    "https://*.hooks.example.com/scheduler/*", "http://10.0.0.5:8080", "HTTPS://[::1]:*/x", " https://a.b ",
    "http://h_1.example.com/", "bad pattern", "ftp://hooks.example.com/*", "https://u@h/", "https://h/?q",
    "https://h:99999/", "https://h/a\\b", "https://",
]  # fmt: skip


@pytest.mark.parametrize("pattern", ALLOW_PATTERNS)
def test_schema_allow_pattern_refuses_only_what_the_worker_refuses(pattern: str) -> None:
    """The schema's ``webhooks.allow`` pattern: looser than the worker (labels, ports), never stricter.

    Why: ``--set config.webhooks.allow={bad pattern}`` rendered, and every pod refused it at start.
    """
    from scheduler.webhooks.policy import parse_pattern

    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    webhooks = schema["properties"]["config"]["properties"]["webhooks"]["properties"]
    schema_accepts = re.match(webhooks["allow"]["items"]["pattern"], pattern) is not None
    try:
        parse_pattern(pattern)
        worker_accepts = True
    except ValueError:
        worker_accepts = False
    assert schema_accepts or not worker_accepts, f"the schema refuses {pattern!r}, which the worker accepts"


# ------------------------------------------------------------------ RBAC and security


def assert_lease_only_rbac(objs: list[dict[str, Any]], lease_name: str) -> None:
    """Only a namespaced Role on coordination.k8s.io leases, verbs exactly get/create/update."""
    assert not by_kind(objs, "ClusterRole") and not by_kind(objs, "ClusterRoleBinding")
    role = one(objs, "Role")
    verbs: set[str] = set()
    for rule in role["rules"]:
        assert rule["apiGroups"] == [ELECTION_GROUP], rule
        assert rule["resources"] == ["leases"], rule
        assert "nonResourceURLs" not in rule
        assert "*" not in rule["verbs"]
        verbs |= set(rule["verbs"])
        if "resourceNames" in rule:
            assert rule["resourceNames"] == [lease_name], rule
            assert "create" not in rule["verbs"], "create cannot be limited by resourceNames"
    assert verbs == {"get", "create", "update"}

    binding = one(objs, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    [subject] = binding["subjects"]
    deploy = one(objs, "Deployment")
    assert subject["kind"] == "ServiceAccount"
    assert subject["name"] == deploy["spec"]["template"]["spec"]["serviceAccountName"]
    assert subject["namespace"] == deploy["metadata"]["namespace"]


def test_rbac_grants_only_the_election_lease(tools: Tools) -> None:
    assert_lease_only_rbac(render(tools), "virtflow-scheduler")
    assert_lease_only_rbac(kustomize(tools, K8S_DIR), "virtflow-scheduler")
    assert not by_kind(render(tools, "--set", "rbac.create=false"), "Role")


def assert_hardened(objs: list[dict[str, Any]]) -> None:
    specs = pod_specs(objs)
    assert specs, "no workloads rendered"
    for owner, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, owner
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, owner
        assert pod["runAsUser"] > 0, owner
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), owner
        mounts_tmp = False
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            where = f"{owner} container {container['name']}"
            sc = container.get("securityContext")
            assert sc, f"{where}: no securityContext"
            assert sc["runAsNonRoot"] is True, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc.get("privileged", False) is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert sc.get("runAsUser", pod["runAsUser"]) > 0, where
            mounts_tmp = mounts_tmp or any(
                m["mountPath"] == "/tmp" for m in container.get("volumeMounts", [])
            )
        assert mounts_tmp, f"{owner}: read-only root filesystem but no writable /tmp"


def test_every_container_is_hardened(tools: Tools) -> None:
    for args in VARIANTS.values():
        assert_hardened(render(tools, *args))
    for path in (K8S_DIR, K8S_DIR / "migrate", K8S_DIR / "overlays" / "best-fit"):
        assert_hardened(kustomize(tools, path))


# ------------------------------------------------------------------ config.yaml accepted by the worker


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No configuration from the test runner's environment leaks into a load."""
    from scheduler.config import ENV_ALIASES

    for name in [*ENV_ALIASES, "SCHEDULER_CONFIG"]:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("SCHEDULER_"):
            monkeypatch.delenv(name, raising=False)
    yield monkeypatch


def load_as_pod(objs: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Load the worker's settings the way a pod does: mounted config.yaml plus the pod's env."""
    from scheduler.config import load_settings

    config_file = tmp_path / "config.yaml"
    config_file.write_text(one(objs, "ConfigMap")["data"]["config.yaml"])
    container = worker_container(objs)
    secrets = {
        k: v for s in by_kind(objs, "Secret") if not is_hook(s) for k, v in s.get("stringData", {}).items()
    }
    secrets.setdefault("AMQP_URL", "amqp://u:p@rabbitmq:5672/%2F")
    secrets.setdefault("DATABASE_URL", "postgresql://u:p@postgresql:5432/db")
    for name, entry in env_map(container).items():
        source = entry.get("valueFrom", {})
        if name == "SCHEDULER_CONFIG":
            assert entry["value"] == CONFIG_PATH
            monkeypatch.setenv(name, str(config_file))
        elif "value" in entry:
            monkeypatch.setenv(name, entry["value"])
        elif "fieldRef" in source:
            monkeypatch.setenv(
                name,
                {"metadata.name": "scheduler-0", "metadata.namespace": NAMESPACE}[
                    source["fieldRef"]["fieldPath"]
                ],
            )
        elif "secretKeyRef" in source and source["secretKeyRef"]["key"] in secrets:
            monkeypatch.setenv(name, secrets[source["secretKeyRef"]["key"]])
    return load_settings()


@pytest.mark.parametrize("variant", ["default", "strategy-best-fit", "quorum-queue", "everything-set"])
def test_chart_config_is_accepted_by_the_worker(
    tools: Tools, variant: str, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    objs = render(tools, *VARIANTS[variant])
    settings = load_as_pod(objs, tmp_path, clean_env)
    assert settings.strategy == config_of(objs)["strategy"]
    assert settings.election.backend == "kubernetes"
    assert settings.election.namespace == NAMESPACE
    assert settings.identity == "scheduler-0"
    ports = {p["name"]: p["containerPort"] for p in worker_container(objs)["ports"]}
    assert (settings.http.port, settings.http.metrics_port) == (ports["http"], ports["metrics"])
    assert {t: r.value for t, r in settings.http.tokens.items()} == {API_TOKEN: "admin"}  # from the Secret


def test_kustomize_config_is_accepted_by_the_worker(
    tools: Tools, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    for path, strategy in ((K8S_DIR, "least_loaded"), (K8S_DIR / "overlays" / "best-fit", "best_fit")):
        settings = load_as_pod(kustomize(tools, path), tmp_path, clean_env)
        assert settings.strategy == strategy, path


# ------------------------------------------------------------------ kustomize


@pytest.mark.parametrize("path", ["", "overlays/best-fit", "migrate"])
def test_kustomize_builds_and_passes_kubernetes_schemas(tools: Tools, path: str) -> None:
    objs = kustomize(tools, K8S_DIR / path)
    assert objs
    assert not schema_errors(objs), "\n".join(schema_errors(objs))
    for obj in objs:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "virtflow-scheduler", ident(obj)


def test_overlay_changes_only_the_strategy(tools: Tools) -> None:
    base = kustomize(tools, K8S_DIR)
    overlay = kustomize(tools, K8S_DIR / "overlays" / "best-fit")
    assert config_of(base)["strategy"] == "least_loaded"
    assert config_of(overlay)["strategy"] == "best_fit"
    assert {k: v for k, v in config_of(overlay).items() if k != "strategy"} == {
        k: v for k, v in config_of(base).items() if k != "strategy"
    }
    # Same ConfigMap name: applying the overlay rewrites the file the pods watch.
    strip = [o for o in base if o["kind"] != "ConfigMap"]
    assert strip == [o for o in overlay if o["kind"] != "ConfigMap"]
    assert one(base, "ConfigMap")["metadata"] == one(overlay, "ConfigMap")["metadata"]


def test_kustomize_base_matches_the_chart(tools: Tools) -> None:
    """People using kubectl alone get what Helm users get with the default values."""
    chart = render(tools)
    base = kustomize(tools, K8S_DIR)
    chart_kinds = {o["kind"] for o in chart if not is_hook(o)} - {"Secret"}
    assert {o["kind"] for o in base} == chart_kinds | {"Namespace"}
    assert config_of(base) == config_of(chart)

    ours, theirs = worker_container(base), worker_container(chart)
    for key in (
        "args",
        "ports",
        "startupProbe",
        "livenessProbe",
        "readinessProbe",
        "resources",
        "securityContext",
        "volumeMounts",
    ):
        assert ours[key] == theirs[key], key
    assert list(env_map(ours)) == list(env_map(theirs))
    base_spec = one(base, "Deployment")["spec"]
    chart_spec = one(chart, "Deployment")["spec"]
    assert base_spec["replicas"] == chart_spec["replicas"]
    assert base_spec["strategy"] == chart_spec["strategy"]
    assert one(base, "Role")["rules"] == one(chart, "Role")["rules"]
    assert [p["name"] for p in one(base, "Service")["spec"]["ports"]] == ["http", "metrics"]
    assert one(base, "Service")["spec"]["ports"] == one(chart, "Service")["spec"]["ports"]
    ours_np, theirs_np = one(base, "NetworkPolicy")["spec"], one(chart, "NetworkPolicy")["spec"]
    for key in ("policyTypes", "ingress", "egress"):
        assert ours_np[key] == theirs_np[key], key
    base_pod_labels = one(base, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert ours_np["podSelector"]["matchLabels"].items() <= base_pod_labels.items()
    migrate = worker_container_of_job(kustomize(tools, K8S_DIR / "migrate"))
    assert migrate["args"] == worker_container_of_job(chart)["args"] == ["db", "upgrade"]


def worker_container_of_job(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(one(objs, "Job", hook=None)["spec"]["template"]["spec"]["containers"][0])


# ------------------------------------------------------------------ Dockerfile


def test_dockerfile_final_stage_is_slim_non_root_and_runs_scheduler() -> None:
    dockerfile = parse_dockerfile(DOCKERFILE.read_text())
    assert len(dockerfile.stages) >= 2, "multi-stage: build in one stage, run in another"
    builder, final = dockerfile.stages[0], dockerfile.stages[-1]
    for stage in dockerfile.stages:
        assert dockerfile.resolve(stage.base) == "python:3.11-slim", stage.base

    [user] = final.of("USER")
    uid = user.args.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, (
        f"USER must be a numeric non-root uid (runAsNonRoot), got {user.args}"
    )
    [entrypoint] = final.of("ENTRYPOINT")
    assert entrypoint.exec_form() == ["scheduler"]
    [cmd] = final.of("CMD")
    assert cmd.exec_form() == ["worker"]

    compilers = {"gcc", "g++", "cc", "clang", "build-essential", "make", "python3-dev", "libpq-dev"}
    for run_step in final.of("RUN"):
        words = set(shell_words(run_step.args))
        assert not words & compilers, (
            f"line {run_step.line}: build tools in the final image: {words & compilers}"
        )
    gets_wheels = any(i.flags.get("from") == builder.name for i in final.of("COPY")) or any(
        f"from={builder.name}" in i.flags.get("mount", "") for i in final.of("RUN")
    )
    assert gets_wheels, "the final stage must install what the builder built"
    assert any("pip wheel" in i.args for i in builder.of("RUN")), "the builder must build wheels"
    assert any("venv" in i.args and "install" in i.args for i in final.of("RUN")), "install into a venv"

    [healthcheck] = final.of("HEALTHCHECK")
    assert "/healthz" in healthcheck.args


def test_dockerfile_user_matches_the_manifests(tools: Tools) -> None:
    """The image's uid is the one the pods declare, so files the image owns stay readable."""
    final = parse_dockerfile(DOCKERFILE.read_text()).stages[-1]
    uid = int(final.of("USER")[0].args.split(":")[0])
    for objs in (render(tools), kustomize(tools, K8S_DIR)):
        for owner, spec in pod_specs(objs):
            assert spec["securityContext"]["runAsUser"] == uid, owner


def test_docker_build_context_holds_what_the_dockerfile_copies() -> None:
    """Every COPY source exists in the repository and is not filtered out by the ignore file."""
    dockerfile = parse_dockerfile(DOCKERFILE.read_text())
    patterns = dockerignore_patterns(DOCKERIGNORE.read_text())
    copies = [i for stage in dockerfile.stages for i in stage.of("COPY") if "from" not in i.flags]
    assert copies
    for copy in copies:
        *sources, _dest = copy.args.split()
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"line {copy.line}: {source} missing from the build context"
            assert not dockerignore_excludes(patterns, source), f"{source} is excluded by {DOCKERIGNORE.name}"
    for unwanted in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        ".tools/bin/helm",
        "scheduler/__pycache__/config.cpython-311.pyc",
    ):
        assert dockerignore_excludes(patterns, unwanted), f"{unwanted} would be sent to the image build"


@pytest.mark.slow
def test_image_install_steps_work_in_a_clean_virtualenv(tmp_path: Path) -> None:
    """The image's steps without Docker: a wheel from the copied files, installed in a new venv, run."""
    dockerfile = parse_dockerfile(DOCKERFILE.read_text())
    context = tmp_path / "context"
    context.mkdir()
    # Only what the builder stage COPYs, so that a file missing from the COPY lines breaks this test too.
    for copy in dockerfile.stages[0].of("COPY"):
        *sources, _dest = copy.args.split()
        for source in sources:
            src = REPO_ROOT / source
            if src.is_dir():
                shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(src, context / source)

    wheels = tmp_path / "wheels"
    built = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", wheels, context], timeout=300
    )
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = wheels.glob("virtflow_scheduler-*.whl")

    # A venv of its own, with the packages installed by this interpreter's pip
    # (--python): the same resolution as in the image, without the seconds
    # that seeding pip and byte-compiling every dependency would cost here.
    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, clear=True).create(target)
    bindir = target / ("Scripts" if os.name == "nt" else "bin")
    install = run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            bindir / "python",
            "install",
            "--quiet",
            "--no-compile",
            wheel,
        ],
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHEDULER_", "VIRTUAL_ENV"))}
    env.update(PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}", PYTHONDONTWRITEBYTECODE="1")
    for name in ("SCHEDULING_STRATEGY", "AMQP_URL", "DATABASE_URL"):
        env.pop(name, None)
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    for args in (["--help"], ["strategies"]):
        result = run([bindir / "scheduler", *args], cwd=workdir, env=env)
        assert result.returncode == 0, f"scheduler {' '.join(args)}: {result.stdout}\n{result.stderr}"
    from scheduler.strategies.registry import STRATEGY_NAMES

    assert all(name in result.stdout for name in STRATEGY_NAMES), result.stdout


# ------------------------------------------------------------------ install script


def test_install_script_is_idempotent(tools: Tools, tmp_path: Path) -> None:
    """With both binaries in place the script installs nothing and names the directory."""
    assert run(["bash", "-n", INSTALL_SCRIPT]).returncode == 0
    dest = tmp_path / "bin"
    dest.mkdir()
    for tool in (tools.helm, tools.kubectl):
        (dest / tool.name).symlink_to(tool)
    env = {**os.environ, "npm_config_offline": "true"}
    result = run(["bash", INSTALL_SCRIPT, dest], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(dest)
    assert "already present" in result.stderr


# ------------------------------------------------------------------ what operators read


def test_notes_tell_how_to_check_and_switch(tools: Tools) -> None:
    """NOTES.txt renders (a template error there only shows at install) and warns about a lone replica."""
    result = run(
        [
            tools.helm,
            "install",
            RELEASE,
            CHART_DIR,
            "--namespace",
            NAMESPACE,
            "--dry-run=client",
            "--set",
            "replicaCount=1",
            *SECRETS,
        ]
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    for expected in (
        "get lease virtflow-scheduler",
        "scheduler leader",
        "--set strategy=",
        "edit configmap",
        "no standby",
        "Authorization: Bearer",
        "virtflow-scheduler/client=true",
    ):
        assert expected in notes, f"NOTES.txt lacks {expected!r}:\n{notes}"


def test_deploy_guide_names_the_real_commands(tools: Tools) -> None:
    """docs/deploy.md shows install, strategy switch, scaling, upgrade and the runbook as real commands."""
    guide = (REPO_ROOT / "docs" / "deploy.md").read_text()
    for command in (
        "helm install",
        "kubectl apply -k deploy/k8s",
        "kubectl apply -k deploy/k8s/migrate",
        "kubectl -n virtflow-scheduler edit configmap virtflow-scheduler",
        "--set strategy=",
        "--set replicaCount=",
        "kubectl -n virtflow-scheduler scale",
        "helm upgrade",
        "helm -n virtflow-scheduler rollback",
        "kubectl -n virtflow-scheduler rollout undo",
        "scheduler leader",
        "get lease virtflow-scheduler",
        "rabbitmqctl list_queues",
        "scheduler webhooks list --failed",
        "scheduler webhooks retry --all-failed",
        "docker build -f deploy/Dockerfile",
    ):
        assert command in guide, f"docs/deploy.md does not show {command!r}"
    # The refusal quoted in the guide is the one helm prints today.
    quoted = next(line for line in guide.splitlines() if line.startswith("- at '/strategy'"))
    assert quoted in _helm_template(tools.helm, ("--set", "strategy=fastest")).stderr


def test_versions_agree() -> None:
    """The image tag the chart and the manifests default to is the version the package builds."""
    import tomllib

    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["appVersion"] == version
    for path in (K8S_DIR / "base", K8S_DIR / "migrate"):
        kustomization = yaml.safe_load((path / "kustomization.yaml").read_text())
        tags = {i["name"]: i["newTag"] for i in kustomization["images"]}
        assert tags == {"virtflow-scheduler": version}, path
