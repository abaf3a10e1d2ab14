"""The scale-out deployments: the Kubernetes postgres overlay and the Compose file.

Checked like the base (tests/test_deploy.py): `kubectl kustomize`, strict Kubernetes
schemas, and the consistency of the config, the DSN secret and the pods.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from forwarder.config import Settings
from tests.test_deploy import (
    BIN,
    COMPOSE,
    KUBE,
    KUBE_VERSIONS,
    UID,
    VERSION,
    one,
    operator_tree,
    render,
    run,
)

OVERLAY = KUBE / "postgres"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/kubernetes copied, with the secret files an operator adds (base and overlay)."""
    return operator_tree(tmp_path_factory, "kube-pg", "base", "postgres")


@pytest.fixture(scope="module")
def docs(tree: Path) -> list[dict[str, Any]]:
    return render(tree / "postgres")


@pytest.fixture(scope="module")
def base(tree: Path) -> list[dict[str, Any]]:
    return render(tree / "base")


def pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def test_overlay_renders_a_deployment_instead_of_the_statefulset(
    docs: list[dict[str, Any]],
) -> None:
    """The overlay: base's objects, a Deployment for the StatefulSet, one more Secret."""
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            *("Namespace", "ServiceAccount", "ConfigMap", "Secret", "Secret", "Secret"),
            *("Service", "Service", "Deployment", "PodDisruptionBudget", "NetworkPolicy"),
        ]
    )
    namespaced = [d for d in docs if d["kind"] != "Namespace"]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"forwarder"}


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_overlay_validates_against_the_kubernetes_schemas(
    docs: list[dict[str, Any]], version: str
) -> None:
    """Strict schema validation of every rendered object."""
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} ({version}): {exc.message}")


def test_overlay_does_not_render_without_the_dsn_secret(tmp_path: Path, tree: Path) -> None:
    """No placeholder DSN ships: the render fails until the operator adds it."""
    copy = tmp_path / "kubernetes"
    shutil.copytree(tree, copy)
    shutil.rmtree(copy / "postgres/secrets")
    shutil.copytree(OVERLAY / "secrets", copy / "postgres/secrets")
    result = run(BIN / "kubectl", "kustomize", copy / "postgres")
    assert result.returncode != 0
    assert "secrets/postgres/dsn" in result.stderr
    assert [p.name for p in (OVERLAY / "secrets").iterdir()] == [".gitignore"]


def test_three_replicas_without_volumes_and_a_budget_keeping_two(
    docs: list[dict[str, Any]],
) -> None:
    """replicas 3, no claim or PVC volume, rolling one at a time, PDB minAvailable 2."""
    deployment = one(docs, "Deployment")["spec"]
    assert deployment["replicas"] == 3
    assert "volumeClaimTemplates" not in deployment
    assert not [v for v in pod(docs)["volumes"] if "persistentVolumeClaim" in v]
    assert deployment["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 1}
    pdb = one(docs, "PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] == 2
    assert "maxUnavailable" not in pdb
    labels = deployment["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    spread = {c["topologyKey"] for c in pod(docs)["topologySpreadConstraints"]}
    assert "kubernetes.io/hostname" in spread


def test_the_config_selects_postgres_with_the_dsn_from_the_secret(
    docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ConfigMap + the container's env load as backend postgres, dsn_file in the DSN Secret."""
    container = pod(docs)["containers"][0]
    for env in container["env"]:
        monkeypatch.setenv(env["name"], env["value"])
    settings = Settings(**tomllib.loads(one(docs, "ConfigMap")["data"]["forwarder.toml"]))
    assert settings.store.backend == "postgres"
    assert not settings.store.dsn  # never inline: the DSN holds the password
    dsn_file = PurePosixPath(settings.store.dsn_file)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod(docs)["volumes"]}
    secret_name = volumes[mounts[str(dsn_file.parent)]]["secret"]["secretName"]
    secrets = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "Secret"}
    assert dsn_file.name in secrets[secret_name]


def test_pods_match_the_single_replica_pod_apart_from_storage(
    docs: list[dict[str, Any]], base: list[dict[str, Any]]
) -> None:
    """Image, args, ports, probes, resources and lock-down are the base's (no drift)."""
    mine = pod(docs)["containers"][0]
    theirs = one(base, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    for key in ("image", "args", "ports", "readinessProbe", "livenessProbe", "startupProbe"):
        assert mine[key] == theirs[key], key
    assert mine["resources"] == theirs["resources"]
    assert mine["securityContext"] == theirs["securityContext"]
    assert mine["securityContext"]["runAsUser"] == UID
    assert mine["image"] == f"forwarder:{VERSION}"
    base_pod = one(base, "StatefulSet")["spec"]["template"]["spec"]
    for key in ("securityContext", "automountServiceAccountToken", "serviceAccountName"):
        assert pod(docs)[key] == base_pod[key], key
    assert pod(docs)["terminationGracePeriodSeconds"] >= base_pod["terminationGracePeriodSeconds"]


def test_network_policy_adds_postgres_to_the_base_egress(
    docs: list[dict[str, Any]], base: list[dict[str, Any]]
) -> None:
    """Egress: the base's DNS and HTTPS rules, plus TCP 5432."""
    mine = one(docs, "NetworkPolicy")["spec"]
    theirs = one(base, "NetworkPolicy")["spec"]
    assert mine["egress"][: len(theirs["egress"])] == theirs["egress"]
    extra = [p for rule in mine["egress"][len(theirs["egress"]) :] for p in rule["ports"]]
    assert extra == [{"port": 5432, "protocol": "TCP"}]
    assert mine["ingress"] == theirs["ingress"]


# -- Compose -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((COMPOSE / "compose.postgres.yaml").read_text())
    return data


def replicas(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if n.startswith("forwarder")}


def test_compose_runs_two_replicas_on_a_healthy_postgres(compose: dict[str, Any]) -> None:
    """A postgres service with a health check; two forwarders waiting for it to be healthy."""
    postgres = compose["services"]["postgres"]
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert "ports" not in postgres  # only the replicas reach it
    assert len(replicas(compose)) == 2
    for name, service in replicas(compose).items():
        assert service["depends_on"] == {"postgres": {"condition": "service_healthy"}}, name


def test_compose_replicas_use_the_dsn_file_and_mount_only_existing_files(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each replica: the shared config switched to postgres, DSN in the secrets mount."""
    for name, service in replicas(compose).items():
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        for source in mounts.values():
            assert (COMPOSE / source).exists(), f"{name}: {source} is missing"
        for key, value in service["environment"].items():
            monkeypatch.setenv(key, value)
        config = COMPOSE / mounts["/etc/forwarder/forwarder.toml"]
        settings = Settings(**tomllib.loads(config.read_text()))
        assert settings.store.backend == "postgres"
        assert settings.store.dsn_file.startswith("/etc/forwarder/secrets/")
        assert mounts["/etc/forwarder/secrets"] == "./secrets"
        assert [t.split(":")[0] for t in service["tmpfs"]] == ["/var/lib/forwarder"]
    password = compose["secrets"]["postgres-password"]["file"]
    assert password.startswith("./secrets/")
    assert set(compose["volumes"]) == {"postgres-data"}


def test_compose_replicas_publish_distinct_ports_and_are_locked_down(
    compose: dict[str, Any],
) -> None:
    """Distinct host ports; read-only root, UID 10001, no capabilities, grace beyond the drain."""
    published = [p.rsplit(":", 1)[0] for s in replicas(compose).values() for p in s["ports"]]
    assert len(published) == len(set(published))
    for service in replicas(compose).values():
        assert service["read_only"] is True
        assert service["user"] == f"{UID}:{UID}"
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        assert service["stop_signal"] == "SIGTERM"
        assert int(service["stop_grace_period"].removesuffix("s")) >= 20
        assert service["image"].endswith(f":{VERSION}")
