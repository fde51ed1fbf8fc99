"""docker/: the images, the compose stack, the Kubernetes manifests and the Grafana dashboard, checked against
the service's real routes, settings, CLI flags and a scrape of a running server (no Docker engine here;
`make lint` runs hadolint on the Dockerfiles)."""

from __future__ import annotations

import glob
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from covserve.service import Settings, create_app
from covserve.service._connections import DRAIN_SECONDS
from covserve.training.cli import _parser as training_parser
from tests.service_fixtures import in_process_client, running_server

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
KUBERNETES_VERSION = "1.33"
SERVICE_IMAGES = {"service.cpu.Dockerfile": "cpu", "service.gpu.Dockerfile": "gpu"}
DOCKERFILES = [*SERVICE_IMAGES, "train.Dockerfile"]
PRE_STOP_SECONDS = 5
SERVICE_PORT = 8000


# ------------------------------------------------------------------------------------------------- helpers


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined and comments dropped."""
    text = (DOCKER / dockerfile).read_text()
    logical = re.sub(r"\\\n\s*", " ", text)
    pairs = []
    for line in logical.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            instruction, _, arguments = stripped.partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def _arguments(dockerfile: str, instruction: str) -> list[str]:
    return [arguments for name, arguments in _instructions(dockerfile) if name == instruction]


def _install_extras(dockerfile: str) -> list[str]:
    """The extras of every ``sh scripts/install.sh /opt/venv/bin/python EXTRAS`` step."""
    runs = " ".join(_arguments(dockerfile, "RUN"))
    return re.findall(r"sh scripts/install\.sh /opt/venv/bin/python (\S+)", runs)


def _settings_environment() -> set[str]:
    return {f"COVSERVE_{name.upper()}" for name in Settings.model_fields}


def _documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def _base(kind: str, name: str | None = None) -> dict[str, Any]:
    for path in sorted((K8S / "base").glob("*.yaml")):
        for document in _documents(path):
            if document.get("kind") == kind and (name is None or document["metadata"]["name"] == name):
                return document
    raise AssertionError(f"no {kind} {name or ''} in docker/k8s/base")


def _container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(container for container in pod_spec["containers"] if container["name"] == name)


def _app_paths() -> set[str]:
    routes = create_app(Settings(repository=Path("unused"))).routes
    return {route.path for route in routes if hasattr(route, "path")}


@pytest.fixture(scope="module")
def scrape(served_repository: Path) -> str:
    """``/metrics`` of the app (in this process) after a predict, a 404 and an OIP infer."""
    with in_process_client(Settings(repository=served_repository, threads=1, max_queue_delay_ms=1)) as client:
        assert client.post("/v1/models/alpha/predict", json={"inputs": [[0, 1, 2]]}).status_code == 200
        assert client.post("/v1/models/nope/predict", json={"inputs": [[0, 1, 2]]}).status_code == 404
        infer = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [0, 1, 2]}]}
        assert client.post("/v2/models/alpha/infer", json=infer).status_code == 200
        return client.get("/metrics").text


# ---------------------------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_are_multi_stage_pinned_non_root_and_share_the_install_script(dockerfile: str) -> None:
    instructions = _instructions(dockerfile)
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", (DOCKER / dockerfile).read_text())
    assert base is not None
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base.group(1))
    assert len(_arguments(dockerfile, "FROM")) == 2
    user = _arguments(dockerfile, "USER")
    assert user
    assert user[-1].split(":")[0] not in {"0", "root"}
    order = [name for name, _ in instructions]
    assert order.index("USER") > order.index("COPY")
    assert len(_install_extras(dockerfile)) == 1
    assert "pip install" not in " ".join(_arguments(dockerfile, "RUN"))
    assert _arguments(dockerfile, "HEALTHCHECK"), "every image states its HEALTHCHECK (NONE for the job)"
    assert not any("models" in arguments.split()[0] for arguments in _arguments(dockerfile, "COPY"))
    assert '"/models"' in _arguments(dockerfile, "VOLUME")[0]


@pytest.mark.parametrize(("dockerfile", "extras"), SERVICE_IMAGES.items())
def test_service_images_install_one_runtime_and_no_torch(dockerfile: str, extras: str) -> None:
    assert _install_extras(dockerfile) == [extras]
    assert not any("training" in arguments for arguments in _arguments(dockerfile, "COPY"))
    requirements = importlib.metadata.requires("covserve") or []
    installed = " ".join(
        requirement
        for requirement in requirements
        if "extra ==" not in requirement or f'extra == "{extras}"' in requirement
    )
    assert "torch" not in installed
    assert ("onnxruntime-gpu" in installed) == (extras == "gpu")
    assert _arguments(dockerfile, "ENTRYPOINT") == ['["covserve-serve"]']
    environment = dict(re.findall(r"(COVSERVE_[A-Z_]+)=(\S+)", " ".join(_arguments(dockerfile, "ENV"))))
    assert set(environment) <= _settings_environment()
    assert environment["COVSERVE_REPOSITORY"] == "/models"
    assert int(environment["COVSERVE_PORT"]) == SERVICE_PORT
    assert _arguments(dockerfile, "EXPOSE") == [str(SERVICE_PORT)]


def test_the_train_image_runs_the_training_cli_with_parseable_defaults() -> None:
    assert _arguments("train.Dockerfile", "ENTRYPOINT") == ['["covserve-train"]']
    command = json.loads(_arguments("train.Dockerfile", "CMD")[-1])
    arguments = training_parser().parse_args(command)
    assert arguments.command == "fit"
    assert (ROOT / arguments.config).is_file()
    assert str(arguments.repository) == "/models"
    assert _install_extras("train.Dockerfile") == ["train,cpu"]


def _planned(target: str, venv: Path) -> list[list[str]]:
    """The commands ``make <target>`` would run for a virtual environment at ``venv`` (``make -n``)."""
    planned = subprocess.run(
        ["make", "-n", target, f"VENV={venv}"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    return [shlex.split(line) for line in planned.splitlines() if line.strip()]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_makefile_installs_through_the_images_script_and_lints_every_dockerfile(tmp_path: Path) -> None:
    """``make install`` on a fresh machine runs the install script the images run (no pip of its own);
    ``make lint`` runs hadolint over every Dockerfile."""
    venv = tmp_path / "venv"
    install = _planned("install", venv)
    scripts = [command for command in install if command[:2] == ["sh", "scripts/install.sh"]]
    assert scripts == [["sh", "scripts/install.sh", f"{venv}/bin/python", "train,dev,cpu,bench", "editable"]]
    assert not any(Path(command[0]).name.startswith("pip") for command in install)
    linted = [command for command in _planned("lint", venv) if Path(command[0]).name == "hadolint"]
    assert len(linted) == 1
    assert sorted(Path(path).name for path in glob.glob(" ".join(linted[0][1:]), root_dir=ROOT)) == sorted(
        DOCKERFILES
    )


def test_the_service_healthcheck_command_follows_readiness(alpha_template: Path) -> None:
    """The images' HEALTHCHECK, run as Docker runs it: 0 against a ready server, non-zero without one."""
    commands = [_arguments(name, "HEALTHCHECK")[0].split(" CMD ", 1)[1] for name in SERVICE_IMAGES]
    assert len(set(commands)) == 1
    command = json.loads(commands[0])
    assert command[0] == "python"
    with running_server(Settings(repository=alpha_template, threads=1)) as url:
        port = url.rsplit(":", 1)[1]
        ready = subprocess.run(
            [sys.executable, *command[1:]], env={**os.environ, "COVSERVE_PORT": port}, capture_output=True
        )
        assert ready.returncode == 0, ready.stderr
    gone = subprocess.run(
        [sys.executable, *command[1:]], env={**os.environ, "COVSERVE_PORT": port}, capture_output=True
    )
    assert gone.returncode != 0


# ------------------------------------------------------------------------------------------------- compose


def test_compose_stack_matches_the_service() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert services["covserve-cpu"]["profiles"] == ["cpu"]
    assert services["covserve-gpu"]["profiles"] == ["gpu"]
    assert services["train"]["profiles"] == ["train"]
    for name, dockerfile in (
        ("covserve-cpu", "service.cpu.Dockerfile"),
        ("covserve-gpu", "service.gpu.Dockerfile"),
    ):
        service = services[name]
        assert service["build"] == {"context": "..", "dockerfile": f"docker/{dockerfile}"}
        assert set(service["environment"]) <= _settings_environment()
        assert "models:/models" in service["volumes"]
        assert service["ports"] == [f"127.0.0.1:{SERVICE_PORT}:{SERVICE_PORT}"]
        assert "covserve" in service["networks"]["default"]["aliases"]
        assert int(service["stop_grace_period"].rstrip("s")) > DRAIN_SECONDS
    devices = services["covserve-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "models:/models" in services["train"]["volumes"]
    assert services["train"]["build"]["dockerfile"] == "docker/train.Dockerfile"
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in compose["volumes"] or (DOCKER / source).exists(), volume


def test_prometheus_scrapes_the_metrics_route_of_the_compose_service() -> None:
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] in _app_paths()
    assert job["static_configs"] == [{"targets": [f"covserve:{SERVICE_PORT}"]}]


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard() -> None:
    datasource = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/covserve.yaml").read_text())
    mounted = "/var/lib/grafana/dashboards"
    assert provider["providers"][0]["options"]["path"] == mounted
    grafana = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]["grafana"]
    assert f"./grafana/dashboards:{mounted}:ro" in grafana["volumes"]
    uid = datasource["datasources"][0]["uid"]
    dashboard = json.loads((DOCKER / "grafana/dashboards/covserve.json").read_text())
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} == {uid}


# ----------------------------------------------------------------------------------------------- dashboard


def _dashboard_queries() -> list[str]:
    dashboard = json.loads((DOCKER / "grafana/dashboards/covserve.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queries += [variable["query"]["query"] for variable in dashboard["templating"]["list"]]
    return queries


def test_the_dashboard_covers_what_the_issue_asks_for() -> None:
    dashboard = json.loads((DOCKER / "grafana/dashboards/covserve.json").read_text())
    titles = " | ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("request rate", "error rate", "latency", "queue", "batch size", "in-flight", "provider"):
        assert topic in titles
    queries = " ".join(_dashboard_queries())
    for quantile in ("0.5", "0.95", "0.99"):
        latency = f"histogram_quantile({quantile}, sum by (le) (rate(covserve_request_duration_seconds"
        assert latency in queries
    assert "covserve_predicted_log_det_bucket" in queries
    assert "covserve_input_mahalanobis_bucket" in queries


def test_the_dashboard_only_queries_exported_series(scrape: str) -> None:
    """Every ``covserve_*`` name, label and exact label value the dashboard queries is in a real scrape."""
    samples: dict[str, list[dict[str, str]]] = {}
    for line in scrape.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? ", line)
        if match and not line.startswith("#"):
            labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', match.group(3) or ""))
            samples.setdefault(match.group(1), []).append(labels)
    checked = 0
    for query in _dashboard_queries():
        grouping = set(re.findall(r"by \(([^)]*)\)", query))
        grouped = {label.strip() for group in grouping for label in group.split(",")}
        for name, selector in re.findall(r"(covserve_[a-z_]+)(\{[^}]*\})?", query):
            assert name in samples, f"{name} is queried by the dashboard but not exported"
            exported = set().union(*(labels.keys() for labels in samples[name]))
            assert grouped <= exported, f"{name} has no label(s) {grouped - exported}"
            for label, operator, value in re.findall(r'(\w+)\s*(=~|!=|=)\s*"([^"]*)"', selector):
                assert label in exported, f"{name} has no label {label}"
                if operator == "=":
                    found = any(labels.get(label) == value for labels in samples[name])
                    assert found, f'{name}{{{label}="{value}"}} is not exported'
            checked += 1
        for label in re.findall(r"label_values\(\w+, (\w+)\)", query):
            assert label in set().union(*(labels.keys() for labels in samples["covserve_model_info"]))
    assert checked >= 20


# ---------------------------------------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize("path", sorted((K8S / "base").glob("*.yaml")), ids=lambda path: path.name)
def test_base_manifests_pass_the_kubernetes_schema(path: Path) -> None:
    documents = _documents(path)
    assert documents, f"{path} holds no manifest"
    for document in documents:
        if document["apiVersion"].startswith(("monitoring.coreos.com", "kustomize.config.k8s.io")):
            continue  # custom resources: checked field by field below
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)  # raises when invalid


def test_the_deployment_probes_ports_and_drain_match_the_service() -> None:
    deployment = _base("Deployment", "covserve")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(pod, "covserve")
    paths = _app_paths()
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live" in paths
    for probe in ("readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == "/v2/health/ready" in paths
        assert container[probe]["httpGet"]["port"] == "http"
    (port,) = container["ports"]
    environment = {item["name"]: item["value"] for item in container["env"]}
    assert set(environment) <= _settings_environment()
    assert port["containerPort"] == int(environment["COVSERVE_PORT"]) == SERVICE_PORT
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] == PRE_STOP_SECONDS
    assert pod["terminationGracePeriodSeconds"] > PRE_STOP_SECONDS + DRAIN_SECONDS
    assert pod["securityContext"]["runAsUser"] == 10001
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert set(mounts) == set(volumes)
    assert mounts["models"] == environment["COVSERVE_REPOSITORY"]
    claim = volumes["models"]["persistentVolumeClaim"]["claimName"]
    assert _base("PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_service_monitor_and_autoscaler_target_the_deployment() -> None:
    deployment = _base("Deployment", "covserve")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = _base("Service", "covserve")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    container = _container(deployment["spec"]["template"]["spec"], "covserve")
    assert port["targetPort"] == container["ports"][0]["name"]
    monitor = _base("ServiceMonitor", "covserve")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"]
    assert endpoint["path"] == "/metrics" in _app_paths()
    autoscaler = _base("HorizontalPodAutoscaler", "covserve")
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_the_training_job_runs_the_training_cli_into_the_models_claim() -> None:
    job = _base("Job", "covserve-train")
    pod = job["spec"]["template"]["spec"]
    container = _container(pod, "train")
    arguments = training_parser().parse_args(container["args"])
    assert arguments.command == "fit"
    assert (ROOT / arguments.config).is_file()
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert str(arguments.repository) == mounts["models"]
    claims = {volume["name"]: volume.get("persistentVolumeClaim", {}) for volume in pod["volumes"]}
    serving = _base("Deployment", "covserve")["spec"]["template"]["spec"]["volumes"]
    serving_models = next(volume for volume in serving if volume["name"] == "models")
    assert claims["models"]["claimName"] == serving_models["persistentVolumeClaim"]["claimName"]


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_overlays_patch_resources_that_exist(overlay: str) -> None:
    kustomization = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../../base"]
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    assert all((K8S / "base" / resource).is_file() for resource in base["resources"])
    images = {
        container["image"].split(":")[0]
        for kind, name in (("Deployment", "covserve"), ("Job", "covserve-train"))
        for container in _base(kind, name)["spec"]["template"]["spec"]["containers"]
    }
    assert {image["name"] for image in kustomization["images"]} == images
    devices: set[str] = set()
    for patch in kustomization["patches"]:
        (document,) = _documents(K8S / "overlays" / overlay / patch["path"])
        target = _base(document["kind"], document["metadata"]["name"])
        names = {container["name"] for container in target["spec"]["template"]["spec"]["containers"]}
        for container in document["spec"]["template"]["spec"]["containers"]:
            assert container["name"] in names
            if container["name"] == "covserve":
                devices |= {item["value"] for item in container["env"] if item["name"] == "COVSERVE_DEVICE"}
            if overlay == "gpu":
                assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
            if "args" in container:
                assert training_parser().parse_args(container["args"]).device == "cuda"
    assert devices == {"cuda" if overlay == "gpu" else "cpu"}


def test_the_kserve_predictor_speaks_on_its_declared_port() -> None:
    (service,) = _documents(K8S / "kserve" / "inferenceservice.yaml")
    (container,) = service["spec"]["predictor"]["containers"]
    environment = {item["name"]: item["value"] for item in container["env"]}
    assert {name for name in environment if name.startswith("COVSERVE_")} <= _settings_environment()
    assert container["ports"][0]["containerPort"] == int(environment["COVSERVE_PORT"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert shlex.split(environment["STORAGE_URI"])[0].startswith("pvc://")
    assert environment["COVSERVE_REPOSITORY"] == "/mnt/models"


PYTORCH_JOB = K8S / "kubeflow" / "pytorchjob.yaml"
PYTORCH_JOB_PORT = 23456  # the Training Operator's default rendezvous port (PytorchJobDefaultPort)


def _pytorch_job() -> dict[str, Any]:
    (job,) = _documents(PYTORCH_JOB)
    return job


def _launch(arguments: list[str]) -> tuple[list[str], list[str]]:
    """``torchrun ARGS`` split into torchrun's own flags and the training CLI's arguments."""
    module = arguments.index("-m")
    assert arguments[module + 1] == "covserve.training", arguments
    return arguments[:module], arguments[module + 2 :]


def test_the_pytorchjob_runs_torchrun_over_the_training_cli_into_the_models_claim() -> None:
    """Master and Worker pods pass the Kubernetes schema, run the same ``torchrun -m covserve.training fit``
    as the operator's ``pytorch`` container, and the master publishes into the serving claim."""
    job = _pytorch_job()
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])  # the operator's DNS-1035
    assert int(job["spec"]["nprocPerNode"]) >= 1  # not the operator's default, auto: one per core on a CPU
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"}
    assert replicas["Master"]["replicas"] == 1
    assert replicas["Worker"]["replicas"] >= 1
    train_image = _container(_base("Job", "covserve-train")["spec"]["template"]["spec"], "train")["image"]
    launches = set()
    for replica_type, replica in replicas.items():
        assert replica["restartPolicy"] in {"OnFailure", "Never"}
        template = replica["template"]
        metadata = {"name": f"{job['metadata']['name']}-{replica_type.lower()}"}
        document = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": metadata, "template": template}
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)  # raises when invalid
        pod = template["spec"]
        assert pod["securityContext"]["runAsUser"] == 10001
        container = _container(pod, "pytorch")
        assert container["image"] == train_image
        assert container["command"] == ["torchrun"]
        launches.add(tuple(container["args"]))
    assert len(launches) == 1, launches  # one command for all; the operator's variables tell pods apart
    _, training = _launch(list(launches.pop()))
    arguments = training_parser().parse_args(training)
    assert arguments.command == "fit"
    assert (ROOT / arguments.config).is_file()
    master = replicas["Master"]["template"]["spec"]
    container = _container(master, "pytorch")
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert str(arguments.repository) == mounts["models"]
    claims = {volume["name"]: volume.get("persistentVolumeClaim", {}) for volume in master["volumes"]}
    serving = _base("Deployment", "covserve")["spec"]["template"]["spec"]["volumes"]
    serving_models = next(volume for volume in serving if volume["name"] == "models")
    assert claims["models"]["claimName"] == serving_models["persistentVolumeClaim"]["claimName"]


def test_torchrun_takes_the_pytorchjobs_topology_from_the_operators_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch's own parser, given the ``PET_*`` variables the Training Operator sets on a worker, reads the
    sizes and the master's address from them (no flag in the manifest overrides them); the README's plain
    torchrun commands parse too."""
    from torch.distributed.run import get_args_parser

    for name in [name for name in os.environ if name.startswith("PET_")]:
        monkeypatch.delenv(name)
    job = _pytorch_job()
    replicas = job["spec"]["pytorchReplicaSpecs"]
    master = _container(replicas["Master"]["template"]["spec"], "pytorch")
    ports = {port["name"]: port["containerPort"] for port in master.get("ports", [])}
    operator = {
        "PET_NNODES": str(sum(replica["replicas"] for replica in replicas.values())),
        "PET_NPROC_PER_NODE": job["spec"]["nprocPerNode"],
        "PET_NODE_RANK": "1",
        "PET_MASTER_ADDR": f"{job['metadata']['name']}-master-0",
        "PET_MASTER_PORT": str(ports.get("pytorchjob-port", PYTORCH_JOB_PORT)),
    }
    for name, value in operator.items():
        monkeypatch.setenv(name, value)
    worker = _container(replicas["Worker"]["template"]["spec"], "pytorch")
    launch = get_args_parser().parse_args(worker["args"])
    assert launch.module
    assert launch.training_script == "covserve.training"
    assert launch.training_script_args == _launch(worker["args"])[1]
    assert launch.nnodes == operator["PET_NNODES"]
    assert launch.nproc_per_node == operator["PET_NPROC_PER_NODE"]
    assert launch.node_rank == 1
    assert launch.rdzv_backend == "static"  # the rendezvous that uses the master's address and node ranks
    assert (launch.master_addr, launch.master_port) == (operator["PET_MASTER_ADDR"], PYTORCH_JOB_PORT)

    for name in operator:
        monkeypatch.delenv(name)
    commands = [
        shlex.split(line.strip().strip("`"), comments=True)
        for line in (DOCKER / "README.md").read_text().splitlines()
        if line.strip().strip("`").startswith("torchrun ")
    ]
    assert len(commands) >= 2
    for command in commands:
        launch = get_args_parser().parse_args(command[1:])
        assert launch.module
        assert launch.training_script == "covserve.training"
        arguments = training_parser().parse_args(launch.training_script_args)
        assert arguments.command == "fit"
        assert (ROOT / arguments.config).is_file()
        if launch.nnodes not in {"1", "1:1"}:  # several machines need the rendezvous endpoint, not 127.0.0.1
            assert launch.rdzv_backend == "c10d"
            assert launch.rdzv_endpoint


def test_the_readmes_compose_commands_name_real_profiles_and_files() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"].values()
    profiles = {profile for service in services for profile in service.get("profiles", [])}
    commands = [
        line.strip()
        for readme in (ROOT / "README.md", DOCKER / "README.md")
        for line in readme.read_text().splitlines()
        if line.strip().startswith("docker compose")
    ]
    profile_sets = []
    for command in commands:
        words = shlex.split(command.split("#")[0].rstrip("\\ "))
        assert (ROOT / words[words.index("-f") + 1]).is_file()
        used = {words[index + 1] for index, word in enumerate(words) if word == "--profile"}
        assert used, command
        assert used <= profiles, command
        profile_sets.append(used)
    assert {"cpu", "train"} in profile_sets  # the stack that trains the demo and serves it
