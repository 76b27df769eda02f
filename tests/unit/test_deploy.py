"""deploy/: the container recipe, the KubeRay manifest, the Prometheus jobs, the systemd unit.

No Docker engine or Kubernetes cluster here: each artifact is checked against what would
refuse it (the Kubernetes 1.37 schemas of ``kubernetes-validate``, KubeRay v1.7.0's
RayCluster CRD schema kept in tests/schemas, ``promtool``, ``systemd-analyze verify``) and
against jobline itself (its config loader, its CLI, its packages).
"""

from __future__ import annotations

import configparser
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from packaging.specifiers import SpecifierSet
from setuptools import find_packages

from actors.wiring import secret_env_names
from runtime.config import JoblineConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.37"
KUBERAY_SCHEMA = ROOT / "tests" / "schemas" / "kuberay-v1.7.0-raycluster-openapiv3.json"
JOBLINE = Path(sys.executable).parent / "jobline"  # the console script of this checkout
RAY_METRICS_PORT = 8080  # KubeRay's default metrics-export-port


# --- helpers ------------------------------------------------------------------------------


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must check the deployment files with it")
        pytest.skip(reason)
    return path


def run_cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    """The real ``jobline`` command with ``args`` + ``--help``: proves the command exists."""
    return subprocess.run(
        [str(JOBLINE), *args, "--help"], capture_output=True, text=True, timeout=60
    )


def local_config_args(args: list[str], config: Path) -> list[str]:
    """``args`` with the path after ``--config`` replaced by a file of this checkout."""
    out = list(args)
    out[out.index("--config") + 1] = str(config)
    return out


@pytest.fixture(scope="module")
def containerfile() -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO((DEPLOY / "Containerfile").read_bytes()))


def final_stage(parser: DockerfileParser) -> list[dict[str, Any]]:
    stages: list[list[dict[str, Any]]] = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(item)
    return stages[-1]


def instructions(parser: DockerfileParser, name: str) -> list[str]:
    return [item["value"] for item in final_stage(parser) if item["instruction"] == name]


@pytest.fixture(scope="module")
def single_node() -> JoblineConfig:
    return load_config(DEPLOY / "jobline.toml")


@pytest.fixture(scope="module")
def cluster() -> JoblineConfig:
    return load_config(DEPLOY / "jobline.cluster.toml")


@pytest.fixture(scope="module")
def manifest() -> dict[tuple[str, str], dict[str, Any]]:
    docs = yaml.safe_load_all((DEPLOY / "kuberay" / "jobline.yaml").read_text())
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs if doc}


@pytest.fixture(scope="module")
def example_secrets() -> dict[str, dict[str, Any]]:
    docs = yaml.safe_load_all((DEPLOY / "kuberay" / "secret.example.yaml").read_text())
    return {doc["metadata"]["name"]: doc for doc in docs if doc}


def ray_cluster(manifest: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return manifest[("RayCluster", "jobline")]


def groups(manifest: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every node group of the RayCluster by name, the head as ``head``."""
    spec = ray_cluster(manifest)["spec"]
    return {"head": spec["headGroupSpec"]} | {
        group["groupName"]: group for group in spec["workerGroupSpecs"]
    }


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = group["template"]["spec"]["containers"][0]  # KubeRay's rule
    return container


def containers(manifest: dict[tuple[str, str], dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for group in groups(manifest).values():
        yield from group["template"]["spec"]["containers"]


def secret_names(config: JoblineConfig) -> set[str]:
    return {*secret_env_names(config), *config.storage.secret_env_names()}


def unknown_fields(instance: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the CRD schema does not declare. The API server would prune them silently, and
    ``kubectl apply`` (strict field validation by default) refuses them."""
    found: list[str] = []
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return found
    if isinstance(instance, dict) and "properties" in schema:
        for key, value in instance.items():
            if key not in schema["properties"]:
                found.append(f"{path}.{key}")
            else:
                found += unknown_fields(value, schema["properties"][key], f"{path}.{key}")
    elif isinstance(instance, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, value in instance.items():
            found += unknown_fields(value, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            found += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


# --- the container recipe -----------------------------------------------------------------


def test_the_image_is_python_311_slim_with_the_tested_ray(
    containerfile: DockerfileParser, manifest: dict[tuple[str, str], dict[str, Any]]
) -> None:
    assert containerfile.is_multistage
    assert all(image.startswith("python:3.11-slim") for image in containerfile.parent_images)
    ray_version = containerfile.args["RAY_VERSION"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (ray,) = [dep for dep in pyproject["project"]["dependencies"] if dep.startswith("ray[")]
    assert ray_version in SpecifierSet(ray.split("]", 1)[1])  # inside the tested range
    assert ray_cluster(manifest)["spec"]["rayVersion"] == ray_version
    (install,) = [run for run in instructions(containerfile, "RUN") if "pip install" in run]
    assert '"ray[default]==${RAY_VERSION}"' in install
    assert "/wheels/jobline-*.whl" in install


def test_every_file_the_image_copies_is_in_the_build_context(
    containerfile: DockerfileParser,
) -> None:
    rules = (DEPLOY / "Containerfile.dockerignore").read_text().splitlines()
    assert rules[rules.index("*")] == "*"  # everything is left out unless let in below
    let_in = [rule[1:].rstrip("/") for rule in rules if rule.startswith("!")]
    copied = [
        source
        for item in containerfile.structure
        if item["instruction"] == "COPY" and "--from=" not in item["value"]
        for source in shlex.split(item["value"])[:-1]
    ]
    assert "runtime" in copied
    for source in copied:
        path = PurePosixPath(source)
        assert (ROOT / path).exists(), f"COPY {source}: no such file in the repository"
        assert any(path.is_relative_to(allowed) for allowed in let_in), (
            f"COPY {source}: left out of the build context by Containerfile.dockerignore"
        )


def test_the_wheel_holds_every_package() -> None:
    """The image installs jobline from its wheel: a subpackage setuptools does not find
    (runtime.api, loadtests.chaos) would be missing from it."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packaged = set(find_packages(where=str(ROOT), include=include))
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("runtime", "actors", "vendors_fake", "loadtests")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert {"runtime.api", "loadtests.chaos"} <= on_disk
    assert on_disk <= packaged


def test_the_image_runs_as_a_user_it_creates(containerfile: DockerfileParser) -> None:
    (user,) = instructions(containerfile, "USER")
    assert user not in {"root", "0"} and not user.startswith("0:")
    creates = [run for run in instructions(containerfile, "RUN") if "useradd" in run]
    assert len(creates) == 1
    assert user == shlex.split(creates[0].split("useradd", 1)[1].split("&&")[0])[-1]
    stage = [item["instruction"] for item in final_stage(containerfile)]
    assert stage.index("USER") < stage.index("ENTRYPOINT")


def test_the_ledger_lives_on_the_image_volume(
    containerfile: DockerfileParser, single_node: JoblineConfig
) -> None:
    (volume,) = (json.loads(value) for value in instructions(containerfile, "VOLUME"))
    assert volume == ["/var/lib/jobline"]
    copies = [shlex.split(value) for value in instructions(containerfile, "COPY")]
    assert ["deploy/jobline.toml", "/etc/jobline/jobline.toml"] in copies
    for path in (single_node.storage.database, single_node.storage.results):
        assert path.is_absolute()
        assert path.is_relative_to(volume[0])
    assert instructions(containerfile, "WORKDIR")[-1] == volume[0]


def test_the_healthcheck_asks_the_gateway(
    containerfile: DockerfileParser, single_node: JoblineConfig
) -> None:
    (check,) = instructions(containerfile, "HEALTHCHECK")
    command = json.loads(check.split("CMD", 1)[1])
    assert command[:2] == ["python", "-c"]
    compile(command[2], "<healthcheck>", "exec")
    assert f"http://127.0.0.1:{single_node.gateway.port}/healthz" in command[2]
    assert single_node.gateway.host == "0.0.0.0"  # reachable through a published port
    assert str(single_node.gateway.port) in instructions(containerfile, "EXPOSE")[0].split()


def test_the_entrypoint_runs_real_commands(containerfile: DockerfileParser) -> None:
    (entrypoint,) = (json.loads(value) for value in instructions(containerfile, "ENTRYPOINT"))
    (command,) = (json.loads(value) for value in instructions(containerfile, "CMD"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert entrypoint[0] in pyproject["project"]["scripts"]
    args = local_config_args(entrypoint[1:] + command, DEPLOY / "jobline.toml")
    assert run_cli(args).returncode == 0
    check = local_config_args([*entrypoint[1:], "check"], DEPLOY / "jobline.toml")
    assert run_cli(check).returncode == 0


# --- the configuration files --------------------------------------------------------------


def test_the_cluster_config_keeps_results_in_s3_and_the_ledger_absolute(
    cluster: JoblineConfig,
) -> None:
    assert cluster.storage.database.is_absolute()
    assert cluster.storage.result_store == "s3"
    assert cluster.ray.address == "auto"
    assert cluster.gateway.host == "0.0.0.0"
    assert cluster.gateway.port != RAY_METRICS_PORT


# --- the KubeRay manifest -----------------------------------------------------------------


def test_every_kubernetes_object_matches_the_kubernetes_schemas(
    manifest: dict[tuple[str, str], dict[str, Any]],
    example_secrets: dict[str, dict[str, Any]],
) -> None:
    objects = [doc for (kind, _), doc in manifest.items() if kind != "RayCluster"]
    objects += example_secrets.values()
    assert {doc["kind"] for doc in objects} == {"PersistentVolumeClaim", "Service", "Secret"}
    for doc in objects:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_raycluster_matches_the_kuberay_crd(
    manifest: dict[tuple[str, str], dict[str, Any]],
) -> None:
    data = json.loads(KUBERAY_SCHEMA.read_text())
    assert data["kuberay_version"] == "v1.7.0"
    schema = data["openAPIV3Schema"]
    cluster = ray_cluster(manifest)
    assert cluster["apiVersion"] == data["api_version"]
    jsonschema.Draft4Validator(schema).validate(cluster)
    assert unknown_fields(cluster, schema) == []


def test_the_crd_check_catches_a_misspelt_field(
    manifest: dict[tuple[str, str], dict[str, Any]],
) -> None:
    schema = json.loads(KUBERAY_SCHEMA.read_text())["openAPIV3Schema"]
    broken = json.loads(json.dumps(ray_cluster(manifest)))
    broken["spec"]["workerGroupSpecs"][0]["minReplica"] = 1
    broken["spec"]["headGroupSpec"]["rayStartParams"] = {"num-cpus": 2}  # not a string
    assert unknown_fields(broken, schema) == [".spec.workerGroupSpecs[0].minReplica"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(schema).validate(broken)


def test_every_pod_template_is_a_valid_kubernetes_pod(
    manifest: dict[tuple[str, str], dict[str, Any]],
) -> None:
    for name, group in groups(manifest).items():
        pod_template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"jobline-{name}"},
            "template": group["template"],
        }
        kubernetes_validate.validate(pod_template, KUBERNETES_VERSION, strict=True)


def test_the_ledger_is_on_the_head_on_its_persistent_volume(
    manifest: dict[tuple[str, str], dict[str, Any]], cluster: JoblineConfig
) -> None:
    by_name = groups(manifest)
    assert by_name["head"]["resources"] == {"jobline_ledger": "1"}
    assert all("jobline_ledger" not in g.get("resources", {}) for g in list(by_name.values())[1:])
    claim = manifest[("PersistentVolumeClaim", "jobline-ledger")]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    head = by_name["head"]["template"]["spec"]
    (volume,) = [v for v in head["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    (mount,) = [
        m for m in ray_container(by_name["head"])["volumeMounts"] if m["name"] == volume["name"]
    ]
    assert cluster.storage.database.parent == Path(mount["mountPath"])
    assert head["securityContext"]["fsGroup"] == head["securityContext"]["runAsUser"] == 1000


def test_secrets_come_only_from_kubernetes_secrets(
    manifest: dict[tuple[str, str], dict[str, Any]],
    cluster: JoblineConfig,
    example_secrets: dict[str, dict[str, Any]],
) -> None:
    needed = secret_names(cluster)
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "JOBLINE_ADMIN_TOKEN"} <= needed
    keys = set(example_secrets["jobline-secrets"]["stringData"])
    for container in containers(manifest):
        for env in container.get("env", []):
            if env["name"] in needed | {"RAY_AUTH_TOKEN"}:
                assert "value" not in env, f"{container['name']}: {env['name']} in plain text"
                ref = env["valueFrom"]["secretKeyRef"]
                assert ref["key"] in set(example_secrets[ref["name"]]["stringData"])
    for name, group in groups(manifest).items():
        ray = ray_container(group)
        from_secret = {
            env["name"]: env["valueFrom"]["secretKeyRef"]
            for env in ray["env"]
            if "valueFrom" in env
        }
        assert needed <= set(from_secret), f"{name}: the actors of this node miss a secret"
        assert {ref["key"] for ref in from_secret.values()} <= keys


def test_ray_token_auth_is_on_and_the_deploying_container_has_the_token(
    manifest: dict[tuple[str, str], dict[str, Any]],
) -> None:
    auth = ray_cluster(manifest)["spec"]["authOptions"]
    assert auth["mode"] == "token"
    head = groups(manifest)["head"]["template"]["spec"]["containers"]
    (deployer,) = [c for c in head if c["name"] == "jobline"]
    env = {e["name"]: e for e in deployer["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    token = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": auth["secretName"], "key": "auth_token"}  # KubeRay's key name


def test_the_deploying_container_runs_a_real_command_on_the_mounted_config(
    manifest: dict[tuple[str, str], dict[str, Any]],
) -> None:
    head = groups(manifest)["head"]["template"]["spec"]
    (deployer,) = [c for c in head["containers"] if c["name"] == "jobline"]
    command = deployer["command"]
    config_path = PurePosixPath(command[command.index("--config") + 1])
    for container in containers(manifest):
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
        assert config_path.parent == PurePosixPath(mount["mountPath"]) and mount["readOnly"]
    volumes = [v for g in groups(manifest).values() for v in g["template"]["spec"]["volumes"]]
    assert {v["configMap"]["name"] for v in volumes if "configMap" in v} == {"jobline-config"}
    assert command[0] == "jobline"
    assert run_cli(local_config_args(command[1:], DEPLOY / "jobline.cluster.toml")).returncode == 0
    # `--address auto` finds the head through Ray's session directory, shared with ray-head.
    (shared,) = [m for m in deployer["volumeMounts"] if m["mountPath"] == "/tmp/ray"]
    head_mounts = {
        m["name"]: m["mountPath"] for m in ray_container(groups(manifest)["head"])["volumeMounts"]
    }
    assert head_mounts[shared["name"]] == "/tmp/ray"


def test_the_gateway_service_reaches_the_gateway_nodes_only(
    manifest: dict[tuple[str, str], dict[str, Any]], cluster: JoblineConfig
) -> None:
    service = manifest[("Service", "jobline-gateway")]
    selector = service["spec"]["selector"]
    selected = [
        name
        for name, group in groups(manifest).items()
        if selector.items()
        <= {"ray.io/cluster": "jobline", **group["template"]["metadata"]["labels"]}.items()
    ]
    assert selected == ["gateways"]
    gateways = groups(manifest)["gateways"]
    assert gateways["resources"] == {"jobline_gateway": "1"}
    ports = {p["name"]: p["containerPort"] for p in ray_container(gateways)["ports"]}
    assert ports["gateway"] == cluster.gateway.port
    assert ports["metrics"] == RAY_METRICS_PORT != cluster.gateway.port
    assert service["spec"]["ports"][0]["targetPort"] == "gateway"
    probe = ray_container(gateways)["readinessProbe"]["httpGet"]
    assert probe == {"path": "/readyz", "port": "gateway"}


def test_processors_are_placed_on_nodes_offering_their_resource(
    manifest: dict[tuple[str, str], dict[str, Any]], cluster: JoblineConfig
) -> None:
    assert cluster.ray.processor_resources
    offered = groups(manifest)["processors"]["resources"]
    for resource, amount in cluster.ray.processor_resources.items():
        assert float(offered[resource]) >= amount * len(cluster.vendors)


def test_every_container_runs_the_image_of_this_version(
    manifest: dict[tuple[str, str], dict[str, Any]],
) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    images = {container["image"] for container in containers(manifest)}
    assert images == {f"registry.example.com/jobline:{version}"}


# --- Prometheus -----------------------------------------------------------------------------


def test_prometheus_scrapes_the_gateway_service_once_and_every_ray_node(
    manifest: dict[tuple[str, str], dict[str, Any]],
) -> None:
    path = DEPLOY / "kuberay" / "prometheus-scrape.yml"
    done = subprocess.run(
        [tool("promtool"), "check", "config", path.name],
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = {job["job_name"]: job for job in yaml.safe_load(path.read_text())["scrape_configs"]}
    service = manifest[("Service", "jobline-gateway")]
    port = service["spec"]["ports"][0]["port"]
    assert jobs["jobline"]["static_configs"][0]["targets"] == [
        f"{service['metadata']['name']}.jobline.svc:{port}"
    ]
    assert "annotations" not in service["metadata"]  # else each gateway pod gets scraped
    nodes = manifest[("Service", "jobline-ray-nodes")]
    assert nodes["spec"]["clusterIP"] == "None"
    (dns,) = jobs["ray-nodes"]["dns_sd_configs"]
    assert dns["names"] == ["jobline-ray-nodes.jobline.svc.cluster.local"]
    assert dns["port"] == nodes["spec"]["ports"][0]["port"] == RAY_METRICS_PORT
    for group in groups(manifest).values():
        annotations = group["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(RAY_METRICS_PORT)


def test_the_cluster_prometheus_reads_jobline_targets_and_rays_own_discovery(
    cluster: JoblineConfig,
) -> None:
    path = DEPLOY / "prometheus-cluster.yml"
    done = subprocess.run(
        [tool("promtool"), "check", "config", path.name],
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = {job["job_name"]: job for job in yaml.safe_load(path.read_text())["scrape_configs"]}
    assert jobs["jobline"]["file_sd_configs"][0]["files"] == [str(cluster.metrics.targets_file)]
    (ray_file,) = jobs["ray"]["file_sd_configs"][0]["files"]
    assert ray_file == "/tmp/ray/prom_metrics_service_discovery.json"  # Ray's default place
    assert cluster.metrics.targets_file is not None
    assert cluster.metrics.targets_file.parent == cluster.storage.database.parent  # the head


def test_the_head_stops_jobline_cleanly_before_it_goes(
    manifest: dict[tuple[str, str], dict[str, Any]],
) -> None:
    head = groups(manifest)["head"]["template"]["spec"]
    (deployer,) = [c for c in head["containers"] if c["name"] == "jobline"]
    assert deployer["command"][-2:] == ["auto", "--attach"]  # restarted: follows, no 2nd app
    stop = deployer["lifecycle"]["preStop"]["exec"]["command"]
    assert stop[-1] == "stop"
    assert run_cli(local_config_args(stop[1:], DEPLOY / "jobline.cluster.toml")).returncode == 0
    assert head["terminationGracePeriodSeconds"] >= 120
    assert not any(e["name"] == "JOBLINE_ADMIN_TOKEN" for e in deployer["env"])  # needs none


# --- systemd --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "systemd" / "jobline.service")
    return parser


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    text = (DEPLOY / "systemd" / "jobline.service").read_text()
    local = tmp_path / "jobline.service"
    local.write_text(text.replace("/opt/jobline/venv/bin/jobline", str(JOBLINE)))
    done = subprocess.run(
        [tool("systemd-analyze"), "verify", str(local)], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (0, "")  # unknown keys and bad values print here


def test_the_unit_restarts_always_and_reads_secrets_from_a_file(
    unit: configparser.ConfigParser, single_node: JoblineConfig
) -> None:
    service = unit["Service"]
    assert service["Restart"] == "always"
    assert unit["Unit"]["StartLimitIntervalSec"] == "0"  # never stops retrying
    assert service["EnvironmentFile"] == "/etc/jobline/jobline.env"
    assert service["User"] != "root"
    assert Path(service["WorkingDirectory"]) == single_node.storage.database.parent
    start = shlex.split(service["ExecStart"])
    assert start[0] == "/opt/jobline/venv/bin/jobline"
    assert run_cli(local_config_args(start[1:], DEPLOY / "jobline.toml")).returncode == 0


def test_the_unit_stops_jobline_with_its_stop_command(unit: configparser.ConfigParser) -> None:
    stop = shlex.split(unit["Service"]["ExecStop"])
    assert stop[-1] == "stop"
    assert run_cli(local_config_args(stop[1:], DEPLOY / "jobline.toml")).returncode == 0


# --- the guide ----------------------------------------------------------------------------


def test_the_guide_is_linked_and_names_every_deployment_file() -> None:
    assert "deploy/README.md" in (ROOT / "README.md").read_text()
    guide = (DEPLOY / "README.md").read_text()
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.name != "README.md":
            assert str(path.relative_to(DEPLOY)) in guide, f"deploy/README.md omits {path}"
