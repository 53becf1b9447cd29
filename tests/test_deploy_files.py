"""The deploy files, checked statically by real tools (no container engine runs here): the Dockerfile
by hadolint, the compose file against the Compose Specification's JSON schema (check-jsonschema's
vendored copy) and for references it does not define, the Kubernetes manifests against the
Kubernetes 1.31 schemas (kubernetes-validate, strict: unknown fields fail), and the in-cluster
scrape config by promtool. Each tool is shown to reject a broken copy, so a pass means something."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
KUBERNETES = DEPLOY / "kubernetes"
MANIFESTS = sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]'; promtool: bash scripts/system-deps.sh)")
    return found


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_hadolint_passes_the_dockerfile_and_catches_a_bad_one(tmp_path: Path) -> None:
    hadolint = tool("hadolint")
    checked = run(hadolint, ROOT / "Dockerfile")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    assert run(hadolint, bad).returncode != 0


def test_the_image_runs_as_a_non_root_user_and_serves_the_port_the_manifests_probe() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM .+ AS (\w+)$", dockerfile, flags=re.MULTILINE)
    assert stages == ["build", "runtime"]
    runtime = dockerfile.split("AS runtime", 1)[1]
    assert re.search(r"^USER 10001$", runtime, flags=re.MULTILINE) and "EXPOSE 8000" in runtime
    assert "download.pytorch.org/whl/cpu" in dockerfile  # CPU torch by default


def test_the_compose_file_follows_the_compose_spec_and_a_broken_one_does_not(tmp_path: Path) -> None:
    checker = tool("check-jsonschema")
    checked = run(checker, "--builtin-schema", "vendor.compose-spec", COMPOSE)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["monitor"]["depends_on"] = {"kafka": {"condition": "whenever"}}
    bad = tmp_path / "compose.yaml"
    bad.write_text(yaml.safe_dump(broken))
    assert run(checker, "--builtin-schema", "vendor.compose-spec", bad).returncode != 0


def test_the_compose_file_references_only_what_it_defines_or_ships() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services, volumes, secrets = compose["services"], set(compose["volumes"]), compose["secrets"]
    assert {"kafka", "postgres", "monitor", "prometheus", "alertmanager", "grafana"} <= set(services)
    assert "KRaft" in COMPOSE.read_text() and "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)
            if isinstance(service["depends_on"], dict) and \
                    service["depends_on"][dependency].get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], (name, dependency)
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, source)
            else:
                assert source in volumes, (name, source)
        for secret in service.get("secrets", []):
            assert (secret if isinstance(secret, str) else secret["source"]) in secrets, (name, secret)
        if "build" in service:
            context = DEPLOY / service["build"]["context"]
            assert (context / service["build"]["dockerfile"]).is_file()
    for secret in secrets.values():
        assert (DEPLOY / secret["file"]).is_file(), secret
    # The monitor reads its database URL from the secret, with the password Postgres was given.
    url = (DEPLOY / secrets["monitor_database_url"]["file"]).read_text().strip()
    password = (DEPLOY / secrets["postgres_password"]["file"]).read_text().strip()
    assert url == f"postgresql://monitor:{password}@postgres:5432/monitor"
    assert services["monitor"]["environment"]["MONITOR_DATABASE_URL_FILE"] == "/run/secrets/monitor_database_url"
    # Prometheus loads the rules from where its config says, and scrapes the monitor's service.
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    mounted = {m.split(":")[1] for m in services["prometheus"]["volumes"] if m.startswith(".")}
    assert {f"/etc/prometheus/{f}" for f in prometheus["rule_files"]} <= mounted
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["monitor:8000"]


def test_the_manifests_validate_against_the_kubernetes_schemas_strictly(tmp_path: Path) -> None:
    validator = tool("kubernetes-validate")
    checked = run(validator, "-k", "1.31.0", "--strict", *MANIFESTS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("passed") == len(MANIFESTS)
    deployment = yaml.safe_load((KUBERNETES / "deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    bad = tmp_path / "deployment.yaml"
    bad.write_text(yaml.safe_dump(deployment))
    assert run(validator, "-k", "1.31.0", "--strict", bad).returncode != 0
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS if p.name != "secret.example.yaml")


def test_the_deployment_probes_routes_the_app_serves_and_reads_the_secret() -> None:
    deployment = yaml.safe_load((KUBERNETES / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    probed = {container[probe]["httpGet"]["path"] for probe in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probed == {"/healthz", "/readyz"}
    from monitor.api.routers.health import router

    assert probed <= {route.path for route in router.routes}  # type: ignore[attr-defined]
    env = {e["name"]: e for e in container["env"]}
    assert env["MONITOR_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "monitor-db", "key": "database-url"}
    secret = yaml.safe_load((KUBERNETES / "secret.example.yaml").read_text())
    assert "database-url" in secret["stringData"] and secret["metadata"]["name"] == "monitor-db"


def test_the_in_cluster_scrape_config_is_a_valid_prometheus_config(tmp_path: Path) -> None:
    promtool = tool("promtool")
    configmap = yaml.safe_load((KUBERNETES / "prometheus-scrape.yaml").read_text())
    config = tmp_path / "prometheus.yml"
    config.write_text(configmap["data"]["monitor-scrape.yml"])
    checked = run(promtool, "check", "config", config)
    assert checked.returncode == 0, checked.stdout + checked.stderr
