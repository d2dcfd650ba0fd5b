"""The Kubernetes manifests as each overlay renders them: schema-valid, checkov-clean, and
consistent with the daemon (ports, probes, grace period, secrets, scaling bound).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs installed
import kubernetes_validate
import pytest
import yaml

from tests.deploy.deploy_helpers import (
    DEPLOY,
    K8S,
    OPERATOR_OVERLAYS,
    OVERLAYS,
    Rendered,
    checkov_path,
    require_tool,
)

SCHEMAS = Path(__file__).parent / "schemas"
#: kubernetes-validate ships no schema for these custom resources; each is checked against a
#: schema written from the CRD's documented fields (tests/deploy/schemas/).
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.json",
}
#: The oldest Kubernetes minor we support; strict mode rejects unknown fields.
KUBERNETES_VERSION = "1.29"
SECRET_ENV = re.compile(r"(PASSWORD|TOKEN|ROUTING_KEY|WEBHOOK_URL|SECRET|SASL_PLAIN_USERNAME)$")


def crd_validator(api_version: str, kind: str) -> Any:
    schema = json.loads((SCHEMAS / CRD_SCHEMAS[(api_version, kind)]).read_text())
    return jsonschema.Draft202012Validator(schema)


def container(rendered: Rendered) -> dict[str, Any]:
    containers = rendered.one("Deployment", "driftwarden")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_manifest_passes_its_schema(
    rendered: dict[str, Rendered], overlay: str
) -> None:
    problems = []
    for doc in rendered[overlay].docs:
        key = (doc["apiVersion"], doc["kind"])
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if key in CRD_SCHEMAS:
            errors = list(crd_validator(*key).iter_errors(doc))
            problems += [f"{where}: {list(e.absolute_path)}: {e.message}" for e in errors]
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            problems.append(f"{where}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{where}: no schema for {key}; add one to CRD_SCHEMAS")
    assert problems == []


def test_crd_schemas_reject_a_misspelled_field(rendered: dict[str, Rendered]) -> None:
    scaled = rendered["prod"].one("ScaledObject")
    wrong = {**scaled, "spec": {**scaled["spec"], "maxReplicas": 3}}
    assert not crd_validator("keda.sh/v1alpha1", "ScaledObject").is_valid(wrong)
    rule = rendered["prod"].one("PrometheusRule")
    group = rule["spec"]["groups"][0]
    bad_rule = {**group["rules"][0], "annotation": {}}
    wrong = {**rule, "spec": {"groups": [{**group, "rules": [bad_rule]}]}}
    assert not crd_validator("monitoring.coreos.com/v1", "PrometheusRule").is_valid(wrong)


def test_kubernetes_validate_rejects_a_misspelled_field(rendered: dict[str, Rendered]) -> None:
    deployment = rendered["prod"].one("Deployment")
    wrong = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, KUBERNETES_VERSION, strict=True)


def run_checkov(target: list[str], framework: str) -> list[dict[str, Any]]:
    checkov = require_tool(checkov_path(), "checkov")
    done = subprocess.run(
        # --skip-download: offline, no call to the vendor's platform.
        [checkov, *target, "--framework", framework, "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.stdout.strip(), f"checkov printed no report:\n{done.stderr[-2000:]}"
    report = json.loads(done.stdout)
    reports: list[dict[str, Any]] = report if isinstance(report, list) else [report]
    return reports


def test_checkov_finds_no_unjustified_failure(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    for overlay, r in rendered.items():
        (tmp_path / f"{overlay}.yaml").write_text(r.text)
    reports = run_checkov(["-d", str(tmp_path)], "kubernetes")
    reports += run_checkov(["-f", str(DEPLOY / "Dockerfile")], "dockerfile")
    assert {r["check_type"] for r in reports} == {"kubernetes", "dockerfile"}
    failed, unjustified, passed = [], [], 0
    for report in reports:
        results = report["results"]
        passed += len(results["passed_checks"])
        failed += [f"{c['check_id']} {c['resource']}" for c in results["failed_checks"]]
        for check in results["skipped_checks"]:
            reason = check["check_result"].get("suppress_comment") or ""
            if len(reason.split()) < 5:
                unjustified.append(f"{check['check_id']} {check['resource']}: {reason!r}")
    assert failed == []
    assert unjustified == []
    assert passed > 100


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ports_and_grace_period_fit_the_daemon(
    rendered: dict[str, Rendered], overlay: str, policy_text: str
) -> None:
    r = rendered[overlay]
    pod = r.one("Deployment")["spec"]["template"]["spec"]
    c = container(r)
    policy = yaml.safe_load(policy_text)
    env = r.configmap("driftwarden-env")["data"]
    port = int(env.get("DRIFTWARDEN_HTTP__PORT", policy.get("http", {}).get("port", 8080)))
    assert c["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    grace = float(
        env.get(
            "DRIFTWARDEN_LIFECYCLE__GRACE_PERIOD_S",
            policy.get("lifecycle", {}).get("grace_period_s", 25),
        )
    )
    # The daemon's whole shutdown must fit, with room for the kubelet's own delays.
    assert pod["terminationGracePeriodSeconds"] >= grace + 10
    for key in ("cpu", "memory"):
        assert key in c["resources"]["requests"] and key in c["resources"]["limits"]
    service = r.one("Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_runs_non_root_on_a_read_only_root_with_writable_state(
    rendered: dict[str, Rendered], overlay: str
) -> None:
    r = rendered[overlay]
    pod = r.one("Deployment")["spec"]["template"]["spec"]
    c = container(r)
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    user = re.search(r"^USER (\d+):(\d+)$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert user is not None
    assert pod["securityContext"]["runAsUser"] == int(user.group(1))
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/var/lib/driftwarden"]["name"]]
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert mounts["/etc/driftwarden"]["readOnly"] is True
    # Namespaces enforce the restricted Pod Security profile the pod is written for.
    ns = r.one("Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_policy_configmap_is_the_file_the_image_ships_and_the_command_reads(
    rendered: dict[str, Rendered], overlay: str, policy_text: str
) -> None:
    r = rendered[overlay]
    cm = r.configmap("driftwarden-policy")
    assert cm["data"] == {"policy.yaml": policy_text}
    pod = r.one("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    c = container(r)
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/driftwarden")
    assert volumes[mount["name"]]["configMap"]["name"] == cm["metadata"]["name"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd is not None
    assert c["args"] == json.loads(cmd.group(1))
    assert "COPY deploy/k8s/base/policy.yaml /etc/driftwarden/policy.yaml" in dockerfile
    env_from = [e["configMapRef"]["name"] for e in c["envFrom"]]
    assert env_from == [r.configmap("driftwarden-env")["metadata"]["name"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_referenced_never_inlined(rendered: dict[str, Rendered], overlay: str) -> None:
    r = rendered[overlay]
    assert [d["metadata"]["name"] for d in r.docs if d["kind"] == "Secret"] == []
    for cm in (d for d in r.docs if d["kind"] == "ConfigMap"):
        leaked = [k for k in cm.get("data", {}) if SECRET_ENV.search(k)]
        assert leaked == [], f"{cm['metadata']['name']} holds {leaked}"
    env = {e["name"]: e for e in container(r)["env"]}
    for name in (
        "DRIFTWARDEN_KAFKA__SASL_PLAIN_PASSWORD",
        "DRIFTWARDEN_OPERATOR_TOKEN",
        "DRIFTWARDEN_PAGERDUTY_ROUTING_KEY",
        "DRIFTWARDEN_SLACK_WEBHOOK_URL",
        "DRIFTWARDEN_UNLEASH_TOKEN",
        "DRIFTWARDEN_WEBHOOK_SECRET",
    ):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "driftwarden-secrets"
    for name, entry in env.items():
        if SECRET_ENV.search(name):
            assert "value" not in entry, f"{name} is inlined"
    for auth in (d for d in r.docs if d["kind"] == "TriggerAuthentication"):
        assert {ref["name"] for ref in auth["spec"]["secretTargetRef"]} == {"driftwarden-secrets"}


@pytest.mark.parametrize("overlay", OPERATOR_OVERLAYS)
def test_autoscaler_is_bounded_by_partitions_and_watches_the_daemons_group(
    rendered: dict[str, Rendered], overlay: str
) -> None:
    r = rendered[overlay]
    scaled = r.one("ScaledObject")
    spec = scaled["spec"]
    partitions = int(scaled["metadata"]["annotations"]["driftwarden.io/topic-partitions"])
    assert spec["maxReplicaCount"] == partitions
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["fallback"]["replicas"] <= spec["maxReplicaCount"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": r.one("Deployment")["metadata"]["name"],
    }
    assert "replicas" not in r.one("Deployment")["spec"]
    env = r.configmap("driftwarden-env")["data"]
    topics = json.loads(env["DRIFTWARDEN_KAFKA__TOPICS"])
    triggers = spec["triggers"]
    assert [t["metadata"]["topic"] for t in triggers] == topics
    for trigger in triggers:
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert meta["bootstrapServers"] == env["DRIFTWARDEN_KAFKA__BOOTSTRAP_SERVERS"]
        assert meta["consumerGroup"] == env["DRIFTWARDEN_KAFKA__GROUP_ID"]
        assert meta["allowIdleConsumers"] == "false"
        sasl = env.get("DRIFTWARDEN_KAFKA__SECURITY_PROTOCOL", "PLAINTEXT").startswith("SASL")
        assert ("authenticationRef" in trigger) == sasl
        if sasl:
            auth = r.one("TriggerAuthentication", trigger["authenticationRef"]["name"])
            assert {p["parameter"] for p in auth["spec"]["secretTargetRef"]} == {
                "username",
                "password",
            }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_pdb_policy_and_monitor_select_the_pods(
    rendered: dict[str, Rendered], overlay: str
) -> None:
    r = rendered[overlay]
    pod_labels = r.one("Deployment")["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items())

    service = r.one("Service")
    assert selects(service["spec"]["selector"])
    assert selects(r.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    assert r.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    netpol = r.one("NetworkPolicy")["spec"]
    assert selects(netpol["podSelector"]["matchLabels"])
    assert sorted(netpol["policyTypes"]) == ["Egress", "Ingress"]
    if overlay not in OPERATOR_OVERLAYS:
        return  # no ServiceMonitor: see test_minimal_overlay_needs_no_keda_nor_operator
    monitor = r.one("ServiceMonitor")["spec"]
    assert all(
        service["metadata"]["labels"].get(k) == v
        for k, v in monitor["selector"]["matchLabels"].items()
    )
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert [e["port"] for e in monitor["endpoints"]] == ["http"]
    assert port_names == {"http"}
    # The rules select job="driftwarden": the ServiceMonitor's jobLabel must produce it.
    assert service["metadata"]["labels"][monitor["jobLabel"]] == "driftwarden"


def test_overlays_differ_only_where_intended(rendered: dict[str, Rendered]) -> None:
    namespaces = {
        o: {d["metadata"].get("namespace") for d in r.docs if d["kind"] != "Namespace"}
        for o, r in rendered.items()
    }
    assert namespaces == {
        "dev": {"driftwarden-dev"},
        "prod": {"driftwarden"},
        "minimal": {"driftwarden"},
    }
    prod_labels = rendered["prod"].one("PrometheusRule")["metadata"]["labels"]
    assert prod_labels["release"] == "kube-prometheus-stack"
    assert rendered["prod"].one("ServiceMonitor")["metadata"]["labels"]["release"] == (
        "kube-prometheus-stack"
    )
    assert (K8S / "base" / "kustomization.yaml").exists()


def test_minimal_overlay_needs_no_keda_nor_operator(rendered: dict[str, Rendered]) -> None:
    r = rendered["minimal"]
    groups = {d["apiVersion"].split("/")[0] for d in r.docs}
    # only built-in API groups: nothing a plain cluster would refuse for a missing CRD
    assert groups <= {"v1", "apps", "policy", "networking.k8s.io"}, groups
    assert {d["kind"] for d in r.docs} == {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    deployment = r.one("Deployment")
    assert deployment["spec"]["replicas"] == 1
    template = deployment["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    (container,) = template["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    assert annotations["prometheus.io/path"] == "/metrics"
    # the rest is the base, unchanged: same policy, same probes, same security context
    assert (
        r.configmap("driftwarden-policy")["data"]
        == (rendered["prod"].configmap("driftwarden-policy")["data"])
    )
    prod = rendered["prod"].one("Deployment")["spec"]["template"]["spec"]
    assert template["spec"]["securityContext"] == prod["securityContext"]
    (prod_container,) = prod["containers"]
    for key in ("livenessProbe", "readinessProbe", "securityContext", "args"):
        assert container[key] == prod_container[key], key
