"""deploy/k8s: valid Kubernetes objects, probes and resources everywhere, same names as compose.

Every manifest is checked against the Kubernetes OpenAPI schemas bundled in the
``kubernetes-validate`` wheel (strict: unknown fields fail), then for what the schemas
cannot say: probes on every container (the native gRPC probe on serving), requests and
limits, the environment names of each service's settings class, and agreement with
docker-compose.yml (image, command, ports, store path) and with contracts/.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
import yaml

from shared.cli.stack import DEFAULT_PORTS
from shared.healthcheck import SERVICE_ENV, service_settings
from shared.procs import SERVICES
from tests.unit.test_deploy_compose import (
    GRPC_PORT,
    ROOT,
    assert_env_is_parsed,
    load_compose,
    service_env,
)

K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"  # oldest release we document; native gRPC probes are GA (1.27)


@cache
def documents() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, object) for every Kubernetes object under deploy/k8s."""
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                found.append((path.name, doc))
    return tuple(found)


def objects(kind: str) -> Iterator[dict[str, Any]]:
    """Every object of ``kind``."""
    return (doc for _, doc in documents() if doc["kind"] == kind)


def deployment(name: str) -> dict[str, Any]:
    """The Deployment called ``name``."""
    matches = [d for d in objects("Deployment") if d["metadata"]["name"] == name]
    assert len(matches) == 1, f"one Deployment {name!r} expected, found {len(matches)}"
    return matches[0]


def container(name: str) -> dict[str, Any]:
    """The single container of Deployment ``name``."""
    containers = deployment(name)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def config_env() -> dict[str, str]:
    """The shared settings ConfigMap (``flywheel-env``)."""
    [config] = [c for c in objects("ConfigMap") if c["metadata"]["name"] == "flywheel-env"]
    return {k: str(v) for k, v in config["data"].items()}


def container_env(name: str) -> dict[str, str | None]:
    """Name -> literal value (None when it comes from a Secret) for Deployment ``name``."""
    spec = container(name)
    env: dict[str, str | None] = {}
    for source in spec.get("envFrom", []):
        assert source["configMapRef"]["name"] == "flywheel-env"
        env.update(config_env())
    for var in spec.get("env", []):
        env[var["name"]] = str(var["value"]) if "value" in var else None
    return env


def test_every_manifest_is_a_valid_kubernetes_object() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    assert documents()
    for file, doc in documents():
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{file} {doc['kind']}/{doc['metadata']['name']}: {err.message}")


def test_validation_catches_a_misspelt_field() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    broken = yaml.safe_load((K8S / "store-pvc.yaml").read_text(encoding="utf-8"))
    broken["spec"]["accessMode"] = broken["spec"].pop("accessModes")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert kustomization["namespace"] == "flywheel"
    assert all(doc["metadata"].get("namespace", "flywheel") == "flywheel" for _, doc in documents())


def test_there_is_one_deployment_per_service() -> None:
    assert sorted(d["metadata"]["name"] for d in objects("Deployment")) == sorted(SERVICES)


@pytest.mark.parametrize("name", SERVICES)
def test_deployment_runs_the_compose_image_and_command(name: str) -> None:
    compose = load_compose()["services"][name]
    spec = container(name)
    assert spec["image"] == compose["image"]
    assert spec["command"] == compose["command"]
    selector = deployment(name)["spec"]["selector"]["matchLabels"]
    labels = deployment(name)["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


@pytest.mark.parametrize("name", SERVICES)
def test_every_container_has_probes_and_resources(name: str) -> None:
    spec = container(name)
    assert "readinessProbe" in spec
    assert "livenessProbe" in spec
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(spec["resources"][kind]), f"{name}: {kind}"
    assert spec["securityContext"]["allowPrivilegeEscalation"] is False
    pod = deployment(name)["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] != 0


def test_serving_is_probed_through_the_grpc_health_service() -> None:
    spec = container("serving")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert spec[probe]["grpc"] == {"port": GRPC_PORT}, probe
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert (
        ports["grpc"]
        == GRPC_PORT
        == int(str(container_env("serving")["FLYWHEEL_SERVING_GRPC_PORT"]))
    )


@pytest.mark.parametrize("name", [s for s in SERVICES if s != "serving"])
def test_consumers_are_probed_on_their_metrics_endpoint(name: str) -> None:
    spec = container(name)
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert ports["metrics"] == DEFAULT_PORTS[name]
    for probe in ("readinessProbe", "livenessProbe"):
        assert spec[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, probe


@pytest.mark.parametrize("name", SERVICES)
def test_environment_names_are_settings_of_the_service(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = container_env(name)
    assert env[SERVICE_ENV] == name
    literal = {k: v for k, v in env.items() if v is not None}
    assert_env_is_parsed(type(service_settings(name)), literal, monkeypatch)
    from_secrets = {k for k, v in env.items() if v is None}
    assert from_secrets <= {"KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"}
    # Same names and values as compose for what is not cluster-specific.
    compose = service_env(name)
    for key in (f"FLYWHEEL_{name.upper()}_METRICS_PORT", "FLYWHEEL_STORE", SERVICE_ENV):
        assert env[key] == compose[key], key
    assert set(compose) <= set(env), set(compose) - set(env)


@pytest.mark.parametrize("name", SERVICES)
def test_the_store_and_contracts_are_mounted_where_the_settings_point(name: str) -> None:
    env = container_env(name)
    mounts = {m["name"]: m["mountPath"] for m in container(name)["volumeMounts"]}
    assert mounts["store"] == str(env["FLYWHEEL_STORE"]).removeprefix("file://")
    assert mounts["contracts"] == env["FLYWHEEL_CONTRACTS"]
    volumes = {v["name"]: v for v in deployment(name)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["store"]["persistentVolumeClaim"]["claimName"] == "flywheel-store"
    assert volumes["contracts"]["configMap"]["name"] == "flywheel-contracts"


def test_contracts_configmap_matches_the_contract_files() -> None:
    [config] = [c for c in objects("ConfigMap") if c["metadata"]["name"] == "flywheel-contracts"]
    files = {p.name: p.read_text(encoding="utf-8") for p in (ROOT / "contracts").glob("*.yaml")}
    assert config["data"] == files, "stale: run `python tools/gen_k8s_contracts.py`"


def test_services_select_pods_and_target_named_ports() -> None:
    pods = {d["metadata"]["name"]: d["spec"]["template"] for d in objects("Deployment")}
    for svc in objects("Service"):
        selected = [
            t
            for t in pods.values()
            if svc["spec"]["selector"].items() <= t["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, svc["metadata"]["name"]
        names = {p["name"] for c in selected[0]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= names


def test_serving_has_a_headless_service_for_client_side_balancing() -> None:
    [headless] = [s for s in objects("Service") if s["metadata"]["name"] == "serving-headless"]
    assert headless["spec"]["clusterIP"] == "None"
    assert [p["port"] for p in headless["spec"]["ports"]] == [GRPC_PORT]


def test_training_stays_a_single_registry_writer() -> None:
    spec = deployment("training")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"


def test_no_secret_values_in_manifests() -> None:
    assert not list(objects("Secret")), "Secrets are created by the operator, not committed"
    for _, doc in documents():
        for key in doc.get("data", {}) if doc["kind"] == "ConfigMap" else {}:
            assert not any(w in key.upper() for w in ("PASSWORD", "SECRET", "TOKEN")), key
